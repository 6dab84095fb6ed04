"""Shadow comparison: a chosen design run beside the base on a second image folder (the staged
roll-out of the generic edge paper: the new model shadows the old one before it replaces it).

Both models see the same letterboxed images. Detection agreement: each image's detections of
the design are matched one-to-one to the base's (Hungarian assignment on IoU, scipy), a pair
counting as matched at IoU >= 0.5; class agreement is the share of matched pairs with the same
class. Where the folder has labels (ultralytics' layout: .../images/x.jpg -> .../labels/x.txt),
ultralytics' DetectionValidator scores both models per class. Latency: both built for the
profile and timed together, interleaved, where the profile is this machine; else each as a
trial is (over RPC, or estimated), with its source. Plain data out.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import cast

import numpy as np
import torch
import yaml
from scipy.optimize import linear_sum_assignment

from edgesearch.common.errors import InputError
from edgesearch.runners.accuracy import ultralytics_io  # noqa: F401  (never write into the user's dataset)
from edgesearch.runners.accuracy.finetune import load_dataset_info
from edgesearch.runners.device import CPU, describe, resolve_device, running_on, to_device, trainer_device
from edgesearch.runners.evaluate import EvalSettings, build_design
from edgesearch.runners.hardware.profiles import load_profile
from edgesearch.runners.hardware.scores import hardware_scores, remeasure_interleaved
from edgesearch.spaces.apply import apply_candidate
from edgesearch.spaces.candidate import Candidate

CONF = 0.25  # ultralytics' predict default: the detections a deployment would act on
NMS_IOU = 0.7
MATCH_IOU = 0.5


def list_images(folder: Path) -> list[Path]:
    from ultralytics.data.utils import IMG_FORMATS

    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix[1:].lower() in IMG_FORMATS)
    if not images:
        raise InputError(f"image folder {folder} holds no images")
    return images


def label_files(images: list[Path]) -> list[Path | None]:
    from ultralytics.data.utils import img2label_paths

    return [Path(p) if Path(p).is_file() else None for p in img2label_paths([str(i) for i in images])]


def predict(model, images: list[Path], imgsz: int, *, conf: float = CONF, batch: int = 16,
            device: torch.device = CPU) -> list[np.ndarray]:
    """Per image, an (n, 6) array [x1, y1, x2, y2, confidence, class] in letterboxed pixels; the
    images are sent to `device` (where the model is: runners/device.to_device)."""
    import cv2
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.nms import non_max_suppression

    letterbox = LetterBox(new_shape=(imgsz, imgsz), auto=False)
    out = []
    model.eval()
    for start in range(0, len(images), batch):
        # LetterBox returns the image alone when called with image= only (ultralytics annotates it as a dict)
        chunk = [cast(np.ndarray, letterbox(image=cv2.imread(str(p)))) for p in images[start:start + batch]]
        x = torch.from_numpy(np.stack([c[..., ::-1].transpose(2, 0, 1) for c in chunk]).copy())
        x = x.to(device).float() / 255
        with torch.no_grad():
            detections = non_max_suppression(model(x), conf_thres=conf, iou_thres=NMS_IOU)
        out += [d.cpu().numpy() for d in detections]
    return out


def agreement(base: list[np.ndarray], design: list[np.ndarray], *, iou: float = MATCH_IOU) -> dict:
    """Matched boxes at `iou` between two models' detections, image by image."""
    from ultralytics.utils.metrics import box_iou

    matched = same_class = base_boxes = design_boxes = 0
    ious, per_image = [], []
    for index, (b, d) in enumerate(zip(base, design, strict=True)):
        base_boxes, design_boxes = base_boxes + len(b), design_boxes + len(d)
        pairs = []
        if len(b) and len(d):
            overlap = box_iou(torch.from_numpy(b[:, :4]).float(), torch.from_numpy(d[:, :4]).float()).numpy()
            rows, cols = linear_sum_assignment(-overlap)
            pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if overlap[r, c] >= iou]
            ious += [float(overlap[r, c]) for r, c in pairs]
        agree = sum(1 for r, c in pairs if int(b[r, 5]) == int(d[c, 5]))
        matched, same_class = matched + len(pairs), same_class + agree
        per_image.append({"image": index, "base": len(b), "design": len(d), "matched": len(pairs), "same_class": agree})
    return {
        "match_iou": iou,
        "base_boxes": base_boxes, "design_boxes": design_boxes, "matched": matched, "same_class": same_class,
        "base_recall": matched / base_boxes if base_boxes else None,  # share of the base's detections the design keeps
        "design_precision": matched / design_boxes if design_boxes else None,  # share of the design's the base has
        "class_agreement": same_class / matched if matched else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "identical_images": sum(1 for r in per_image if r["base"] == r["design"] == r["same_class"]),
        "per_image": per_image,
    }


