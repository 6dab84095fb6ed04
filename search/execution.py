"""Where trials run: Ray tasks, on a local Ray started here or on a cluster joined by address.

On a cluster (`--ray-address`, or RAY_ADDRESS as `ray job submit` sets it) the nodes share nothing
but Ray: a trial's input files travel with it through the object store (search/shipping.py,
runners/inputs.py), and each trial's scores say which node ran it.

Retries: a trial whose worker process or node dies (a system failure) is run again, up to
SYSTEM_RETRIES times, elsewhere if the node is gone; a candidate that raises is not retried (its
error is the trial's result). The scores say how many attempts a trial took.
"""

from __future__ import annotations

import os
import socket

import ray

from edgesearch.search.cli_env import PROCESS_ENV
from edgesearch.spaces.errors import InputError

# quiet ultralytics in workers (the driver shows one progress bar for the whole search)
WORKER_ENV = {**PROCESS_ENV, "YOLO_VERBOSE": "False"}
SYSTEM_RETRIES = 3
CONNECT_TIMEOUT_S = 10  # to open a TCP connection to the cluster's GCS port
LOCAL_OBJECT_STORE = 256 * 1024**2


def cluster_address(flag: str | None) -> str | None:
    """The cluster to join: --ray-address, else RAY_ADDRESS (set by `ray job submit`), else None (local)."""
    return flag or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str) -> None:
    """Refuse, within CONNECT_TIMEOUT_S, an address where nothing listens (ray.init would retry
    for minutes). "auto" (the cluster this machine runs) is left to ray.init."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://").split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address!r}: give host:port of the cluster's head, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InputError(f"no Ray cluster reachable at {address} ({error.strerror or error})") from None


def start_ray(address: str | None, object_bytes: int = 0) -> bool:
    """Join the cluster at `address` (checked first), or start a local Ray whose object store holds
    at least twice `object_bytes` (the shipped inputs). False if Ray was started already (by the
    caller, who then stops it)."""
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, runtime_env={"env_vars": WORKER_ENV}, log_to_driver=False,
                     logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as error:  # version mismatch, not a Ray GCS, ...
            # Ray's exception does not say why (its log lines above do): a refused token reads the same
            lines = str(error).strip().splitlines()
            raise InputError(f"cannot join the Ray cluster at {address}: {lines[0] if lines else error!r} (if it "
                             "uses token authentication: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)") from None
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 object_store_memory=max(LOCAL_OBJECT_STORE, 2 * object_bytes), runtime_env={"env_vars": WORKER_ENV})
    return True


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def cpus_per_trial(parallel: int) -> int:
    """CPUs each of `parallel` trials asks for: an equal share of the cluster's, no more than its
    largest node has (more could never be scheduled)."""
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]]
    return max(1, min(int(max(nodes, default=1)), int(sum(nodes)) // parallel))


@ray.remote(max_retries=SYSTEM_RETRIES, retry_exceptions=False)
def _score_remote(settings: dict, candidate: dict | None, parcels: dict) -> dict:
    # imported in the worker
    from edgesearch.runners.evaluate import score_candidate
    from edgesearch.runners.inputs import materialise

    scores = score_candidate(materialise(settings, parcels, fetch=ray.get), candidate)
    scores["node"] = this_node()
    scores["attempts"] = _attempts()
    return scores


def this_node() -> dict:
    """Which Ray node this process runs on: its id, host name and IP."""
    return {"id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "ip": ray.util.get_node_ip_address()}


def _attempts() -> int | None:
    """Which run of its task this is: 1 for the first, 2 after one retry, ... Ray's public runtime
    context does not say; its core worker does (Ray is pinned: requirements.lock)."""
    core_worker = getattr(ray._private.worker.global_worker, "core_worker", None)
    attempt = getattr(core_worker, "get_current_task_attempt_number", None)
    return attempt() + 1 if attempt else None


@ray.remote(max_retries=SYSTEM_RETRIES, retry_exceptions=False)
def _remeasure_remote(settings: dict, candidates: dict, parcels: dict) -> dict:
    from edgesearch.runners.evaluate import remeasure_designs
    from edgesearch.runners.inputs import materialise

    remeasured = remeasure_designs(materialise(settings, parcels, fetch=ray.get), candidates)
    node = this_node()
    return {name: dict(figures, node=node) for name, figures in remeasured.items()}


def remeasure(settings: dict, candidates: dict, cpus: int, parcels: dict) -> dict:
    """runners/evaluate.remeasure_designs as one task: every design re-timed on one node, together."""
    return ray.get(_remeasure_remote.options(num_cpus=cpus).remote(settings, candidates, parcels))


def submit(settings: dict, candidate: dict | None, cpus: int, parcels: dict):
    """Start scoring one candidate (`parcels`: the shipped inputs, shipping.put); returns a Ray ObjectRef."""
    return _score_remote.options(num_cpus=cpus).remote(settings, candidate, parcels)


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
