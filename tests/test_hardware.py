"""The TVM build: same outputs as PyTorch, planned memory within sane bounds, honest labels."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_detections_match
from edgesearch.runners.costs import layer_costs
from edgesearch.runners.hardware.build import build_local, export_for_tvm, plan_memory_only
from edgesearch.runners.hardware.profiles import load_profile
from edgesearch.runners.hardware.scores import hardware_scores
from edgesearch.spaces.apply import apply_candidate, uniform_candidate
from edgesearch.spaces.candidate import Candidate


def test_tvm_build_matches_pytorch_and_schedules_every_kernel(fused_tiny):
    import tvm
    from tvm import relax

    mod = export_for_tvm(fused_tiny, 64)
    executable, build = build_local(mod, load_profile("x86-host").target)
    assert build["unscheduled_kernels"] == [] and build["serial_blocks"] == []
    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference = fused_tiny(x).numpy()
    out = vm["main"](tvm.runtime.tensor(x.numpy(), tvm.cpu())).numpy()
    assert_detections_match(out, reference)


def test_planned_activation_memory_is_between_what_one_conv_needs_and_keeping_everything(fused_tiny):
    """Bounds independent of TVM: a conv's input and output are alive together (lower); keeping
    every intermediate tensor of the exported graph, none reused (upper)."""
    from edgesearch.runners.hardware.build import set_export_mode

    costs = layer_costs(fused_tiny, (1, 3, 64, 64))
    planned = plan_memory_only(export_for_tvm(fused_tiny, 64))
    one_conv = max(c.input_elements + c.output_elements for c in costs[1:]) * 4  # the first reads the graph input
    model = copy.deepcopy(fused_tiny)
    set_export_mode(model)
    with torch.no_grad():
        graph = torch.export.export(model.eval(), (torch.zeros(1, 3, 64, 64),)).graph
    everything = sum(node.meta["val"].numel() * 4 for node in graph.nodes if node.op == "call_function"
                     and isinstance(node.meta.get("val"), torch.Tensor))
    assert one_conv <= planned <= everything


def test_remote_profiles_are_estimated_and_local_is_measured(fused_tiny, tmp_path):
    estimated = hardware_scores(fused_tiny, load_profile("raspberry-pi-4"), 64)
    assert estimated["latency_source"].startswith("estimated") and estimated["latency_ms"] > 0
    assert "latency_spread_ms" not in estimated
    measured = hardware_scores(fused_tiny, load_profile("x86-host"), 64, library_path=str(tmp_path / "lib" / "x86.so"))
    assert measured["library_bytes"] == (tmp_path / "lib" / "x86.so").stat().st_size > 0
    assert measured["latency_source"].startswith("measured") and measured["latency_spread_ms"] >= 0
    assert measured["activation_bytes"] == estimated["activation_bytes"]  # planning does not depend on the target
    assert measured["sram_bytes"] == measured["weight_bytes"] + measured["activation_bytes"]


def test_an_rpc_profile_without_a_tracker_is_estimated_and_says_why(fused_tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGESEARCH_RPC_TRACKER", raising=False)
    text = Path(load_profile("raspberry-pi-4").source).read_text()
    (tmp_path / "no-tracker.yaml").write_text(text[:text.index("rpc:")])  # the rpc block is last
    scores = hardware_scores(fused_tiny, load_profile(tmp_path / "no-tracker.yaml"), 64)
    assert scores["latency_source"].startswith("estimated") and "rpc" in scores["latency_source"].lower()


def test_int8_layers_run_integer_shrink_the_planned_activations_and_the_estimate(tiny_model):
    from edgesearch.spaces.activations import calibrate
    from edgesearch.spaces.candidate import parse_uniform
    from edgesearch.spaces.packing import bake_fake_quant
    from edgesearch.spaces.space import load_space

    layers = list(load_space("yolov8").resolve(tiny_model))
    profile = load_profile("raspberry-pi-4")  # estimated latency: no local build needed
    float_scores = hardware_scores(apply_candidate(tiny_model, Candidate({})), profile, 64)
    model = apply_candidate(tiny_model, uniform_candidate(tiny_model, parse_uniform("bits=8,act=8"), layers))
    calibrate(model, [torch.rand(2, 3, 64, 64)])
    bake_fake_quant(model)
    int8_scores = hardware_scores(model, profile, 64)
    assert float_scores["integer_layers"] == 0 and int8_scores["integer_layers"] == len(layers)
    assert float_scores["activation_bytes_source"].startswith("planned") and "fp32" in float_scores["activation_bytes_source"]
    # the plan of the integer build itself (uint8 tensors between requantizing convs), not a scaled fp32 plan
    assert int8_scores["activation_bytes_source"].startswith("planned") and "int8 kernels" in int8_scores["activation_bytes_source"]
    assert int8_scores["activation_bytes"] < float_scores["activation_bytes"]
    assert "int8" in int8_scores["latency_source"] and "int8" not in float_scores["latency_source"]
    assert int8_scores["compute_precision"].startswith(f"{len(layers)} int8 of")
    assert int8_scores["latency_ms"] < float_scores["latency_ms"]  # the Pi computes int8 faster than fp32


def test_a_run_keeps_to_one_kind_of_latency_figure(fused_tiny, tmp_path, monkeypatch):
    """Issue 12 item 5: decided once per run; a trial never silently estimates in a measured run."""
    import pytest

    from edgesearch.runners.hardware import rpc_runner
    from edgesearch.runners.hardware.measure import MeasurementPlan, decide_measurement, measurer_for

    monkeypatch.delenv("EDGESEARCH_RPC_TRACKER", raising=False)
    text = Path(load_profile("raspberry-pi-4").source).read_text()
    (tmp_path / "no-tracker.yaml").write_text(text[:text.index("rpc:")])
    profile = load_profile(tmp_path / "no-tracker.yaml")
    plan = decide_measurement(profile)
    assert plan.kind == "estimate" and plan.why
    assert decide_measurement(load_profile("x86-host")).kind == "local"
    with pytest.raises(RuntimeError, match="could not be measured"):  # the device went away mid-run
        hardware_scores(fused_tiny, profile, 64, measurer=measurer_for(profile, MeasurementPlan("rpc")))

    def asked(*_):
        raise AssertionError("an estimated run must not ask for the device")

    monkeypatch.setattr(rpc_runner, "device_unavailable_reason", asked)
    estimated = hardware_scores(fused_tiny, profile, 64, measurer=measurer_for(profile, plan))
    assert estimated["latency_source"].startswith("estimated") and "no device used" in estimated["latency_source"]


def test_a_build_left_partly_unscheduled_says_so_in_its_label():
    from edgesearch.runners.hardware.measure import naive_note

    assert naive_note({"unscheduled_kernels": [], "serial_blocks": []}) == ""
    note = naive_note({"unscheduled_kernels": ["fused_conv2d_add"], "serial_blocks": ["k:b1", "k:b2"]})
    assert "NOT FULLY SCHEDULED" in note and "1 kernel(s) left as naive loops, 2 block(s) left serial" in note


PIN_CHECK = """
import os
from edgesearch.search.cli_env import apply_process_env
apply_process_env()  # as every edgesearch process does before TVM loads
os.environ["TVM_NUM_THREADS"] = "1"  # as a trial sets it (evaluate.score_candidate)
import torch
from edgesearch.runners.hardware.build import build_local, measure_latency_local, relax_module, tvm_threads
from edgesearch.runners.hardware.profiles import load_profile
target = load_profile("x86-host").target
model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.SiLU())
executable, _ = build_local(relax_module(model, (torch.rand(1, 3, 32, 32),), target), target)
measure_latency_local(executable, 32)
tvm_threads()  # the scores' labels ask the thread pool its size: that starts it, where a timing had not
print(sorted(os.sched_getaffinity(0)))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning to one core shows only with two or more")
def test_timing_a_build_leaves_the_process_free_to_run_on_every_core():
    """TVM's thread pool pins the thread that starts it to one core unless told not to; a trial's
    later fine-tunes would then share that core with the other trials in flight."""
    env = {name: value for name, value in os.environ.items() if name != "TVM_BIND_THREADS"}
    child = subprocess.run([sys.executable, "-c", PIN_CHECK], env=env, capture_output=True, text=True, check=True)
    assert child.stdout.strip().splitlines()[-1] == str(sorted(os.sched_getaffinity(0)))
