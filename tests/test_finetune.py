import torch

from edgesearch.runners.accuracy import finetune, validate
from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.spaces.apply import apply_candidate, uniform_candidate
from edgesearch.spaces.candidate import LayerKnobs, parse_uniform
from edgesearch.spaces.packing import bake_fake_quant
from edgesearch.spaces.quantize import fake_quantize


def test_short_finetune_trains_quantized_layers_of_a_released_checkpoint(smoke_inputs):
    base = load_detection_model(smoke_inputs.checkpoint)  # ultralytics strips: every parameter frozen
    candidate = uniform_candidate(base, parse_uniform("bits=4,granularity=filter"), list(smoke_inputs.resolved))
    model = apply_candidate(base, candidate)
    conv = model.get_submodule("model.2.m.0.cv1.conv")
    before = conv.parametrizations.weight.original.detach().clone()
    losses = finetune(model, smoke_inputs.data_yaml, iterations=3, imgsz=64, batch=8)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(conv.parametrizations.weight.original, before)  # the float shadow weights moved
    assert torch.equal(model.get_submodule("model.22.dfl.conv").weight, base.get_submodule("model.22.dfl.conv").weight)

    bake_fake_quant(model)  # baked weights are exactly on the 4-bit grid
    weight = model.get_submodule("model.2.m.0.cv1.conv").weight
    assert torch.equal(weight, fake_quantize(weight, LayerKnobs(weight_bits=4, scheme="affine", granularity="filter")))
    scores = validate(model, smoke_inputs.data_yaml, imgsz=64)
    assert 0.0 <= scores["map50_95"] <= scores["map50"] <= 1.0
