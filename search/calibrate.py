"""`search calibrate --profile P --timings FILE`: refit a device profile's latency model to latencies
a user measured on their own device (issue 17, item 3).

The timings file is a CSV with the columns

    design_id,profile,runtime,latency_ms
    3f2a9c81d0b4,raspberry-pi-4,onnxruntime 1.20 CPU 4 threads,412.5

one row per timed design (several rows of one design: their median), >= 5 designs, every one
exported by `search export` (its record, cache_root()/exports/<design id>.json, holds the work the
latency model prices: NetworkWork), all for profile P and one runtime, latencies in ms > 0.
bench/time_on_device.py writes such rows with NCNN or ONNX Runtime (a Raspberry Pi); on a Jetson, trtexec's
"GPU Compute Time ... median" is the figure (README, "Calibrating a device").

What a refit may change (runners/hardware/latency_model.REFIT_FREE): one factor scaling every
compute and memory efficiency (clocks, power mode, runtime version) and the per-kernel launch
overhead. Everything else (the efficiencies' ratios between precisions and memory, host_ms, the
peaks) keeps the shipped fit: five timings cannot separate more. The refit, with its own
leave-one-out error, is written atomically to cache_root()/calibration/<P>.json (never the shipped
YAML); later runs on P use it and name it in their labels. Delete that file to return to the
shipped calibration. Bad input (unknown designs, another profile, missing or non-positive values,
fewer than 5 designs) is refused with one line and exit 2, and nothing is written.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

from edgesearch.common.errors import InputError
from edgesearch.runners.hardware.latency_model import (
    REFIT_FREE,
    REFIT_MIN_POINTS,
    NetworkWork,
    refit,
    refit_path,
    shipped_calibration,
    store_refit,
)
from edgesearch.runners.hardware.profiles import load_profile

COLUMNS = ("design_id", "profile", "runtime", "latency_ms")
DESIGN_ID = re.compile(r"^[0-9a-f]{12}$")


def exports_dir() -> Path:
    from edgesearch.runners.export import exports_dir as registry

    return registry()


def read_timings(path: Path, profile_name: str) -> list[dict]:
    """The rows of a timings file, checked (module docstring): [{design_id, runtime, latency_ms,
    samples, record}], one per design."""
    if not path.is_file():
        raise InputError(f"timings file not found: {path}")
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"timings file {path} is not a readable CSV ({error})") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(f"timings file {path.name}: missing column(s) {', '.join(missing)}; the columns are "
                         f"{','.join(COLUMNS)}")
    by_design: dict[str, dict] = {}
    for number, raw in enumerate(rows, start=2):  # line 1 is the header
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"timings file {path.name} line {number}"
        empty = [c for c in COLUMNS if not row.get(c)]
        if empty:
            raise InputError(f"{where}: missing value(s) for {', '.join(empty)}")
        if row["profile"] != profile_name:
            raise InputError(f"{where}: profile {row['profile']!r}, but this refit is for {profile_name!r} "
                             "(one profile per timings file)")
        try:
            latency = float(row["latency_ms"])
        except ValueError:
            raise InputError(f"{where}: latency_ms {row['latency_ms']!r} is not a number") from None
        if not math.isfinite(latency) or latency <= 0:
            raise InputError(f"{where}: latency_ms must be a positive number of milliseconds, not {row['latency_ms']}")
        design = row["design_id"].lower()
        entry = by_design.setdefault(design, {"design_id": design, "runtime": row["runtime"], "samples": [],
                                              "line": number})
        if entry["runtime"] != row["runtime"]:
            raise InputError(f"{where}: runtime {row['runtime']!r} differs from {entry['runtime']!r} on line "
                             f"{entry['line']} for the same design")
        entry["samples"].append(latency)
    runtimes = sorted({entry["runtime"] for entry in by_design.values()})
    if len(runtimes) > 1:
        raise InputError(f"timings file {path.name}: several runtimes ({', '.join(runtimes)}); a calibration means "
                         "one runtime: one file per runtime")
    if len(by_design) < REFIT_MIN_POINTS:
        raise InputError(f"timings file {path.name}: {len(by_design)} timed design(s); a refit needs at least "
                         f"{REFIT_MIN_POINTS} different designs exported by `search export`")
    for entry in by_design.values():
        entry["record"] = _export_record(entry["design_id"], profile_name, f"timings file {path.name} line "
                                                                           f"{entry['line']}")
        entry["latency_ms"] = statistics.median(entry["samples"])
    return list(by_design.values())


def _export_record(design: str, profile_name: str, where: str) -> dict:
    folder = exports_dir()
    path = folder / f"{design}.json"
    if not DESIGN_ID.match(design) or not path.is_file():
        raise InputError(f"{where}: unknown design id {design!r}: no export of it in {folder} (time designs "
                         "written by `search export` on this machine)")
    try:
        record = json.loads(path.read_text())
        NetworkWork.from_json(record["network_work"])
    except (ValueError, KeyError, TypeError, InputError) as error:
        raise InputError(f"{where}: the export record {path} is unreadable ({error}): export the design again") \
            from None
    if record.get("profile") not in (None, profile_name):
        raise InputError(f"{where}: design {design} was exported for profile {record['profile']!r}, not "
                         f"{profile_name!r}")
    return record


def calibrate(profile_name: str, timings: Path) -> dict:
    """Check the timings, refit, store; returns what was written (for the CLI's lines and tests)."""
    profile = load_profile(profile_name)
    rows = read_timings(Path(timings), profile.name)
    works = [NetworkWork.from_json(row["record"]["network_work"]) for row in rows]
    measured = [row["latency_ms"] for row in rows]
    kept = [{"design_id": row["design_id"], "runtime": row["runtime"], "samples_ms": row["samples"]} for row in rows]
    calibration = refit(profile, works, measured, kept, where=str(Path(timings).resolve()))
    shipped = shipped_calibration(profile)
    path = store_refit(calibration)
    return {"path": path, "calibration": calibration, "shipped": shipped}


def cmd_calibrate(args) -> None:
    result = calibrate(args.profile, Path(args.timings))
    calibration, shipped = result["calibration"], result["shipped"]
    print(f"refitted {calibration.profile} on {len(calibration.points)} timed designs; changed only "
          f"{', '.join(REFIT_FREE)} (every efficiency scaled together, the per-kernel overhead): the rest is the "
          "shipped fit")
    for name in ("eff_fp32", "eff_fp16", "eff_int8", "eff_mem", "overhead_ms"):
        print(f"  {name:12} shipped {shipped.params[name]:.4g} -> refit {calibration.params[name]:.4g}")
    print("  design        measured ms  shipped estimate  refit estimate  leave-one-out")
    for point in calibration.points:
        print(f"  {point['design_id']}  {point['latency_ms']:11.2f}  {point['shipped_estimate_ms']:16.2f}  "
              f"{point['estimate_ms']:14.2f}  {point['loo_ms']:13.2f}")
    print(f"leave-one-out error: median {calibration.loo_median_pct:.1f} %, p90 {calibration.loo_p90_pct:.1f} % "
          "(the ± band later estimates carry)")
    print(f"stored in {result['path']} (used by later runs on {calibration.profile}; delete it to return to the "
          f"shipped calibration; the profile YAML is unchanged)")


__all__ = ["COLUMNS", "calibrate", "cmd_calibrate", "read_timings", "refit_path"]
