"""Which channel importance lets uniform structured pruning recover best (issue 19, item 1).

For each prune ratio and importance (spaces/prune.py IMPORTANCES: group L1 / L2 magnitude, BatchNorm
scale, first-order Taylor), the default base is pruned uniformly (every prunable group at the same
ratio, as the pruning recipes do), fused, and fine-tuned like the recovery stage: distilled from the
base, learning rate RECOVERY_LR. mAP50-95 on the val split is read right after the cut, at the
search's fine-tune length and at the end. Taylor ranks on the gradients of the detection loss over
TAYLOR_BATCHES fixed train batches of the base. Every variant sees the same batches for a given seed.

Ratio 0 is the fp32 control: the base itself, fine-tuned on the same schedule. With it among the ratios,
the table also says, at each length, each ratio's mAP as a share of the control's (the issue's "within
5 %" with the same training record) beside its FLOPs reduction (counted as the search counts them).

    .venv/bin/python bench/pruning_importance.py [--ratios 0.25 0.5] [--seeds 0 1] [--steps 60 180]
        [--out bench/results/pruning_importance]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

from edgesearch.common.files import write_text_atomically
from edgesearch.runners.accuracy.channel_ranking import RANKING_BATCH, RANKING_BATCHES, pruning_gradients
from edgesearch.runners.accuracy.finetune import finetune, validate
from edgesearch.runners.costs import layer_costs
from edgesearch.search.presets import PRESETS
from edgesearch.search.recovery import RECOVERY_LR
from edgesearch.search.resolve import resolve_inputs
from edgesearch.spaces.apply import uniform_candidate
from edgesearch.spaces.candidate import parse_uniform
from edgesearch.spaces.prune import IMPORTANCES, attach_gradients, prune_output_channels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--importances", nargs="+", choices=IMPORTANCES, default=list(IMPORTANCES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", nargs="+", type=int, default=[60, 180],
                        help="fine-tune steps at which mAP is read (the last: the schedule's length)")
    parser.add_argument("--out", default="bench/results/pruning_importance")
    args = parser.parse_args(argv)

    preset = PRESETS["default"]
    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=None, data=None, preset="default")
    data, imgsz, base = inputs.data_yaml, preset.imgsz, inputs.base_model
    teacher = copy.deepcopy(base)
    getattr(teacher, "fuse")(verbose=False)
    gradients = pruning_gradients(base, str(inputs.checkpoint), data, imgsz=imgsz)
    rows = []
    for seed in args.seeds:
        for ratio in args.ratios:
            candidate = uniform_candidate(base, parse_uniform(f"bits=32,prune={ratio}"), list(inputs.resolved))
            ratios = {name: knobs.prune_ratio for name, knobs in candidate.layers.items() if knobs.prune_ratio > 0}
            for importance in args.importances:
                started = time.perf_counter()
                model = copy.deepcopy(base)
                attach_gradients(model, gradients)
                prune_output_channels(model, ratios, importance=importance)
                model.zero_grad(set_to_none=True)
                getattr(model, "fuse")(verbose=False)
                params = sum(p.numel() for p in model.parameters())
                flops = counted_flops(model, imgsz)
                at = {}
                for stop, value in recovered_readings(model, data, imgsz, [0, *args.steps], teacher, seed * 1000):
                    at[stop] = value
                row = {"seed": seed, "prune_ratio": ratio, "importance": importance, "params": params,
                       "flops": flops, "map50_95_at_steps": at, "seconds": time.perf_counter() - started}
                rows.append(row)
                print(json.dumps(row), flush=True)
    _write(args, rows, {"model": str(inputs.checkpoint), "imgsz": imgsz, "lr": RECOVERY_LR, "distilled": True,
                        "base_flops": counted_flops(teacher, imgsz),
                        "taylor_images": RANKING_BATCHES * RANKING_BATCH, "batch": 16})
    return 0


def counted_flops(model, imgsz: int) -> int:
    """The model's FLOPs at one image of imgsz, counted as the search counts them."""
    return sum(c.flops for c in layer_costs(model, (1, 3, imgsz, imgsz)))


def recovered_readings(model, data, imgsz: int, steps: list[int], teacher, seed: int):
    """(steps, mAP50-95) at each of `steps` (ascending; 0: before any training) while `model` is
    fine-tuned like the recovery stage: distilled from `teacher`, RECOVERY_LR. Each stretch starts a
    fresh optimizer; its seed is `seed` + the steps done before it."""
    done = 0
    for stop in steps:
        if stop > done:
            finetune(model, data, iterations=stop - done, imgsz=imgsz, lr=RECOVERY_LR, seed=seed + done,
                     teacher=teacher)
        done = stop
        yield stop, validate(model, data, imgsz=imgsz)["map50_95"]


def _write(args, rows: list[dict], settings: dict) -> None:
    """The table (median over seeds, and the seeds' range) as markdown, and every row as JSON."""
    steps = [0, *args.steps]
    lines = [f"Uniform structured pruning, recovered like the recovery stage (distilled from the base, lr "
             f"{settings['lr']:g}, batch {settings['batch']}, {settings['imgsz']} px, no augmentation), "
             f"mAP50-95 on the val split by ultralytics' validator; seeds {args.seeds}; model {settings['model']}. "
             "Fine-tune steps in the columns (0: right after the cut).", "",
             "| prune ratio | importance | params | FLOPs | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|---|---|---|" + "---|" * len(steps)]
    base_flops = settings["base_flops"]
    for ratio in args.ratios:
        for importance in args.importances:
            mine = [r for r in rows if r["prune_ratio"] == ratio and r["importance"] == importance]
            cells = []
            for step in steps:
                values = [r["map50_95_at_steps"][step] for r in mine]
                spread = f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
                cells.append(f"{statistics.median(values):.3f}{spread}")
            flops = f"{mine[0]['flops'] / 1e6:.0f} M ({base_flops / mine[0]['flops']:.2f}x fewer)"
            lines.append(f"| {ratio:g} | {importance} | {mine[0]['params']:,} | {flops} | " + " | ".join(cells) + " |")
    lines += _against_control(rows, args, steps[1:], base_flops)
    write_text_atomically(Path(args.out + ".md"), "\n".join(lines) + "\n")
    write_text_atomically(Path(args.out + ".json"), json.dumps({"settings": settings, "rows": rows}, indent=2))
    print("\n".join(lines))


def _against_control(rows: list[dict], args, steps: list[int], base_flops: int) -> list[str]:
    """Each pruned ratio's median mAP as a share of the control's (ratio 0) after the same steps."""
    control = [r for r in rows if r["prune_ratio"] == 0]
    if not control:
        return []
    lines = ["", "mAP50-95 as a share of the fp32 control's after the same steps (1.00 = the control; "
             "within 5 % is >= 0.95):", "",
             "| prune ratio | importance | FLOPs fewer | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    at_control = {s: statistics.median(r["map50_95_at_steps"][s] for r in control) for s in steps}
    for ratio in (r for r in args.ratios if r > 0):
        for importance in args.importances:
            mine = [r for r in rows if r["prune_ratio"] == ratio and r["importance"] == importance]
            shares = [statistics.median(r["map50_95_at_steps"][s] for r in mine) / at_control[s] for s in steps]
            lines.append(f"| {ratio:g} | {importance} | {base_flops / mine[0]['flops']:.2f}x | "
                         + " | ".join(f"{share:.2f}" for share in shares) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
