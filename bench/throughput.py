"""Trials per hour of the default search on this machine, by how the trials run:

  p1      one trial at a time with every core's threads (`--parallel 1`);
  p2      two at once sharing the cores (`--parallel 2`, one thread each on 2 cores: the default);
  before  two at once as issue 18 found them (2026-12-03): no build reuse, no successive halving,
          and TVM's thread pool pinning each trial's worker to core 0 (TVM_BIND_THREADS=1: see
          search/cli_env.py), so both workers shared one core.

Each setting is a real `search run` of the default preset on x86-host with the random strategy
and the same seed, so every setting scores the same designs in the same order (no screening, no
sensitivity pass, no recovery stage: only the trials differ). The settings run interleaved, `--rounds` times each
(round 1: every setting once, then round 2, ...), so a busy moment of this shared host falls on
one run of several settings, not on all runs of one. A run folder that already holds at least
`--trials` scored trials of that seed and strategy is read, not run again; only its first
`--trials` count. Trials/hour runs from the first of those trials' start to the last one's end
(Optuna's timestamps, in the driver); each setting's figure is the median over its rounds.

    python bench/throughput.py [--trials 8] [--variants before p2 p1] [--rounds 2] [--runs bench/throughput_runs]

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
    "before": (2, ["--no-build-reuse", "--rung-steps", "0"], {"TVM_BIND_THREADS": "1"},
               "two at once as issue 18 found them: no build reuse, no successive halving, each worker pinned "
               "to core 0 by TVM's thread pool"),
}


def scored_trials(folder: Path) -> list:
    if not (folder / "study.db").exists():
        return []
    study = studies.read_study(folder)
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def run(folder: Path, variant: str, trials: int, seed: int) -> None:
    if len(scored_trials(folder)) >= trials:
        return
    parallel, extra, env, _ = VARIANTS[variant]
    command = [sys.executable, "-m", "edgesearch.search.cli", "run", "--profile", "x86-host", "--strategy", "random",
               "--seed", str(seed), "--trials", str(trials), "--parallel", str(parallel), "--out", str(folder),
               "--recover-steps", "0", *extra]  # the recovery stage after the trials is not trial throughput
    if (folder / "run.json").exists():
        command.append("--resume")
    with open(folder.parent / f"{folder.name}.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=log, env={**os.environ, **env})


def figures(folder: Path, trials: int) -> dict:
    run_json = json.loads((folder / "run.json").read_text())
    chosen = scored_trials(folder)[:trials]
    span_s = (max(t.datetime_complete for t in chosen) - min(t.datetime_start for t in chosen)).total_seconds()
    scores = [t.user_attrs[studies.SCORE_ATTR] for t in chosen]
    return {"parallel": run_json["parallel"], "strategy": run_json["strategy"], "seed": run_json["seed"],
            "trials": len(chosen), "span_s": span_s, "trials_per_hour": 3600 * len(chosen) / span_s,
            **{f"{part}_median": statistics.median(s[part] for s in scores) for part in PARTS}}


def markdown(results: list[dict]) -> str:
    reference = results[0]["trials_per_hour"]
    lines = ["| setting | trials at once | trials x rounds | trials/hour (median; range) | vs first row | fine-tune s | "
             "validate s | build+time s | trial work s (medians) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['parallel']} | {r['trials']} x {len(r['rounds'])} | "
                     f"{r['trials_per_hour']:.1f} ({min(r['rounds']):.1f}-{max(r['rounds']):.1f}) | "
                     f"{r['trials_per_hour'] / reference:.2f}x | {r['finetune_s_median']:.1f} | "
                     f"{r['validate_s_median']:.1f} | {r['hardware_s_median']:.1f} | {r['eval_s_median']:.1f} |")
    return "\n".join(lines)


def combined(variant: str, runs: list[dict]) -> dict:
    """One setting's rounds: the median trials/hour, and the medians of the per-trial parts over all its rounds."""
    return {"variant": variant, "parallel": runs[0]["parallel"], "trials": runs[0]["trials"],
            "rounds": [r["trials_per_hour"] for r in runs],
            "trials_per_hour": statistics.median(r["trials_per_hour"] for r in runs),
            **{f"{part}_median": statistics.median(r[f"{part}_median"] for r in runs) for part in PARTS}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["before", "p2", "p1"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="bench/throughput_runs", help="run folders <variant>-r<round> (kept; read "
                                                                        "or resumed)")
    parser.add_argument("--out", default="bench/throughput")
    args = parser.parse_args(argv)

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    by_variant: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for round_number in range(1, args.rounds + 1):
        for variant in args.variants:
            folder = runs / f"{variant}-r{round_number}"
            run(folder, variant, args.trials, args.seed)
            result = figures(folder, args.trials)
            if (result["parallel"], result["strategy"], result["seed"]) != (VARIANTS[variant][0], "random", args.seed):
                raise SystemExit(f"{folder} is not a random-strategy run of seed {args.seed} at --parallel "
                                 f"{VARIANTS[variant][0]}")
            by_variant[variant].append(result)
    results = [combined(variant, found) for variant, found in by_variant.items()]
    table = markdown(results)
    header = (f"Default search on x86-host ({results[0]['trials']} random designs of seed {args.seed}, the same in "
              f"every row; the settings interleaved, {args.rounds} round(s)), trials per hour from the first trial's "
              "start to the last one's end:")
    write_text_atomically(Path(args.out + ".json"), json.dumps({"results": results, "runs": by_variant}, indent=2))
    legend = "\n".join(f"- {variant}: {VARIANTS[variant][3]}" for variant in args.variants)
    write_text_atomically(Path(args.out + ".md"), header + "\n\n" + table + "\n\n" + legend + "\n")
    print(header + "\n\n" + table + "\n\n" + legend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
