"""How far to trust each latency figure: TVM vs ONNX Runtime, per-layer sum vs full build, estimate vs measurement.

The base YOLO and three variants (uniform prune 0.25, uniform prune 0.5, and a kernel-size variant),
each scored on x86-host (this machine) by:
  ort          ONNX Runtime, FP32, CPU provider, 2 intra-op threads, sequential execution
  tvm_full     TVM full build, fixed schedule (runners/hardware/build.build_local), time evaluator
  layer_sum    the same blocks built and timed one by one (layer_table.build_block), summed
  tvm_tuned / layer_sum_tuned   the same two with MetaSchedule-tuned kernels (--tune-trials N)
and two figures that are not timed here:
  layer_table  per_layer_latency(), the per-profile cached table (runners/hardware/layer_table.py; the search builds in full)
  roofline     costs.roofline_latency_ms with the x86-host profile's peak rates
Every timed (variant, method) pair is timed in every round, in a shuffled order, so load changes on
a shared machine hit all of them alike; each round contributes `--repeats` samples (each the mean
of `--number` runs). Prints markdown tables (median and min-max per figure, ratios of medians) and
writes them to bench/hardware_fidelity.md and all samples to bench/hardware_fidelity.json.

    .venv/bin/python bench/hardware_fidelity.py [--checkpoint best.pt] [--quick] [--tune-trials N]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import random
import sys
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402
from ultralytics.nn.modules.block import Bottleneck  # noqa: E402

from edgesearch.common.cache import cache_dir  # noqa: E402
from edgesearch.common.files import write_text_atomically  # noqa: E402
from edgesearch.runners.costs import layer_costs, roofline_latency_ms  # noqa: E402
from edgesearch.runners.hardware.build import build_local, export_for_tvm, set_export_mode  # noqa: E402
from edgesearch.runners.hardware.layer_table import build_block, describe_blocks, per_layer_latency  # noqa: E402
from edgesearch.runners.hardware.profiles import load_profile  # noqa: E402
from edgesearch.runners.hardware.tuning import tune_and_build  # noqa: E402
from edgesearch.search.resolve import resolve_inputs  # noqa: E402
from edgesearch.spaces.apply import apply_candidate, uniform_candidate  # noqa: E402
from edgesearch.spaces.candidate import Candidate, LayerKnobs  # noqa: E402
from timers import ort_session, ort_timer, summarize, tvm_timer  # noqa: E402  (bench/timers.py)

PROFILE = "x86-host"
SOURCES = {
    "ort": "measured: ONNX Runtime CPU, fp32, 2 intra-op threads, sequential",
    "tvm_full": "measured: TVM full build, fixed schedule, time evaluator",
    "layer_sum": "estimated: sum of per-block TVM builds (fixed schedule), timed here interleaved",
    "tvm_tuned": "measured: TVM full build, MetaSchedule-tuned, time evaluator",
    "layer_sum_tuned": "estimated: sum of per-block TVM builds (MetaSchedule-tuned), timed here interleaved",
    "layer_table": "estimated: per_layer_latency() - the per-profile cached table (timed once; not used by the search)",
    "roofline": "estimated: roofline from x86-host peak fp32 rate and bandwidth (not timed)",
}
RATIOS = [  # (label, numerator, denominator)
    ("TVM fixed / ORT", "tvm_full", "ort"),
    ("layer sum / full (fixed)", "layer_sum", "tvm_full"),
    ("layer table / full (fixed)", "layer_table", "tvm_full"),
    ("roofline / full (fixed)", "roofline", "tvm_full"),
    ("TVM tuned / ORT", "tvm_tuned", "ort"),
    ("layer sum / full (tuned)", "layer_sum_tuned", "tvm_tuned"),
    ("roofline / full (tuned)", "roofline", "tvm_tuned"),
]


# ------------------------------------------------------------------------------- variants


def bottleneck_second_convs(model: torch.nn.Module) -> list[str]:
    """The 3x3 second conv of every Bottleneck (inside C2f): the kernel-size variant shrinks these."""
    return [f"{name}.cv2.conv" for name, module in model.named_modules() if isinstance(module, Bottleneck)]


def make_variants(base: torch.nn.Module, layers: list[str]) -> dict[str, tuple[torch.nn.Module, str]]:
    def uniform_prune(ratio):
        return apply_candidate(base, uniform_candidate(base, LayerKnobs(prune_ratio=ratio), layers))

    shrunk = bottleneck_second_convs(base)
    kernel_1x1 = Candidate({name: LayerKnobs(kernel_size=1) for name in shrunk})
    return {
        "base": (apply_candidate(base, Candidate({})), "unchanged (fused)"),
        "prune-0.25": (uniform_prune(0.25), "uniform prune 0.25 of every prunable conv"),
        "prune-0.5": (uniform_prune(0.5), "uniform prune 0.5 of every prunable conv"),
        "kernel-1x1": (apply_candidate(base, kernel_1x1),
                       f"kernel 3x3 -> 1x1 in all {len(shrunk)} Bottleneck cv2 convs"),
    }


# ---------------------------------------------------------------------------------- timers


def executable_timer(executable, input_shapes, number: int, repeat: int):
    return tvm_timer(relax.VirtualMachine(executable, tvm.cpu()), input_shapes, number, repeat)


def model_ort_timer(model: torch.nn.Module, imgsz: int, number: int, repeat: int, threads: int):
    """ONNX Runtime session of the model (exported as ultralytics' exporter sets the head)."""
    set_export_mode(model)
    onnx_bytes = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, imgsz, imgsz),), onnx_bytes, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["output0"])
    return ort_timer(ort_session(onnx_bytes.getvalue(), threads), imgsz, number, repeat)


