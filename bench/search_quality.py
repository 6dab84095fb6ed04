"""Search quality on the default model: the same budget of fully scored trials for random search,
the search as it was before the guided search (uniform 8/6/4-bit anchors, then NSGA-II), the
guided search, and the guided search on issue 18's path ("guided-before": the sensitivity pass as
it was up to its VERSION 3, no build reuse, no successive halving), at two or more seeds.

Each search is a real `search run` (a subprocess, its own run folder; an existing folder is
resumed, so a stopped benchmark continues). Per run, from its study:

  - hypervolume of (mAP50-95 up, SRAM down) and of (mAP50-95 up, latency down) over its feasible
    scored trials, against one reference for all runs: mAP 0, the base's SRAM x 1.1 and the
    base's latency x 1.1 (latency: each trial's own measurement, taken while it ran); and of
    (mAP50-95 up, latency / the run's own base latency down) against 1.1, which cancels the drift
    between runs made hours apart on a shared host;
  - among designs within 1 % relative mAP50-95 drop of the base: the best weight-memory saving
    vs FP32 (the base's packed fp32 weights) and the best latency ratio (base / design);
  - which recipes its designs dominate (recipes as scored by the guided run of the same seed);
  - wall time, and the sensitivity pass's own cost (cached across runs: counted once, and added
    to every guided run's wall time in the "incl. sensitivity" column).

    .venv/bin/python bench/search_quality.py [--trials 24] [--seeds 0 1] [--parallel 1]
    .venv/bin/python bench/search_quality.py --targets reports/demo   # the structure issue's targets table

Prints a markdown table and writes bench/search_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()

import moocore  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from edgesearch.common.files import write_text_atomically  # noqa: E402
from edgesearch.search import study as studies  # noqa: E402

STRATEGIES = ("random", "nsga2", "guided", "guided-before")
# a strategy that is a path of another: (its `--strategy`, extra `search run` arguments, environment)
PATHS = {"guided-before": ("guided", ["--no-build-reuse", "--rung-steps", "0", "--child-steps", "0"],
                           {"EDGESEARCH_SENSITIVITY_METHOD": "reference"})}  # search/analysis.py
MAX_DROP = 0.01


def run_search(folder: Path, strategy: str, seed: int, trials: int, parallel: int,
               recover_steps: int | None = None) -> float:
    """Run (or resume) one search; returns its wall time in seconds (0 when it was complete)."""
    strategy, extra, env = PATHS.get(strategy, (strategy, [], {}))
    if recover_steps is not None:
        extra = [*extra, "--recover-steps", str(recover_steps)]
    command = [sys.executable, "-m", "edgesearch.search.cli", "run", "--profile", "x86-host", "--strategy", strategy,
               "--seed", str(seed), "--trials", str(trials), "--parallel", str(parallel), "--out", str(folder), *extra]
    if (folder / "run.json").exists():
        study = _study(folder)
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))) >= trials:
            return 0.0
        command.append("--resume")
    started = time.perf_counter()
    with open(folder.parent / f"{folder.name}.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=log, env={**os.environ, **env})
    return time.perf_counter() - started


def _study(folder: Path) -> optuna.Study:
    return studies.read_study(folder)


def _hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """2-D hypervolume of (mAP up, cost down) points against (mAP, cost) `reference`."""
    kept = np.array([(m, c) for m, c in points if m > reference[0] and c < reference[1]], dtype=float)
    if not len(kept):
        return 0.0
    return float(moocore.hypervolume(kept.reshape(-1, 2), ref=np.array(reference, dtype=float), maximise=(True, False)))


def _dominates(a: dict, b: dict) -> bool:
    keys = (("map50_95", 1), ("sram_bytes", -1), ("latency_ms", -1))
    return all(s * a[k] >= s * b[k] for k, s in keys) and any(s * a[k] > s * b[k] for k, s in keys)


def summarise(folder: Path, reference: dict, recipes: dict[str, dict], wall_s: float) -> dict:
    study = _study(folder)
    base = study.user_attrs["base"]
    trials = study.get_trials(deepcopy=False)
    scored = [t for t in trials if t.state == TrialState.COMPLETE]
    feasible_trials = [t for t in scored if all(v <= 0 for v in t.constraints.values())]
    feasible = [t.user_attrs[studies.SCORE_ATTR] for t in feasible_trials]
    # the front's interleaved re-measure (its designs and the base timed together, at the end of the run)
    remeasured = study.user_attrs.get("remeasured") or {}
    retimed = [(t.user_attrs[studies.SCORE_ATTR]["map50_95"], remeasured[str(t.number)]["latency_ms"])
               for t in feasible_trials if str(t.number) in remeasured]
    floor = base["map50_95"] * (1 - MAX_DROP)
    within = [s for s in feasible if s["map50_95"] >= floor]
    return {
        "scored": len(scored),
        "screened": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "hv_map_sram": _hypervolume([(s["map50_95"], s["sram_bytes"]) for s in feasible],
                                    (0.0, reference["sram_bytes"])),
        "hv_map_latency": _hypervolume([(s["map50_95"], s["latency_ms"]) for s in feasible],
                                       (0.0, reference["latency_ms"])),
        # latency as a ratio to this run's own base, timed in the same run: runs made hours apart on
        # a shared host drift (bases of 4.5-6.9 ms, quiet), and this cancels that drift
        "hv_map_latency_ratio": _hypervolume([(s["map50_95"], s["latency_ms"] / base["latency_ms"]) for s in feasible],
                                             (0.0, 1.1)),
        # the same over the front's designs as re-measured, over the re-measured base: the steadiest
        # basis across runs (a base timed once at a run's start moved 5.0-6.0 ms between runs)
        "hv_map_remeasured_ratio": _hypervolume([(m, ms / remeasured["base"]["latency_ms"]) for m, ms in retimed],
                                                (0.0, 1.1)) if "base" in remeasured else None,
        "best_map": max((s["map50_95"] for s in feasible), default=None),
        "within_1pct": len(within),
        "best_weight_saving_within_1pct": max((base["weight_bytes"] / s["weight_bytes"] for s in within), default=None),
        "best_latency_ratio_within_1pct": max((base["latency_ms"] / s["latency_ms"] for s in within), default=None),
        "recipes_dominated": sorted(name for name, r in recipes.items() if any(_dominates(s, r) for s in feasible)),
        "wall_s": wall_s,
    }


def recipe_scores(folder: Path) -> dict[str, dict]:
    study = _study(folder)
    return {t.user_attrs[studies.RECIPE_ATTR]: t.user_attrs[studies.SCORE_ATTR]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get(studies.RECIPE_ATTR) and not t.user_attrs[studies.RECIPE_ATTR].startswith("control")}


def _fmt(value, digits=3):
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(results: dict, recipes: list[str], sensitivity_s: dict[str, float]) -> str:
    lines = ["| strategy | seed | scored | screened | failed | HV mAP×SRAM (MiB) | HV mAP×latency (ms) | "
             "HV mAP×latency/base | best mAP | designs within 1 % | best weight saving within 1 % | "
             "best latency ratio within 1 % | recipes dominated | "
             "wall min | wall min incl. sensitivity |", "|" + "---|" * 15]
    for key, r in results.items():
        strategy, seed = key.split("/")
        incl = r["wall_s"] + sensitivity_s.get(strategy, 0)
        lines.append(f"| {strategy} | {seed} | {r['scored']} | {r['screened']} | {r['failed']} | "
                     f"{r['hv_map_sram'] / 2**20:.3f} | {r['hv_map_latency']:.3f} | {r['hv_map_latency_ratio']:.3f} | "
                     f"{_fmt(r['best_map'])} | "
                     f"{r['within_1pct']} | {_fmt(r['best_weight_saving_within_1pct'], 2)}x | "
                     f"{_fmt(r['best_latency_ratio_within_1pct'], 2)}x | {len(r['recipes_dominated'])}/{len(recipes)} | "
                     f"{r['wall_s'] / 60:.1f} | {incl / 60:.1f} |")
    lines += ["", "Medians over seeds (ratio to random search's median hypervolume):", "",
              "| strategy | HV mAP×SRAM | ratio | HV mAP×latency | ratio |", "|---|---|---|---|---|"]
    medians = {}
    for strategy in STRATEGIES:
        rows = [r for k, r in results.items() if k.startswith(strategy + "/")]
        if rows:
            medians[strategy] = (statistics.median(r["hv_map_sram"] for r in rows),
                                 statistics.median(r["hv_map_latency"] for r in rows))
    for strategy, (sram, latency) in medians.items():
        random_sram, random_latency = medians.get("random", (None, None))
        lines.append(f"| {strategy} | {sram / 2**20:.3f} | {_fmt(sram / random_sram if random_sram else None, 2)} | "
                     f"{latency:.3f} | {_fmt(latency / random_latency if random_latency else None, 2)} |")
    return "\n".join(lines + new_against_before(results, recipes))


def new_against_before(results: dict, recipes: list[str]) -> list[str]:
    """Issue 18's quality target, per seed: the guided search's hypervolumes over those of the same
    search on issue 18's path (each ≥ 0.95 to pass), and whether every recipe is still dominated."""
    seeds = [key.split("/")[1] for key in results if key.startswith("guided/")
             and f"guided-before/{key.split('/')[1]}" in results]
    if not seeds:
        return []
    figures = (("hv_map_sram", "mAP×SRAM"), ("hv_map_latency", "mAP×latency"), ("hv_map_latency_ratio", "mAP×latency/base"),
               ("hv_map_remeasured_ratio", "mAP×re-measured latency/base"))
    lines = ["", "New path against issue 18's path (guided / guided-before, same seed; target: each ratio ≥ 0.95, "
                 "recipes still dominated):", "",
             "| seed | " + " | ".join(f"HV {name} ratio" for _, name in figures) + " | recipes dominated (new / before) |",
             "|---|" + "---|" * (len(figures) + 1)]
    for seed in seeds:
        new, before = results[f"guided/{seed}"], results[f"guided-before/{seed}"]
        ratios = [new[key] / before[key] if new.get(key) is not None and before.get(key) else None
                  for key, _ in figures]
        lines.append(f"| {seed} | " + " | ".join(_fmt(r, 3) for r in ratios) + f" | {len(new['recipes_dominated'])}/"
                     f"{len(recipes)} / {len(before['recipes_dominated'])}/{len(recipes)} |")
    return lines


