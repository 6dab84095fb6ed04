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
RECIPES = {
    # what TensorRT / ONNX Runtime / NNCF post-training INT8 compute: per-channel symmetric int8
    # weights, per-tensor uint8 activations
    "int8 weights + int8 activations": LayerKnobs(weight_bits=8, scheme="symmetric", granularity="filter",
                                                  activation_bits=8),
    "4-bit affine per filter": LayerKnobs(weight_bits=4, scheme="affine", granularity="filter"),
    "4-bit PWLQ per group of 16": LayerKnobs(weight_bits=4, scheme="pwlq", granularity="group", group_size=16),
    # the reduced-memory pedestrian detector's pipeline (Tome et al. 2016): weight sharing + pruning
    "k-means 4-bit + 50% sparsity": LayerKnobs(weight_bits=4, scheme="kmeans", granularity="tensor", sparsity=0.5),
    "50% structured pruning": LayerKnobs(prune_ratio=0.5),
    # not a recipe but a control: the base given the same fine-tune, in float - how much of any
    # design's mAP the fine-tune alone buys
    CONTROL: LayerKnobs(),
}


def recipe_candidates(model: nn.Module, layers: list[str], names: tuple[str, ...] | None = None
                      ) -> dict[str, Candidate]:
    """The recipes (`names`, default all) as candidates for `layers` of `model`."""
    return {name: uniform_candidate(model, RECIPES[name], layers) for name in (names or tuple(RECIPES))}


def recipe_options(candidates: dict[str, Candidate], layers: list[str]) -> dict[str, dict[str, set]]:
    """{layer: {knob: values}} the recipe candidates use, for the sensitivity pass to price."""
    values: dict[str, dict[str, set]] = {layer: {} for layer in layers}
    for candidate in candidates.values():
        for layer, knobs in candidate.layers.items():
            for knob, value in dataclasses.asdict(knobs).items():
                values[layer].setdefault(knob, set()).add(value)
    return values
