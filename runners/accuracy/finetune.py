"""Short fine-tune of a transformed model, and its mAP from ultralytics' own validator."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast, overload

import torch
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import IterableSimpleNamespace

from edgesearch.common.errors import InputError
from edgesearch.runners.accuracy import ultralytics_io  # noqa: F401  (never write into the user's dataset)
from edgesearch.runners.device import CPU, batch_to, running_on, to_device, trainer_device
from edgesearch.runners.hardware.turns import in_work_steps, work_step


def load_dataset_info(data_yaml: Path) -> dict:
    """ultralytics' parsed data.yaml; a dataset without a usable val split is refused."""
    try:
        # autodownload=False: a data.yaml's `download:` entry is a script ultralytics would exec
        data = check_det_dataset(str(data_yaml), autodownload=False)
    except Exception as error:  # ultralytics raises several types for a bad data.yaml
        raise InputError(f"data.yaml {data_yaml}: {str(error).strip().splitlines()[0]}") from None
    if not data.get("val"):
        raise InputError(f"data.yaml {data_yaml} has no val split")
    return data


# A short fine-tune adapts a trained model to its compression; it does not teach it to generalise.
# Measured on the default base (mAP50-95 0.701), 60 steps: with ultralytics' default augmentation
# the fp32 fine-tune fell to 0.690-0.696 and 4-bit affine per filter reached 0.672-0.684 (lr 1e-5 to
# 1e-4, mosaic on or off); without augmentation, 0.727 and 0.711 at lr 1e-4.
FINETUNE_LR = 1e-4
# A design that changes structure (channels, kernel, rank) has more to win back than a quantizer, and
# takes 10x the rate. Measured on the default model, 60 steps without augmentation (mAP50-95 at 1e-4 ->
# at 1e-3): uniform 25 % channel pruning 0.283 -> 0.604; int8 weights + activations 0.702 -> 0.692 and
# 4-bit affine 0.711 -> 0.709 (so designs that keep their structure stay at FINETUNE_LR).
STRUCTURAL_LR = 1e-3
NO_AUGMENTATION = {"mosaic": 0.0, "mixup": 0.0, "cutmix": 0.0, "copy_paste": 0.0, "fliplr": 0.0, "flipud": 0.0,
                   "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0,
                   "shear": 0.0, "perspective": 0.0}


def finetune(
    model: nn.Module,
    data_yaml: Path,
    *,
    iterations: int,
    imgsz: int,
    batch: int = 16,
    lr: float = FINETUNE_LR,
    seed: int = 0,
    teacher: nn.Module | None = None,
    distill_weight: float = 1.0,
    device: torch.device | None = None,
    rung: tuple[int, Callable[[nn.Module], bool]] | None = None,
) -> FinetuneLosses:
    """Train `model` in place for `iterations` steps with ultralytics' loss and data pipeline,
    on train images without augmentation (NO_AUGMENTATION), on `device` (None: where the model
    is); the model and the teacher are moved there and stay there.

    Fake-quantized layers train through their straight-through estimator. With a `teacher` (the
    base model), the loss adds `distill_weight` x the distillation loss of `distillation_loss`.
    Returns the detection loss of every step (for the trial's record; without the distillation
    term, so distilled and plain fine-tunes compare), and where the steps ran (`.devices`).

    `rung` = (steps, go_on): after that many steps (if fewer than `iterations`) `go_on(model)` sees
    the model in eval mode and says whether the rest is worth running (successive halving); if not,
    training stops there and `.stopped_at` says when. A model that goes on trains exactly as without
    the check: same batches, same optimizer state.
    """
    losses = FinetuneLosses()
    losses.devices = {"finetune": "not run", **({"teacher": "not run"} if teacher is not None else {})}
    if iterations <= 0:
        return losses
    device = device or next(model.parameters()).device
    to_device(model, device)
    if teacher is not None:
        to_device(teacher, device)
    torch.manual_seed(seed)
    cfg = _cfg({"imgsz": imgsz, "batch": batch, "workers": 0, "seed": seed, **NO_AUGMENTATION})
    data = load_dataset_info(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train",
                                 stride=int(getattr(model, "stride").max()))
    loader = build_dataloader(dataset, batch, workers=0, shuffle=True)
    setattr(model, "args", cfg)  # the detection loss reads its box/cls/dfl gains from here
    setattr(model, "criterion", None)
    model.train()
    # released checkpoints have every parameter frozen; train all but DFL's fixed decoding table,
    # as ultralytics' own trainer does
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".dfl" not in name)
        if parameter.requires_grad:
            trainable.append(parameter)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    with running_on(model, device) as student, contextlib.ExitStack() as watching:
        taught = watching.enter_context(running_on(teacher, device)) if teacher is not None else None
        # each step a work step: a trial of this machine being timed pauses it (turns.py)
        for step, batch_data in enumerate(in_work_steps(itertools.islice(_endless(loader), iterations)), start=1):
            _step(model, batch_to(batch_data, device), batch, optimizer, losses, teacher, distill_weight)
            if rung is not None and step == rung[0] < iterations and not _checked(model, rung[1], trainable, cfg):
                losses.stopped_at = step
                break
    losses.devices = {"finetune": student.describe(), **({"teacher": taught.describe()} if taught else {})}
    model.eval()
    return losses


