"""Bad and hostile inputs at the command line (issue 21 item 5): corrupt or malicious checkpoints,
data.yaml files, candidate JSON, space and profile YAML, batch files and timings files. Each is
refused with one line on stderr and exit 2, with no traceback, and nothing is written: not in the
output folder, not beside the inputs, not in the calibration cache. Run in-process (no new
interpreter per probe); every probe is refused before any slow work."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import run_in_process

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                    "3a7e9b550000000a4944415478da63600000000200015e2b7d8d0000000049454e44ae426082")
MARKER = "pwned.txt"  # what a payload would create, in the probe's own folder


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid dataset (train, val and test splits of 1x1 PNGs) and an untrained tiny checkpoint:
    each probe breaks exactly one input."""
    import torch
    from ultralytics import YOLO

    from edgesearch.search.presets import TINY_MODEL_YAML

    root = tmp_path_factory.mktemp("good")
    for split in ("train", "val", "test"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for name in ("a", "b"):
            (root / "images" / split / f"{name}.png").write_bytes(PNG)
            (root / "labels" / split / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\ntest: images/test\nnames: {{0: digit}}\n")
    checkpoint = root / "tiny.pt"
    torch.save({"model": YOLO(TINY_MODEL_YAML).model}, checkpoint)
    return {"data": data, "checkpoint": checkpoint}


class _Payload:
    """Unpickling it would run a shell command creating MARKER."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.folder / MARKER}",)


# ------------------------------------------------------------------------------ the probes
# each: (tmp folder, the good inputs) -> the command line; files go into the tmp folder


def _run(tmp, good, *, model=None, data=None, space="yolov8", profile="x86-host"):
    return ["run", "--preset", "smoke", "--profile", str(profile), "--space", str(space), "--data",
            str(data or good["data"]), "--model", str(model or good["checkpoint"]), "--out", str(tmp / "out")]


def _file(tmp, name, content) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _checkpoint_payload(tmp):
    import torch

    path = tmp / "payload.pt"
    torch.save({"model": _Payload(tmp)}, path)
    return path


def _truncated_checkpoint(tmp, good):
    data = good["checkpoint"].read_bytes()
    return _file(tmp, "truncated.pt", data[: len(data) // 2])


def _checkpoint_of(tmp, name, obj):
    import torch

    path = tmp / name
    torch.save(obj, path)
    return path


def _zip_bomb_like(tmp):
    """A zip whose member names climb out of the archive: torch must not extract anything."""
    path = tmp / "climb.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../climbed.txt", "x")
        archive.writestr("archive/data.pkl", pickle.dumps({"model": 1}))
    return path


CHECKPOINTS = {
    "checkpoint: not a zip": lambda tmp, good: _file(tmp, "garbage.pt", b"\x00\xff not a checkpoint" * 50),
    "checkpoint: empty file": lambda tmp, good: _file(tmp, "empty.pt", b""),
    "checkpoint: truncated": _truncated_checkpoint,
    "checkpoint: a folder": lambda tmp, good: (tmp / "folder.pt").mkdir() or tmp / "folder.pt",
    "checkpoint: pickle that runs a command": lambda tmp, good: _checkpoint_payload(tmp),
    "checkpoint: model is a number": lambda tmp, good: _checkpoint_of(tmp, "number.pt", {"model": 3}),
    "checkpoint: no model": lambda tmp, good: _checkpoint_of(tmp, "nomodel.pt", {"weights": [1, 2]}),
    "checkpoint: not a detection model": lambda tmp, good: _checkpoint_of(
        tmp, "linear.pt", {"model": __import__("torch").nn.Linear(2, 2)}),
    "checkpoint: zip members outside": lambda tmp, good: _zip_bomb_like(tmp),
}

DATA = {
    "data.yaml: not YAML": "train: [unclosed\nval: {\n",
    "data.yaml: a list": "- train\n- val\n",
    "data.yaml: not UTF-8": b"train: \xff\xfe\x00images\nval: images\n",
    "data.yaml: val missing": "train: images/train\nnames: {0: a}\n",
    "data.yaml: val does not exist": "train: images/train\nval: /nonexistent/val\nnames: {0: a}\n",
    "data.yaml: download script": "train: images/train\nval: /nonexistent/val\nnames: {0: a}\n"
                                   f"download: \"import pathlib; pathlib.Path('{MARKER}').touch()\"\n",
    "data.yaml: python tag": f"!!python/object/apply:os.system ['touch {MARKER}']\n",
    "data.yaml: names not a list": "train: images/train\nval: images/val\nnames: 7\n",
}

SPACES = {
    "space: not YAML": "knobs: [unclosed\n",
    "space: a list": "- weight_bits\n",
    "space: not UTF-8": b"knobs:\n  weight_bits: [\xff]\n",
    "space: unknown knob": "knobs:\n  warp_drive: [1]\n",
    "space: choices not a list": "knobs:\n  weight_bits: 4\n",
    "space: bad bit width": "knobs:\n  weight_bits: ['<script>']\n",
    "space: python tag": f"knobs: !!python/object/apply:os.system ['touch {MARKER}']\n",
    "space: matches no layer": "layers:\n  include: ['nothing.*']\n",
    "space: layers not a mapping": "layers: [1, 2]\n",
    "space: patterns not a list": "layers:\n  include: 5\n",
    "space: deeply nested": "knobs: " + "[" * 50_000 + "]" * 50_000 + "\n",
}

_PROFILE = {**yaml.safe_load((Path(__file__).parents[1] / "hardware_profiles" / "x86-host.yaml").read_text()),
            "name": "probe"}


def _profile_with(**changes) -> str:
    return yaml.safe_dump({**_PROFILE, **changes})


PROFILES = {
    "profile: not YAML": "name: [unclosed\n",
    "profile: not UTF-8": b"name: \xff\n",
    "profile: missing keys": "name: probe\n",
    "profile: bad measurement": _profile_with(measurement="telepathy"),
    "profile: precisions unhashable": _profile_with(compute_precisions=["fp32", ["fp16"]]),
    "profile: target not a mapping": _profile_with(tvm={"target": "llvm -mtriple=../../evil"}),
    "profile: threads not a number": _profile_with(threads="many"),
    "profile: deeply nested": "name: " + "{a: " * 20_000 + "}" * 20_000 + "\n",
    "profile: python tag": f"name: !!python/object/apply:os.system ['touch {MARKER}']\n",
    "profile: rpc port not a number": _profile_with(measurement="rpc", rpc={"tracker_host": "127.0.0.1",
                                                                          "tracker_port": "http", "key": "k"}),
}

CANDIDATES = {
    "candidate: not JSON": "{layers: ",
    "candidate: not UTF-8": b'{"layers": {"\xff": {}}}',
    "candidate: a list": "[1, 2]",
    "candidate: deeply nested": "[" * 100_000 + "]" * 100_000,
    "candidate: unknown knob": json.dumps({"layers": {"model.0.conv": {"warp": 1}}}),
    "candidate: knob of the wrong type": json.dumps({"layers": {"model.0.conv": {"weight_bits": "<script>"}}}),
    "candidate: knob not finite": '{"layers": {"model.0.conv": {"prune_ratio": NaN}}}',
    "candidate: layers of another model": json.dumps({"layers": {"model.99.conv": {"weight_bits": 4}}}),
    "candidate: layer knobs not a mapping": json.dumps({"layers": {"model.0.conv": [4]}}),
}

# `search run --designs`: each refused before any slow work, naming the design or the flag
DESIGNS = {
    "designs: not JSON": (["{layers: "], []),
    "designs: a layer the space does not search": ([json.dumps({"layers": {"model.22.dfl.conv": {"weight_bits": 4}}})],
                                                   []),
    "designs: more than the trials": ([json.dumps({"layers": {}})] * 3, ["--trials", "2"]),
    "designs: with --resume": ([json.dumps({"layers": {}})], ["--resume"]),
}

BATCHES = {
    "batch: not YAML": "searches: [unclosed\n",
    "batch: not UTF-8": b"searches:\n  - out: \xff\n",
    "batch: a list": "- out: a\n",
    "batch: searches not a list": "searches: {out: a}\n",
    "batch: unknown key": "searches:\n  - out: runs/a\n    trails: 2\n",
    "batch: python tag": f"searches: !!python/object/apply:os.system ['touch {MARKER}']\n",
    "batch: a search not a mapping": "searches:\n  - 7\n",
    "batch: no searches": "searches: []\n",
    "batch: deeply nested": "searches: " + "[" * 50_000 + "]" * 50_000 + "\n",
}

TIMINGS = {
    "timings: not UTF-8": b"design_id,profile,runtime,latency_ms\n\xff\xfe,raspberry-pi-4,ort,1\n",
    "timings: missing column": "design_id,profile,latency_ms\nabcdefabcdef,raspberry-pi-4,1\n",
    "timings: unknown designs": "design_id,profile,runtime,latency_ms\n"
                                + "".join(f"{i:012x},raspberry-pi-4,ort,{i + 1}\n" for i in range(6)),
    "timings: path in design id": "design_id,profile,runtime,latency_ms\n"
                                  + "".join(f"../../{i},raspberry-pi-4,ort,1\n" for i in range(6)),
    "timings: negative latency": "design_id,profile,runtime,latency_ms\nabcdefabcdef,raspberry-pi-4,ort,-1\n",
    "timings: not a number": "design_id,profile,runtime,latency_ms\nabcdefabcdef,raspberry-pi-4,ort,<b>\n",
    "timings: a binary file": bytes(range(256)) * 4,
}


def _command(name: str, tmp: Path, good: dict) -> list[str]:
    if name in CHECKPOINTS:
        return _run(tmp, good, model=CHECKPOINTS[name](tmp, good))
    if name in DATA:
        return _run(tmp, good, data=_file(tmp, "data.yaml", DATA[name]))
    if name in SPACES:
        return _run(tmp, good, space=_file(tmp, "space.yaml", SPACES[name]))
    if name in PROFILES:
        return _run(tmp, good, profile=_file(tmp, "profile.yaml", PROFILES[name]))
    if name in CANDIDATES:
        return ["eval", "--preset", "smoke", "--data", str(good["data"]), "--model", str(good["checkpoint"]),
                "--candidate", str(_file(tmp, "candidate.json", CANDIDATES[name]))]
    if name in DESIGNS:
        texts, extra = DESIGNS[name]
        designs = [str(_file(tmp, f"design-{number}.json", text)) for number, text in enumerate(texts)]
        return [*_run(tmp, good), "--designs", *designs, *extra]
    if name in BATCHES:
        return ["batch", str(_file(tmp, "jobs.yaml", BATCHES[name]))]
    return ["calibrate", "--profile", "raspberry-pi-4", "--timings", str(_file(tmp, "timings.csv", TIMINGS[name]))]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


PROBES = [*CHECKPOINTS, *DATA, *SPACES, *PROFILES, *CANDIDATES, *DESIGNS, *BATCHES, *TIMINGS]
# what the one line names: the probed input (not another one refused by accident)
NAMED = {"checkpoint": r"\.pt\b", "data.yaml": r"data\.yaml", "space": r"space", "profile": r"profile\.yaml|profile probe",
         "candidate": r"candidate|layer", "designs": r"design", "batch": r"jobs\.yaml", "timings": r"timings"}


@pytest.mark.parametrize("name", PROBES)
def test_a_bad_input_is_one_line_and_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, good, name):
    from edgesearch.common.cache import cache_root

    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.chdir(probe)  # batch runs' default folders and relative payload paths land here
    args = _command(name, probe, good)
    before, calibration = _snapshot(probe), cache_root() / "calibration" / "raspberry-pi-4.json"
    result = run_in_process(capsys, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (name, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("search: error: "), (name, result.stderr[-3000:])
    assert re.search(NAMED[name.split(":")[0]], lines[0]), (name, lines[0])
    assert "Traceback" not in result.stderr + result.stdout
    assert _snapshot(probe) == before, f"{name}: wrote {set(_snapshot(probe)) - set(before)}"
    assert not (probe / "out").exists() and not calibration.exists() and not (tmp_path / "climbed.txt").exists()
