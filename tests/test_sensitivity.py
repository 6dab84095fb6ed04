"""The sensitivity pass on the trained tiny base: real loss, real Hessian-vector products."""

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
