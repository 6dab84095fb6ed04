"""Memory footprint of a design without timing it: packed weights + planned activations.

The same two figures as hardware_scores (scores.py), from the same build (the integer form where
layers take int8 activations), for checks that must not wait for a build and timing, such as
whether the smallest design of a space can fit a memory budget at all.
"""

from __future__ import annotations

import torch
from torch import nn

from edgesearch.runners.hardware.build import export_for_tvm, plan_memory_only
from edgesearch.runners.hardware.integer_model import integer_copy
from edgesearch.runners.hardware.scores import PLANNED_GENERIC_SOURCE, precision
from edgesearch.spaces.activations import calibrate
from edgesearch.spaces.apply import weight_bytes
from edgesearch.spaces.packing import bake_fake_quant


def design_memory(model: nn.Module, imgsz: int, target: dict) -> dict:
    """{weight_bytes, activation_bytes, activation_bytes_source, memory_bytes} of a transformed model
    (baked here: its weights become the packed ones), planned for the profile's `target`."""
    calibrate(model, [torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))])  # plans only
    bake_fake_quant(model)
    build_model, summary = integer_copy(model)
    activations = plan_memory_only(export_for_tvm(build_model, imgsz, target))
    packed = weight_bytes(model)
    return {"weight_bytes": packed, "activation_bytes": activations,
            "activation_bytes_source": PLANNED_GENERIC_SOURCE.format(precision=precision(summary, target)),
            "memory_bytes": packed + activations}
