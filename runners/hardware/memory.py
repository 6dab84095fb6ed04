"""Memory footprint of a design without building or timing it: packed weights + planned activations.

The same two figures as hardware_scores (scores.py), for checks that must not wait for a build,
such as whether the smallest design of a space can fit a memory budget at all.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgesearch.runners.hardware.scores import INT8_SHARE_SOURCE, PLANNED_GENERIC_SOURCE, export_for_tvm, float_copy, \
    plan_memory_only
from edgesearch.spaces.activations import activation_byte_share
from edgesearch.spaces.apply import weight_bytes
from edgesearch.spaces.packing import bake_fake_quant


def design_memory(model: nn.Module, imgsz: int) -> dict:
    """{weight_bytes, activation_bytes, activation_bytes_source, memory_bytes} of a transformed model
    (baked here: its weights become the packed ones)."""
    bake_fake_quant(model)
    share = activation_byte_share(model, torch.zeros(1, 3, imgsz, imgsz))
    activations = math.ceil(plan_memory_only(export_for_tvm(float_copy(model), imgsz)) * share)
    packed = weight_bytes(model)
    source = INT8_SHARE_SOURCE.format(share=share) if share < 1 else PLANNED_GENERIC_SOURCE
    return {"weight_bytes": packed, "activation_bytes": activations, "activation_bytes_source": source,
            "memory_bytes": packed + activations}
