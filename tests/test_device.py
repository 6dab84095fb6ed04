"""--device and --gpus-per-trial (runners/device.py, search/execution.py): the choice of device, the
record each stage keeps of where its model and inputs were, and the refusals. What needs a GPU is
checked here with what a CPU-only machine has: the CPU itself, and the meta device standing in for
"not the CPU" (a tensor created on the CPU beside meta weights fails exactly as it would beside CUDA
weights). Ray's placement with logical GPUs: tests/test_cluster.py."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import run_in_process
from edgesearch.common.errors import InputError
from edgesearch.runners.device import (
    CPU,
    resolve_device,
    running_on,
    to_device,
    trial_device_spec,
)
from edgesearch.search.execution import trial_gpus

NO_CUDA = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="checks the refusals of a machine without CUDA")


def test_device_specs():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (CPU if NO_CUDA else torch.device("cuda", 0))
    for bad in ("gpu", "cuda:", "cuda:x", "CUDA", "", "mps"):
        with pytest.raises(InputError, match="give auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    with pytest.raises(InputError, match="cuda:99"):
        resolve_device("cuda:99")


def test_a_ray_trial_uses_the_gpu_ray_assigned():
    assert trial_device_spec("cpu", ["0"]) == "cpu"  # --device cpu: never a GPU
    assert trial_device_spec("auto", []) == "cpu"  # no GPU from Ray: not one another trial holds
    assert trial_device_spec("cuda:3", ["5"]) == "cuda:0"  # Ray made GPU 5 the only visible one
    assert trial_device_spec("cuda", ["5"], ray_sets_visible=False) == "cuda:5"
    # a node with logical GPUs only (`ray start --num-gpus 2` without CUDA): auto falls back to the CPU
    assert trial_device_spec("auto", ["1"]) == ("cpu" if NO_CUDA else "cuda:0")


def test_gpus_per_trial_defaults_and_refusals():
    assert trial_gpus(None, "auto", [0.0, 0.0]) == 0  # no GPU anywhere
    assert trial_gpus(None, "auto", [0.0, 2.0]) == 1  # one whole GPU per trial where there are some
    assert trial_gpus(None, "cpu", [2.0]) == 0
    assert trial_gpus(0.25, "auto", [1.0]) == 0.25
    assert trial_gpus(2, "cuda", [0.0, 2.0]) == 2
    for requested, device, nodes, why in [(-1, "auto", [1.0], "0 or more"),
                                          (float("nan"), "auto", [1.0], "0 or more"),
                                          (3, "auto", [2.0, 1.0], "largest node has 2 GPU"),
                                          (0.5, "auto", [0.0], "largest node has 0 GPU"),
                                          (1.5, "auto", [4.0], "whole GPUs"),
                                          (1, "cpu", [1.0], "never use"),
                                          (0, "cuda", [1.0], "Ray would give the trials none")]:
        with pytest.raises(InputError, match=why):
            trial_gpus(requested, device, nodes)


def test_a_model_runs_its_quantizers_on_its_own_device(fused_tiny):
    """spaces/ builds weight-quantizer layouts and k-means starts with plain torch.ones / linspace
    (on the CPU): beside weights on another device the forward fails, unless it runs inside
    running_on, which also records where the parameters and inputs were. (fused_tiny has run at 64 px:
    its head's cached anchors, moved by to_device, spare the meta device a data-dependent step.)"""
    from edgesearch.spaces.apply import apply_candidate, uniform_candidate
    from edgesearch.spaces.candidate import parse_uniform
    from edgesearch.spaces.space import load_space

    layers = list(load_space("yolov8").resolve(fused_tiny))[:4]  # a few quantized layers show it
    meta = torch.device("meta")
    for spec in ("bits=4,scheme=affine,granularity=group", "bits=4,scheme=kmeans,granularity=filter"):
        model = to_device(apply_candidate(fused_tiny, uniform_candidate(fused_tiny, parse_uniform(spec), layers)), meta)
        images = torch.rand(1, 3, 64, 64, device=meta)
        with pytest.raises(RuntimeError, match="device"):
            model.train()(images)
        with running_on(model, meta) as watch:
            model.train()(images)
            model.eval()(images)
        assert watch.describe() == "meta" and watch.calls == 2, spec
    cpu_model = copy.deepcopy(fused_tiny)
    with running_on(cpu_model, CPU) as watch:
        pass
    assert watch.describe() == "not run"
    with running_on(cpu_model, CPU) as watch:
        cpu_model(torch.rand(1, 3, 64, 64))
    assert watch.describe() == "cpu"


def test_every_stage_records_where_its_model_and_batches_were(cluster_inputs):
    """A trial's calibration, fine-tune (with its teacher) and validation, on --device cpu: each
    says what its model's parameters and its batches were on, as a forward hook saw them."""
    from edgesearch.runners.accuracy.finetune import validate
    from edgesearch.runners.evaluate import EvalSettings, build_design

    data_yaml = cluster_inputs / "data" / "data.yaml"
    config = EvalSettings(checkpoint=str(cluster_inputs / "tiny.pt"), data_yaml=str(data_yaml),
                          profile="x86-host", imgsz=64, finetune_iters=1, batch=4, threads=1, distill=True,
                          calibration_batches=1, device="cpu")
    candidate = {"layers": {"model.1.conv": {"weight_bits": 4, "scheme": "affine", "granularity": "filter",
                                             "activation_bits": 8}}}
    base, model, calibrated, losses, _ = build_design(config, candidate)
    assert calibrated == 1 and len(losses) == 1
    assert losses.devices == {"calibration": "cpu", "finetune": "cpu", "teacher": "cpu"}
    assert {p.device for p in [*model.parameters(), *base.parameters()]} == {CPU}  # returned on the CPU
    assert validate(model, data_yaml, imgsz=64, device=CPU)["device"] == "cpu"
    assert validate(str(cluster_inputs / "tiny.pt"), data_yaml, imgsz=64)["device"] == "not watched"


@needs_no_cuda
@pytest.mark.parametrize("command", ["run", "eval", "shadow", "export"])
def test_cuda_on_a_machine_without_it_is_one_line_and_nothing_is_written(tmp_path, capsys, command):
    given, out = tmp_path / "given", tmp_path / "out"
    (given / "images").mkdir(parents=True)
    (given / "images" / "a.jpg").write_bytes(b"")  # listed, never read: refused before
    (given / "design.json").write_text(json.dumps({"layers": {}}))
    design = str(given / "design.json")
    extra = {"run": ["--out", str(out)], "eval": ["--uniform", "bits=8"],
             "shadow": ["--candidate", design, "--images", str(given / "images"), "--out", str(out)],
             "export": ["--candidate", design, "--format", "onnx", "--out", str(out) + ".onnx"]}
    for device in ("cuda", "cuda:1"):
        result = run_in_process(capsys, command, "--preset", "smoke", "--device", device, *extra[command])
        assert result.returncode == 2, result.stderr[-2000:]
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith(f"search: error: --device {device}: torch sees no CUDA")
        assert [p.name for p in tmp_path.iterdir()] == ["given"]


@pytest.mark.parametrize("gpus, why", [("-1", "must be 0 or more"), ("1000", "largest node has"),
                                       ("nan", "must be 0 or more")])
def test_bad_gpus_per_trial_is_one_line_and_nothing_is_written(tmp_path, capsys, gpus, why):
    out = tmp_path / "run"
    result = run_in_process(capsys, "run", "--preset", "smoke", "--gpus-per-trial", gpus, "--out", str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and why in errors[0], errors
    assert not out.exists()
