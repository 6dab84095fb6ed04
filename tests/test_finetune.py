import torch

from edgesearch.runners.accuracy.finetune import finetune, validate
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


def test_distillation_from_the_base_trains_the_student_and_leaves_the_teacher_alone(smoke_inputs):
    from edgesearch.runners.accuracy.finetune import distillation_loss

    base = load_detection_model(smoke_inputs.checkpoint)
    teacher_state = {k: v.clone() for k, v in base.state_dict().items()}
    candidate = uniform_candidate(base, parse_uniform("bits=3,scheme=kmeans"), list(smoke_inputs.resolved))
    distilled, plain = apply_candidate(base, candidate), apply_candidate(base, candidate)
    finetune(distilled, smoke_inputs.data_yaml, iterations=1, imgsz=64, batch=8, teacher=base)
    finetune(plain, smoke_inputs.data_yaml, iterations=1, imgsz=64, batch=8)
    layer = "model.2.m.0.cv1.conv"  # same seed, same batch: only the distillation gradient differs
    assert not torch.equal(distilled.get_submodule(layer).parametrizations.weight.original,
                           plain.get_submodule(layer).parametrizations.weight.original)
    assert all(torch.equal(v, teacher_state[k]) for k, v in base.state_dict().items())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _, outputs = base.eval()(x)
    assert distillation_loss(outputs, outputs) < 0.8  # KL 0; BCE of p against itself is its entropy (<= ln 2)
    assert distillation_loss({k: v * 0 for k, v in outputs.items() if k != "feats"}, outputs) > 0


def test_int8_activations_are_calibrated_on_train_images(smoke_inputs):
    from edgesearch.runners.accuracy.finetune import calibration_batches
    from edgesearch.spaces.activations import calibrate, input_quantizers

    base = load_detection_model(smoke_inputs.checkpoint)
    candidate = uniform_candidate(base, parse_uniform("bits=8,act=8"), list(smoke_inputs.resolved))
    model = apply_candidate(base, candidate)
    quantizers = input_quantizers(model)
    assert len(quantizers) == len(smoke_inputs.resolved)
    batches = calibration_batches(smoke_inputs.data_yaml, imgsz=64, batch=4, count=2)
    assert calibrate(model, batches) == len(quantizers)
    stem = quantizers[0]
    assert not stem.calibrating and 0 < float(stem.scale) < 1 / 64  # stem input: images in [0, 1]
    x = torch.rand(1, 3, 64, 64) * 0.99  # inside the calibrated range (images reach 255/256)
    with torch.no_grad():
        stem_input = model.model[0].conv.input_quantizer(x)
    assert len(torch.unique(stem_input)) <= 256 and (stem_input - x).abs().max() <= float(stem.scale) / 2 + 1e-6
    scores = validate(model, smoke_inputs.data_yaml, imgsz=64)
    assert 0.0 <= scores["map50_95"] <= 1.0


def test_a_rung_checks_the_model_midway_and_a_design_that_goes_on_trains_as_without_it(smoke_inputs):
    """Successive halving inside the fine-tune: the check sees the model after the rung's steps; a
    design that goes on ends with the losses and weights of an unchecked fine-tune (the validation
    in between changes nothing), one that does not stops there."""
    base = load_detection_model(smoke_inputs.checkpoint)
    candidate = uniform_candidate(base, parse_uniform("bits=4,granularity=filter"), list(smoke_inputs.resolved))
    plain, checked, stopped = (apply_candidate(base, candidate) for _ in range(3))
    seen = []

    def go_on(answer):
        def check(model):
            seen.append((model.training, validate(model, smoke_inputs.data_yaml, imgsz=64)["map50_95"]))
            return answer
        return check

    reference = finetune(plain, smoke_inputs.data_yaml, iterations=4, imgsz=64, batch=8)
    went_on = finetune(checked, smoke_inputs.data_yaml, iterations=4, imgsz=64, batch=8, rung=(2, go_on(True)))
    halted = finetune(stopped, smoke_inputs.data_yaml, iterations=4, imgsz=64, batch=8, rung=(2, go_on(False)))
    assert [training for training, _ in seen] == [False, False]  # checked in eval mode
    assert list(went_on) == list(reference) and went_on.stopped_at is None
    assert all(torch.equal(a, b) for a, b in zip(checked.state_dict().values(), plain.state_dict().values(), strict=True))
    assert list(halted) == list(reference)[:2] and halted.stopped_at == 2
