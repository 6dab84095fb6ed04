"""TVM RPC runner end to end: a real tracker and RPC server on loopback, a real compiled tiny YOLO
uploaded, timed and run on the server, its output compared with this process's own VM."""

import copy
import os
import time

import numpy as np
import pytest
import torch
import yaml

from edgesearch.common.errors import InputError
from edgesearch.runners.hardware.build import build_local, export_for_tvm
from edgesearch.runners.hardware.profiles import PROFILES_DIR, load_profile
from edgesearch.runners.hardware.rpc_runner import (
    device_available,
    device_unavailable_reason,
    measure_latency_rpc,
    remote_vm,
    request_session,
    run_rpc,
    tracker_address,
)
from edgesearch.spaces.apply import apply_candidate
from edgesearch.spaces.candidate import Candidate
from local_cluster import free_port

KEY = "loopback"
IMGSZ = 64


def rpc_profile(tmp_path, port: int, key: str = KEY):
    """x86-host.yaml measured over RPC through the tracker at 127.0.0.1:port."""
    raw = yaml.safe_load((PROFILES_DIR / "x86-host.yaml").read_text())
    raw.update(name=f"x86-rpc-{key}", measurement="rpc",
               rpc={"tracker_host": "127.0.0.1", "tracker_port": port, "key": key})
    path = tmp_path / f"x86-rpc-{key}-{port}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_profile(path)


@pytest.fixture(scope="module")
def tracker_port():
    """A TVM RPC tracker and one server registered under KEY, both on 127.0.0.1 in subprocesses."""
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    # The subprocesses inherit the environment: keep the server's thread pool to this machine's 2 cores.
    saved = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = "2"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # set by conftest
    start = free_port()
    tracker = Tracker("127.0.0.1", port=start, port_end=start + 50, silent=True)
    server = Server("127.0.0.1", port=tracker.port + 1, port_end=tracker.port + 100,
                    tracker_addr=("127.0.0.1", tracker.port), key=KEY, silent=True)
    try:
        yield tracker.port
    finally:
        server.terminate()
        tracker.terminate()
        if saved is None:
            os.environ.pop("TVM_NUM_THREADS")
        else:
            os.environ["TVM_NUM_THREADS"] = saved


@pytest.fixture(scope="module")
def loopback_profile(tracker_port, tmp_path_factory):
    profile = rpc_profile(tmp_path_factory.mktemp("profiles"), tracker_port)
    deadline = time.monotonic() + 30  # the server registers with the tracker shortly after it starts
    while not device_available(profile) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert device_unavailable_reason(profile) is None
    return profile


@torch.no_grad()
def _give_outputs_that_depend_on_the_input(model):
    """Ultralytics' initial biases hold every class score near 0 whatever the input, and its small
    weights shrink activations layer by layer, so outputs barely depend on the image and any
    comparison of them passes; He-initialised weights and zero biases keep the signal alive."""
    torch.manual_seed(0)
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        if conv.bias is not None:
            conv.bias.zero_()


@pytest.fixture(scope="module")
def tiny_library(tiny_model, tmp_path_factory):
    """(path of the exported .so, local executable) of the fused tiny YOLO at 64x64."""
    model = apply_candidate(copy.deepcopy(tiny_model), Candidate({}))
    _give_outputs_that_depend_on_the_input(model)
    executable, _ = build_local(export_for_tvm(model, IMGSZ), load_profile("x86-host").target)
    path = tmp_path_factory.mktemp("lib") / "tiny_yolo.so"
    executable.export_library(str(path))
    return path, executable


def test_latency_is_measured_on_the_rpc_device(tiny_library, loopback_profile, tracker_port):
    result = measure_latency_rpc(tiny_library[0], loopback_profile, (1, 3, IMGSZ, IMGSZ), repeat=10)
    assert result["latency_ms"] > 0 and result["latency_spread_ms"] >= 0
    assert result["latency_source"].startswith(f"measured: TVM RPC on {KEY} via 127.0.0.1:{tracker_port}")


def test_remote_output_equals_local_vm_output(tiny_library, loopback_profile):
    import tvm
    from tvm import relax

    path, executable = tiny_library
    local_vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(0)
    inputs = [rng.random((1, 3, IMGSZ, IMGSZ), dtype=np.float32) for _ in range(2)]
    remote = [run_rpc(path, loopback_profile, x) for x in inputs]
    local = [local_vm["main"](tvm.runtime.tensor(x)).numpy() for x in inputs]
    for remote_out, local_out in zip(remote, local, strict=True):
        assert remote_out.shape == local_out.shape
        np.testing.assert_allclose(remote_out, local_out, rtol=1e-5, atol=1e-5)
    # Not vacuous: the output depends on the input, so a server that ignored it would fail above.
    assert np.abs(remote[0] - remote[1]).max() > 1e-2


