"""Fuzz: random candidates from the default space, applied to ultralytics YOLOs of three families
(v8, v5u, 11 with C3k2 / C2PSA), must give a model that runs with the base's output shapes and
whose packed size is what the packings say."""

import random

import pytest
import torch
from ultralytics import YOLO

from edgesearch.search.presets import TINY_MODEL_YAML
from edgesearch.search.report_inputs import layer_bytes
from edgesearch.spaces.apply import apply_candidate, conv_layers, packed_layer_bytes, weight_bytes
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.packing import bake_fake_quant, packed_size
from edgesearch.spaces.quantize import kept_weights
from edgesearch.spaces.space import load_space

FAMILIES = {"yolov8-tiny": (TINY_MODEL_YAML, 12), "yolov5nu": ("yolov5n.yaml", 5), "yolo11n": ("yolo11n.yaml", 5)}


def _random_candidate(resolved, rng: random.Random) -> Candidate:
    return Candidate({name: LayerKnobs(**{knob: rng.choice(values) for knob, values in layer.choices.items()})
                      for name, layer in resolved.items()})


@pytest.mark.parametrize("family", FAMILIES)
def test_random_candidates_run_with_the_base_output_shapes(family):
    model_yaml, count = FAMILIES[family]
    base = YOLO(model_yaml).model.eval()
    resolved = load_space("yolov8").resolve(base)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = [t.shape for t in _head_outputs(base, x)]
    rng = random.Random(f"{family}-0")
    for index in range(count):
        candidate = _random_candidate(resolved, rng)
        model = apply_candidate(base, candidate).eval()
        packed_before_bake = weight_bytes(model)
        with torch.no_grad():
            before = _head_outputs(model, x)
            weights_before = {name: conv.weight.clone() for name, conv in conv_layers(model).items()}
        bake_fake_quant(model)  # packs every layer and loads the weights decoded from the packing
        with torch.no_grad():
            outputs = _head_outputs(model, x)
        assert [t.shape for t in outputs] == expected
        assert all(torch.isfinite(t).all() for t in outputs)
        # what fake-quant computed is exactly what the packing holds
        assert all(torch.equal(conv.weight, weights_before[name]) for name, conv in conv_layers(model).items())
        assert all(torch.equal(a, b) for a, b in zip(outputs, before, strict=True))
        assert weight_bytes(model) == packed_before_bake == _counted_bytes(model, candidate)
        if index < 3:  # the report's bytes per layer: what the trial packed, as the layout applied to the base gives
            names = list(candidate.layers)
            assert packed_layer_bytes(model, names) == layer_bytes(base, candidate.to_json(), names)


def _counted_bytes(model, candidate: Candidate) -> int:
    """The packed size counted independently of the packing: each conv's final shape, its knobs and
    its count of kept weights through the documented layout (packing.packed_size), every other
    parameter (unfused BatchNorm) at 4 bytes."""
    total, counted = 0, set()
    for name, conv in conv_layers(model).items():
        owner = name.rsplit(".", 1)[0]  # the halves X.0 and X.1 of a factorized conv X take X's knobs
        # as stored: an fp16-computing layer keeps float weights in fp16 (LayerKnobs.stored)
        knobs = (candidate.layers.get(name) or candidate.layers.get(owner) or LayerKnobs()).stored()
        total += packed_size(tuple(conv.weight.shape), knobs, kept=kept_weights(conv.weight.numel(), knobs.sparsity),
                             has_bias=conv.bias is not None)
        counted.update(id(p) for p in conv.parameters())
    return total + sum(p.numel() * 4 for p in model.parameters() if id(p) not in counted)


def _head_outputs(model, x):
    """Decoded detections and the head's raw box and class outputs (the features feeding the
    head may shrink with pruning; these must not)."""
    detections, raw = model(x)
    return [detections, raw["boxes"], raw["scores"]]
