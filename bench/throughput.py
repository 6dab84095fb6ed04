"""Trials per hour of the default search on this machine, by how the trials run:

  p1      one trial at a time with every core's threads (`--parallel 1`);
  p2      two at once sharing the cores (`--parallel 2`, one thread each on 2 cores: the default);
  before  two at once as issue 18 found them (2026-12-03): no build reuse, no successive halving,
          and TVM's thread pool pinning each trial's worker to core 0 (TVM_BIND_THREADS=1: see
          search/cli_env.py), so both workers shared one core.

Each setting is a real `search run` of the default preset on x86-host scoring the same designs in
the same order (no screening, no sensitivity pass, no recovery stage: only the trials differ):

  --set named   (default) eight designs given with `--designs`: four parents and, after them, a
                weight-only child of each (NAMED below). A child computes as its parent does, so
                its built graph is its parent's and a run that reuses builds times it from the
                parent's figure; one parent (4-bit weights, fp32 compute) shares the base's graph.
                Successive halving acts on the guided strategy's moves only, so not on these. A
                child that changes at most half the layers of a scored parent starts from its
                fine-tuned weights with a third of the fine-tune (search/inherit.py); a second table
                sets each design's mAP50-95 by setting beside each other.
  --set random  the random strategy's first designs of `--seed`: they share no built graph.

The settings run interleaved, `--rounds` times each (round 1: every setting once, then round 2,
...), so a busy moment of this shared host falls on one run of several settings, not on all runs
of one. A run folder that already holds the set's scored trials is read, not run again.
Trials/hour runs from the first of those trials' start to the last one's end (Optuna's
timestamps, in the driver); each setting's figure is the median over its rounds.

    python bench/throughput.py [--set named] [--variants before p2 p1] [--rounds 2] [--runs bench/throughput_runs]

writes bench/throughput.json and bench/throughput.md (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()

from optuna.trial import TrialState  # noqa: E402

from edgesearch.common.files import write_text_atomically  # noqa: E402
from edgesearch.search import study as studies  # noqa: E402

PARTS = ("finetune_s", "validate_s", "hardware_s", "eval_s")  # per-trial times measured inside the worker
# name: (--parallel, extra `search run` arguments, environment set for the run, what it is)
VARIANTS = {
    "p1": (1, [], {}, "one trial at a time, every core's threads"),
    "p2": (2, [], {}, "two trials at once, the cores shared (the default)"),
    "before": (2, ["--no-build-reuse", "--rung-steps", "0", "--child-steps", "0"], {"TVM_BIND_THREADS": "1"},
               "two at once as issue 18 found them: no build reuse, no successive halving, every design from the "
               "base, each worker pinned to core 0 by TVM's thread pool"),
}


# the named set: (name, {layer prefix: knobs}); the first prefix that starts a layer's name sets its knobs,
# "" matches every layer, a layer no prefix matches is left as it is. Parents first, then a child of each.
INT8 = {"weight_bits": 8, "scheme": "symmetric", "granularity": "filter", "activation_bits": 8}
PRUNE25 = {"prune_ratio": 0.25}
AFFINE4 = {"weight_bits": 4, "scheme": "affine", "granularity": "filter"}
BACKBONE = tuple(f"model.{index}." for index in range(10))
HEAD = "model.22."
NAMED = [
    ("int8", {"": INT8}),
    ("prune25", {"": PRUNE25}),
    ("w4", {"": AFFINE4}),
    ("int8-backbone", {prefix: INT8 for prefix in BACKBONE}),
    ("int8+w4-head", {HEAD: {**INT8, "weight_bits": 4}, "": INT8}),  # int8 kernels still: same graph as int8
    ("prune25+w4", {"": {**PRUNE25, **AFFINE4}}),
    ("w4+w6-backbone", {**{prefix: {**AFFINE4, "weight_bits": 6} for prefix in BACKBONE}, "": AFFINE4}),
    ("int8-backbone+kmeans-head", {**{prefix: INT8 for prefix in BACKBONE},
                                   HEAD: {"weight_bits": 4, "scheme": "kmeans", "granularity": "tensor"}}),
]


def write_named_set(folder: Path) -> list[Path]:
    """The named set as candidate files for the default model and space (structural knobs left off
    where a layer cannot take them, as the recipes do)."""
    from edgesearch.search.resolve import resolve_inputs
    from edgesearch.spaces.apply import uniform_candidate
    from edgesearch.spaces.candidate import Candidate, LayerKnobs

    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=None, data=None, preset="default")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, by_prefix in NAMED:
        groups: dict[str, list[str]] = {}  # prefix -> its layers: one uniform_candidate (one DepGraph) per group
        for layer in inputs.resolved:
            prefix = next((p for p in by_prefix if layer.startswith(p)), None)
            if prefix is not None:
                groups.setdefault(prefix, []).append(layer)
        layers = {}
        for prefix, names in groups.items():
            layers.update(uniform_candidate(inputs.base_model, LayerKnobs(**by_prefix[prefix]), names).layers)
        ordered = {layer: layers[layer] for layer in inputs.resolved if layer in layers}  # model order
        path = folder / f"{name}.json"
        write_text_atomically(path, json.dumps(Candidate(ordered).to_json(), indent=1))
        paths.append(path)
    return paths


def scored_trials(folder: Path) -> list:
    if not (folder / "study.db").exists():
        return []
    study = studies.read_study(folder)
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def run(folder: Path, variant: str, trials: int, seed: int, designs: list[Path]) -> None:
    if len(scored_trials(folder)) >= trials:
        return
    parallel, extra, env, _ = VARIANTS[variant]
    command = [sys.executable, "-m", "edgesearch.search.cli", "run", "--profile", "x86-host", "--strategy", "random",
               "--seed", str(seed), "--trials", str(trials), "--parallel", str(parallel), "--out", str(folder),
               "--recover-steps", "0", *extra]  # the recovery stage after the trials is not trial throughput
    if (folder / "run.json").exists():
        command.append("--resume")
    elif designs:
        command += ["--designs", *map(str, designs)]
    with open(folder.parent / f"{folder.name}.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=log, env={**os.environ, **env})


def figures(folder: Path, trials: int) -> dict:
    run_json = json.loads((folder / "run.json").read_text())
    chosen = scored_trials(folder)[:trials]
    span_s = (max(t.datetime_complete for t in chosen) - min(t.datetime_start for t in chosen)).total_seconds()
    scores = [t.user_attrs[studies.SCORE_ATTR] for t in chosen]
    return {"parallel": run_json["parallel"], "strategy": run_json["strategy"], "seed": run_json["seed"],
            "trials": len(chosen), "span_s": span_s, "trials_per_hour": 3600 * len(chosen) / span_s,
            "designs": [t.user_attrs.get(studies.ORIGIN_ATTR, "sampled") for t in chosen],
            "builds_reused": sum(bool(s.get("build_reused")) for s in scores),
            "inherited": sum(bool(s["training"].get("inherited_steps")) for s in scores),
            "map_by_design": {t.user_attrs.get(studies.ORIGIN_ATTR, f"#{t.number}"): s["map50_95"]
                              for t, s in zip(chosen, scores, strict=True)},
            **{f"{part}_median": statistics.median(s[part] for s in scores) for part in PARTS}}


def markdown(results: list[dict]) -> str:
    reference = results[0]["trials_per_hour"]
    lines = ["| setting | trials at once | trials x rounds | trials/hour (median; range) | vs first row | builds reused | "
             "from a parent's weights | fine-tune s | validate s | build+time s | trial work s (medians) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['parallel']} | {r['trials']} x {len(r['rounds'])} | "
                     f"{r['trials_per_hour']:.1f} ({min(r['rounds']):.1f}-{max(r['rounds']):.1f}) | "
                     f"{r['trials_per_hour'] / reference:.2f}x | {'/'.join(map(str, r['builds_reused']))} of "
                     f"{r['trials']} | {'/'.join(map(str, r['inherited']))} of {r['trials']} | "
                     f"{r['finetune_s_median']:.1f} | "
                     f"{r['validate_s_median']:.1f} | {r['hardware_s_median']:.1f} | {r['eval_s_median']:.1f} |")
    return "\n".join(lines)


def accuracy_markdown(results: list[dict]) -> str:
    """Each design's mAP50-95 by setting (median over rounds): what faster trials cost in accuracy."""
    designs = list(results[0]["map_by_design"])
    lines = ["| design | " + " | ".join(f"{r['variant']} mAP50-95" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for design in designs:
        lines.append(f"| {design} | " + " | ".join(f"{r['map_by_design'].get(design, float('nan')):.3f}"
                                                  for r in results) + " |")
    return "\n".join(lines)


def combined(variant: str, runs: list[dict]) -> dict:
    """One setting's rounds: the median trials/hour, and the medians of the per-trial parts over all its rounds."""
    return {"variant": variant, "parallel": runs[0]["parallel"], "trials": runs[0]["trials"],
            "rounds": [r["trials_per_hour"] for r in runs], "builds_reused": [r["builds_reused"] for r in runs],
            "inherited": [r.get("inherited", 0) for r in runs],
            "map_by_design": {design: statistics.median(r["map_by_design"][design] for r in runs
                                                        if design in r.get("map_by_design", {}))
                              for design in runs[0].get("map_by_design", {})},
            "trials_per_hour": statistics.median(r["trials_per_hour"] for r in runs),
            **{f"{part}_median": statistics.median(r[f"{part}_median"] for r in runs) for part in PARTS}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["named", "random"], default="named", dest="design_set")
    parser.add_argument("--trials", type=int, default=8, help="random set: how many designs")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["before", "p2", "p1"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="bench/throughput_runs", help="run folders <set>-<variant>-r<round> (kept; read "
                                                                        "or resumed)")
    parser.add_argument("--out", default="bench/throughput")
    args = parser.parse_args(argv)

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    designs = write_named_set(runs / "named-set") if args.design_set == "named" else []
    trials = len(designs) or args.trials
    by_variant: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for round_number in range(1, args.rounds + 1):
        for variant in args.variants:
            folder = runs / f"{args.design_set}-{variant}-r{round_number}"
            run(folder, variant, trials, args.seed, designs)
            result = figures(folder, trials)
            if (result["parallel"], result["strategy"], result["seed"]) != (VARIANTS[variant][0], "random", args.seed):
                raise SystemExit(f"{folder} is not a random-strategy run of seed {args.seed} at --parallel "
                                 f"{VARIANTS[variant][0]}")
            by_variant[variant].append(result)
    results = [combined(variant, found) for variant, found in by_variant.items()]
    table = markdown(results) + "\n\n" + accuracy_markdown(results)
    scored = (f"the named set of {trials} designs ({', '.join(name for name, _ in NAMED)}: four parents, then a "
              "weight-only child of each)" if designs else f"{trials} random designs of seed {args.seed}")
    header = (f"Default search on x86-host ({scored}, the same in every row; the settings interleaved, {args.rounds} "
              "round(s)), trials per hour from the first trial's start to the last one's end:")
    write_text_atomically(Path(args.out + ".json"), json.dumps({"results": results, "runs": by_variant}, indent=2))
    legend = "\n".join(f"- {variant}: {VARIANTS[variant][3]}" for variant in args.variants)
    write_text_atomically(Path(args.out + ".md"), header + "\n\n" + table + "\n\n" + legend + "\n")
    print(header + "\n\n" + table + "\n\n" + legend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
