"""Apply a candidate to a model: prune, fold BatchNorm, reshape convs, attach fake-quant.

The order is the deployment order: structured pruning first (it needs the BatchNorms to slice
alongside), then Conv+BN folding (what any inference build does), then the kernel-size crop and
low-rank factorization of the folded convs, then unstructured pruning and fake quantization of
the resulting weights (and of their input activations where asked) - so the weights that are quantized, fine-tuned and packed are exactly the
ones that run on the device. A factorized layer X becomes X.0 and X.1; both take X's knobs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from typing import cast

import torch
from torch import nn

from edgesearch.common.errors import InputError
from edgesearch.spaces.activations import attach_input_quantizer
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.kernel_size import shrink_kernel, why_not_shrinkable
from edgesearch.spaces.low_rank import factorize, factorized_shapes, is_worth_it
from edgesearch.spaces.packing import module_packing, packed_size
from edgesearch.spaces.prune import (
    attach_gradients,
    prunable_groups,
    prunable_pairs,
    prune_output_channels,
    ranking_for,
    removed_count,
)
from edgesearch.spaces.quantize import attach_fake_quant, kept_weights


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def validate_candidate(model: nn.Module, candidate: Candidate) -> None:
    """Refuse a candidate this model cannot take, naming the first offending layer."""
    convs, prunable = conv_layers(model), prunable_pairs(model)
    for name, knobs in candidate.layers.items():
        if name not in convs:
            raise InputError(f"candidate names layer {name!r}, which is not a Conv2d of this model")
        problems = _structural_knobs_it_cannot_take(name, convs[name], knobs, prunable)
        if problems:
            raise InputError(next(iter(problems.values())))


def _structural_knobs_it_cannot_take(name: str, conv: nn.Conv2d, knobs: LayerKnobs, prunable) -> dict[str, str]:
    """{knob: why} for each of pruning, kernel size and low rank that this layer cannot take."""
    problems = {}
    if knobs.prune_ratio > 0 and name not in prunable:
        problems["prune_ratio"] = f"candidate prunes {name!r}, whose output channels are coupled to other layers"
    if (size := _new_kernel(conv, knobs)) is not None and (reason := why_not_shrinkable(conv, size)):
        problems["kernel_size"] = f"{name}: kernel_size {knobs.kernel_size}: {reason}"
    if knobs.rank_ratio < 1 and not is_worth_it(conv, knobs.rank_ratio):
        problems["rank_ratio"] = f"{name}: rank_ratio {knobs.rank_ratio} would not make the layer smaller (or it is grouped)"
    return problems


def _new_kernel(conv: nn.Conv2d, knobs: LayerKnobs) -> int | None:
    """The kernel size `knobs` shrink the conv to, or None when they keep its own ("keep", or its size)."""
    size = knobs.kernel_size
    return size if isinstance(size, int) and conv.kernel_size != (size, size) else None


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def uniform_candidate(model: nn.Module, knobs: LayerKnobs, layers: list[str]) -> Candidate:
    """The same knobs on every listed layer, except the structural ones a layer cannot take:
    pruning, kernel size and low rank are left off where they do not apply."""
    prunable, convs, defaults = prunable_pairs(model), conv_layers(model), LayerKnobs()
    candidate = {}
    for name in layers:
        problems = _structural_knobs_it_cannot_take(name, convs[name], knobs, prunable)
        candidate[name] = dataclasses.replace(knobs, **{knob: getattr(defaults, knob) for knob in problems})
    return Candidate(candidate)


def option_weight_shapes(shape: tuple[int, ...], knobs: LayerKnobs, *, groups: int = 1,
                         pruned_out_channels: int | None = None) -> list[tuple[int, ...]]:
    """Weight shapes of the conv(s) a fused conv with weight `shape` becomes under `knobs`, as
    apply_candidate leaves them: output channels cut to `pruned_out_channels` (what the knob's
    pruning group leaves), then the kernel crop, then the low-rank pair where it is smaller."""
    out_channels = shape[0] if pruned_out_channels is None else pruned_out_channels
    shape = (out_channels, *shape[1:])
    size = knobs.kernel_size  # an int, or "keep"
    if isinstance(size, int) and tuple(shape[2:]) != (size, size):
        shape = (*shape[:2], size, size)
    if knobs.rank_ratio < 1 and groups == 1:
        pair = factorized_shapes(shape, knobs.rank_ratio)
        if sum(math.prod(s) for s in pair) < math.prod(shape):  # low_rank.is_worth_it
            return pair
    return [shape]


def smallest_candidate(model: nn.Module, choices: dict[str, dict[str, list]]) -> Candidate:
    """The design of least packed weight bytes the choices allow (int8 activations where offered):
    per layer, the knob values whose packing of the layer's own conv(s) is smallest."""
    convs, groups = conv_layers(model), prunable_groups(model)
    layers = {}
    for name, knobs in choices.items():
        conv, best = convs[name], None
        for values in itertools.product(*knobs.values()):
            option = LayerKnobs(**dict(zip(knobs, values, strict=True)))
            out = conv.out_channels
            if option.prune_ratio > 0:  # what the group's pruning leaves this conv (see prune.py)
                group = groups[name]
                out = 2 * (group.channels - removed_count(group.channels, option.prune_ratio)) if group.halves \
                    else out - removed_count(out, option.prune_ratio)
            shapes = option_weight_shapes(tuple(conv.weight.shape), option, groups=conv.groups, pruned_out_channels=out)
            size = sum(packed_size(s, option.stored(), kept=kept_weights(math.prod(s), option.sparsity))
                       for s in shapes)
            key = (size, option.activation_bits)  # at equal size, the narrower activations (smaller plan)
            if best is None or key < best[0]:
                best = (key, option)
        assert best is not None  # every knob lists at least one value
        layers[name] = best[1]
    return Candidate(layers)


