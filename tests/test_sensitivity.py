"""The sensitivity pass on the trained tiny base: real loss, real Hessian-vector products."""

import pytest
import torch

from edgesearch.runners.accuracy.sensitivity import analyse, weight_option_key
from edgesearch.spaces.space import load_space

FOUR_BIT_TENSOR = {"weight_bits": [4], "scheme": ["affine"], "granularity": ["tensor"]}


def test_a_deliberately_damaged_layer_ranks_first(tmp_path, smoke_inputs):
    """One weight of one conv made an outlier (50x the layer's largest): at 4 bits per tensor every
    other weight of that layer rounds to zero, so its predicted cost must lead."""
    checkpoint = torch.load(smoke_inputs.checkpoint, weights_only=False)  # our own file: trusted
    model = checkpoint.get("ema") or checkpoint["model"]
    layers = [name for name in load_space("yolov8").resolve(model) if not name.startswith("model.22")][:8]
    damaged = layers[3]
    with torch.no_grad():
        weight = model.get_submodule(damaged).weight
        weight.view(-1)[0] = weight.abs().max() * 50
    path = tmp_path / "damaged.pt"
    torch.save(checkpoint, path)

    settings = {"checkpoint": str(path), "data_yaml": str(smoke_inputs.data_yaml), "imgsz": 64, "batch": 8,
                "loss_batches": 2, "hessian_batches": 1, "probes": 8, "threads": 2}
    result = analyse(settings, {name: FOUR_BIT_TENSOR for name in layers})
    key = weight_option_key({"weight_bits": 4, "scheme": "affine", "granularity": "tensor"})
    omega = {name: result["layers"][name]["weight_options"][key]["omega"] for name in layers}
    assert max(omega, key=omega.get) == damaged, omega
    assert all(result["layers"][name]["trace"] != 0 for name in layers)  # probes reached every layer


def test_structural_changes_are_measured_and_priced(smoke_inputs):
    layer = "model.2.m.0.cv1.conv"
    options = {layer: {"prune_ratio": [0.0, 0.25], "kernel_size": ["keep", 1], "activation_bits": [32, 8],
                       "weight_bits": [8]}}
    settings = {"checkpoint": str(smoke_inputs.checkpoint), "data_yaml": str(smoke_inputs.data_yaml), "imgsz": 64,
                "batch": 8, "loss_batches": 2, "hessian_batches": 1, "probes": 2, "threads": 2, "device": "cpu"}
    result = analyse(settings, options)
    # where the losses were measured, as the fused model's forward passes saw it (runners/device.py)
    assert result["device"] == "cpu" and result["stage_devices"] == {"sensitivity": "cpu"}
    changes = result["layers"][layer]["changes"]
    assert set(changes) == {"prune_ratio", "kernel_size", "activation_bits"}
    assert changes["prune_ratio"]["0.25"]["delta_flops"] < 0 and changes["kernel_size"]["1"]["delta_flops"] < 0
    assert changes["prune_ratio"]["0.25"]["out_channels"] < smoke_inputs.base_model.get_submodule(layer).out_channels
    assert changes["activation_bits"]["8"]["delta_flops"] == 0
    assert all(change["delta_loss"] != 0 for values in changes.values() for change in values.values())


