"""`search calibrate`: a user's device timings refit only what a 5-point refit may change, later
estimates use and name the refit, and every bad timings file is refused with one line, exit 2,
and nothing written."""

import json

import pytest

from conftest import run_in_process
from edgesearch.runners.hardware import latency_model as lm
from edgesearch.runners.hardware.profiles import load_profile

PROFILE = "raspberry-pi-4"
RUNTIME = "onnxruntime 1.20 CPU 4 threads"
TINY = "search/yolov8-tiny.yaml"
# five designs a user might export: the tiny YOLO at a few sizes, one of them int8 (the Pi computes int8)
DESIGNS = {f"{i:012x}": (TINY, imgsz, precision)
           for i, (imgsz, precision) in enumerate([(96, "fp32"), (128, "fp32"), (160, "int8"), (224, "fp32"),
                                                   (320, "fp32"), (256, "int8")], start=0xabc000)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own holding the export records `search export` would have written."""
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGESEARCH_CACHE", str(root))
    exports = root / "exports"
    exports.mkdir(parents=True)
    for design, (model, imgsz, precision) in DESIGNS.items():
        record = {"design_id": design, "profile": PROFILE, "imgsz": imgsz, "candidate": {"layers": {}},
                  "network_work": lm.model_work(model, imgsz, precision).to_json(), "files": []}
        (exports / f"{design}.json").write_text(json.dumps(record))
    return root


def plausible_timings(scale=1.8, launch_ms=0.3) -> dict[str, float]:
    """What a Pi might measure: the shipped estimate slowed by `scale` plus `launch_ms` per kernel."""
    profile = load_profile(PROFILE)
    shipped = lm.shipped_calibration(profile)
    timings = {}
    for design, (model, imgsz, precision) in DESIGNS.items():
        work = lm.model_work(model, imgsz, precision)
        timings[design] = lm.estimate(work, profile, shipped)["latency_ms"] * scale + launch_ms * work.kernels
    return timings


def write_csv(path, rows, header="design_id,profile,runtime,latency_ms"):
    path.write_text("\n".join([header, *(",".join(str(v) for v in row) for row in rows)]) + "\n")
    return path


def good_rows(timings):
    return [(design, PROFILE, RUNTIME, f"{ms:.3f}") for design, ms in timings.items()]


def test_refit_changes_only_scale_and_overhead_and_is_used_and_named(cache, tmp_path, capsys):
    profile = load_profile(PROFILE)
    shipped = lm.shipped_calibration(profile)
    timings = plausible_timings()
    csv = write_csv(tmp_path / "timings.csv", good_rows(timings))
    result = run_in_process(capsys, "calibrate", "--profile", PROFILE, "--timings", str(csv))
    assert result.returncode == 0, result.stderr
    assert "scale, overhead_ms" in result.stdout and "leave-one-out error" in result.stdout
    path = lm.refit_path(PROFILE)
    assert path.is_file() and path.parent == cache / "calibration"
    refit = lm.calibration_for(profile)
    assert refit.calibrated and refit.free == list(lm.REFIT_FREE) and len(refit.points) == len(DESIGNS)
    # one factor on every efficiency: their ratios and host_ms stay as shipped
    factor = refit.params["eff_fp32"] / shipped.params["eff_fp32"]
    assert factor == pytest.approx(1 / 1.8, rel=0.02)  # the timings are 1.8x the shipped estimate ...
    for name in ("eff_fp16", "eff_int8", "eff_mem"):
        assert refit.params[name] == pytest.approx(shipped.params[name] * factor, rel=1e-9), name
    assert refit.params["host_ms"] == shipped.params["host_ms"]
    assert refit.params["overhead_ms"] == pytest.approx(1.8 * shipped.params["overhead_ms"] + 0.3, rel=0.05)  # ... + 0.3 ms a kernel
    # the refit predicts the timings it was fitted to, and later estimates name it with its error band
    for point in refit.points:
        assert point["estimate_ms"] == pytest.approx(timings[point["design_id"]], rel=0.15)
    work = lm.model_work(TINY, 192, "fp32")
    estimate = lm.estimate(work, profile)
    assert "your refit of 6 timings" in estimate["latency_source"]
    assert estimate["latency_error_pct"] == pytest.approx(refit.loo_p90_pct)
    assert estimate["latency_ms"] != pytest.approx(lm.estimate(work, profile, shipped)["latency_ms"], rel=0.05)
    # the shipped profile is untouched: its YAML still fits to what it shipped
    assert lm.calibrate_profile(profile).params == pytest.approx(shipped.params)


BAD = {
    "unknown design": (lambda t: good_rows(t)[:4] + [("0123456789ab", PROFILE, RUNTIME, "12.5")], "unknown design id"),
    "path as a design id": (lambda t: good_rows(t)[:4] + [("../../etc/x", PROFILE, RUNTIME, "12.5")],
                            "unknown design id"),
    "zero latency": (lambda t: good_rows(t)[:5] + [(list(t)[5], PROFILE, RUNTIME, "0")], "positive"),
    "negative latency": (lambda t: [(d, p, r, "-3") if i == 2 else (d, p, r, v)
                                    for i, (d, p, r, v) in enumerate(good_rows(t))], "positive"),
    "not a number": (lambda t: [(d, p, r, "fast") if i == 1 else (d, p, r, v)
                                for i, (d, p, r, v) in enumerate(good_rows(t))], "not a number"),
    "missing value": (lambda t: [(d, p, "", v) if i == 0 else (d, p, r, v)
                                 for i, (d, p, r, v) in enumerate(good_rows(t))], "missing value"),
    "fewer than 5": (lambda t: good_rows(t)[:4], "at least 5"),
    "another profile": (lambda t: [(d, "jetson-nano" if i == 3 else p, r, v)
                                   for i, (d, p, r, v) in enumerate(good_rows(t))], "one profile per timings file"),
    "two runtimes": (lambda t: [(d, p, "trtexec" if i == 3 else r, v)
                                for i, (d, p, r, v) in enumerate(good_rows(t))], "several runtimes"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_timings_are_refused_with_one_line_and_leave_the_cache_untouched(cache, tmp_path, capsys, case):
    rows, fragment = BAD[case]
    timings = plausible_timings()
    path = lm.refit_path(PROFILE)
    # an earlier good refit must survive a bad file byte for byte
    good = write_csv(tmp_path / "good.csv", good_rows(timings))
    assert run_in_process(capsys, "calibrate", "--profile", PROFILE, "--timings", str(good)).returncode == 0
    before = path.read_bytes()
    bad = write_csv(tmp_path / "bad.csv", rows(timings))
    result = run_in_process(capsys, "calibrate", "--profile", PROFILE, "--timings", str(bad))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("search: error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.is_file()) == [path.name]  # no temporary left


def test_a_missing_column_or_file_is_refused_and_nothing_is_written(cache, tmp_path, capsys):
    timings = plausible_timings()
    bad = write_csv(tmp_path / "bad.csv", [row[:3] for row in good_rows(timings)], header="design_id,profile,runtime")
    for args, fragment in ((["--timings", str(bad)], "missing column(s) latency_ms"),
                           (["--timings", str(tmp_path / "none.csv")], "timings file not found")):
        result = run_in_process(capsys, "calibrate", "--profile", PROFILE, *args)
        assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert not lm.refit_path(PROFILE).exists()