def _checked(model: nn.Module, go_on: Callable[[nn.Module], bool], trainable: list, cfg) -> bool:
    """`go_on(model)` in eval mode, then the model put back as training left it (a validator may
    freeze parameters or replace the loss settings)."""
    model.eval()
    try:
        return go_on(model)
    finally:
        model.train()
        for parameter in trainable:
            parameter.requires_grad_(True)
        setattr(model, "args", cfg)
        setattr(model, "criterion", None)


class FinetuneLosses(list):
    """The detection loss of every fine-tune step, with `devices`: {stage: where its model's
    parameters and inputs were} (runners/device.py DeviceWatch), and `stopped_at`: the step a
    rung stopped it at (None: every step ran), `inherited`: the fine-tune started from a parent
    design's fine-tuned weights (runners/accuracy/inherited.py), not the base's, and `cuts_at`: the
    steps its channels were cut at (runners/evaluate.build_design; none: it prunes none)."""

    devices: dict[str, str]
    stopped_at: int | None = None
    inherited: bool = False
    cuts_at: tuple[int, ...] = ()


def _step(model: nn.Module, batch_data: dict, batch: int, optimizer, losses: list, teacher: nn.Module | None,
          distill_weight: float) -> None:
    """One fine-tune step on one batch (already on the model's device)."""
    batch_data["img"] = batch_data["img"].float() / 255
    predictions = model(batch_data["img"])
    loss, _ = getattr(model, "loss")(batch_data, predictions)
    loss = loss.sum()
    losses.append(float(loss.detach()) / batch)
    if teacher is not None:
        with torch.no_grad():
            _, teacher_predictions = teacher.eval()(batch_data["img"])
        loss = loss + distill_weight * batch * distillation_loss(predictions, teacher_predictions)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
    optimizer.step()


