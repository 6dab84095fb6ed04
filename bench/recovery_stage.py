"""The recovery stage's schedule, run as the search runs it, on uniform designs beside the fp32 control.

Each design (a `search eval --uniform` spec) of the default model is built as a recovered trial builds
it (runners.evaluate.build_design with search.recovery.recovery_settings: `--finetune-iters` steps of
the search plus `--recover-steps`, distilled, the structure trained first, pruned channels cut in
`--cuts` steps) and scored on the val split by ultralytics' validator. The control (`bits=32`, no
structural change) gets the same schedule, so each design's mAP50-95 is also given as a share of the
control's with the same seed and steps (the issue's "within 5 %" is a share >= 0.95). Every finished
row is kept in `--out`.json at once; the markdown table is written from all kept rows.

    OMP_NUM_THREADS=1 .venv/bin/python bench/recovery_stage.py --designs bits=32 bits=32,prune=0.6 \
        --recover-steps 120 --cuts 1 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from edgesearch.common.files import write_text_atomically
from edgesearch.runners.accuracy.finetune import validate
from edgesearch.runners.evaluate import EvalSettings, build_design
from edgesearch.search.presets import PRESETS
from edgesearch.search.recovery import recovery_settings
from edgesearch.search.resolve import eval_settings, resolve_inputs
from edgesearch.spaces.apply import uniform_candidate
from edgesearch.spaces.candidate import parse_uniform
from progressive_pruning import keep_row  # bench/, the script's own folder
from pruning_importance import counted_flops

CONTROL = "bits=32"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", nargs="+", default=[CONTROL, "bits=32,prune=0.6"])
    parser.add_argument("--recover-steps", nargs="+", type=int, default=[120])
    parser.add_argument("--cuts", nargs="+", type=int, default=[3], help="the recovery's cuts (1: at once)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default="bench/results/recovery_stage")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two runs side by side on the 2 cores; one order of sums per run

    preset = PRESETS["default"]
    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=None, data=None, preset="default")
    out = Path(args.out)
    kept: list[dict] = []
    for seed in args.seeds:
        for steps in args.recover_steps:
            for cuts in args.cuts:
                for spec in args.designs:
                    if spec == CONTROL and cuts != args.cuts[0]:
                        continue  # nothing to cut: one control per seed and schedule
                    settings = eval_settings(inputs, imgsz=preset.imgsz, finetune_iters=preset.finetune_iters,
                                             batch=preset.batch, threads=1, seed=seed)
                    config = EvalSettings(**dict(recovery_settings(settings, steps), cuts=cuts))
                    candidate = uniform_candidate(inputs.base_model, parse_uniform(spec), list(inputs.resolved))
                    started = time.perf_counter()
                    _, model, _, losses, _ = build_design(config, candidate.to_json())
                    row = {"design": spec, "seed": seed, "recover_steps": steps, "cuts": cuts if spec != CONTROL else 0,
                           "steps_from_base": config.finetune_iters, "cuts_at": list(losses.cuts_at),
                           "map50_95": validate(model, inputs.data_yaml, imgsz=preset.imgsz)["map50_95"],
                           "flops": counted_flops(model, preset.imgsz), "seconds": time.perf_counter() - started}
                    print(json.dumps(row), flush=True)
                    kept = keep_row(out.with_suffix(".json"), row, ("design", "seed", "recover_steps", "cuts"))
    write_text_atomically(out.with_suffix(".md"), table(kept))
    return 0


def table(rows: list[dict]) -> str:
    """Medians over seeds of each design, schedule and cuts, with the share of the control's mAP."""
    controls = {(r["seed"], r["recover_steps"]): r["map50_95"] for r in rows if r["design"] == CONTROL}
    lines = ["| design | recovery steps (+ 60 of the search's) | cuts | seeds | mAP50-95 per seed | median | "
             "share of the control per seed | FLOPs |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["design"], r["recover_steps"], r["cuts"]), []).append(r)
    for (design, steps, cuts), group in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0] != CONTROL, g[0])):
        group.sort(key=lambda r: r["seed"])
        shares = [f"{r['map50_95'] / controls[(r['seed'], steps)]:.3f}" if (r["seed"], steps) in controls else "-"
                  for r in group]
        lines.append(f"| {design} | {steps} | {cuts or '-'} | {', '.join(str(r['seed']) for r in group)} | "
                     f"{', '.join(format(r['map50_95'], '.3f') for r in group)} | "
                     f"{statistics.median(r['map50_95'] for r in group):.3f} | {', '.join(shares)} | "
                     f"{group[0]['flops'] / 1e6:.0f} M |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
