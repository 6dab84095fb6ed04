"""The default base model: a YOLO trained once from an ultralytics YAML on the default data, cached."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import ultralytics
from filelock import FileLock

from edgesearch.common.cache import cache_dir
from edgesearch.common.files import atomic_directory
from edgesearch.runners.accuracy.base_training import train_base_model
from edgesearch.runners.device import resolve_device
from edgesearch.search.presets import Preset


def default_base_checkpoint(preset: Preset, data_yaml: Path, seed: int = 0, device: str = "auto") -> Path:
    """Path of the cached base checkpoint for this preset and dataset, training it if needed on
    `device` (runners/device.py; not part of the cache key: recipe.json says where it was trained)."""
    model_yaml = Path(preset.model_yaml)
    recipe = {
        "model_yaml": model_yaml.read_text() if model_yaml.is_file() else preset.model_yaml,
        "data": str(data_yaml.parent.name),  # the dataset folder name carries its recipe hash
        "epochs": preset.base_epochs,
        "imgsz": preset.imgsz,
        "batch": preset.batch,
        "seed": seed,
        "ultralytics": ultralytics.__version__,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"{model_yaml.stem}-{key}"
    checkpoint = folder / "base.pt"
    if checkpoint.exists():
        return checkpoint
    folder.parent.mkdir(parents=True, exist_ok=True)
    # runs started together on one machine train it once: the others wait, then find it cached
    with FileLock(folder.parent / f"{folder.name}.lock"):
        if checkpoint.exists():
            return checkpoint
        print(f"training the base model {model_yaml.name} for {preset.base_epochs} epochs (cached for later runs)")
        with atomic_directory(folder) as staging:
            best, trained_on = train_base_model(preset.model_yaml, data_yaml, staging / "training",
                                                epochs=preset.base_epochs, imgsz=preset.imgsz, batch=preset.batch,
                                                seed=seed, device=resolve_device(device))
            shutil.copy2(best, staging / "base.pt")
            (staging / "recipe.json").write_text(json.dumps({**recipe, "trained_on": trained_on}, indent=2))
    return checkpoint
