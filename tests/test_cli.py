"""The `search` command as a user meets it: listings, one-line errors with exit 2, nothing written."""

import json

import pytest

from conftest import run_cli, run_in_process


def _assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("search: error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr[-2000:]


def test_profiles_and_spaces_are_listed(capsys):
    profiles = run_in_process(capsys, "profiles")
    assert profiles.returncode == 0
    for name in ("x86-host", "raspberry-pi-4", "jetson-nano", "jetson-orin-nano"):
        assert name in profiles.stdout
    spaces = run_in_process(capsys, "spaces")
    assert spaces.returncode == 0 and "yolov8" in spaces.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--profile", "no-such-device"], "unknown profile"),
        (["--space", "no-such-space"], "unknown space"),
        (["--model", "/nonexistent/best.pt"], "checkpoint not found"),
    ],
)
def test_bad_run_inputs_fail_cleanly_and_write_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    result = run_in_process(capsys, "run", "--preset", "smoke", "--out", str(out), *args)
    _assert_one_line_error(result, fragment)
    assert not out.exists()


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    before = bad.read_bytes()
    result = run_in_process(capsys, "eval", "--preset", "smoke", "--model", str(bad), "--uniform", "bits=4")
    _assert_one_line_error(result, "checkpoint")
    assert bad.read_bytes() == before


def test_data_yaml_without_val_is_refused(tmp_path, capsys, smoke_inputs):
    data = tmp_path / "data.yaml"
    train = smoke_inputs.data_yaml.parent / "images" / "train"
    data.write_text(f"train: {train}\nnames: {{0: a}}\n")
    result = run_in_process(capsys, "eval", "--preset", "smoke", "--data", str(data), "--uniform", "bits=4")
    _assert_one_line_error(result, "data.yaml")


def test_candidate_naming_a_missing_layer_is_refused(tmp_path, capsys, smoke_inputs):
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps({"layers": {"model.99.conv": {"weight_bits": 4}}}))
    result = run_in_process(capsys, "eval", "--preset", "smoke", "--candidate", str(candidate))
    _assert_one_line_error(result, "model.99.conv")


def test_eval_prints_one_json_object_with_every_score(smoke_inputs):
    result = run_cli("eval", "--preset", "smoke", "--uniform", "bits=4,scheme=affine,granularity=channel,prune=0.25",
                     "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout)
    for key in ("map50_95", "map50", "latency_ms", "latency_source", "sram_bytes", "weight_bytes",
                "activation_bytes", "fits_sram", "params", "flops"):
        assert key in scores
    assert scores["latency_source"].startswith("measured")
    assert scores["sram_bytes"] == scores["weight_bytes"] + scores["activation_bytes"]
    assert 0.0 <= scores["map50_95"] <= scores["map50"] <= 1.0


def test_remote_profile_without_a_device_labels_latency_estimated(smoke_inputs):
    result = run_cli("eval", "--preset", "smoke", "--profile", "jetson-nano", "--uniform", "bits=8",
                     "--finetune-iters", "0", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout)
    assert scores["latency_source"].startswith("estimated")
    assert "tracker" in scores["latency_source"]  # and says why no device was used


def test_eval_writes_a_deployable_library_for_a_remote_profile(tmp_path, smoke_inputs):
    library = tmp_path / "pi4.so"
    result = run_cli("eval", "--preset", "smoke", "--profile", "raspberry-pi-4", "--uniform", "bits=8",
                     "--finetune-iters", "0", "--json", "--library", str(library))
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout)
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    assert scores["library_bytes"] == library.stat().st_size


def test_a_users_dataset_and_checkpoint_are_never_modified(tmp_path, smoke_inputs):
    import shutil

    dataset = tmp_path / "dataset"
    shutil.copytree(smoke_inputs.data_yaml.parent, dataset, ignore=shutil.ignore_patterns("*.cache"))
    checkpoint = tmp_path / "best.pt"
    shutil.copy2(smoke_inputs.checkpoint, checkpoint)
    # a label cache handed over with the data: ultralytics would np.load(allow_pickle=True) it,
    # and unpickling it opens (creates) `unpickled`
    unpickled = tmp_path / "unpickled"

    class Planted:
        def __reduce__(self):
            return open, (str(unpickled), "w")

    import numpy as np

    for split in (dataset / "labels").iterdir():
        with split.with_suffix(".cache").open("wb") as cache:
            np.save(cache, np.array(Planted(), dtype=object), allow_pickle=True)

    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}

    before = snapshot()
    result = run_cli("eval", "--preset", "smoke", "--data", str(dataset / "data.yaml"), "--model", str(checkpoint),
                     "--uniform", "bits=6", "--finetune-iters", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert snapshot() == before
    assert not unpickled.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--trials", "0"], "--trials must be at least 1"),
    (["--parallel", "0"], "--parallel must be at least 1"),
    (["--max-map-drop", "1.5"], "--max-map-drop is a relative drop"),
    (["--max-map-drop", "0"], "--max-map-drop is a relative drop"),
    (["--latency-budget", "-3"], "--latency-budget must be a positive"),
    (["--rung-steps", "-1"], "--rung-steps must be 0"),
    (["--recover-steps", "-1"], "--recover-steps must be 0"),
    (["--child-steps", "-1"], "--child-steps must be 0"),
    (["--sram-budget", "lots"], "--sram-budget 'lots'"),
])
def test_bad_search_numbers_are_refused_before_anything_runs(tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    result = run_in_process(capsys, "run", "--preset", "smoke", "--out", str(out), *args)
    _assert_one_line_error(result, fragment)
    assert not out.exists()


@pytest.mark.parametrize("command", [["eval", "--uniform", "prune=0.25"],
                                     ["export", "--candidate", "design.json", "--format", "onnx"]])
def test_a_negative_recovery_schedule_is_refused_by_eval_and_export_before_anything_runs(tmp_path, capsys,
                                                                                        command):
    (tmp_path / "design.json").write_text('{"layers": {}}')
    command = [str(tmp_path / part) if part == "design.json" else part for part in command]
    result = run_in_process(capsys, *command, "--preset", "smoke", "--recover-steps", "-2",
                            *(["--out", str(tmp_path / "d.onnx")] if command[0] == "export" else []))
    _assert_one_line_error(result, "--recover-steps must be 0 (the search's fine-tune) or more, not -2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["design.json"]


def test_a_budget_no_design_can_meet_is_refused_at_once(tmp_path, capsys, smoke_inputs):
    out = tmp_path / "run"
    result = run_in_process(capsys, "run", "--preset", "smoke", "--out", str(out), "--sram-budget", "4KiB")
    _assert_one_line_error(result, "no design can meet the SRAM budget of 4 KiB")
    assert "smallest design" in result.stderr and not out.exists()


def test_byte_sizes_parse_with_units():
    from edgesearch.search.cli import parse_bytes

    assert parse_bytes("2MiB") == 2 * 1024**2 and parse_bytes("512 KiB") == 512 * 1024
    assert parse_bytes("1.5MB") == 1_500_000 and parse_bytes("3000000") == 3_000_000
