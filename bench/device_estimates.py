"""Calibrated latency estimates against what they estimate (issue 17, item 7, first half).

Per device profile, each calibration point of its YAML (`latency_model.points`) with
  measured     the public (or, for x86-host, locally measured) latency the point records
  roofline     runners/costs.roofline_latency_ms with the profile's peaks and bandwidth, as the
               search priced designs before the latency model: fp32 convs at the fp32 peak with
               fp32 weights, int8 convs at the int8 peak, fp16 convs as fp32 (it had no fp16 price)
  calibrated   runners/hardware/latency_model.py: the profile's fitted model (its estimate of a
               point uses every fitted point; `loo` is the estimate by a fit without that point)
and the leave-one-out summary (median, p90 of |estimate / measured - 1|) that labels carry.

On x86-host (this machine), the same model form against TVM builds of 26 varied designs that are
not fit points (int8, pruned, kernel-cropped, low-rank, sparse and weight-only quantized, two
architectures, five input sizes), each built with edgesearch's own pipeline
(spaces.apply.apply_candidate + spaces.activations.calibrate + spaces.packing.bake_fake_quant) and
measured by runners.hardware.scores.hardware_scores (TVM llvm build, fixed schedule, time
evaluator), then re-timed with x86-host's 12 fit points in one session of interleaved rounds (the
cores are shared: each round times every build in a shuffled order; a build's figure is the median
over rounds of its fastest run in the round): Spearman rank correlation and median absolute error of
estimate vs measured. Targets (issue 17): LOO median <= 30 % per calibrated device profile; on
x86-host Spearman >= 0.9 and median error <= 15 %.

    .venv/bin/python bench/device_estimates.py --measure   # time x86 fit points + designs (~30 min), then tables
    .venv/bin/python bench/device_estimates.py             # tables from the last session (bench/results/x86_session.json)

Second half (item 7): `--front RUN` reads a finished search on a device profile (e.g. `search run
--profile jetson-nano --max-map-drop 0.01 --imgsz 320`) and writes its front with each design's
estimated latency and error band, its speed-up over the fp32 base and over the uniform fp16 recipe
(what a Nano user deploys without edgesearch), the fastest design within 1 % (held to the higher of
the base and the fp32 control with the same training record) and what each design computes in, so
that a speed-up from int8 on a device without int8 would show:

    .venv/bin/python bench/device_estimates.py --front reports/jetson-nano-yolov8 --out bench/results/nano_front

--measure prints x86-host's fit points as YAML lines for hardware_profiles/x86-host.yaml: the
validation is meaningful when the YAML's points come from the same session as the designs' figures.
Measurements here use one TVM thread (the search's default: two trials in flight on 2 cores, one
thread each). Writes OUT.md (the tables) and OUT.json (every figure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()
os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgesearch.common.files import write_text_atomically  # noqa: E402
from edgesearch.runners.costs import LayerCost, roofline_latency_ms  # noqa: E402
from edgesearch.runners.hardware.latency_model import (  # noqa: E402
    calibration_for,
    estimate,
    model_work,
    network_work,
    shipped_calibration,
)
from edgesearch.runners.hardware.profiles import available_profiles, load_profile  # noqa: E402

X86 = "x86-host"
TINY = "search/yolov8-tiny.yaml"
INT8 = {"weight_bits": 8, "scheme": "symmetric", "granularity": "filter", "activation_bits": 8}
# x86-host's fit points: both architectures in fp32 at sizes whose feature maps the fixed schedule vectorizes
# fully (128, 256) and partly (160, 224: 20x20 and 28x28 maps run 4-lane vectors), and all-int8 at 128 and 256
FIT_POINTS = [(model, imgsz, precision) for model in ("yolov8n.yaml", TINY)
              for imgsz, precision in ((128, "fp32"), (160, "fp32"), (224, "fp32"), (256, "fp32"), (128, "int8"),
                                       (256, "int8"))]
# (name, architecture, imgsz, what each selected conv gets, which convs): none of them is a fit point
DESIGNS = [
    ("v8n-160-int8", "yolov8n.yaml", 160, INT8, "all"),
    ("v8n-192-prune25", "yolov8n.yaml", 192, {"prune_ratio": 0.25}, "all"),
    ("v8n-224-prune50", "yolov8n.yaml", 224, {"prune_ratio": 0.5}, "all"),
    ("v8n-160-kernel1", "yolov8n.yaml", 160, {"kernel_size": 1}, "bottleneck"),
    ("v8n-192-rank50", "yolov8n.yaml", 192, {"rank_ratio": 0.5}, "all"),
    ("v8n-256-int8-backbone", "yolov8n.yaml", 256, INT8, "backbone"),
    ("v8n-224-int8-head", "yolov8n.yaml", 224, INT8, "head"),
    ("v8n-128-prune25-int8", "yolov8n.yaml", 128, {"prune_ratio": 0.25, **INT8}, "all"),
    ("v8n-256-prune50-kernel1", "yolov8n.yaml", 256, {"prune_ratio": 0.5, "kernel_size": 1}, "bottleneck"),
    ("v8n-160-rank25-int8", "yolov8n.yaml", 160, {"rank_ratio": 0.25, **INT8}, "all"),
    ("v8n-192-w4-int8", "yolov8n.yaml", 192, {**INT8, "weight_bits": 4}, "all"),
    ("v8n-128-int8-alternate", "yolov8n.yaml", 128, INT8, "alternate"),
    ("v8n-256-prune25-backbone", "yolov8n.yaml", 256, {"prune_ratio": 0.25}, "backbone"),
    ("v8n-224-kernel1-int8", "yolov8n.yaml", 224, {"kernel_size": 1, **INT8}, "bottleneck"),
    ("v8n-192-sparse50", "yolov8n.yaml", 192, {"weight_bits": 32, "sparsity": 0.5}, "all"),
    ("tiny-192-w4-weight-only", TINY, 192, {"weight_bits": 4, "scheme": "affine"}, "all"),
    ("v8n-128-rank50-kernel1", "yolov8n.yaml", 128, {"rank_ratio": 0.5, "kernel_size": 1}, "all"),
    ("tiny-160-int8", TINY, 160, INT8, "all"),
    ("tiny-192-prune50", TINY, 192, {"prune_ratio": 0.5}, "all"),
    ("tiny-224-kernel1", TINY, 224, {"kernel_size": 1}, "bottleneck"),
    ("tiny-256-rank50", TINY, 256, {"rank_ratio": 0.5}, "all"),
    ("tiny-128-prune25-int8", TINY, 128, {"prune_ratio": 0.25, **INT8}, "all"),
    ("tiny-256-int8-head", TINY, 256, INT8, "head"),
    ("tiny-192-prune50-rank50", TINY, 192, {"prune_ratio": 0.5, "rank_ratio": 0.5}, "all"),
    ("tiny-160-int8-alternate", TINY, 160, INT8, "alternate"),
    ("tiny-224-prune25-kernel1-int8", TINY, 224, {"prune_ratio": 0.25, "kernel_size": 1, **INT8}, "all"),
]


# --------------------------------------------------------------------------------- building


def base_model(architecture: str) -> torch.nn.Module:
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import LOGGER

    from edgesearch.runners.hardware.latency_model import ROOT

    path = ROOT / architecture
    torch.manual_seed(0)
    LOGGER.setLevel("ERROR")
    return DetectionModel(str(path) if path.is_file() else architecture, verbose=False).eval()


def selected_convs(model, which: str) -> list[str]:
    from ultralytics.nn.modules.block import Bottleneck

    from edgesearch.spaces.apply import conv_layers

    names = [n for n in conv_layers(model) if ".dfl." not in f"{n}."]
    if which == "none":
        return []
    if which == "backbone":
        return [n for n in names if int(n.split(".")[1]) <= 9]
    if which == "head":
        return [n for n in names if int(n.split(".")[1]) > 9]
    if which == "alternate":
        return names[::2]
    if which == "bottleneck":
        return [f"{n}.cv2.conv" for n, m in model.named_modules() if isinstance(m, Bottleneck)]
    return names


def build_design(architecture: str, imgsz: int, knobs: dict, which: str) -> torch.nn.Module:
    """A design as edgesearch builds it: apply_candidate, int8 ranges calibrated on random images,
    fake quantization baked (what hardware_scores takes)."""
    import dataclasses

    from edgesearch.spaces.activations import calibrate
    from edgesearch.spaces.apply import apply_candidate, uniform_candidate
    from edgesearch.spaces.candidate import LayerKnobs
    from edgesearch.spaces.packing import bake_fake_quant

    fused_names = base_model(architecture)
    layers = selected_convs(fused_names, which)
    structural = {k: v for k, v in knobs.items() if k in ("prune_ratio", "kernel_size", "rank_ratio")}
    rest = {k: v for k, v in knobs.items() if k not in structural}
    # the structural knobs where a layer can take them (uniform_candidate), the others on every selected layer
    candidate = uniform_candidate(fused_names, LayerKnobs(**structural), layers)
    candidate.layers.update({name: dataclasses.replace(candidate.layers[name], **rest) for name in layers})
    model = apply_candidate(fused_names, candidate)
    calibrate(model, [torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))])
    bake_fake_quant(model)
    return model.eval()


def fit_point_model(architecture: str, imgsz: int, precision: str) -> torch.nn.Module:
    """A fit point as x86-host's YAML records it: the fused architecture, every conv but DFL's int8
    for `int8` (8-bit symmetric per-filter weights, int8 activations: cost_basis.all_int8)."""
    return build_design(architecture, imgsz, INT8 if precision == "int8" else {}, "all" if precision == "int8" else "none")


def precisions_of(model, profile) -> dict[str, str]:
    from edgesearch.runners.hardware.precision import conv_precisions

    return conv_precisions(model, profile.compute_precisions)


class _KeepingMeasurer:
    """hardware_scores' local measurement (a fixed-schedule TVM build timed by the time evaluator, as a
    trial's), keeping each executable for the interleaved re-timing below."""

    def __init__(self, profile):
        from edgesearch.runners.hardware.measure import LocalMeasurer, MeasurementPlan

        self.inner = LocalMeasurer(profile, MeasurementPlan("local"))
        self.kind, self.profile, self.kept = "local", profile, None

    def latency(self, design) -> dict:
        from edgesearch.runners.hardware.build import build_local, measure_latency_local

        executable, build = build_local(design.module, self.profile.target)
        self.kept = (executable, design.imgsz)
        return {**measure_latency_local(executable, design.imgsz), "activation_bytes": build["activation_bytes"],
                "latency_source": "measured by hardware_scores (fixed schedule, time evaluator median)"}

    def describe(self) -> str:
        return "measured on this machine, kept for interleaved re-timing"