def test_waiting_for_a_busy_device_is_bounded(tiny_library, loopback_profile, tracker_port):
    with remote_vm(tiny_library[0], loopback_profile):  # holds the only loopback server
        start = time.monotonic()
        with pytest.raises(InputError, match="became free within 1 s"):
            request_session("127.0.0.1", tracker_port, KEY, wait_s=1, session_timeout_s=10)
        assert time.monotonic() - start < 3
    # The abandoned request does not take the server once it is free again.
    assert run_rpc(tiny_library[0], loopback_profile, np.zeros((1, 3, IMGSZ, IMGSZ), np.float32)).size > 0


def test_no_device_when_nothing_listens(tmp_path):
    profile = rpc_profile(tmp_path, free_port())
    start = time.monotonic()
    reason = device_unavailable_reason(profile, timeout_s=2)
    assert time.monotonic() - start < 3
    assert reason.startswith("no TVM RPC tracker answers at 127.0.0.1:")
    assert not device_available(profile)
    with pytest.raises(InputError, match="does not exist"):
        measure_latency_rpc(tmp_path / "missing.so", profile, (1, 3, 8, 8))
    library = tmp_path / "model.so"
    library.write_bytes(b"not read: the device check comes first")
    with pytest.raises(InputError, match="no TVM RPC tracker answers"):
        measure_latency_rpc(library, profile, (1, 3, 8, 8))


def test_no_device_for_a_key_the_tracker_does_not_know(tracker_port, loopback_profile, tmp_path):
    profile = rpc_profile(tmp_path, tracker_port, key="no-such-board")
    start = time.monotonic()
    reason = device_unavailable_reason(profile)
    assert time.monotonic() - start < 3
    assert reason == f"tracker 127.0.0.1:{tracker_port} has no server with key 'no-such-board' (keys registered: {KEY})"
    assert not device_available(profile)


def test_tracker_address_from_profile_and_environment(monkeypatch):
    pi = load_profile("raspberry-pi-4")
    monkeypatch.delenv("EDGESEARCH_RPC_TRACKER", raising=False)
    monkeypatch.delenv("EDGESEARCH_RPC_KEY", raising=False)
    assert tracker_address(pi) == ("127.0.0.1", 9190, "rasp4")
    monkeypatch.setenv("EDGESEARCH_RPC_TRACKER", "tracker.lan:9000")
    monkeypatch.setenv("EDGESEARCH_RPC_KEY", "pi-lab")
    assert tracker_address(pi) == ("tracker.lan", 9000, "pi-lab")
    for bad in ("tracker.lan", "tracker.lan:port", "tracker.lan:70000", ":9000"):
        monkeypatch.setenv("EDGESEARCH_RPC_TRACKER", bad)
        with pytest.raises(InputError) as error:
            tracker_address(pi)
        assert "\n" not in str(error.value)
    monkeypatch.delenv("EDGESEARCH_RPC_TRACKER")
    monkeypatch.delenv("EDGESEARCH_RPC_KEY")
    with pytest.raises(InputError, match="no RPC tracker configured"):
        tracker_address(load_profile("x86-host"))  # a local profile has no rpc block


def test_hardware_scores_of_an_rpc_profile_are_measured_on_its_device(tiny_model, loopback_profile, tracker_port):
    from edgesearch.runners.hardware.scores import hardware_scores

    model = apply_candidate(copy.deepcopy(tiny_model), Candidate({}))
    scores = hardware_scores(model, loopback_profile, 64)
    assert scores["latency_source"].startswith(f"measured: TVM RPC on {KEY} via 127.0.0.1:{tracker_port}")
    assert scores["latency_ms"] > 0 and scores["library_bytes"] > 0


def test_a_registered_device_this_machine_cannot_build_for_is_refused_before_the_first_trial(loopback_profile,
                                                                                              tracker_port, tmp_path):
    """Issue 17 item 5: a registered GPU no NVRTC here compiles for (sm_32) fails at the run's start in one line,
    saying what to do, instead of failing every trial; --estimate-latency estimates instead."""
    from edgesearch.runners.hardware.measure import decide_measurement

    assert decide_measurement(loopback_profile).kind == "rpc"
    raw = yaml.safe_load((PROFILES_DIR / "jetson-nano.yaml").read_text())
    raw["tvm"]["target"]["arch"] = "sm_32"
    raw["rpc"] = {"tracker_host": "127.0.0.1", "tracker_port": tracker_port, "key": KEY}
    (tmp_path / "old-gpu.yaml").write_text(yaml.safe_dump(raw))
    profile = load_profile(tmp_path / "old-gpu.yaml")
    with pytest.raises(InputError) as refused:
        decide_measurement(profile)
    message = str(refused.value)
    assert "\n" not in message and "sm_32" in message and "--estimate-latency" in message
    assert "search export --format onnx" in message
    assert decide_measurement(profile, estimate_only=True).kind == "estimate"
