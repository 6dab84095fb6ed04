"""Training a base model from an ultralytics model YAML with ultralytics' own trainer."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm
from ultralytics import YOLO

from edgesearch.runners.accuracy import ultralytics_io  # noqa: F401  (never write into the user's dataset)
from edgesearch.runners.device import CPU, describe, trainer_device


def train_base_model(model_yaml: str, data_yaml: Path, out_dir: Path, *, epochs: int, imgsz: int,
                     batch: int, seed: int = 0, device: torch.device = CPU) -> tuple[Path, str]:
    """Train on `device` and return the path of the best checkpoint (by val fitness) and the
    device ultralytics' trainer ran on (runners/device.describe of its own choice)."""
    model = YOLO(model_yaml)
    bar = tqdm(total=epochs, desc="base training", unit="epoch")
    model.add_callback("on_train_epoch_end", lambda trainer: bar.update(1))
    with bar:
        model.train(data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=trainer_device(device),
                    workers=2, project=str(out_dir), name="train", exist_ok=True, plots=False, seed=seed,
                    deterministic=True, amp=False, verbose=False, patience=epochs)
    best = Path(model.trainer.best)  # type: ignore[attr-defined]  # ultralytics declares Model.trainer None until train()
    if not best.exists():
        raise RuntimeError(f"base training finished without writing {best}")
    return best, describe(torch.device(getattr(model.trainer, "device")))
