"""Issue 17 item 1: each profile computes in its own precisions, fp16 compute is a per-layer knob,
and the space, the recipes, the pricing and the precision labels follow the device."""

from __future__ import annotations

import pytest
import torch

from edgesearch.common.errors import InputError
from edgesearch.runners.hardware.precision import conv_precisions
from edgesearch.runners.hardware.profiles import load_profile
from edgesearch.search.options import OptionPricer
from edgesearch.search.recipes import FP16, device_recipes, recipe_candidates
from edgesearch.spaces.activations import calibrate
from edgesearch.spaces.apply import apply_candidate, conv_layers, uniform_candidate, weight_bytes
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.packing import bake_fake_quant
from edgesearch.spaces.space import load_space

INT8 = "int8 weights + int8 activations"


def test_profiles_declare_the_precisions_their_runtime_computes_in(tmp_path):
    assert {name: load_profile(name).compute_precisions for name in
            ("jetson-nano", "raspberry-pi-4", "jetson-orin-nano", "x86-host")} == {
        "jetson-nano": ("fp32", "fp16"), "raspberry-pi-4": ("fp32", "int8"),
        "jetson-orin-nano": ("fp32", "fp16", "int8"), "x86-host": ("fp32", "int8")}
    text = open(load_profile("jetson-nano").source).read()
    for bad in ("[fp16]", "[fp32, int4]", "fp32"):
        (tmp_path / "bad.yaml").write_text(text.replace("compute_precisions: [fp32, fp16]", f"compute_precisions: {bad}"))
        with pytest.raises(InputError, match="compute_precisions"):
            load_profile(tmp_path / "bad.yaml")


def test_fp16_compute_rounds_input_weights_and_output_of_that_conv_only(tiny_model):
    fused = apply_candidate(tiny_model, Candidate({}))
    name = "model.1.conv"
    design = apply_candidate(tiny_model, Candidate({name: LayerKnobs(activation_bits=16)}))
    seen = {}
    conv = conv_layers(design)[name]
    conv.register_forward_hook(lambda module, args, output: seen.update(x=args[0], y=output))
    x = torch.rand(1, 3, 64, 64) * 3
    design.eval()(x)
    reference = conv_layers(fused)[name]
    rounded_in = seen["x"].detach()  # what the conv's forward got: its input after the fp16 pre-hook
    assert torch.equal(rounded_in, rounded_in.half().float())
    expected = torch.nn.functional.conv2d(rounded_in.half().float(), reference.weight.half().float(),
                                          reference.bias, reference.stride, reference.padding).half().float()
    assert torch.equal(seen["y"], expected)
    assert not torch.equal(seen["y"], reference(rounded_in))  # it did round (the float conv differs)
    assert not hasattr(conv_layers(design)["model.2.cv1.conv"], "input_quantizer")  # other layers untouched


def test_fp16_compute_stores_float_weights_in_fp16(tiny_model):
    layers = list(load_space("yolov8").resolve(tiny_model))
    fp32 = apply_candidate(tiny_model, uniform_candidate(tiny_model, LayerKnobs(), layers))
    fp16 = apply_candidate(tiny_model, uniform_candidate(tiny_model, LayerKnobs(activation_bits=16), layers))
    four_bit = apply_candidate(tiny_model, uniform_candidate(tiny_model, LayerKnobs(weight_bits=4, activation_bits=16),
                                                             layers))
    assert LayerKnobs(activation_bits=16).stored().weight_bits == 16
    assert LayerKnobs(weight_bits=4, activation_bits=16).stored().weight_bits == 4  # narrower storage stays
    assert 0.45 < weight_bytes(fp16) / weight_bytes(fp32) < 0.55
    assert weight_bytes(four_bit) < weight_bytes(fp16)


def test_the_space_offers_only_the_precisions_a_device_computes_in(tiny_model):
    space = load_space("yolov8")
    offered = {}
    for name in ("jetson-nano", "x86-host", "jetson-orin-nano", "raspberry-pi-4"):
        profile = load_profile(name)
        resolved = space.resolve(tiny_model, profile.compute_precisions, profile.name)
        offered[name] = set(resolved["model.1.conv"].choices["activation_bits"])
        if name == "jetson-nano":
            assert any("jetson-nano does not compute in them" in note for note in resolved["model.1.conv"].notes)
    assert offered == {"jetson-nano": {32, 16}, "x86-host": {32, 8}, "jetson-orin-nano": {32, 16, 8},
                       "raspberry-pi-4": {32, 8}}


def test_recipes_follow_the_device():
    assert FP16 in device_recipes(None, ("fp32", "fp16")) and INT8 not in device_recipes(None, ("fp32", "fp16"))
    assert FP16 not in device_recipes(None, ("fp32", "int8")) and INT8 in device_recipes(None, ("fp32", "int8"))
    # a preset's short list still gets the fp16 recipe on an fp16 device: it is what users deploy there
    assert device_recipes((INT8, "4-bit affine per filter"), ("fp32", "fp16")) == (FP16, "4-bit affine per filter")


