"""Trials per hour of the default search on this machine: one trial at a time with every core's
threads (`--parallel 1`), against several at once sharing the cores (`--parallel 2`: one thread
each on a 2-core machine). The default of `search run --parallel` is chosen from this.

Each setting is a real `search run` of the default preset on x86-host with the random strategy
and the same seed, so every setting scores the same designs in the same order (no screening, no
sensitivity pass: only the trials differ). A run folder that already holds at least `--trials`
scored trials of that seed and strategy is read, not run again; only its first `--trials` count.
Trials/hour runs from the first of those trials' start to the last one's end (Optuna's
timestamps, in the driver).

The settings run one after the other, not interleaved: run this on a quiet machine, and more than
once when the ratio is close to 1.

    python bench/throughput.py [--trials 8] [--parallel 1 2] [--runs bench/throughput_runs]

writes bench/throughput.json and bench/throughput.md.
"""

from __future__ import annotations

import argparse
import json
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


def scored_trials(folder: Path) -> list:
    if not (folder / "study.db").exists():
        return []
    study = studies.read_study(folder)
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def run(folder: Path, parallel: int, trials: int, seed: int) -> None:
    if len(scored_trials(folder)) >= trials:
        return
    command = [sys.executable, "-m", "edgesearch.search.cli", "run", "--profile", "x86-host", "--strategy", "random",
               "--seed", str(seed), "--trials", str(trials), "--parallel", str(parallel), "--out", str(folder)]
    if (folder / "run.json").exists():
        command.append("--resume")
    with open(folder.parent / f"{folder.name}.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=log)


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
    lines = ["| trials at once | trials | trials/hour | vs first row | fine-tune s | validate s | build+time s | "
             "trial work s (medians) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['parallel']} | {r['trials']} | {r['trials_per_hour']:.1f} | "
                     f"{r['trials_per_hour'] / reference:.2f}x | {r['finetune_s_median']:.1f} | "
                     f"{r['validate_s_median']:.1f} | {r['hardware_s_median']:.1f} | {r['eval_s_median']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="bench/throughput_runs", help="run folders p<N> (kept; read or resumed)")
    parser.add_argument("--out", default="bench/throughput")
    args = parser.parse_args(argv)

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    results = []
    for parallel in args.parallel:
        folder = runs / f"p{parallel}"
        run(folder, parallel, args.trials, args.seed)
        result = figures(folder, args.trials)
        if (result["parallel"], result["strategy"], result["seed"]) != (parallel, "random", args.seed):
            raise SystemExit(f"{folder} is not a random-strategy run of seed {args.seed} at --parallel {parallel}")
        results.append(result)
    table = markdown(results)
    header = (f"Default search on x86-host ({results[0]['trials']} random designs of seed {args.seed}, the same in "
              "every row), trials per hour from the first trial's start to the last one's end:")
    write_text_atomically(Path(args.out + ".json"), json.dumps({"results": results}, indent=2))
    write_text_atomically(Path(args.out + ".md"), header + "\n\n" + table + "\n")
    print(header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