def test_the_fast_pass_computes_what_the_reference_pass_does(smoke_inputs):
    """The fast pass (losses re-run from the changed block, one calibration for every int8 input,
    pruning groups priced by zeroing their channels of the fused base) against the reference pass
    (a full forward per figure, a pruned copy per group): the same figures. Layers: a split cv1
    whose group reaches residual adds, a conv whose channels feed concats far downstream (SPPF's
    cv2 into the neck), a bottleneck conv with every structural change, a head conv."""
    from edgesearch.runners.accuracy.sensitivity import REFERENCE_SETTINGS

    options = {"model.6.cv1.conv": {"prune_ratio": [0.0, 0.25], "weight_bits": [4], "activation_bits": [32, 8]},
               "model.9.cv2.conv": {"prune_ratio": [0.5], "weight_bits": [4]},
               "model.2.m.0.cv1.conv": {"prune_ratio": [0.5], "kernel_size": [1], "rank_ratio": [0.5],
                                        "activation_bits": [8], "weight_bits": [4, 32], "sparsity": [0.0, 0.5]},
               "model.22.cv2.0.1.conv": {"prune_ratio": [0.25], "weight_bits": [4], "activation_bits": [8]}}
    settings = {"checkpoint": str(smoke_inputs.checkpoint), "data_yaml": str(smoke_inputs.data_yaml), "imgsz": 64,
                "batch": 8, "loss_batches": 2, "hessian_batches": 1, "probes": 1, "threads": 2, "device": "cpu"}
    fast = analyse(settings, options)
    reference = analyse({**settings, **REFERENCE_SETTINGS, "probes": 1, "hessian_batches": 1}, options)
    assert fast["pass"] == "fast" and reference["pass"] == "reference"
    assert fast["base_loss"] == pytest.approx(reference["base_loss"], rel=1e-6)
    tolerance = 1e-5 * reference["base_loss"]
    for name, layer in reference["layers"].items():
        ours = fast["layers"][name]
        assert ours["reference_second_order"] == pytest.approx(layer["reference_second_order"], abs=tolerance)
        for key, option in layer["weight_options"].items():  # layers below FAST_SAMPLED_ELEMENTS: exact errors
            assert ours["weight_options"][key]["delta_w2"] == pytest.approx(option["delta_w2"], rel=1e-6)
        assert set(ours["changes"]) == set(layer["changes"])
        for knob, values in layer["changes"].items():
            for value, change in values.items():
                mine = ours["changes"][knob][value]
                assert mine["delta_loss"] == pytest.approx(change["delta_loss"], abs=tolerance), (name, knob, value)
                assert {k: v for k, v in mine.items() if k != "delta_loss"} == \
                    {k: v for k, v in change.items() if k != "delta_loss"}, (name, knob, value)


def test_pruning_by_zeroing_names_what_pruning_removes(smoke_inputs):
    """prune.removed_channels: the channels prune_output_channels removes, conv by conv (a split
    cv1's halves counted as one conv), so the shapes left are the pruned model's."""
    import copy

    from edgesearch.spaces.apply import conv_layers
    from edgesearch.spaces.prune import prune_output_channels, removed_channels

    base = smoke_inputs.base_model
    changes = [("model.6.cv1.conv", 0.25), ("model.9.cv2.conv", 0.5)]
    removed = removed_channels(base, changes)
    before = conv_layers(base)
    for knob, ratio in changes:
        pruned = copy.deepcopy(base)
        prune_output_channels(pruned, {knob: ratio})
        after = conv_layers(pruned)
        for name, conv in before.items():
            outputs, inputs = removed[(knob, ratio)].get(name, ([], []))
            assert after[name].out_channels == conv.out_channels - len(outputs), (knob, name)
            assert after[name].in_channels == conv.in_channels - len(inputs), (knob, name)
            kept_out = [i for i in range(conv.out_channels) if i not in outputs]
            kept_in = [i for i in range(conv.in_channels) if i not in inputs]
            assert torch.equal(conv.weight[kept_out][:, kept_in], after[name].weight), (knob, name)


def test_a_pruned_design_is_ranked_on_the_bases_loss_gradients_computed_once(smoke_inputs):
    """channel_ranking: the detection loss's gradient of every conv weight, the same tensors for
    every call in a process; nothing computed for a design that prunes nothing."""
    from edgesearch.runners.accuracy.channel_ranking import gradients_if_pruned, pruning_gradients
    from edgesearch.spaces.apply import conv_layers
    from edgesearch.spaces.candidate import Candidate, LayerKnobs

    base, checkpoint, data = smoke_inputs.base_model, str(smoke_inputs.checkpoint), smoke_inputs.data_yaml
    before = {name: p.clone() for name, p in base.state_dict().items()}
    gradients = pruning_gradients(base, checkpoint, data, imgsz=64)
    assert all(p.grad is None for p in base.parameters())
    assert all(torch.equal(before[name], p) for name, p in base.state_dict().items())  # left as it was
    for name, conv in conv_layers(base).items():
        if ".dfl." not in name:
            gradient = gradients[f"{name}.weight"]
            assert gradient.shape == conv.weight.shape and gradient.abs().sum() > 0, name
    pruned = Candidate({"model.2.cv1.conv": LayerKnobs(prune_ratio=0.5)})
    assert gradients_if_pruned(pruned, base, checkpoint, data, imgsz=64) is gradients  # computed once
    assert gradients_if_pruned(Candidate({"model.2.cv1.conv": LayerKnobs(weight_bits=4)}), base, checkpoint, data,
                               imgsz=64) is None
