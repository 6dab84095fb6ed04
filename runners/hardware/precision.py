"""What each conv of a transformed (or baked) model computes in on a device: fp32, fp16 or int8.

The knobs say what a layer asks for (spaces.candidate.LayerKnobs.compute_precision); the model's
modules say what it got: an int8 conv is one that runs_integer (integer_model.py: calibrated uint8
input, weights of 8 bits or fewer, an ordinary conv), an fp16 conv carries the fp16 rounding of
spaces.activations.HalfPrecision. A device computes only in its profile's `compute_precisions`;
anything else falls back to fp32 there.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from edgesearch.runners.hardware.integer_model import runs_integer
from edgesearch.spaces.activations import half_precision


def conv_precisions(model: nn.Module, available: tuple[str, ...]) -> dict[str, str]:
    """{conv name: "fp32" | "fp16" | "int8"} on a device computing in `available`."""
    precisions = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if "int8" in available and runs_integer(module):
            precisions[name] = "int8"
        elif "fp16" in available and half_precision(module):
            precisions[name] = "fp16"
        else:
            precisions[name] = "fp32"
    return precisions


def describe(precisions: dict[str, str]) -> str:
    """'fp32', 'fp16', or e.g. '12 of 63 convs fp16, the rest fp32' for the labels."""
    counts = Counter(precisions.values())
    if len(counts) <= 1:
        return next(iter(counts), "fp32")
    parts = [f"{counts[p]} {p}" for p in ("int8", "fp16") if counts[p]]
    return f"{', '.join(parts)} of {len(precisions)} convs, the rest fp32"