def measure(builders: dict, profile, rounds: int, repeat: int = 5, seed: int = 0) -> dict[str, dict]:
    """{name: {latency_ms, hardware_scores_ms, round_minima_ms}}: each design built and timed once by
    runners.hardware.scores.hardware_scores, then re-timed in `rounds` interleaved rounds (a shuffled
    order each round; `repeat` samples per design per round). latency_ms is the median over rounds of
    each round's fastest sample: the cores are shared with other work, whose interference only ever
    adds time, and every design is timed in every round, so drifts of the load hit all alike."""
    import numpy as np
    import tvm
    from tvm import relax

    from edgesearch.runners.hardware.scores import hardware_scores

    kept, first = {}, {}
    for name, builder in builders.items():
        model, imgsz = builder()
        keeper = _KeepingMeasurer(profile)
        first[name] = hardware_scores(model, profile, imgsz, measurer=keeper)["latency_ms"]
        executable, imgsz = keeper.kept
        vm = relax.VirtualMachine(executable, tvm.cpu())
        data = tvm.runtime.tensor(np.zeros((1, 3, imgsz, imgsz), dtype="float32"), tvm.cpu())
        evaluator = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=10)
        evaluator(data)  # warm-up
        kept[name] = (evaluator, data)
        print(f"  built {name} ({imgsz} px): hardware_scores {first[name]:.3f} ms", flush=True)
    minima: dict[str, list[float]] = {name: [] for name in kept}
    rng = random.Random(seed)
    for index in range(rounds):
        order = list(kept)
        rng.shuffle(order)
        for name in order:
            evaluator, data = kept[name]
            minima[name].append(min(evaluator(data).results) * 1e3)
        print(f"  round {index + 1}/{rounds} done; load average {os.getloadavg()[0]:.1f}", flush=True)
    return {name: {"latency_ms": statistics.median(minima[name]), "hardware_scores_ms": first[name],
                   "round_minima_ms": minima[name]} for name in kept}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} vCPUs, TVM threads {os.environ.get('TVM_NUM_THREADS')}"