def test_a_design_computes_in_what_the_device_has(tiny_model):
    layers = list(load_space("yolov8").resolve(tiny_model))
    model = apply_candidate(tiny_model, recipe_candidates(tiny_model, layers, (INT8,), ("fp32", "int8"))[INT8])
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    bake_fake_quant(model)
    on_pi = conv_precisions(model, load_profile("raspberry-pi-4").compute_precisions)
    on_nano = conv_precisions(model, load_profile("jetson-nano").compute_precisions)
    assert sum(p == "int8" for p in on_pi.values()) == len(layers)
    assert set(on_nano.values()) == {"fp32"}  # int8 it cannot run is fp32 there, never priced as int8
    half = apply_candidate(tiny_model, uniform_candidate(tiny_model, LayerKnobs(activation_bits=16), layers))
    assert sum(p == "fp16" for p in conv_precisions(half, ("fp32", "fp16")).values()) == len(layers)
    assert set(conv_precisions(half, ("fp32", "int8")).values()) == {"fp32"}


def _pricer(precisions):
    layer = "model.1.conv"
    sensitivity = {"base_loss": 1.0, "layers": {layer: {
        "shape": [32, 16, 3, 3], "groups": 1, "bias": True,
        "weight_options": {"32|affine|filter|16|0.0": {"omega": 0.0}, "8|symmetric|filter|16|0.0": {"omega": 0.01}},
        "changes": {"activation_bits": {"8": {"delta_loss": 0.02, "delta_flops": 0}, "16": {"delta_loss": 0.001,
                                                                                               "delta_flops": 0}}}}}}
    cost = {"flops": 1e6, "input_elements": 1000, "latency_ms": 2.0}
    cost.update({f"latency_ms_{p}": {"fp16": 1.2, "int8": 0.7}[p] for p in precisions if p != "fp32"})
    basis = {"layers": {layer: cost}, "fixed_ms": 0.0, "activation_bytes": 4000, "input_elements": 1000,
             "compute_precisions": list(precisions)}
    return OptionPricer(sensitivity, basis), layer


def test_options_are_priced_in_the_precision_the_device_computes_in():
    int8 = LayerKnobs(weight_bits=8, scheme="symmetric", activation_bits=8)
    half = LayerKnobs(activation_bits=16)
    nano, layer = _pricer(("fp32", "fp16"))
    assert nano.price(layer, int8).latency_ms == 2.0  # no int8 on the Nano: no speed-up from it
    assert nano.price(layer, half).latency_ms == 1.2
    assert nano.price(layer, half).weight_bytes < nano.price(layer, LayerKnobs()).weight_bytes  # stored in fp16
    assert nano.price(layer, half).activation_bytes == pytest.approx(2000.0)  # 2 bytes x 1000 inputs x 4000 / (4 x 1000)
    pi, layer = _pricer(("fp32", "int8"))
    assert pi.price(layer, int8).latency_ms == 0.7 and pi.price(layer, half).latency_ms == 2.0


def test_int8_activations_are_priced_at_their_measured_loss_whatever_the_structural_scale():
    """Only structural changes (prune ratio, kernel, rank) are recovered by the fine-tune at the fitted
    structural scale (search/moves.py); an activation change keeps its measured loss."""
    pricer, layer = _pricer(("fp32", "int8"))
    pricer.structural_scale = 0.25
    option = pricer.price(layer, LayerKnobs(activation_bits=8))
    assert option.omega == pytest.approx(0.02 + pricer.change_floor) and option.structural_loss == 0.0


def test_candidates_take_fp16_compute_and_refuse_other_activation_bits():
    assert Candidate.from_json({"layers": {"model.0.conv": {"activation_bits": 16}}}).layers["model.0.conv"] \
        .compute_precision() == "fp16"
    with pytest.raises(InputError, match="activation_bits must be 8, 16 or 32"):
        Candidate.from_json({"layers": {"model.0.conv": {"activation_bits": 4}}})


def test_the_sensitivity_pass_prices_fp16_compute(tiny_model, smoke_inputs):
    from edgesearch.runners.accuracy.sensitivity import analyse

    settings = {"checkpoint": str(smoke_inputs.checkpoint), "data_yaml": str(smoke_inputs.data_yaml), "imgsz": 64,
                "batch": 4, "loss_batches": 1, "hessian_batches": 1, "probes": 1, "threads": 2}
    table = analyse(settings, {"model.1.conv": {"activation_bits": [32, 16, 8]}})
    changes = table["layers"]["model.1.conv"]["changes"]["activation_bits"]
    # fp16 rounding moves the loss far less than uint8 does
    assert abs(changes["16"]["delta_loss"]) < abs(changes["8"]["delta_loss"])
