"""Inputs that must never run code or overwrite what is not edgesearch's (issue 12, security)."""

import json
import os

import pytest
import torch

from conftest import run_cli


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_never_takes_trust_from_the_run_folder(tmp_path, smoke_inputs):
    """A doctored run.json saying trust_checkpoint: true must not unpickle its model fully."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    real = torch.load(smoke_inputs.checkpoint, weights_only=False)  # our own file: trusted
    torch.save({**real, "train_args": {"x": _RunsShell(marker)}}, evil)
    out = tmp_path / "run"
    out.mkdir()
    run = {"run_name": "run", "profile": "x86-host", "profile_file": smoke_inputs.profile.source, "space": "smoke",
           "space_file": smoke_inputs.space.source, "space_sha256": "", "preset": "smoke", "model": str(evil),
           "data": str(smoke_inputs.data_yaml), "memory_budget": {"kind": "sram", "bytes": None, "source": "profile"},
           "trust_checkpoint": True, "trials": 1, "population": 4, "imgsz": 64, "finetune_iters": 0, "batch": 8,
           "parallel": 1}  # a complete run.json, as a search writes one, doctored to say trust_checkpoint
    (out / "run.json").write_text(json.dumps(run))
    result = run_cli("run", "--out", str(out), "--resume")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--trust-checkpoint" in result.stderr and not marker.exists()


def test_no_code_path_runs_a_datasets_download_script(tmp_path, smoke_inputs):
    """The val folder vanishes after the check: validation must fail, not run `download:`."""
    from edgesearch.runners.accuracy.finetune import load_dataset_info, validate
    from edgesearch.runners.checkpoints import load_detection_model

    marker = tmp_path / "downloaded"
    val = tmp_path / "val-images"
    (val).mkdir()
    source = smoke_inputs.data_yaml.parent
    os.symlink(source / "images" / "val", val / "images")
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: {source / 'images' / 'train'}\nval: {val}/images\n"
                    f"names: {{0: '0', 1: '1', 2: '2', 3: '3', 4: '4', 5: '5', 6: '6', 7: '7', 8: '8', 9: '9'}}\n"
                    f"download: open('{marker}', 'w').write('ran')\n")
    load_dataset_info(data)  # fine while the folder is there
    os.unlink(val / "images")
    with pytest.raises(FileNotFoundError):  # ultralytics: the val images are gone
        validate(load_detection_model(smoke_inputs.checkpoint), data, imgsz=64)
    assert not marker.exists()


def test_a_modelopt_checkpoint_is_refused_before_anything_is_installed(tmp_path, smoke_inputs):
    from edgesearch.runners.checkpoints import CheckpointError, load_detection_model

    real = torch.load(smoke_inputs.checkpoint, weights_only=False)
    qat = tmp_path / "qat.pt"
    torch.save({**real, "modelopt": {"modelopt": {}, "ranges": {}}}, qat)
    with pytest.raises(CheckpointError, match="ModelOpt"):
        load_detection_model(qat)


def test_out_refuses_a_folder_that_holds_something_else(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("my own page")
    result = run_cli("run", "--preset", "smoke", "--out", str(out), "--trials", "1")
    assert result.returncode == 2 and "not an empty folder or a run folder" in result.stderr
    assert (out / "index.html").read_text() == "my own page" and sorted(os.listdir(out)) == ["index.html"]


def test_the_default_run_folder_is_under_the_current_directory(tmp_path, monkeypatch):
    from edgesearch.search.run_folder import run_folder

    monkeypatch.chdir(tmp_path)
    assert run_folder(None, "x86-host", "yolov8", "smoke") == tmp_path.resolve() / "reports" / "x86-host-yolov8-smoke"