def apply_candidate(model: nn.Module, candidate: Candidate,
                    gradients: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A transformed copy of `model` (the input model is left untouched).

    Which channels pruning removes: with `gradients` (a loss's gradient of each of `model`'s
    parameters, by name: runners/accuracy/channel_ranking.py) the first-order Taylor importance,
    which recovers best (bench/results/pruning_importance.md); without, the group's L1 magnitude,
    for uses where only the pruned shapes matter (memory, cost, timing)."""
    validate_candidate(model, candidate)
    model = copy.deepcopy(model)
    ratios = prune_ratios(candidate)
    if ratios and gradients is not None:
        attach_gradients(model, gradients)
    prune_output_channels(model, ratios, importance=ranking_for(gradients if ratios else None))
    model.zero_grad(set_to_none=True)
    crop_kernels(model, candidate)
    return finish_candidate(model, candidate)


def prune_ratios(candidate: Candidate) -> dict[str, float]:
    """{knob conv: its prune ratio} of the candidate's pruned groups."""
    return {name: knobs.prune_ratio for name, knobs in candidate.layers.items() if knobs.prune_ratio > 0}


def crop_kernels(model: nn.Module, candidate: Candidate) -> None:
    """Crop each layer's kernel to the candidate's size, in place, fused or not (a crop and a
    BatchNorm's per-channel scale commute: cropping before or after fusing gives the same weights)."""
    convs = conv_layers(model)
    for name, knobs in candidate.layers.items():
        if (size := _new_kernel(convs[name], knobs)) is not None:
            replace_module(model, name, shrink_kernel(convs[name], size))


def finish_candidate(model: nn.Module, candidate: Candidate) -> nn.Module:
    """The rest of `candidate`, in place, on a model that has its channels and kernels already
    (apply_candidate cuts them at once; the recovery stage trains between cuts first:
    runners/accuracy/structure_recovery.py): BatchNorms fused, ranks lowered, quantizers attached.
    Returns `model`."""
    if hasattr(model, "fuse"):  # ultralytics models fold Conv+BN in place
        getattr(model, "fuse")(verbose=False)
    convs = conv_layers(model)
    for name, knobs in candidate.layers.items():
        conv = convs[name]
        parts = [conv]
        if knobs.rank_ratio < 1 and is_worth_it(conv, knobs.rank_ratio):  # re-checked: pruning shrank it
            layer = factorize(conv, knobs.rank_ratio)
            parts = [cast(nn.Conv2d, half) for half in layer]  # its two convs
            replace_module(model, name, layer)
        for conv in parts:
            attach_fake_quant(conv, knobs.stored())
            if knobs.activation_bits in (8, 16):
                attach_input_quantizer(conv, knobs.activation_bits)  # int8: calibrated by the runner
    return model


def packed_layer_bytes(model: nn.Module, names: list[str]) -> dict[str, int]:
    """{layer: bytes of its packing} for the named layers of a transformed model, fake-quantized or
    baked (a factorized layer: both halves)."""
    convs = conv_layers(model)
    return {name: sum(len(module_packing(convs[part])) for part in (name, f"{name}.0", f"{name}.1") if part in convs)
            for name in names}


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter of a transformed model: each conv's packing (packing.py) at its
    knobs, fake-quantized or baked; convs without knobs are packed in fp32."""
    total, counted = 0, set[int]()
    for conv in conv_layers(model).values():
        total += len(module_packing(conv))
        counted.update(id(p) for p in conv.parameters())  # includes a parametrized weight's original
    # anything that is not a conv (e.g. unfused BatchNorm) stays fp32
    total += sum(p.numel() * 4 for p in model.parameters() if id(p) not in counted)
    return total
