"""Fixed recipes: what a user would otherwise apply, scored first in every new search as reference points.

Each is one set of knobs on every searchable layer, whatever the space offers the layer (a recipe
is what it is); structural knobs are left off where a layer cannot take them (apply.uniform_candidate).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from edgesearch.spaces.apply import uniform_candidate
from edgesearch.spaces.candidate import Candidate, LayerKnobs

CONTROL = "control: float, the same fine-tune"
FP16 = "fp16 weights + fp16 activations"
RECIPES = {
    # what TensorRT / ONNX Runtime / NNCF post-training INT8 compute: per-channel symmetric int8
    # weights, per-tensor uint8 activations
    "int8 weights + int8 activations": LayerKnobs(weight_bits=8, scheme="symmetric", granularity="filter",
                                                  activation_bits=8),
    "4-bit affine per filter": LayerKnobs(weight_bits=4, scheme="affine", granularity="filter"),
    "4-bit PWLQ per group of 16": LayerKnobs(weight_bits=4, scheme="pwlq", granularity="group", group_size=16),
    # the reduced-memory pedestrian detector's pipeline (Tome et al. 2016): weight sharing + pruning
    "k-means 4-bit + 50% sparsity": LayerKnobs(weight_bits=4, scheme="kmeans", granularity="tensor", sparsity=0.5),
    # uniform channel pruning as Torch-Pruning's examples apply it, at two ratios: two designs whose one-shot
    # structural losses differ, so the guided search fits what share of a cut survives the fine-tune
    # (moves.MIN_STRUCTURAL_DESIGNS) from its first trials, also where an accuracy floor keeps its moves
    # away from costly cuts
    "25% structured pruning": LayerKnobs(prune_ratio=0.25),
    "50% structured pruning": LayerKnobs(prune_ratio=0.5),
    # what a Jetson user deploys without edgesearch: TensorRT's FP16 engine (weights, activations and
    # arithmetic in half precision); offered where the profile computes in fp16
    FP16: LayerKnobs(activation_bits=16),
    # not a recipe but a control: the base given the same fine-tune, in float - how much of any
    # design's mAP the fine-tune alone buys
    CONTROL: LayerKnobs(),
}


def device_recipes(names: tuple[str, ...] | None, compute_precisions: tuple[str, ...]) -> tuple[str, ...]:
    """The recipes (`names`, default all) a device can run as they mean: one that computes in a
    precision the device lacks (int8 on a Jetson Nano) is left out, and where the device computes
    in fp16 the fp16 recipe is always in (it is the default deployment there)."""
    names = tuple(names or RECIPES)
    if "fp16" in compute_precisions and FP16 not in names:
        names = (FP16, *names)
    # first the control (the accuracy floor rests on it), then the structural recipes: the budgeted seeds
    # wait for their scores (guided.GuidedSampler), which fit what a cut costs after the fine-tune
    names = tuple(sorted(names, key=lambda name: (name != CONTROL, not RECIPES[name].changes_structure())))
    return tuple(name for name in names if RECIPES[name].compute_precision() in compute_precisions)


def recipe_candidates(model: nn.Module, layers: list[str], names: tuple[str, ...] | None = None,
                      compute_precisions: tuple[str, ...] = ("fp32", "fp16", "int8")) -> dict[str, Candidate]:
    """The recipes (`names`, default all) a device computing in `compute_precisions` runs, as
    candidates for `layers` of `model`."""
    return {name: uniform_candidate(model, RECIPES[name], layers)
            for name in device_recipes(names, compute_precisions)}


def recipe_options(candidates: dict[str, Candidate], layers: list[str]) -> dict[str, dict[str, set]]:
    """{layer: {knob: values}} the recipe candidates use, for the sensitivity pass to price."""
    values: dict[str, dict[str, set]] = {layer: {} for layer in layers}
    for candidate in candidates.values():
        for layer, knobs in candidate.layers.items():
            for knob, value in dataclasses.asdict(knobs).items():
                values[layer].setdefault(knob, set()).add(value)
    return values