# ------------------------------------------------------------------ structure targets (issue 19, item 4)

def structure_targets(folder: Path, passes: int = 0) -> dict:
    """The structure issue's targets, read from one finished run (e.g. `make demo`'s): each design is
    held to the higher of the unmodified base and the fp32 control with its own training record
    (the recovery stage's designs to the recovered control). A speed-up counts only as the issue
    defines it: base / design latency timed together, interleaved. With `passes`, the candidates
    for each speed target (the SPEED_CANDIDATES fastest within it by any figure) and the structural
    recipes are re-timed here with the base, `passes` times over (retime_candidates), and each
    ratio is the median over passes; without, the run's own re-measure of its front. The search's
    own figures (each trial timed alone, at its moment, against a base timed at another) are shown
    beside, not counted: on this host they drift by 2x (a base timed at 11.75 ms in a search,
    5.5 ms re-measured)."""
    from edgesearch.reports import design_data as dd
    from edgesearch.reports.design_names import design_name
    from edgesearch.search.recipes import RECIPES
    from edgesearch.spaces.candidate import Candidate

    study = _study(folder)
    base, remeasured = study.user_attrs["base"], study.user_attrs.get("remeasured") or {}
    rows = [row for row in studies.trial_rows(study) if row["state"] == "COMPLETE" and row["scores"]]
    run = json.loads((folder / "run.json").read_text())
    # the higher of the base and the fp32 control with the same training: the report's floor at a drop of 0
    references = {key: dd.accuracy_floor({"max_map_drop": 0.0}, base, rows, *key)["map50_95"]
                  for key in {dd.record_key(row) for row in rows}}

    def within(row, drop):
        return row["scores"]["map50_95"] >= (1 - drop) * references[dd.record_key(row)]

    def search_speedup(row):
        pair = dd.latency_pair(base, row["scores"], None, None)
        return pair["speedup"], pair["basis"]

    def run_pair(row):  # the run's own figures: its re-measure where both were re-measured, else the search's
        return dd.latency_pair(base, row["scores"], remeasured.get("base"), remeasured.get(str(row["number"])))

    def any_speedup(row):  # to choose what to re-time: the best figure either way
        return run_pair(row)["speedup"] or 0.0

    retimed: dict[str, list[float]] = {}

    def speedup(row):
        if str(row["number"]) in retimed:
            ratios = retimed[str(row["number"])]
            return statistics.median(ratios), f"re-timed with the base, median of {len(ratios)} passes"
        pair = run_pair(row)
        return (pair["speedup"], "the run's re-measure") if pair["basis"] == "re-measured" else (None, None)

    def fp32_structure(row):
        candidate = Candidate.from_json(row["candidate"])
        return candidate.changes_structure() and all(k.activation_bits == 32 for k in candidate.layers.values())

    def best(rows_, figure):
        scored = [(figure(r), r) for r in rows_]
        scored = [(f, r) for f, r in scored if f[0] is not None]
        return max(scored, key=lambda item: item[0][0], default=(None, None))

    def entry(target, threshold, found, unit="x", search=None):
        figure, row = found
        value, basis = figure if figure else (None, None)
        search_figure, search_row = search or (None, None)
        return {"target": target, "threshold": threshold, "value": value, "basis": basis,
                "search_figure": None if search_row is None else
                {"value": search_figure[0], "design": f"#{search_row['number']}"},
                "met": value is not None and value >= threshold, "unit": unit,
                "design": None if row is None else f"#{row['number']}: {design_name(row['candidate'])}",
                "training": None if row is None else (row["scores"].get("training") or {}).get("label"),
                "map50_95": None if row is None else row["scores"]["map50_95"]}

    speed_targets = {"structure": [r for r in rows if within(r, 0.01) and fp32_structure(r)],
                     "any": [r for r in rows if within(r, 0.01)]}
    if passes:
        chosen = {str(r["number"]): r for group in speed_targets.values()
                  for r in sorted(group, key=any_speedup, reverse=True)[:SPEED_CANDIDATES]}
        chosen.update({str(r["number"]): r for r in rows
                       if r.get("recipe") in RECIPES and RECIPES[r["recipe"]].changes_structure()})
        retimed.update(retime_candidates(study, run, list(chosen.values()), passes))
    table = [
        entry("within 1 %: speed-up from structure alone (fp32 compute)", 1.5, best(speed_targets["structure"], speedup),
              search=best(speed_targets["structure"], search_speedup)),
        entry("within 1 %: speed-up of any design (structure and int8 together)", 3.0, best(speed_targets["any"], speedup),
              search=best(speed_targets["any"], search_speedup)),
        entry("within 5 %: less weight memory", 20.0,
              best([r for r in rows if within(r, 0.05)],
                   lambda r: (base["weight_bytes"] / r["scores"]["weight_bytes"], "packed weights"))),
        entry("within 5 %: fewer FLOPs", 5.0,
              best([r for r in rows if within(r, 0.05)], lambda r: (base["flops"] / r["scores"]["flops"], "counted"))),
    ]
    # the uniform pruning recipes (recipes.py), after the search's fine-tune and after the recovery stage
    pruning: dict[str, dict[int, dict]] = {}
    for row in rows:
        if row.get("recipe") in RECIPES and RECIPES[row["recipe"]].changes_structure():
            figure, basis = speedup(row)
            pruning.setdefault(row["recipe"], {})[dd.recovery_steps(row)] = {
                "map50_95": row["scores"]["map50_95"], "speedup": figure, "basis": basis,
                "within_1_percent": within(row, 0.01)}
    return {"run": str(folder), "settings": {k: run.get(k) for k in ("profile", "model", "imgsz", "trials",
                                                                   "finetune_iters", "recover_steps", "rung_steps")},
            "retimed": {"passes": passes, "ratios": retimed},
            "base_map50_95": base["map50_95"], "targets": table,
            "references": {_record_name(*key): value for key, value in sorted(references.items())},
            "pruning_recipes": {name: pruning[name] for name in sorted(pruning)}}


