"""Presets: the sizes of a whole job (data, base model, fine-tune, search) in one name.

`default` is what `make demo` runs: a real YOLOv8n on 1,500 composed MNIST canvases, sized to
finish on a 2-core machine in under 30 minutes. `smoke` runs the same code paths on tiny data
and a tiny model in a few minutes, for checking an install and for the tests.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgesearch.search.default_data import DigitCanvasRecipe

TINY_MODEL_YAML = str(Path(__file__).parent / "yolov8-tiny.yaml")
STRATEGIES = ("guided", "nsga2", "random")  # search strategies (study.py); the first is the default


@dataclasses.dataclass(frozen=True)
class Preset:
    data: DigitCanvasRecipe
    model_yaml: str  # base architecture trained when the user brings no --model
    base_epochs: int
    imgsz: int
    batch: int
    finetune_iters: int
    trials: int
    population: int  # NSGA-II population (generation size)
    recipes: tuple[str, ...] | None = None  # the recipes a guided search scores first (None: all, recipes.py)
    # the recovery stage's extra fine-tune steps for the front's structural designs (search/recovery.py)
    recover_steps: int = 0


PRESETS = {
    "default": Preset(
        data=DigitCanvasRecipe(n_train=1500, n_val=300),
        model_yaml="yolov8n.yaml",
        base_epochs=15,
        imgsz=128,
        batch=16,
        finetune_iters=60,
        trials=24,  # 6 recipes and the control (x86-host), 6 budgeted seeds, 11 screened moves (guided)
        population=4,
        # 3x the fine-tune in all: uniform 25 % pruning recovered to 0.73 mAP50-95 there, the base is 0.709
        # (search/recovery.py); each recovery costs about 3 trials' fine-tunes
        recover_steps=120,
    ),
    "smoke": Preset(  # a base that scores well above 0 (tests check accuracy, not only mechanics): ~1.5 min
        data=DigitCanvasRecipe(n_train=400, n_val=48, canvas=64, min_digit_px=16, max_digit_px=30, max_digits=3),
        model_yaml=TINY_MODEL_YAML,
        base_epochs=30,
        imgsz=64,
        batch=16,
        finetune_iters=2,
        trials=2,
        population=2,
        # two recipes (one with int8 activations) keep the tests' guided searches short
        recipes=("int8 weights + int8 activations", "4-bit affine per filter"),
    ),
}
