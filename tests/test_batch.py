"""`search batch jobs.yaml`: several searches on one Ray connection, each in its own run folder, resumable.

Run as a Ray job's entrypoint would be (`ray job submit -- search batch jobs.yaml`): on the head,
with RAY_ADDRESS naming the cluster. (The Jobs API server itself needs `ray[default]`, which the
pinned environment does not install; see README, "Running on a cluster".)
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import SMOKE_SPACE, run_cli
from local_cluster import LocalCluster

PROFILE = str(Path(__file__).parent / "data" / "cluster-board.yaml")


def _rows(out: Path) -> dict[int, dict]:
    """{trial: what was scored and where} of a run's scored trials."""
    keys = ("map50_95", "latency_ms", "sram_bytes", "knobs", "node", "attempts")
    return {int(r["trial"]): {k: r[k] for k in keys} for r in csv.DictReader((out / "trials.csv").open())
            if r["state"] == "COMPLETE"}


def test_a_batch_runs_each_search_in_its_own_folder_and_resumes(tmp_path, cluster_inputs):
    shutil.copytree(cluster_inputs, tmp_path / "inputs")
    jobs = tmp_path / "jobs.yaml"
    defaults = {"preset": "smoke", "profile": PROFILE, "space": SMOKE_SPACE, "strategy": "random",
                "finetune_iters": 0, "parallel": 2, "model": "inputs/tiny.pt", "data": "inputs/data/data.yaml"}
    searches = [{"out": "runs/a", "trials": 1}, {"out": "runs/b", "trials": 1, "seed": 1}]
    jobs.write_text(yaml.safe_dump({"defaults": defaults, "searches": searches}))
    cluster = LocalCluster(workers=1, cpus_per_worker=2)
    try:
        env = cluster.driver_env(RAY_ADDRESS=cluster.address)  # what `ray job submit` gives its entrypoint

        def batch():
            return subprocess.run([sys.executable, "-m", "edgesearch.search.cli", "batch", str(jobs)], env=env,
                                  capture_output=True, text=True, timeout=600, cwd=tmp_path)

        first = batch()
        assert first.returncode == 0, first.stderr[-3000:]
        assert "search 2 of 2" in first.stdout
        runs = tmp_path / "runs"
        first_rows = {name: _rows(runs / name) for name in ("a", "b")}
        assert all(len(rows) == 1 and all(r["node"] for r in rows.values()) for rows in first_rows.values())
        assert (runs / "a" / "index.html").is_file() and (runs / "b" / "index.html").is_file()

        searches[1]["trials"] = 2  # the same batch again, asking one more trial of b
        jobs.write_text(yaml.safe_dump({"defaults": defaults, "searches": searches}))
        second = batch()
        assert second.returncode == 0, second.stderr[-3000:]
        assert second.stdout.count("(resumed)") == 2
        assert _rows(runs / "a") == first_rows["a"]  # finished: nothing run again
        rows_b = _rows(runs / "b")
        assert len(rows_b) == 2 and {n: rows_b[n] for n in first_rows["b"]} == first_rows["b"]
    finally:
        cluster.shutdown()


def test_a_bad_jobs_file_is_refused_before_anything_runs(tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"searches": [{"out": "runs/a", "trials": 1}, {"out": "runs/b", "trails": 2}]}))
    result = run_cli("batch", str(jobs), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("search: error:")]
    assert len(errors) == 1 and "search 2" in errors[0] and "'trails'" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
