"""Smoke trials per hour on a local Ray cluster of 1, 2 and 3 worker nodes, and the driver's
overhead per trial.

Each configuration is a real multi-node cluster on this machine (tests/local_cluster.py: a head
with no CPUs, worker nodes each with its own cache and its share of the cores as --num-cpus), and
one `search run --ray-address` of the smoke preset on it: an untrained tiny YOLO (no base
training), the test space, random sampling, an RPC profile with no device (latency estimated, so
no node times anything), one trial per CPU at once.

Per trial, the overhead is what the trial cost beyond its own work: Optuna's trial duration (from
`ask` to `tell`, in the driver) less the task's `eval_s` (measured inside the worker). It holds
the task's scheduling, the worker's start and imports, fetching and unpacking the inputs on a node
that has not seen them, and the driver's bookkeeping.

On a machine with few cores the nodes share the same cores: this shows the mechanism (trials
spread over the nodes, what each trial costs on top of its work), not a speed-up.

    python bench/cluster_scaling.py [--trials 4] [--nodes 1 2 3]

writes bench/cluster_scaling.json and bench/cluster_scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the local cluster helper the tests use

from edgesearch.search.cli_env import apply_process_env  # noqa: E402

apply_process_env()

from edgesearch.common.files import write_text_atomically  # noqa: E402
from local_cluster import LocalCluster  # noqa: E402

PROFILE = ROOT / "tests" / "data" / "cluster-board.yaml"
SPACE = ROOT / "tests" / "data" / "smoke-space.yaml"


def prepare_inputs(folder: Path) -> tuple[Path, Path]:
    """The smoke dataset (cached) and an untrained tiny checkpoint, in `folder`."""
    import torch
    from ultralytics import YOLO

    from edgesearch.search.default_data import build_digit_dataset
    from edgesearch.search.presets import PRESETS, TINY_MODEL_YAML

    shutil.copytree(build_digit_dataset(PRESETS["smoke"].data).parent, folder / "data")
    torch.save({"model": YOLO(TINY_MODEL_YAML).model}, folder / "tiny.pt")
    return folder / "tiny.pt", folder / "data" / "data.yaml"


def measure(nodes: int, trials: int, model: Path, data: Path, work: Path) -> dict:
    cores = os.cpu_count() or 1
    cpus = max(1, cores // nodes)
    started = time.monotonic()
    cluster = LocalCluster(workers=nodes, cpus_per_worker=cpus)
    cluster_start_s = time.monotonic() - started
    out = work / f"run-{nodes}"
    try:
        started = time.monotonic()
        search = subprocess.run(
            [sys.executable, "-m", "edgesearch.search.cli", "run", "--preset", "smoke", "--profile", str(PROFILE),
             "--space", str(SPACE), "--strategy", "random", "--model", str(model), "--data", str(data),
             "--trials", str(trials), "--parallel", str(nodes * cpus), "--out", str(out),
             "--ray-address", cluster.address], capture_output=True, text=True, env=cluster.driver_env())
        search_s = time.monotonic() - started
    finally:
        cluster.shutdown()
    if search.returncode != 0:
        raise SystemExit(f"the search on {nodes} node(s) failed:\n{search.stderr[-3000:]}")
    return {"nodes": nodes, "cpus_per_node": cpus, "parallel": nodes * cpus, "cluster_start_s": cluster_start_s,
            "search_s": search_s, **trial_figures(out)}


def trial_figures(out: Path) -> dict:
    from optuna.trial import TrialState

    from edgesearch.search import study as studies

    study = studies.read_study(out)
    scored = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    first = min(t.datetime_start for t in scored)
    last = max(t.datetime_complete for t in scored)
    trials_s = (last - first).total_seconds()  # from the first trial's start to the last one's end
    overhead = [t.duration.total_seconds() - t.user_attrs[studies.SCORE_ATTR]["eval_s"] for t in scored]
    return {
        "trials": len(scored),
        "trials_per_hour": 3600 * len(scored) / trials_s,
        "trial_s_median": statistics.median(t.duration.total_seconds() for t in scored),
        "eval_s_median": statistics.median(t.user_attrs[studies.SCORE_ATTR]["eval_s"] for t in scored),
        "overhead_s_median": statistics.median(overhead),
        "overhead_s_max": max(overhead),
        "nodes_used": len({t.user_attrs[studies.SCORE_ATTR]["node"]["id"] for t in scored}),
    }


def markdown(results: list[dict], cores: int) -> str:
    lines = [f"Smoke trials on a local Ray cluster ({cores} cores shared by every node: the mechanism, not a "
             "speed-up)", "",
             "| worker nodes | CPUs each | trials at once | nodes used | trials/hour | trial s (median) | "
             "work s (median) | overhead s (median / max) | cluster start s | search s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['nodes']} | {r['cpus_per_node']} | {r['parallel']} | {r['nodes_used']} | "
                     f"{r['trials_per_hour']:.0f} | {r['trial_s_median']:.1f} | {r['eval_s_median']:.1f} | "
                     f"{r['overhead_s_median']:.1f} / {r['overhead_s_max']:.1f} | {r['cluster_start_s']:.0f} | "
                     f"{r['search_s']:.0f} |")
    lines += ["", "overhead: Optuna's trial duration (driver, ask to tell) less the task's own eval_s (worker): "
              "scheduling, worker start and imports, inputs fetched and unpacked on a node's first trial."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cluster-scaling-") as folder:
        work = Path(folder)
        model, data = prepare_inputs(work)
        results = []
        for nodes in args.nodes:
            print(f"{nodes} worker node(s): {args.trials} smoke trials", flush=True)
            results.append(measure(nodes, args.trials, model, data, work))
            print(json.dumps(results[-1]), flush=True)
    cores = os.cpu_count() or 1
    here = Path(__file__).parent
    write_text_atomically(here / "cluster_scaling.json", json.dumps({"cores": cores, "results": results}, indent=2))
    write_text_atomically(here / "cluster_scaling.md", markdown(results, cores))
    print(markdown(results, cores))


if __name__ == "__main__":
    main()