# ---------------------------------------------------------------------------------- tables


def roofline_ms(work, profile) -> float:
    """The roofline the search used before the latency model (module docstring)."""
    costs = [LayerCost(c.name, c.flops, c.weight_elements, c.input_elements, c.output_elements) for c in work.convs]
    integer = {c.name for c in work.convs if c.precision == "int8"}
    weight_bytes = {c.name: c.weight_elements * (1 if c.name in integer else 4) for c in work.convs}
    peaks = dict(profile.peak_ops_per_s)
    peaks.setdefault("int8", peaks["fp32"])
    return roofline_latency_ms(costs, peaks, profile.memory_bandwidth_bytes_per_s, weight_bytes, integer)


def profile_table(name: str) -> dict:
    profile = load_profile(name)
    calibration = shipped_calibration(profile)
    rows = []
    for point in calibration.points:
        work = model_work(point["model"], point["imgsz"], point["precision"], point.get("num_classes"))
        rows.append({**point, "roofline_ms": roofline_ms(work, profile), "kernels": work.kernels,
                     "gflops": work.flops / 1e9})
    return {"profile": name, "means": calibration.means, "calibrated": calibration.calibrated,
            "free": calibration.free, "params": calibration.params, "loo_median_pct": calibration.loo_median_pct,
            "loo_p90_pct": calibration.loo_p90_pct, "label": calibration.describe(), "points": rows}


