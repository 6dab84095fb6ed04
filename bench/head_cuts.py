"""Cuts aimed at the Detect head, recovered like bench/pruning_importance.py (issue 19's FLOPs target).

The head holds 37 % of the default base's FLOPs at 128 px, most of it in its twelve 3x3 convs
(`model.22.cv2/cv3.<scale>.0/1`). This prunes every prunable group uniformly (`--prune`, Taylor
ranking) and treats those twelve convs differently (`--head`): `crop` centre-crops them to 1x1, a
number prunes them to that ratio instead. Then it fine-tunes as the recovery stage does (distilled
from the base, RECOVERY_LR) and prints one JSON line per reading: mAP50-95 after each of `--steps`.
Compare with the uniform cuts and the fp32 control of `bench/results/pruning_long.md`.

    .venv/bin/python bench/head_cuts.py --prune 0.5 --head crop --steps 480 1440
    .venv/bin/python bench/head_cuts.py --prune 0.5 --head 0.75 --flops-only
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys

from edgesearch.runners.accuracy.channel_ranking import pruning_gradients
from edgesearch.search.presets import PRESETS
from edgesearch.search.resolve import resolve_inputs
from edgesearch.spaces.apply import apply_candidate, uniform_candidate
from edgesearch.spaces.candidate import Candidate, parse_uniform
from pruning_importance import counted_flops, recovered_readings  # bench/, the script's own folder


def head_3x3_convs(layers) -> list[str]:
    """The Detect head's 3x3 convs: the first two of each cv2 (box) and cv3 (class) branch."""
    return [name for name in layers if name.startswith("model.22.cv") and name.split(".")[4] in ("0", "1")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prune", type=float, required=True, help="uniform prune ratio of every prunable group")
    parser.add_argument("--head", required=True, help="'crop' (3x3 -> 1x1) or the head convs' prune ratio")
    parser.add_argument("--steps", nargs="+", type=int, default=[480, 1440])
    parser.add_argument("--flops-only", action="store_true", help="print the FLOPs reduction and stop")
    args = parser.parse_args(argv)

    imgsz = PRESETS["default"].imgsz
    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=None, data=None, preset="default")
    data, base = inputs.data_yaml, inputs.base_model
    layers = dict(uniform_candidate(base, parse_uniform(f"bits=32,prune={args.prune}"), list(inputs.resolved)).layers)
    change = {"kernel_size": 1} if args.head == "crop" else {"prune_ratio": float(args.head)}
    for name in head_3x3_convs(layers):
        layers[name] = dataclasses.replace(layers[name], **change)
    gradients = None if args.flops_only else pruning_gradients(base, str(inputs.checkpoint), data, imgsz=imgsz)
    model = apply_candidate(base, Candidate(layers), gradients)  # L1 ranking when only shapes matter
    teacher = copy.deepcopy(base)
    for fused in (model, teacher):
        getattr(fused, "fuse")(verbose=False)

    row = {"prune": args.prune, "head": args.head,
           "flops_fewer": counted_flops(teacher, imgsz) / counted_flops(model, imgsz)}
    print(json.dumps(row), flush=True)
    if args.flops_only:
        return 0
    at = {}
    for stop, value in recovered_readings(model, data, imgsz, [0, *args.steps], teacher, seed=0):
        at[stop] = value
        print(json.dumps({**row, "map50_95_at_steps": at}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