def layer_sum_timer(block_timers: list):
    """Samples of the sum over blocks: the i-th sample adds every block's i-th sample."""
    return lambda: [sum(samples) for samples in zip(*(timer() for timer in block_timers), strict=True)]


def block_timers(model, imgsz, profile, number, repeat, shared: dict, tune_trials=0, tuning_db=None) -> list:
    """One timer per block; blocks with the same signature (also across variants) are built once."""
    timers = []
    for block in describe_blocks(model, imgsz):
        if block.signature not in shared:
            executable, _ = build_block(block, profile, tune_trials=tune_trials, tuning_db=tuning_db)
            shared[block.signature] = executable_timer(executable, block.input_shapes, number, repeat)
        timers.append(shared[block.signature])
    return timers


# ---------------------------------------------------------------------------------- summary


def figure(result: dict, method: str) -> float | None:
    entry = result["methods"].get(method)
    return entry["median_ms"] if entry else None


def same_order(results: dict, method: str, reference: str) -> bool | None:
    """Whether `method` ranks the variants as `reference` does (what a search needs from an estimate)."""
    pairs = [(figure(r, method), figure(r, reference)) for r in results.values()]
    if any(a is None or b is None for a, b in pairs):
        return None
    return sorted(range(len(pairs)), key=lambda i: pairs[i][0]) == sorted(range(len(pairs)), key=lambda i: pairs[i][1])