def model_name(point: dict) -> str:
    """A point's network for the tables: the YAML's stem, or the torchvision name and its head."""
    name = Path(point["model"]).stem
    return name + (f" ({point['num_classes']} classes)" if point.get("num_classes") else "")


def pct(estimate_ms, measured_ms) -> str:
    return "-" if estimate_ms is None else f"{(estimate_ms / measured_ms - 1) * 100:+.0f} %"


def profile_markdown(table: dict) -> list[str]:
    status = (f"calibrated: leave-one-out median {table['loo_median_pct']:.1f} %, p90 {table['loo_p90_pct']:.1f} % "
              f"(target: median <= 30 %: {'met' if table['loo_median_pct'] <= 30 else 'NOT met'})"
              if table["calibrated"] else
              f"UNCALIBRATED ({sum(p['fit'] for p in table['points'])} fitted points, fewer than 6): target not met")
    params = ", ".join(f"{k} {v:.3g}" for k, v in table["params"].items())
    lines = [f"### {table['profile']}", "", f"Latency means: {table['means']}", "", f"Status: {status}", "",
             f"Parameters ({', '.join(table['free']) or 'none'} fitted): {params}", "",
             "| model | px | precision | runtime | measured ms | roofline ms (err) | latency model ms (err) | "
             "leave-one-out ms (err) | fitted |",
             "|---|---:|---|---|---:|---:|---:|---:|---|"]
    for p in table["points"]:
        loo = "-" if p["loo_ms"] is None else f"{p['loo_ms']:.2f} ({pct(p['loo_ms'], p['latency_ms'])})"
        lines.append(f"| {model_name(p)} | {p['imgsz']} | {p['precision']} | {p['runtime']} | "
                     f"{p['latency_ms']:.2f} | {p['roofline_ms']:.2f} ({pct(p['roofline_ms'], p['latency_ms'])}) | "
                     f"{p['estimate_ms']:.2f} ({pct(p['estimate_ms'], p['latency_ms'])}) | {loo} | "
                     f"{'yes' if p['fit'] else 'no: reference'} |")
    lines += ["", "Sources:"] + [f"- {model_name(p)} {p['imgsz']} {p['precision']}: {p['source']}"
                                 for p in table["points"]]
    return lines + [""]


