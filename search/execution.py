"""Where trials run: Ray tasks, on a local Ray started here or on a cluster by address."""

from __future__ import annotations

import os

import ray

from edgesearch.search.cli_env import PROCESS_ENV

# quiet ultralytics in workers (the driver shows one progress bar for the whole search)
WORKER_ENV = {**PROCESS_ENV, "YOLO_VERBOSE": "False"}


def start_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, runtime_env={"env_vars": WORKER_ENV}, log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 object_store_memory=256 * 1024**2, runtime_env={"env_vars": WORKER_ENV})


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


@ray.remote(max_retries=0)
def _score_remote(settings: dict, candidate: dict | None) -> dict:
    from edgesearch.runners.evaluate import score_candidate  # imported in the worker

    return score_candidate(settings, candidate)


def submit(settings: dict, candidate: dict | None, cpus: int):
    """Start scoring one candidate; returns a Ray ObjectRef."""
    return _score_remote.options(num_cpus=cpus).remote(settings, candidate)


def wait_one(refs: list):
    ready, _ = ray.wait(refs, num_returns=1)
    return ready[0]


def result(ref) -> dict:
    return ray.get(ref)


def describe_error(error: BaseException) -> str:
    """One line for a failed trial: the task's own exception, not Ray's wrapper."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
