"""`search batch jobs.yaml`: several searches on one Ray connection, each in its own run folder, resumable,
submitted as users submit it to a cluster: `ray job submit -- search batch jobs.yaml` against the Jobs API
of a real multi-node cluster on this machine (a head with its dashboard, two worker nodes).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import SMOKE_SPACE, run_cli
from local_cluster import RAY, LocalCluster

PROFILE = str(Path(__file__).parent / "data" / "cluster-board.yaml")
SEARCH = str(Path(sys.executable).with_name("search"))  # the console script, as on a node's PATH


def _rows(out: Path) -> dict[int, dict]:
    """{trial: what was scored and where} of a run's scored trials."""
    keys = ("map50_95", "latency_ms", "sram_bytes", "knobs", "node", "attempts")
    return {int(r["trial"]): {k: r[k] for k in keys} for r in csv.DictReader((out / "trials.csv").open())
            if r["state"] == "COMPLETE"}


class Jobs:
    """The `ray job` command line against one cluster's Jobs API, as a user types it."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster

    def __call__(self, command: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "job", command, "--address", self.cluster.dashboard_url, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.cluster.driver_env())

    def submit(self, job_id: str, jobs_file: Path) -> None:
        submitted = self("submit", "--submission-id", job_id, "--no-wait", "--", SEARCH, "batch", str(jobs_file))
        assert submitted.returncode == 0, submitted.stderr[-3000:]

    def status(self, job_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED (the Jobs SDK: the CLI words each differently)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.cluster.dashboard_url).get_job_status(job_id).value

    def wait(self, job_id: str, states: set[str], timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (state := self.status(job_id)) in states:
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job_id} never reached {states}")


def test_a_batch_submitted_as_a_ray_job_runs_each_search_in_its_own_folder_stops_and_resumes(tmp_path,
                                                                                           cluster_inputs):
    import shutil

    shutil.copytree(cluster_inputs, tmp_path / "inputs")
    jobs_file = tmp_path / "jobs.yaml"
    defaults = {"preset": "smoke", "profile": PROFILE, "space": SMOKE_SPACE, "strategy": "random",
                "finetune_iters": 0, "parallel": 2, "model": "inputs/tiny.pt", "data": "inputs/data/data.yaml"}
    searches = [{"out": "runs/a", "trials": 1}, {"out": "runs/b", "trials": 1, "seed": 1}]
    jobs_file.write_text(yaml.safe_dump({"defaults": defaults, "searches": searches}))
    cluster = LocalCluster(workers=2, cpus_per_worker=1, dashboard=True)
    jobs = Jobs(cluster)
    try:
        jobs.submit("batch-1", jobs_file)
        assert jobs.wait("batch-1", {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED", jobs("logs", "batch-1").stdout
        logs = jobs("logs", "batch-1")
        assert logs.returncode == 0 and "search 2 of 2" in logs.stdout, logs.stdout[-3000:]
        runs = tmp_path / "runs"  # paths in a jobs file are relative to its folder, wherever the job's driver runs
        first_rows = {name: _rows(runs / name) for name in ("a", "b")}
        assert all(len(rows) == 1 and all(r["node"] for r in rows.values()) for rows in first_rows.values())
        assert (runs / "a" / "index.html").is_file() and (runs / "b" / "index.html").is_file()

        # the same batch asking two more trials of b, stopped while one of them runs
        searches[1]["trials"] = 3
        jobs_file.write_text(yaml.safe_dump({"defaults": defaults, "searches": searches}))
        jobs.submit("batch-2", jobs_file)
        deadline = time.monotonic() + 300
        while not cluster.trial_workers():
            assert time.monotonic() < deadline and jobs.status("batch-2") in {"PENDING", "RUNNING"}, \
                jobs("logs", "batch-2").stdout[-3000:]
            time.sleep(0.5)
        stopped = jobs("stop", "batch-2")
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        assert jobs.wait("batch-2", {"STOPPED", "SUCCEEDED", "FAILED"}, timeout=120) == "STOPPED"

        # submitted again: each search resumes, nothing finished is scored again
        jobs.submit("batch-3", jobs_file)
        assert jobs.wait("batch-3", {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED", jobs("logs", "batch-3").stdout
        assert jobs("logs", "batch-3").stdout.count("(resumed)") == 2
        assert _rows(runs / "a") == first_rows["a"]
        rows_b = _rows(runs / "b")
        assert len(rows_b) == 3 and {n: rows_b[n] for n in first_rows["b"]} == first_rows["b"]
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