SPEED_CANDIDATES = 3  # per speed target, the fastest designs within it that the table re-times


def retime_candidates(study: optuna.Study, run: dict, rows: list[dict], passes: int) -> dict[str, list]:
    """{trial number: [base / design latency, one per pass]}: `rows` and the base timed together,
    interleaved (runners/evaluate.remeasure_designs, as the run's own re-measure: from the libraries
    their trials kept on this machine, else rebuilt from the candidate), `passes` times over, at the
    run's threads per trial. Nothing else should run on the machine meanwhile."""
    from edgesearch.runners.evaluate import remeasure_designs
    from edgesearch.search.resolve import eval_settings, resolve_inputs

    inputs = resolve_inputs(profile=run["profile_file"], space=run["space_file"], model=run["model"],
                            data=run["data"], preset=run["preset"], trust_checkpoint=False)
    settings = eval_settings(inputs, imgsz=run["imgsz"], finetune_iters=run["finetune_iters"], batch=run["batch"],
                             threads=max(1, (os.cpu_count() or 1) // max(1, run["parallel"])), seed=run["seed"],
                             measurement=run.get("measurement"))
    settings["build_cache"] = studies.run_id(study)
    candidates = {"base": None, **{str(r["number"]): r["candidate"] for r in rows}}
    build_keys = {"base": study.user_attrs["base"].get("build_key"),
                  **{str(r["number"]): r["scores"].get("build_key") for r in rows}}
    ratios: dict[str, list] = {number: [] for number in candidates if number != "base"}
    for done in range(passes):
        print(f"re-timing {len(rows)} design(s) with the base, pass {done + 1} of {passes}", flush=True)
        timed = remeasure_designs(settings, candidates, build_keys)
        for number in ratios:
            ratios[number].append(timed["base"]["latency_ms"] / timed[number]["latency_ms"])
    return ratios


def _speed_text(figure: dict) -> str:
    """A speed-up with its basis, or why there is none."""
    return f"{figure['speedup']:.2f}x ({figure['basis']})" if figure["speedup"] else "speed-up not timed with the base"


def _record_name(recovery: int, inherited: int) -> str:
    """A training record (design_data.record_key) in a few words."""
    return f"recovery {recovery} steps" if recovery else f"{inherited} steps inherited" if inherited else "search"


def reached_text(value: float, threshold: float) -> str:
    """A target's figure to two decimals, or three where two would round a miss up to the threshold
    (2.9993x against 3x reads 2.999x, not 3.00x beside a "no")."""
    text = f"{value:.2f}"
    return f"{value:.3f}" if value < threshold <= float(text) else text


def targets_markdown(result: dict) -> str:
    settings = ", ".join(f"{k} {v}" for k, v in result["settings"].items())
    lines = [f"Structure targets (issue 19), run {result['run']}: {settings}. Base mAP50-95 "
             f"{result['base_map50_95']:.3f}; references (the higher of the base and the fp32 control with the same "
             "training record): " + ", ".join(f"{k} {v:.3f}" for k, v in result["references"].items()) + ".", "",
             "| target | needed | reached | basis | met | design | its training | its mAP50-95 | "
             "the search's own timing (not counted) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in result["targets"]:
        reached = "-" if t["value"] is None else reached_text(t["value"], t["threshold"]) + t["unit"]
        search = t.get("search_figure")
        search_text = f"{search['value']:.2f}x ({search['design']})" if search and search["value"] else "-"
        lines.append(f"| {t['target']} | ≥ {t['threshold']:g}{t['unit']} | {reached} | "
                     f"{t['basis'] or '-'} | {'yes' if t['met'] else 'no'} | {t['design'] or '-'} | "
                     f"{t['training'] or '-'} | {_fmt(t['map50_95'])} | "
                     f"{search_text} |")
    retimed = result.get("retimed") or {}
    if retimed.get("passes"):
        lines += ["", f"Re-timed here with the base, interleaved, {retimed['passes']} passes (speed-up per pass): "
                  + "; ".join(f"#{n} " + ", ".join(f"{r:.2f}x" for r in ratios)
                              for n, ratios in sorted(retimed["ratios"].items(), key=lambda item: int(item[0])))]
    lines += ["", "Uniform structured-pruning recipes (mAP50-95, speed-up over the base):"]
    for name, by_steps in result["pruning_recipes"].items():
        lines.append(f"- {name}: " + "; ".join(
            f"{'after the search fine-tune' if int(k) == 0 else f'after {k} recovery steps'} {v['map50_95']:.3f}"
            f"{' (within 1 %)' if v['within_1_percent'] else ''}, {_speed_text(v)}"
            for k, v in sorted(by_steps.items(), key=lambda item: int(item[0]))))
    if not result["pruning_recipes"]:
        lines.append("- not scored in this run")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", help="only the structure issue's targets table, read from this finished run "
                                          "folder (e.g. reports/demo): written to --targets-out")
    parser.add_argument("--targets-out", default="bench/results/structure_targets",
                        help="with --targets: writes OUT.md and OUT.json")
    parser.add_argument("--retime-passes", type=int, default=3,
                        help="with --targets: re-time each speed target's candidates with the base this many times "
                             "(0: only the run's own re-measure of its front)")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--recover-steps", type=int, help="passed to every search (default: the preset's); 0: none")
    parser.add_argument("--runs", default="bench/search_quality_runs", help="run folders (kept; resumed)")
    parser.add_argument("--out", default="bench/search_quality")
    args = parser.parse_args(argv)
    if args.targets:
        result = structure_targets(Path(args.targets), args.retime_passes)
        text = targets_markdown(result)
        out = Path(args.targets_out)
        write_text_atomically(out.with_suffix(".json"), json.dumps(result, indent=2))
        write_text_atomically(out.with_suffix(".md"), text + "\n")
        print(text)
        return 0

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    walls_file = runs / "wall_s.json"
    walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
    # guided first: its recipes are the reference points every strategy of the same seed is compared with
    order = sorted(args.strategies, key=lambda s: s != "guided")
    for seed in args.seeds:
        for strategy in order:
            key = f"{strategy}/{seed}"
            folder = runs / f"{strategy}-{seed}"
            print(f"{key}: running", flush=True)
            walls[key] = walls.get(key, 0.0) + run_search(folder, strategy, seed, args.trials, args.parallel,
                                                          args.recover_steps)
            write_text_atomically(walls_file, json.dumps(walls))

    bases = [_study(runs / f"{s}-{seed}").user_attrs["base"] for seed in args.seeds for s in args.strategies]
    reference = {"sram_bytes": 1.1 * statistics.median(b["sram_bytes"] for b in bases),
                 "latency_ms": 1.1 * statistics.median(b["latency_ms"] for b in bases)}
    sensitivity_s = {}  # each guided path's own pass (cached: counted once, on every run of that path)
    for strategy in args.strategies:
        sensitivity_file = runs / f"{strategy}-{args.seeds[0]}" / "sensitivity.json"
        if sensitivity_file.exists():
            sensitivity_s[strategy] = sum(json.loads(sensitivity_file.read_text())["seconds"].values())
    results, recipe_names = {}, set()
    for seed in args.seeds:
        recipes = recipe_scores(runs / f"guided-{seed}") if "guided" in args.strategies else {}
        recipe_names |= set(recipes)
        for strategy in args.strategies:
            key = f"{strategy}/{seed}"
            results[key] = summarise(runs / f"{strategy}-{seed}", reference, recipes, walls.get(key, 0.0))
    table = markdown(results, sorted(recipe_names), sensitivity_s)
    header = (f"Search quality: x86-host, default YOLOv8n (base mAP50-95 {bases[0]['map50_95']:.3f}), "
              f"{args.trials} fully scored trials per run; hypervolume reference: mAP 0, SRAM "
              f"{reference['sram_bytes'] / 2**20:.2f} MiB, latency {reference['latency_ms']:.2f} ms (base x 1.1); "
              "sensitivity pass " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in sensitivity_s.items())
              + " (cached, once).")
    payload = {"trials": args.trials, "seeds": args.seeds, "reference": reference, "sensitivity_s": sensitivity_s,
               "results": results, "recipes": {seed: recipe_scores(runs / f"guided-{seed}") for seed in args.seeds
                                               if "guided" in args.strategies}}
    write_text_atomically(Path(args.out + ".json"), json.dumps(payload, indent=2))
    write_text_atomically(Path(args.out + ".md"), header + "\n\n" + table + "\n")
    print(header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
