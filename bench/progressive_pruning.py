"""Progressive channel pruning against one-shot, recovered the same way (issue 19's FLOPs target).

bench/results/pruning_long.md cuts the default base once (uniform, Taylor ranking) and fine-tunes it
as the recovery stage does. This cuts it in `--stages` steps instead, each `--every` fine-tune steps
apart, as Torch-Pruning's YOLOv8 example does: before each cut the channels are ranked again
(first-order Taylor, on the detection loss's gradients of the model as it is now, over the same
fixed train batches the search ranks on), and each cut removes about the same share of what is left,
so that the last one leaves each prunable group the channels one cut at `--ratio` leaves (same
widths, same FLOPs as pruning_long's row for that ratio). Training in between is the recovery
stage's (distilled from the base, RECOVERY_LR); the model stays unfused (BatchNorm trains) until it
is read (`--stages 1`: one cut, trained unfused). It prints one JSON line per reading (mAP50-95 after each of `--steps`, counted from the
first cut, so the total training matches pruning_long's columns) and keeps the finished row in
`--out`. `--ratio 0` is the fp32 control trained the same way (unfused, no cut).

    .venv/bin/python bench/progressive_pruning.py --ratio 0.6 --stages 3 --every 240 --steps 480 1440
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from edgesearch.common.files import write_text_atomically
from edgesearch.runners.accuracy.channel_ranking import loss_gradients
from edgesearch.runners.accuracy.finetune import finetune, validate
from edgesearch.search.presets import PRESETS
from edgesearch.search.recovery import RECOVERY_LR
from edgesearch.search.resolve import resolve_inputs
from edgesearch.spaces.apply import uniform_candidate
from edgesearch.spaces.candidate import parse_uniform
from edgesearch.spaces.prune import attach_gradients, prune_output_channels, ratios_in_steps
from pruning_importance import counted_flops  # bench/, the script's own folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, required=True, help="share of each group's channels removed in all")
    parser.add_argument("--stages", type=int, default=3, help="cuts that reach it")
    parser.add_argument("--every", type=int, default=240, help="fine-tune steps between cuts")
    parser.add_argument("--steps", nargs="+", type=int, default=[480, 1440],
                        help="readings, in fine-tune steps from the first cut (the last: the schedule's length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/progressive_pruning.json",
                        help="JSON file the finished row joins (a row with the same settings is replaced)")
    args = parser.parse_args(argv)
    cuts = [stage * args.every for stage in range(max(args.stages, 1))]
    if args.stages < 1 or cuts[-1] > max(args.steps):
        parser.error("the last cut must come before the last reading")

    imgsz = PRESETS["default"].imgsz
    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=None, data=None, preset="default")
    data, base = inputs.data_yaml, inputs.base_model
    teacher = copy.deepcopy(base)
    getattr(teacher, "fuse")(verbose=False)
    knobs = uniform_candidate(base, parse_uniform(f"bits=32,prune={args.ratio}"), list(inputs.resolved)).layers
    each_cut = ratios_in_steps(base, {name: k.prune_ratio for name, k in knobs.items() if k.prune_ratio > 0},
                               args.stages)
    model = copy.deepcopy(base)
    row = {"ratio": args.ratio, "stages": args.stages, "every": args.every, "seed": args.seed,
           "base_flops": counted_flops(teacher, imgsz), "map50_95_at_steps": {}}
    started, done = time.perf_counter(), 0
    for stop in sorted({*cuts, *args.steps}):
        if stop > done:
            finetune(model, data, iterations=stop - done, imgsz=imgsz, lr=RECOVERY_LR,
                     seed=args.seed * 1000 + done, teacher=teacher)
        done = stop
        if stop in cuts:
            _rank_and_cut(model, data, imgsz, each_cut[cuts.index(stop)])
        if stop in args.steps:
            read = copy.deepcopy(model)
            getattr(read, "fuse")(verbose=False)
            row["flops"] = counted_flops(read, imgsz)
            row["flops_fewer"] = row["base_flops"] / row["flops"]
            row["map50_95_at_steps"][stop] = validate(read, data, imgsz=imgsz)["map50_95"]
            row["seconds"] = time.perf_counter() - started
            print(json.dumps(row), flush=True)
    keep_row(Path(args.out), row, ("ratio", "stages", "every", "seed"))
    return 0


def keep_row(path: Path, row: dict, same: tuple[str, ...]) -> list[dict]:
    """Add `row` to the rows in `path` (written atomically), replacing one with the same values of the
    `same` keys; returns every row kept there."""
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = sorted([r for r in rows if any(r[k] != row[k] for k in same)] + [row], key=lambda r: [r[k] for k in same])
    write_text_atomically(path, json.dumps({"rows": rows}, indent=2))
    return rows


def _rank_and_cut(model, data, imgsz: int, ratios: dict[str, float]) -> None:
    """Rank on the model's own detection-loss gradients now, then cut (prune_output_channels' Taylor)."""
    attach_gradients(model, loss_gradients(model, data, imgsz=imgsz))
    prune_output_channels(model, ratios, importance="taylor")
    model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    sys.exit(main())
