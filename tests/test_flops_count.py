"""FLOPs counted on pruned shapes (search/flops_count.py) and the allocation that adds up to them:
adjacent cuts remove the same channels, so a design's FLOPs are not the sum of its cuts alone."""

from __future__ import annotations

import itertools
import random

import pytest

from edgesearch.runners.conv_shapes import conv_shapes
from edgesearch.runners.costs import layer_costs
from edgesearch.search.allocate import allocate, design_price
from edgesearch.search.flops_count import FlopsCounter, Interaction, structure_key
from edgesearch.search.options import Option
from edgesearch.spaces.apply import apply_candidate
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.prune import prunable_pairs

IMGSZ = 64


@pytest.fixture(scope="module")
def counted(tiny_model):
    """(counter, prunable knob layers) of the tiny YOLOv8, every prunable layer at 0.25 and 0.5."""
    layers = list(prunable_pairs(tiny_model))
    shapes = conv_shapes(tiny_model, [(layer, ratio) for layer in layers for ratio in (0.25, 0.5)], IMGSZ)
    return FlopsCounter(shapes), layers


def _built_flops(model, layers: dict[str, LayerKnobs]) -> int:
    return sum(cost.flops for cost in layer_costs(apply_candidate(model, Candidate(layers)), (1, 3, IMGSZ, IMGSZ)))


def test_a_design_is_counted_as_the_built_model_counts_it(tiny_model, counted):
    """Adjacent cuts at different ratios, a kernel crop and a low rank on cut layers: the count is
    the built design's, and less than the sum of its changes alone claims."""
    counter, prunable = counted
    assert counter.base == _built_flops(tiny_model, {})
    layers = {name: LayerKnobs(prune_ratio=0.5 if i % 2 else 0.25) for i, name in enumerate(prunable)}
    first = prunable[1]
    layers[first] = LayerKnobs(prune_ratio=0.5, kernel_size=1)
    layers[prunable[-1]] = LayerKnobs(prune_ratio=0.25, rank_ratio=0.25)
    counted_flops = counter.count(layers)
    assert counted_flops == _built_flops(tiny_model, layers)
    alone = counter.base + sum(counter.change(name, structure_key(knobs)) for name, knobs in layers.items())
    assert alone < counted_flops  # the sum of single cuts removes the overlap twice


def test_options_and_interactions_add_up_to_the_count_for_two_adjacent_cuts(tiny_model, counted):
    counter, prunable = counted
    keys = {name: [structure_key(LayerKnobs(prune_ratio=0.5))] for name in prunable}
    interactions = counter.interactions(keys)
    assert interactions and all(i.flops > 0 for i in interactions)  # overlapping cuts remove the same channels
    pair = interactions[0]
    (first, a), (second, b) = pair.first, pair.second
    design = {first: LayerKnobs(prune_ratio=0.5), second: LayerKnobs(prune_ratio=0.5)}
    summed = counter.base + counter.change(first, a) + counter.change(second, b) + pair.flops
    assert summed == pytest.approx(counter.count(design)) == _built_flops(tiny_model, design)


def _option(ratio: float, flops: float, omega: float) -> Option:
    return Option(LayerKnobs(prune_ratio=ratio), omega=omega, weight_bytes=0, activation_bytes=0.0,
                  latency_ms=0.0, flops=flops)


def test_the_allocation_with_interactions_is_the_exhaustive_optimum():
    """Random tables and pairwise terms of both signs: the MILP's fewest FLOPs under an omega budget
    is what enumerating every design finds, and design_price counts the pairs as the MILP does."""
    rng = random.Random(0)
    ratios = (0.0, 0.25, 0.5, 0.75)
    tables = {f"layer{i}": [_option(r, 100 * (1 - r) + rng.uniform(-5, 5), r * rng.uniform(0.5, 2)) for r in ratios]
              for i in range(5)}
    interactions = [Interaction((f"layer{i}", structure_key(LayerKnobs(prune_ratio=a))),
                                (f"layer{i + 1}", structure_key(LayerKnobs(prune_ratio=b))),
                                flops=rng.uniform(-10, 40), latency_ms=0.0)
                    for i in range(4) for a, b in itertools.product(ratios[1:], repeat=2)]
    budget = 2.5

    def flops(design):
        return design_price(design, "flops", interactions=interactions)

    designs = [dict(zip(tables, choice, strict=True)) for choice in itertools.product(*tables.values())]
    feasible = [d for d in designs if design_price(d, "omega") <= budget]
    best = min(feasible, key=flops)
    chosen = allocate(tables, {"omega": budget}, minimise="flops", interactions=interactions)
    assert flops(chosen) == pytest.approx(flops(best), rel=1e-6)
    # without the pairs the MILP is misled: it picks by the single-option sums
    misled = allocate(tables, {"omega": budget}, minimise="flops")
    assert flops(misled) > flops(best)


def test_a_yolo11n_design_is_counted_as_built():
    """C3k2 / C2PSA blocks and the depthwise convs of YOLO11's head (pruned with their group)."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml").model.eval()
    prunable = list(prunable_pairs(model))
    counter = FlopsCounter(conv_shapes(model, [(layer, r) for layer in prunable for r in (0.25, 0.5)], IMGSZ))
    design = {layer: LayerKnobs(prune_ratio=0.5 if i % 2 else 0.25) for i, layer in enumerate(prunable)}
    assert counter.count(design) == _built_flops(model, design) < counter.base


def test_the_default_space_can_remove_five_times_the_flops_of_yolov8n():
    """Issue 19's FLOPs target (5x fewer within 5 %) needs a space that reaches 5x at all: its
    deepest structural design, on x86-host's channel multiple, counted on YOLOv8n at 128 px. With
    the prune ratios capped at 0.5 outside the bottlenecks it reached 4.96x."""
    import torch
    from ultralytics import YOLO

    from edgesearch.spaces.space import load_space

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml").model.eval()
    choices = {layer: c.choices for layer, c in load_space("yolov8").resolve(model, channel_multiple=16).items()}
    cuts = [(layer, ratio) for layer, c in choices.items() for ratio in c["prune_ratio"] if ratio]
    counter = FlopsCounter(conv_shapes(model, cuts, 128))
    deepest = {layer: LayerKnobs(prune_ratio=max(c["prune_ratio"]), kernel_size=c["kernel_size"][-1],
                                 rank_ratio=min(c["rank_ratio"])) for layer, c in choices.items()}
    assert counter.base / counter.count(deepest) >= 5
