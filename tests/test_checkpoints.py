"""Checkpoints load with weights_only=True and an allowlist; malicious pickles never run."""

import builtins
import os

import pytest
import torch

from edgesearch.runners.checkpoints import (
    CheckpointError,
    UnsafeCheckpointError,
    load_detection_model,
    model_from_checkpoint,
    safe_load_checkpoint,
)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsConstructor:
    """DetectionModel(cfg) would eval() cfg['activation']: allowlisting the class itself is not enough."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        cfg = {"activation": f"__import__('os').system('touch {self.marker}')", "nc": 1,
               "backbone": [[-1, 1, "Conv", [16, 3, 2]]], "head": []}
        return (DetectionModel, (cfg,))


class _Evals:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"__import__('os').system('touch {self.marker}')",))


def test_real_checkpoint_loads_safely_and_equals_the_trusted_load(smoke_inputs):
    path = smoke_inputs.checkpoint
    safe = model_from_checkpoint(safe_load_checkpoint(path), path)
    trusted = model_from_checkpoint(safe_load_checkpoint(path, trust=True), path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(safe(x)[0], trusted(x)[0])
    assert load_detection_model(path).task == "detect"


@pytest.mark.parametrize("payload", [_RunsShell, _CallsConstructor, _Evals])
def test_malicious_checkpoints_are_refused_without_running_anything(tmp_path, smoke_inputs, payload):
    marker = tmp_path / "pwned"
    real = torch.load(smoke_inputs.checkpoint, weights_only=False)  # our own file: trusted
    evil = tmp_path / "evil.pt"
    torch.save({**real, "train_args": {"x": payload(marker)}}, evil)
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        safe_load_checkpoint(evil)
    assert not marker.exists()


def test_refuses_even_when_the_real_class_was_registered_process_wide(tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _CallsConstructor(marker)}, evil)
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([DetectionModel])  # what ultralytics' own safe mode does
    try:
        with pytest.raises(UnsafeCheckpointError):
            safe_load_checkpoint(evil)
        assert DetectionModel in torch.serialization.get_safe_globals()  # the caller's set is restored
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    assert not marker.exists()


@pytest.mark.parametrize("make", ["missing", "empty", "random", "truncated", "text", "no-model", "torchscript"])
def test_bad_files_get_one_line_errors(tmp_path, smoke_inputs, make):
    path = tmp_path / "bad.pt"
    if make == "empty":
        path.write_bytes(b"")
    elif make == "random":
        path.write_bytes(os.urandom(4096))
    elif make == "truncated":
        data = smoke_inputs.checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif make == "text":
        path.write_text("hello\n" * 10)
    elif make == "no-model":
        torch.save({"weights": torch.zeros(2)}, path)
    elif make == "torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    for trust in (False, True):
        with pytest.raises(CheckpointError) as error:
            safe_load_checkpoint(path, trust=trust)
        assert "\n" not in str(error.value)