def design_builders() -> dict:
    def builder(architecture, imgsz, knobs, which):
        return lambda: (build_design(architecture, imgsz, knobs, which), imgsz)

    return {name: builder(architecture, imgsz, knobs, which) for name, architecture, imgsz, knobs, which in DESIGNS}


def fit_point_builders() -> dict:
    return {fit_point_name(m, s, p): (lambda m=m, s=s, p=p: (fit_point_model(m, s, p), s)) for m, s, p in FIT_POINTS}


def fit_point_name(model: str, imgsz: int, precision: str) -> str:
    return f"fit:{Path(model).stem}-{imgsz}-{precision}"


def measure_x86(rounds: int) -> dict:
    """The x86-host fit points and validation designs built and timed in one interleaved session."""
    profile = load_profile(X86)
    measured = measure({**fit_point_builders(), **design_builders()}, profile, rounds)
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "rounds": rounds,
            "measured": measured}


def fit_point_yaml(session: dict) -> list[str]:
    day = session["date"][:10]
    lines = []
    for model, imgsz, precision in FIT_POINTS:
        m = session["measured"][fit_point_name(model, imgsz, precision)]
        lines.append(f'    - {{model: {model}, imgsz: {imgsz}, precision: {precision}, runtime: "TVM llvm, fixed '
                     f'schedule, 1 thread", latency_ms: {m["latency_ms"]:.3f}, source: "measured {day} on this host '
                     f'({session["machine"]}) by bench/device_estimates.py --measure: median over '
                     f'{session["rounds"]} interleaved rounds of each round\'s fastest of 5 runs; hardware_scores '
                     f'alone: {m["hardware_scores_ms"]:.3f} ms"}}')
    return lines


def x86_validation(session: dict) -> dict:
    from scipy.stats import spearmanr

    profile = load_profile(X86)
    calibration = calibration_for(profile)
    rows = []
    for name, architecture, imgsz, knobs, which in DESIGNS:
        model = build_design(architecture, imgsz, knobs, which)
        work = network_work(model, imgsz, precisions_of(model, profile))
        result = estimate(work, profile, calibration)
        m = session["measured"][name]
        rows.append({"design": name, "architecture": architecture, "imgsz": imgsz, "knobs": knobs, "convs": which,
                     "precisions": sorted({c.precision for c in work.convs}), "gflops": work.flops / 1e9,
                     "kernels": work.kernels, "measured_ms": m["latency_ms"],
                     "hardware_scores_ms": m["hardware_scores_ms"], "estimate_ms": result["latency_ms"],
                     "roofline_ms": roofline_ms(work, profile)})
    est, mea = [r["estimate_ms"] for r in rows], [r["measured_ms"] for r in rows]
    errors = sorted(abs(e / m - 1) * 100 for e, m in zip(est, mea, strict=True))
    roof_errors = [abs(r["roofline_ms"] / r["measured_ms"] - 1) * 100 for r in rows]
    single = [r["hardware_scores_ms"] for r in rows]
    return {"designs": rows, "spearman": float(spearmanr(est, mea).statistic),
            "median_error_pct": statistics.median(errors), "p90_error_pct": float(np.percentile(errors, 90)),
            "roofline_spearman": float(spearmanr([r["roofline_ms"] for r in rows], mea).statistic),
            "roofline_median_error_pct": statistics.median(roof_errors),
            "spearman_vs_single_hardware_scores": float(spearmanr(est, single).statistic),
            "label": calibration.describe(), "machine": session["machine"], "rounds": session["rounds"],
            "session_date": session["date"]}