def distillation_loss(student: dict, teacher: dict) -> torch.Tensor:
    """Knowledge distillation from the base model's raw head outputs (same anchors, same shapes):
    KL divergence of the DFL box-bin distributions plus binary cross-entropy of the class logits
    against the teacher's class probabilities, each averaged over anchors. End-to-end heads
    (YOLOv10-style) are distilled through their one-to-many branch."""
    student, teacher = student.get("one2many", student), teacher.get("one2many", teacher)
    batch, channels, anchors = student["boxes"].shape
    bins = (batch, 4, channels // 4, anchors)
    box_kl = torch.nn.functional.kl_div(student["boxes"].view(bins).log_softmax(2),
                                        teacher["boxes"].view(bins).log_softmax(2),
                                        log_target=True, reduction="none").sum(2).mean()
    class_bce = torch.nn.functional.binary_cross_entropy_with_logits(student["scores"], teacher["scores"].sigmoid())
    return box_kl + class_bce


def _cfg(overrides: dict) -> IterableSimpleNamespace:
    """ultralytics' configuration with `overrides` (get_cfg returns an IterableSimpleNamespace; it is
    annotated SimpleNamespace)."""
    return cast(IterableSimpleNamespace, get_cfg(overrides=overrides))


def calibration_batches(data_yaml: Path, *, imgsz: int, batch: int, count: int, stride: int = 32):
    """`count` batches of train images (letterboxed, no augmentation) for activation calibration."""
    cfg = _cfg({"imgsz": imgsz, "batch": batch, "workers": 0})
    data = load_dataset_info(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="val", stride=stride)
    loader = build_dataloader(dataset, batch, workers=0, shuffle=False)
    for batch_data in itertools.islice(loader, count):
        yield batch_data["img"].float() / 255


def loss_batches(data_yaml: Path, *, imgsz: int, batch: int, count: int, stride: int = 32) -> list[dict]:
    """`count` fixed batches of train images with their labels (letterboxed, no augmentation): the
    same images every time, so loss differences between models are not sampling noise."""
    cfg = _cfg({"imgsz": imgsz, "batch": batch, "workers": 0})
    data = load_dataset_info(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="val", stride=stride)
    loader = build_dataloader(dataset, batch, workers=0, shuffle=False)
    batches = []
    for batch_data in itertools.islice(loader, count):
        batch_data["img"] = batch_data["img"].float() / 255
        batches.append(batch_data)
    return batches


@overload
def detection_loss(model: nn.Module, batches: list[dict], *, grad: Literal[False] = False) -> float: ...
@overload
def detection_loss(model: nn.Module, batches: list[dict], *, grad: Literal[True]) -> torch.Tensor: ...
def detection_loss(model: nn.Module, batches: list[dict], *, grad: bool = False) -> torch.Tensor | float:
    """Mean detection loss per image (ultralytics' box + cls + dfl, with its default gains) of
    `model` in eval mode over `batches` (from loss_batches). With grad=True, a tensor that
    keeps the graph; else a float."""
    if not isinstance(getattr(model, "args", None), IterableSimpleNamespace):
        setattr(model, "args", get_cfg())  # the loss reads its gains from here
    setattr(model, "criterion", None)  # built for this model (its stride and head)
    model.eval()
    total, images = 0.0, 0
    with torch.set_grad_enabled(grad):
        for batch_data in batches:
            loss, _ = getattr(model, "loss")(batch_data, model(batch_data["img"]))
            total = total + loss.sum()
            images += len(batch_data["img"])
    return total / images if grad else float(total) / images


def _endless(loader):
    """Batches from epoch after epoch (itertools.cycle would replay stored batches instead)."""
    while True:
        yield from loader


def validate(model: nn.Module, data_yaml: Path, *, imgsz: int, batch: int = 32, split: str = "val",
             device: torch.device = CPU) -> dict:
    """mAP50-95 and mAP50 on a split (default val), computed by ultralytics' DetectionValidator on
    `device` (the validator moves the model there; it stays there), and `device`: where the model's
    parameters and the batches were (runners/device.py; 'not watched' for a model given as a file)."""
    args = dict(data=str(data_yaml), imgsz=imgsz, batch=batch, workers=0, device=trainer_device(device),
                plots=False, verbose=False, save_json=False, split=split)
    with tempfile.TemporaryDirectory() as save_dir, contextlib.ExitStack() as watching, work_step():
        watch = watching.enter_context(running_on(model, device)) if isinstance(model, nn.Module) else None
        validator = DetectionValidator(save_dir=Path(save_dir), args=args)
        stats = validator(model=model)
    return {"map50_95": float(stats["metrics/mAP50-95(B)"]), "map50": float(stats["metrics/mAP50(B)"]),
            "device": watch.describe() if watch else "not watched"}
