"""How structured pruning moves the measured TVM latency of the base YOLO (x86-host, fixed schedule).

Builds the base model and uniformly pruned copies (every prunable conv at the same ratio), then
times them interleaved in one process - rounds of repeats, alternating between variants, so that
load changes on a shared machine hit every variant alike. Prints a table (median, min, max, and
the ratio to the unpruned model) and writes the samples as JSON.

    .venv/bin/python bench/pruning_latency.py [--model best.pt] [--ratios 0 0.25 0.5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count()))

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from edgesearch.runners.hardware.build import build_local, export_for_tvm  # noqa: E402
from edgesearch.search.presets import PRESETS  # noqa: E402
from edgesearch.search.resolve import resolve_inputs  # noqa: E402
from edgesearch.spaces.apply import apply_candidate, uniform_candidate  # noqa: E402
from edgesearch.spaces.candidate import parse_uniform  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the default preset's cached base)")
    parser.add_argument("--ratios", nargs="+", default=["0", "0.25", "0.5"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/pruning_latency.json")
    args = parser.parse_args(argv)

    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=args.model, data=None, preset="default")
    imgsz = PRESETS["default"].imgsz
    variants = {}
    for ratio in args.ratios:
        candidate = uniform_candidate(inputs.base_model, parse_uniform(f"bits=32,prune={ratio}"), list(inputs.resolved))
        model = apply_candidate(inputs.base_model, candidate)
        executable, _ = build_local(export_for_tvm(model, imgsz), inputs.profile.target)
        variants[ratio] = {"vm": relax.VirtualMachine(executable, tvm.cpu()),
                           "params": sum(p.numel() for p in model.parameters()), "samples_ms": []}
    data = tvm.runtime.tensor(np.zeros((1, 3, imgsz, imgsz), "float32"), tvm.cpu())
    for _ in range(args.rounds):
        for variant in variants.values():
            timer = variant["vm"].time_evaluator("main", tvm.cpu(), number=5, repeat=args.repeats)
            variant["samples_ms"] += [t * 1e3 for t in timer(data).results]

    reference = statistics.median(variants[args.ratios[0]]["samples_ms"])
    print(f"{'prune':>6} {'params':>9} {'median ms':>10} {'min':>6} {'max':>6} {'vs first':>9}")
    results = []
    for ratio, variant in variants.items():
        samples = variant["samples_ms"]
        median = statistics.median(samples)
        print(f"{ratio:>6} {variant['params']:>9} {median:>10.2f} {min(samples):>6.2f} {max(samples):>6.2f} "
              f"{median / reference:>9.2f}")
        results.append({"prune_ratio": float(ratio), "params": variant["params"], "median_ms": median,
                        "samples_ms": samples})
    Path(args.out).write_text(json.dumps({"imgsz": imgsz, "source": "measured: TVM llvm build, fixed schedule, "
                                          "interleaved time evaluator", "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