def per_class_scores(model, images_dir: Path, names: dict, imgsz: int, device: torch.device = CPU) -> dict:
    """ultralytics' DetectionValidator on the labelled folder: overall and per-class mAP."""
    from ultralytics.models.yolo.detect import DetectionValidator

    with tempfile.TemporaryDirectory() as scratch:
        data_yaml = Path(scratch) / "shadow.yaml"
        data_yaml.write_text(yaml.safe_dump({"path": str(images_dir), "train": str(images_dir), "val": str(images_dir),
                                             "names": names}))
        load_dataset_info(data_yaml)
        validator = DetectionValidator(save_dir=Path(scratch) / "val", args=dict(
            data=str(data_yaml), imgsz=imgsz, batch=16, workers=0, device=trainer_device(device), plots=False,
            verbose=False, save_json=False))
        stats = validator(model=model)
        box = validator.metrics.box
        counts = validator.metrics.nt_per_class
        classes = {}
        for row, cls in enumerate(box.ap_class_index):
            classes[str(names[int(cls)])] = {"map50_95": float(box.all_ap[row].mean()), "map50": float(box.all_ap[row, 0]),  # type: ignore[call-overload]  # an ndarray, annotated list
                                             "instances": int(counts[int(cls)]) if counts is not None else None}
    return {"map50_95": float(stats["metrics/mAP50-95(B)"]), "map50": float(stats["metrics/mAP50(B)"]), "classes": classes}


def latencies(base, design, config: EvalSettings) -> dict:
    profile = load_profile(config.profile)
    from edgesearch.runners.hardware.measure import timed_here

    if timed_here(profile):
        return remeasure_interleaved({"base": base, "design": design}, profile, config.imgsz)
    return {name: {k: v for k, v in hardware_scores(model, profile, config.imgsz).items()
                   if k in ("latency_ms", "latency_spread_ms", "latency_source", "latency_method")}
            for name, model in (("base", base), ("design", design))}


def shadow(settings: dict, candidate: dict | None, images_dir: str, *, conf: float = CONF) -> dict:
    config = EvalSettings(**settings)
    torch.set_num_threads(config.threads)
    os.environ["TVM_NUM_THREADS"] = str(config.threads)
    folder = Path(images_dir).resolve()
    images = list_images(folder)  # before the slow work
    labels = label_files(images)
    names = load_dataset_info(Path(config.data_yaml))["names"]
    base_model, design, _, losses, _ = build_design(config, candidate)
    base = apply_candidate(base_model, Candidate({}))  # fused, as the design is
    device = resolve_device(config.device)
    labelled = sum(1 for p in labels if p is not None)
    accuracy = None
    with running_on(to_device(base, device), device) as base_ran, running_on(to_device(design, device), device) as ran:
        base_detections = predict(base, images, config.imgsz, conf=conf, device=device)
        design_detections = predict(design, images, config.imgsz, conf=conf, device=device)
        if labelled:
            accuracy = {"base": per_class_scores(base, folder, names, config.imgsz, device),
                        "design": per_class_scores(design, folder, names, config.imgsz, device)}
    to_device(base, CPU), to_device(design, CPU)  # TVM builds from the CPU copies
    result = {
        "images_dir": str(folder),
        "images": len(images),
        "labelled_images": labelled,
        "image_names": [str(p.relative_to(folder)) for p in images],
        "confidence": conf,
        "nms_iou": NMS_IOU,
        "imgsz": config.imgsz,
        "finetune_iters": config.finetune_iters,
        "finetune_final_loss": losses[-1] if losses else None,
        "device": describe(device),
        "stage_devices": {**losses.devices, "shadow base": base_ran.describe(), "shadow design": ran.describe()},
        "agreement": agreement(base_detections, design_detections),
        "accuracy": accuracy,
        "accuracy_source": (f"measured: ultralytics' DetectionValidator on {labelled} labelled images of {folder} "
                            f"(images without a label file count as having no objects), input {config.imgsz} px"
                            if labelled else None),
        "latency": latencies(base, design, config),
    }
    return result
