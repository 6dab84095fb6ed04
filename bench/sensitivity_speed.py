"""The sensitivity pass on the default model: today's pass (method "reference", the work of
VERSION 3) against the fast pass, timed interleaved, and how far their rankings agree.

Every pass is a fresh process (`analyse` as the driver calls it, on the CPU with 2 threads, the
default preset's 128 px and batch 16, the guided space's options and the recipes' values, as
`make demo` prices them). Passes alternate reference, fast, fast, reference, ... so that a busy
spell of a shared host falls on both; the table gives medians, the spread (min-max) and the ratio
of medians. Load averages are recorded beside each pass.

Agreement, per knob family, is Spearman's rank correlation of the priced options over every
(layer, option) pair of the family both tables hold:

  weight_bits   omega of 3..8-bit affine per-channel weights, no sparsity
  scheme        omega of the four schemes at 4 bits per channel, no sparsity
  granularity   omega of the four granularities at 4-bit affine, no sparsity
  sparsity      omega of 25 % / 50 % sparsity of float weights
  all weight options  every weight option's omega
  activation_bits     delta_loss of int8 (and fp16) inputs

The ceiling is today's pass against itself on other train batches (the next `loss_batches`
batches): the agreement that the choice of images alone allows. Structural options (prune, kernel,
rank) are listed for information: their pricing is judged by the structure issue. Also given: per
option, the Spearman across layers (median over the family's options), the stricter "per-layer
ranking".

    .venv/bin/python bench/sensitivity_speed.py [--repeats 3] [--out bench/results/sensitivity_speed]

writes bench/results/sensitivity_speed.{json,md}; the passes' tables are kept in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()

from scipy.stats import spearmanr  # noqa: E402

from edgesearch.common.files import write_text_atomically  # noqa: E402

FAMILIES = {  # family: which weight option keys (bits|scheme|granularity|group|sparsity) it holds
    "weight_bits": lambda b, s, g, sp: b < 16 and s == "affine" and g == "channel" and sp == 0,
    "scheme": lambda b, s, g, sp: b == 4 and g == "channel" and sp == 0,
    "granularity": lambda b, s, g, sp: b == 4 and s == "affine" and sp == 0,
    "sparsity": lambda b, s, g, sp: b >= 16 and sp > 0,
    "all weight options": lambda b, s, g, sp: True,
}
CHANGE_FAMILIES = ("activation_bits", "prune_ratio", "kernel_size", "rank_ratio")
JUDGED = ("weight_bits", "scheme", "granularity", "sparsity", "all weight options", "activation_bits")
THRESHOLD = 0.9

WORKER = r"""
import json, sys, time
from edgesearch.search.cli_env import apply_process_env
apply_process_env()
from edgesearch.runners.accuracy.sensitivity import REFERENCE_SETTINGS, analyse
settings, options, method, out = json.loads(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
if method == "reference":
    settings.update(REFERENCE_SETTINGS)
started = time.perf_counter()
table = analyse(settings, options)
table["wall_s"] = time.perf_counter() - started
json.dump(table, open(out, "w"))
"""


def default_inputs(work: Path, model: str | None, data: str | None) -> tuple[dict, Path]:
    """The default preset's settings and the guided space's options (written to `work`); `model`
    and `data`: a copy of the default base and its data.yaml (None: resolved as `make demo` does)."""
    from edgesearch.search.loop import guided_space
    from edgesearch.search.presets import PRESETS
    from edgesearch.search.resolve import resolve_inputs

    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=model, data=data, preset="default")
    _, options = guided_space(inputs, "default")
    preset = PRESETS["default"]
    settings = {"checkpoint": str(inputs.checkpoint), "data_yaml": str(inputs.data_yaml), "imgsz": preset.imgsz,
                "batch": preset.batch, "threads": 2, "device": "cpu", "seed": 0}
    path = work / "options.json"
    path.write_text(json.dumps(options))
    return settings, path


def run_pass(settings: dict, options: Path, method: str, out: Path, batch_offset: int = 0) -> dict:
    if not out.exists():
        load = os.getloadavg()[0]
        subprocess.run([sys.executable, "-c", WORKER, json.dumps({**settings, "batch_offset": batch_offset}),
                        str(options), method, str(out)], check=True)
        table = json.loads(out.read_text())
        table["load_before"], table["load_after"] = load, os.getloadavg()[0]
        out.write_text(json.dumps(table))
    return json.loads(out.read_text())


def _key_parts(key: str) -> tuple[int, str, str, float]:
    bits, scheme, granularity, _, sparsity = key.split("|")
    return int(bits), scheme, granularity, float(sparsity)


def priced(table: dict, family: str) -> dict[tuple[str, str], float]:
    """{(layer, option): price} of one family in a table."""
    out = {}
    for layer, info in table["layers"].items():
        if family in FAMILIES:
            for key, option in info["weight_options"].items():
                if FAMILIES[family](*_key_parts(key)):
                    out[(layer, key)] = option["omega"]
        else:
            for value, change in info["changes"].get(family, {}).items():
                out[(layer, value)] = change["delta_loss"]
    return out


def agreement(a: dict, b: dict) -> dict:
    """Per family: pooled Spearman over (layer, option) pairs, and the median over options of the
    Spearman across layers."""
    result = {}
    for family in [*FAMILIES, *CHANGE_FAMILIES]:
        x, y = priced(a, family), priced(b, family)
        pairs = sorted(set(x) & set(y))
        if len(pairs) < 3:
            continue
        pooled = spearmanr([x[p] for p in pairs], [y[p] for p in pairs]).statistic
        per_option = []
        for option in sorted({o for _, o in pairs}):
            layers = [p for p in pairs if p[1] == option]
            if len(layers) >= 3 and len({x[p] for p in layers}) > 1 and len({y[p] for p in layers}) > 1:
                per_option.append(spearmanr([x[p] for p in layers], [y[p] for p in layers]).statistic)
        result[family] = {"pairs": len(pairs), "spearman": float(pooled),
                          "across_layers_median": float(statistics.median(per_option)) if per_option else None,
                          "across_layers_min": float(min(per_option)) if per_option else None}
    return result


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def markdown(payload: dict) -> str:
    t = payload["timing"]
    ref, fast = t["reference"], t["fast"]
    lines = ["| pass | runs | wall s (median) | min-max | load avg before | base + Hutchinson s | curvature s | "
             "weight options s | changes s |", "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for name, row in (("today's (reference)", ref), ("fast", fast)):
        stages = row["stages_median"]
        lines.append(f"| {name} | {len(row['wall']['runs'])} | {row['wall']['median']:.1f} | "
                     f"{row['wall']['min']:.1f}-{row['wall']['max']:.1f} | "
                     f"{', '.join(f'{load:.1f}' for load in row['load'])} | " +
                     " | ".join(f"{stages.get(s, 0):.1f}" for s in ("hessian", "curvature", "weight_options", "changes"))
                     + " |")
    lines.append("")
    lines.append("Stages are medians; the fast pass's weight options run in a second thread beside the losses "
                 "(not on the wall time's path), and its first column is the base's forward (no Hutchinson "
                 "cross-check by default; today's pass: 2 batches x 16 probes).")
    lines.append("")
    lines.append(f"Ratio of medians: **{t['ratio']:.2f}x** faster (per interleaved pair: "
                 f"{', '.join(f'{r:.2f}x' for r in t['pair_ratios'])}).")
    lines.append("")
    lines.append("| knob family | pairs | fast vs today's: Spearman | ceiling: today's on other batches | "
                 "fast vs today's, across layers (median per option) | ceiling, across layers | judged |")
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for family, row in payload["agreement"]["fast_vs_reference"].items():
        ceiling = payload["agreement"]["ceiling"].get(family, {})
        judged = family in JUDGED
        verdict = ("yes: " + ("pass" if row["spearman"] >= THRESHOLD else "FAIL")) if judged else "no (structure issue)"
        lines.append(f"| {family} | {row['pairs']} | {row['spearman']:.3f} | {ceiling.get('spearman', float('nan')):.3f} | "
                     f"{_fmt(row['across_layers_median'])} | {_fmt(ceiling.get('across_layers_median'))} | {verdict} |")
    low = [f for f, row in payload["agreement"]["ceiling"].items() if f in JUDGED and row["spearman"] < THRESHOLD]
    if low:
        lines.append("")
        lines.append(f"Below {THRESHOLD} at the ceiling ({', '.join(low)}): today's figures there move with the "
                     "choice of train batches more than they differ between layers; the fast pass computes the "
                     "same figures on the same batches.")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="passes of each method (interleaved)")
    parser.add_argument("--work", default="bench/sensitivity_runs", help="where the passes' tables are kept")
    parser.add_argument("--out", default="bench/results/sensitivity_speed")
    parser.add_argument("--model", help="the default base's checkpoint (default: resolved as make demo does)")
    parser.add_argument("--data", help="its data.yaml (default: resolved as make demo does)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    settings, options = default_inputs(work, args.model, args.data)
    tables: dict[str, list[dict]] = {"reference": [], "fast": []}
    started = time.time()
    other = None
    for repeat in range(args.repeats):  # ABBA: reference, fast, fast, reference, ...
        order = ("reference", "fast") if repeat % 2 == 0 else ("fast", "reference")
        for method in order:
            table = run_pass(settings, options, method, work / f"{method}-{repeat}.json")
            tables[method].append(table)
            print(f"{method} #{repeat}: {table['wall_s']:.1f} s (load {table['load_before']:.1f})", flush=True)
        if other is None:  # the ceiling early: today's pass on the next batches (its time is not counted)
            other = run_pass(settings, options, "reference", work / "reference-other-batches.json",
                             batch_offset=tables["reference"][0]["images"] // settings["batch"])
    timing: dict = {}
    for method, runs in tables.items():
        stages = {s: statistics.median(r["seconds"][s] for r in runs) for s in runs[0]["seconds"]}
        timing[method] = {"wall": spread([r["wall_s"] for r in runs]), "stages_median": stages,
                          "load": [r["load_before"] for r in runs]}
    assert other is not None
    timing["ratio"] = timing["reference"]["wall"]["median"] / timing["fast"]["wall"]["median"]
    timing["pair_ratios"] = [r["wall_s"] / f["wall_s"] for r, f in zip(tables["reference"], tables["fast"], strict=True)]
    payload = {
        "settings": settings, "repeats": args.repeats, "started": started, "cpus": os.cpu_count(),
        "timing": timing,
        "agreement": {"fast_vs_reference": agreement(tables["reference"][0], tables["fast"][0]),
                      "ceiling": agreement(tables["reference"][0], other),
                      "reference_repeat": agreement(tables["reference"][0], tables["reference"][-1])},
    }
    header = (f"Sensitivity pass on the default model (YOLOv8n, {settings['imgsz']} px, batch {settings['batch']}, "
              f"x86-host's guided space and recipes, CPU, 2 threads, {os.cpu_count()} cores, shared host), "
              f"{args.repeats} interleaved passes each; agreement of the first fast table with the first of today's, "
              "ceiling: today's pass on the next train batches against today's.")
    text = markdown(payload)
    write_text_atomically(Path(args.out + ".json"), json.dumps(payload, indent=2))
    write_text_atomically(Path(args.out + ".md"), header + "\n\n" + text + "\n")
    print(header + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