def markdown(report: dict) -> str:
    results = report["variants"]
    methods = [m for m in SOURCES if any(m in r["methods"] for r in results.values())]
    lines = [f"### Hardware fidelity: {PROFILE}, imgsz {report['imgsz']}, {report['rounds']} interleaved rounds "
             f"x {report['repeats']} samples (mean of {report['number']} runs each)", "",
             "Latency, ms: median [min - max]", "",
             "| variant | params | GFLOPs | " + " | ".join(methods) + " |",
             "|---|---:|---:|" + "---:|" * len(methods)]
    for name, r in results.items():
        cells = []
        for method in methods:
            entry = r["methods"].get(method)
            if entry is None:
                cells.append("-")
            elif "min_ms" in entry and entry["n"] > 1:
                cells.append(f"{entry['median_ms']:.2f} [{entry['min_ms']:.2f} - {entry['max_ms']:.2f}]")
            else:
                cells.append(f"{entry['median_ms']:.2f}")
        lines.append(f"| {name} | {r['params']:,} | {r['flops'] / 1e9:.3f} | " + " | ".join(cells) + " |")
    ratios = [label for label, a, b in RATIOS if any(figure(r, a) and figure(r, b) for r in results.values())]
    lines += ["", "Ratios of medians", "", "| variant | " + " | ".join(ratios) + " |", "|---|" + "---:|" * len(ratios)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join("-" if r["ratios"][label] is None else f"{r['ratios'][label]:.2f}"
                                                 for label in ratios) + " |")
    orders = [f"{m}: {'yes' if ok else 'no'}" for m, ok in report["same_order_as_full"].items() if ok is not None]
    lines += ["", "Ranks the variants as the full build does: " + ", ".join(orders),
              "", "Variants: " + "; ".join(f"{name} = {r['description']}" for name, r in results.items()),
              "", "Figures:"] + [f"- {m}: {SOURCES[m]}" for m in methods]
    lines += ["", f"Layer table: {report['layer_table_blocks']}; TVM threads {report['tvm_threads']}, "
              f"load average {report['load_before']} before, {report['load_after']} after."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="base model .pt (default: the default preset's cached base YOLO)")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5, help="samples per (variant, method) per round")
    parser.add_argument("--number", type=int, default=5, help="runs averaged into one sample")
    parser.add_argument("--tune-trials", type=int, default=0,
                        help="also time MetaSchedule-tuned builds (database in <cache>/tuning/x86-host)")
    parser.add_argument("--tune-variants", nargs="+", default=["base"],
                        help="variants to tune with --tune-trials (each new layer shape costs minutes)")
    parser.add_argument("--tune-blocks", action="store_true",
                        help="with --tune-trials: also time the tuned per-block sum (a builder pool per block: slow)")
    parser.add_argument("--quick", action="store_true", help="a fast sanity run: 3 rounds of 3 samples")
    parser.add_argument("--out", default="bench/hardware_fidelity", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats, args.number = 3, 3, 3

    profile = load_profile(PROFILE)
    os.environ["TVM_NUM_THREADS"] = str(profile.threads)  # before TVM's thread pool starts
    torch.set_num_threads(profile.threads)
    load_before = os.getloadavg()[0]
    inputs = resolve_inputs(profile=PROFILE, space="yolov8", model=args.checkpoint, data=None, preset="default")
    variants = make_variants(inputs.base_model, list(inputs.resolved))
    tuning_db = cache_dir() / "tuning" / profile.name
    shape = (1, 3, args.imgsz, args.imgsz)
    timers: dict[tuple[str, str], object] = {}
    results: dict[str, dict] = {}
    fixed_blocks, tuned_blocks = {}, {}
    for name, (model, description) in variants.items():
        print(f"building {name}: {description}", flush=True)
        costs = layer_costs(model, shape)
        fp32_weight_bytes = {c.name: c.weight_elements * 4 for c in costs}  # float variants: fp32 weights
        table = per_layer_latency(model, profile, args.imgsz)
        results[name] = {
            "description": description, "params": sum(p.numel() for p in model.parameters()),
            "flops": sum(c.flops for c in costs),
            "methods": {
                "layer_table": {"median_ms": table["latency_ms"], "spread_ms": table["latency_spread_ms"],
                                "measured_blocks": table["measured_blocks"], "cached_blocks": table["cached_blocks"]},
                "roofline": {"median_ms": roofline_latency_ms(costs, profile.peak_ops_per_s,
                                                              profile.memory_bandwidth_bytes_per_s, fp32_weight_bytes)},
            },
            "blocks": table["blocks"],
        }
        timers[name, "ort"] = model_ort_timer(copy.deepcopy(model), args.imgsz, args.number, args.repeats, profile.threads)
        executable, _ = build_local(export_for_tvm(copy.deepcopy(model), args.imgsz), profile.target)
        timers[name, "tvm_full"] = executable_timer(executable, [shape], args.number, args.repeats)
        timers[name, "layer_sum"] = layer_sum_timer(
            block_timers(model, args.imgsz, profile, args.number, args.repeats, fixed_blocks))
        if args.tune_trials > 0 and name in args.tune_variants:
            executable, _ = tune_and_build(export_for_tvm(copy.deepcopy(model), args.imgsz), profile.target,
                                           tuning_db, args.tune_trials)
            timers[name, "tvm_tuned"] = executable_timer(executable, [shape], args.number, args.repeats)
        if args.tune_trials > 0 and name in args.tune_variants and args.tune_blocks:
            timers[name, "layer_sum_tuned"] = layer_sum_timer(block_timers(
                model, args.imgsz, profile, args.number, args.repeats, tuned_blocks, args.tune_trials, tuning_db))

    samples: dict[tuple[str, str], list[float]] = {key: [] for key in timers}
    order = list(timers)
    shuffle = random.Random(0)
    for round_index in range(args.rounds):
        shuffle.shuffle(order)  # no (variant, method) always runs first, or right after a heavy one
        for key in order:
            samples[key] += timers[key]()
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    for (name, method), values in samples.items():
        results[name]["methods"][method] = {**summarize(values), "samples_ms": values}
    for r in results.values():
        r["ratios"] = {label: (figure(r, a) / figure(r, b) if figure(r, a) and figure(r, b) else None)
                       for label, a, b in RATIOS}
    table_counts = {key: sum(r["methods"]["layer_table"][key] for r in results.values())
                    for key in ("measured_blocks", "cached_blocks")}
    report = {
        "profile": PROFILE, "imgsz": args.imgsz, "rounds": args.rounds, "repeats": args.repeats,
        "number": args.number, "tune_trials": args.tune_trials, "checkpoint": str(inputs.checkpoint),
        "tvm": tvm.__version__, "onnxruntime": ort.__version__, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "tvm_threads": int(tvm.get_global_func("runtime.NumThreads")()),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "layer_table_blocks": f"{table_counts['measured_blocks']} blocks measured, "
                              f"{table_counts['cached_blocks']} from cache",
        "sources": SOURCES,
        "same_order_as_full": {m: same_order(results, m, "tvm_full")
                               for m in ("layer_sum", "layer_table", "roofline", "ort")},
        "variants": results,
    }
    write_text_atomically(Path(f"{args.out}.json"), json.dumps(report, indent=2))  # before anything can fail
    text = markdown(report)
    print(text)
    write_text_atomically(Path(f"{args.out}.md"), text)
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
