"""Apply a candidate to a model: prune, fold BatchNorm, attach fake-quant.

The order is the deployment order: structured pruning first (it needs the BatchNorms to slice
alongside), then Conv+BN folding (what any inference build does), then fake quantization of the
folded weights - so the weights that are quantized, fine-tuned and packed are exactly the ones
that run on the device.
"""

from __future__ import annotations

import copy
import dataclasses

from torch import nn

from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.errors import InputError
from edgesearch.spaces.prune import prunable_pairs, prune_output_channels
from edgesearch.spaces.quantize import (
    IMPLEMENTED_GRANULARITIES,
    IMPLEMENTED_SCHEMES,
    attach_fake_quant,
    packed_weight_bytes,
)


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def validate_candidate(model: nn.Module, candidate: Candidate) -> None:
    """Refuse a candidate this model cannot take, naming the first offending layer."""
    convs, prunable = conv_layers(model), prunable_pairs(model)
    for name, knobs in candidate.layers.items():
        if name not in convs:
            raise InputError(f"candidate names layer {name!r}, which is not a Conv2d of this model")
        if knobs.prune_ratio > 0 and name not in prunable:
            raise InputError(f"candidate prunes {name!r}, whose output channels are coupled to other layers")
        if knobs.quantized and knobs.scheme not in IMPLEMENTED_SCHEMES:
            raise InputError(f"{name}: scheme {knobs.scheme!r} is not implemented yet (have {IMPLEMENTED_SCHEMES})")
        if knobs.quantized and knobs.granularity not in IMPLEMENTED_GRANULARITIES:
            raise InputError(f"{name}: granularity {knobs.granularity!r} is not implemented yet")
        if knobs.kernel_size != "keep":
            raise InputError(f"{name}: kernel_size {knobs.kernel_size!r} is not implemented yet (only 'keep')")


def uniform_candidate(model: nn.Module, knobs: LayerKnobs, layers: list[str]) -> Candidate:
    """The same knobs on every listed layer; pruning only where the layer allows it."""
    prunable = prunable_pairs(model)
    unpruned = dataclasses.replace(knobs, prune_ratio=0.0)
    return Candidate({name: knobs if name in prunable else unpruned for name in layers})


def apply_candidate(model: nn.Module, candidate: Candidate) -> nn.Module:
    """A transformed copy of `model` (the input model is left untouched)."""
    validate_candidate(model, candidate)
    model = copy.deepcopy(model)
    prune_output_channels(model, {n: k.prune_ratio for n, k in candidate.layers.items() if k.prune_ratio > 0})
    if hasattr(model, "fuse"):  # ultralytics models fold Conv+BN in place
        model.fuse(verbose=False)
    convs = conv_layers(model)
    for name, knobs in candidate.layers.items():
        attach_fake_quant(convs[name], knobs)
    return model


def weight_bytes(model: nn.Module, candidate: Candidate) -> int:
    """Packed bytes of every parameter of a transformed model at the candidate's bit-widths."""
    total, counted = 0, set()
    for name, conv in conv_layers(model).items():
        knobs = candidate.layers.get(name, LayerKnobs())
        total += packed_weight_bytes(tuple(conv.weight.shape), knobs, conv.bias is not None)
        counted.update(id(p) for p in conv.parameters())  # includes a parametrized weight's original
    # anything that is not a conv (e.g. unfused BatchNorm) stays fp32
    total += sum(p.numel() * 4 for p in model.parameters() if id(p) not in counted)
    return total