def x86_markdown(v: dict) -> list[str]:
    ok = v["spearman"] >= 0.9 and v["median_error_pct"] <= 15
    lines = [f"### x86-host: estimate vs TVM measurement of {len(v['designs'])} designs that are not fit points", "",
             f"Machine: {v['machine']}; measured {v['session_date']}: each design built and timed by hardware_scores, "
             f"then re-timed in {v['rounds']} interleaved rounds (median of each round's fastest of 5 runs; the "
             f"cores are shared). Spearman of the estimates against the single hardware_scores timings: "
             f"{v['spearman_vs_single_hardware_scores']:.3f}.", "",
             f"Calibrated model: Spearman {v['spearman']:.3f}, median |error| {v['median_error_pct']:.1f} % "
             f"(p90 {v['p90_error_pct']:.1f} %): targets Spearman >= 0.9 and median <= 15 % "
             f"{'met' if ok else 'NOT met'}. Roofline: Spearman {v['roofline_spearman']:.3f}, median |error| "
             f"{v['roofline_median_error_pct']:.1f} %.", "",
             "| design | px | precisions | GFLOPs | kernels | measured ms | hardware_scores ms | estimate ms | error | "
             "roofline ms |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in v["designs"]:
        lines.append(f"| {r['design']} | {r['imgsz']} | {'+'.join(r['precisions'])} | {r['gflops']:.3f} | "
                     f"{r['kernels']} | {r['measured_ms']:.2f} | {r['hardware_scores_ms']:.2f} | {r['estimate_ms']:.2f} | "
                     f"{pct(r['estimate_ms'], r['measured_ms'])} | {r['roofline_ms']:.2f} |")
    return lines + [""]


def front_table(folder: Path) -> dict:
    """A device run's front, speed-ups and fastest design within 1 % (module docstring, item 7)."""
    import optuna

    from edgesearch.reports import design_data as dd
    from edgesearch.reports.design_names import design_name
    from edgesearch.search import study as studies

    study = optuna.load_study(study_name=studies.STUDY_NAME, storage=f"sqlite:///{folder / 'study.db'}")
    run, base = json.loads((folder / "run.json").read_text()), study.user_attrs["base"]
    rows = [row for row in studies.trial_rows(study) if row["state"] == "COMPLETE" and row["scores"]]
    # the higher of the base and the fp32 control with the same training: the report's floor at a drop of 0
    references = {steps: dd.accuracy_floor({"max_map_drop": 0.0}, base, rows, steps)["map50_95"]
                  for steps in {dd.recovery_steps(row) for row in rows}}
    fp16 = [r for r in rows if (r.get("recipe") or "").startswith("fp16") and dd.recovery_steps(r) == 0]
    fp16_ms = fp16[0]["scores"]["latency_ms"] if fp16 else None

    def entry(row: dict) -> dict:
        scores = row["scores"]
        return {"design": f"#{row['number']}: {design_name(row['candidate'])}",
                "recipe": row.get("recipe"), "training": (scores.get("training") or {}).get("label"),
                "map50_95": scores["map50_95"],
                "within_1pct": scores["map50_95"] >= 0.99 * references[dd.recovery_steps(row)],
                "latency_ms": scores["latency_ms"], "error_pct": scores.get("latency_error_pct"),
                "compute_precision": scores.get("compute_precision"),
                "integer_layers": scores.get("integer_layers", 0),
                "speedup_vs_fp32_base": base["latency_ms"] / scores["latency_ms"],
                "speedup_vs_fp16_recipe": fp16_ms / scores["latency_ms"] if fp16_ms else None,
                "weight_bytes": scores["weight_bytes"], "flops": scores["flops"]}

    entries = [(row, entry(row)) for row in rows]
    front = [e for row, e in entries if row.get("pareto")]
    within = [e for _, e in entries if e["within_1pct"]]
    fastest = min(within, key=lambda e: e["latency_ms"], default=None)
    return {"run": str(folder), "settings": {k: run.get(k) for k in ("profile", "imgsz", "trials", "max_map_drop",
                                                                    "finetune_iters", "recover_steps")},
            "base": {"map50_95": base["map50_95"], "latency_ms": base["latency_ms"],
                     "latency_source": base.get("latency_source")},
            "references": references, "fp16_recipe_ms": fp16_ms, "front": front, "fastest_within_1pct": fastest,
            "designs_scored": len(rows), "designs_computing_int8": sum(1 for r in rows
                                                                       if r["scores"].get("integer_layers"))}


def front_markdown(result: dict) -> list[str]:
    settings = ", ".join(f"{k} {v}" for k, v in result["settings"].items())
    base = result["base"]
    lines = [f"## The front of {result['run']} ({settings})", "",
             f"Base: mAP50-95 {base['map50_95']:.3f}, {base['latency_ms']:.2f} ms fp32. Latency: "
             f"{base['latency_source']}.", "",
             "References for 'within 1 %' (the higher of the base and the fp32 control with the same training): "
             + ", ".join(f"{'search' if k == 0 else f'recovery {k} steps'} {v:.3f}"
                         for k, v in sorted(result["references"].items())) + ".", "",
             "| design | training | mAP50-95 | within 1 % | latency ms (estimated ± p90) | vs fp32 base | "
             "vs fp16 recipe | computes in | int8 layers |", "|---|---|---|---|---|---|---|---|---|"]

    def ratio(value):
        return "-" if value is None else f"{value:.2f}x"

    for e in sorted(result["front"], key=lambda e: e["latency_ms"]):
        lines.append(f"| {e['design']} | {e['training'] or '-'} | {e['map50_95']:.3f} | "
                     f"{'yes' if e['within_1pct'] else 'no'} | {e['latency_ms']:.2f} ± {e['error_pct'] or 0:.0f} % | "
                     f"{ratio(e['speedup_vs_fp32_base'])} | {ratio(e['speedup_vs_fp16_recipe'])} | "
                     f"{e['compute_precision']} | {e['integer_layers']} |")
    fastest = result["fastest_within_1pct"]
    lines += ["", "Fastest within 1 %: " + ("none" if fastest is None else (
        f"{fastest['design']}, mAP50-95 {fastest['map50_95']:.3f}, {fastest['latency_ms']:.2f} ms: "
        f"{ratio(fastest['speedup_vs_fp32_base'])} over the fp32 base (goal 1.5x), "
        f"{ratio(fastest['speedup_vs_fp16_recipe'])} over the fp16 recipe (goal 1.3x)")),
              f"Designs computing any layer in int8: {result['designs_computing_int8']} of "
              f"{result['designs_scored']} scored.", ""]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true",
                        help="build and time x86-host's fit points and validation designs now (one interleaved "
                             "session, minutes) and write SESSION; prints the fit points as YAML lines")
    parser.add_argument("--session", default="bench/results/x86_session.json",
                        help="x86 measurement session to read (or, with --measure, write)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (--measure)")
    parser.add_argument("--skip-x86", action="store_true", help="only the calibration tables (no x86 validation)")
    parser.add_argument("--front", help="only the front table of this finished device-profile run (item 7)")
    parser.add_argument("--out", default="bench/results/device_estimates", help="writes OUT.md and OUT.json")
    args = parser.parse_args(argv)
    if args.front:
        result = front_table(Path(args.front))
        lines = front_markdown(result)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(out.with_suffix(".json"), json.dumps(result, indent=1, default=str))
        write_text_atomically(out.with_suffix(".md"), "\n".join(lines))
        print("\n".join(lines))
        return 0
    torch.set_num_threads(1)
    session_path = Path(args.session)
    if args.measure:
        session = measure_x86(args.rounds)
        session_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(session_path, json.dumps(session, indent=1))
        print("\n".join(["x86-host fit points (hardware_profiles/x86-host.yaml, latency_model.points):",
                         *fit_point_yaml(session), f"wrote {session_path}"]))
    report: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "profiles": {}}
    lines = ["## Calibrated device latency estimates (bench/device_estimates.py)", ""]
    for name in available_profiles():
        table = profile_table(name)
        report["profiles"][name] = table
        lines += profile_markdown(table)
    if not args.skip_x86:
        if not session_path.is_file():
            print(f"no x86 session at {session_path}: run with --measure first (or --skip-x86)", file=sys.stderr)
            return 2
        report["x86_validation"] = x86_validation(json.loads(session_path.read_text()))
        lines += x86_markdown(report["x86_validation"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out.with_suffix(".json"), json.dumps(report, indent=1, default=str))
    write_text_atomically(out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
