"""Where trials run: Ray tasks, on a local Ray started here or on a cluster joined by address.

On a cluster (`--ray-address`, or RAY_ADDRESS as `ray job submit` sets it) the nodes share nothing
but Ray: a trial's input files travel with it through the object store (search/shipping.py,
runners/inputs.py), and each trial's scores say which node ran it.

Retries: a trial whose worker process or node dies (a system failure) is run again, up to
SYSTEM_RETRIES times, elsewhere if the node is gone; a candidate that raises is not retried (its
error is the trial's result). The scores say how many attempts a trial took. Ray's own task
retries are off for trials (max_retries=0): Ray's public API does not tell a task or its caller
which attempt ran, so the driver starts a trial again itself when its task ends in one of Ray's
public system-failure errors (SYSTEM_FAILURES), and counts the attempts (`Pending`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import stat
import time
from pathlib import Path

import ray
import ray.exceptions

from edgesearch.common.errors import InputError
from edgesearch.search.cli_env import PROCESS_ENV

SYSTEM_RETRIES = 3
# what ends a task without its code failing: its worker process died (killed, crashed), its node died,
# Ray's memory monitor killed it, or its result was lost with the node that held it
SYSTEM_FAILURES = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError,
                   ray.exceptions.ObjectLostError)
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
            ray.init(address=address, runtime_env={"env_vars": worker_env()}, log_to_driver=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:  # version mismatch, not a Ray GCS, ...
            # Ray's exception does not say why (its log lines above do): a refused token reads the same
            lines = str(error).strip().splitlines()
            raise InputError(f"cannot join the Ray cluster at {address}: {lines[0] if lines else error!r} (if it "
                             "uses token authentication: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)") from None
    else:
        _token_auth_on()
        # no dashboard (and were it on, on localhost only); Ray's other ports take the node's address
        # (Ray 2.60 resolves 127.0.0.1 to it on Linux), so every peer must present the token
        ray.init(num_cpus=os.cpu_count(), num_gpus=local_gpus(), include_dashboard=False, dashboard_host="127.0.0.1",
                 log_to_driver=False, logging_level=logging.WARNING,
                 object_store_memory=max(LOCAL_OBJECT_STORE, 2 * object_bytes),
                 runtime_env={"env_vars": worker_env()})
    return True


def worker_env() -> dict[str, str]:
    """The trials' environment: PROCESS_ENV as the driver has it (a value the user set wins, as in the
    driver), and ultralytics quiet (the driver shows one progress bar for the whole search)."""
    return {**{name: os.environ.get(name, value) for name, value in PROCESS_ENV.items()}, "YOLO_VERBOSE": "False"}


AUTH_MODE_ENV = "RAY_AUTH_MODE"
_AUTH_MODE_BEFORE: list = []  # the environment's RAY_AUTH_MODE while a local Ray runs (restored by stop_ray)


def _token_auth_on() -> None:
    """Token authentication for the local Ray, whatever the environment says (RAY_AUTH_MODE=disabled
    would leave its ports open to anyone who can reach this machine). Ray (2.59 and later) turns it on
    itself for a local cluster it starts when RAY_AUTH_MODE is unset, reading its settings again
    however early it was imported; so the variable is set aside while Ray starts (stop_ray puts it
    back). Setting it to "token" here would not do: Ray read it when it was imported, and a driver
    whose settings disagree with its own cluster's cannot connect. Ray reads the token from
    RAY_AUTH_TOKEN, else ~/.ray/auth_token, and writes one there if there is none."""
    _AUTH_MODE_BEFORE.append(os.environ.pop(AUTH_MODE_ENV, None))
    _private_token_file()
    # Ray's notice that it turned tokens on ends "Set RAY_AUTH_MODE=disabled to opt out", which is not
    # so here: silenced by its logger's name (were the name to change, the notice would just show)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def _private_token_file() -> None:
    """Ray writes ~/.ray/auth_token readable by every local user (0644): write it first, the user's
    alone (0600), or take group and other access away from an existing one. A token given by
    RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH is the user's own business."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        if not path.is_symlink():
            os.chmod(path, stat.S_IMODE(path.stat().st_mode) & 0o700)
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))  # as Ray's own generator: 256 bits


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
    if _AUTH_MODE_BEFORE:  # a local Ray's: the environment as it was
        before = _AUTH_MODE_BEFORE.pop()
        _AUTH_MODE_BEFORE.clear()
        if before is None:
            os.environ.pop(AUTH_MODE_ENV, None)  # Ray set it to "token"
        else:
            os.environ[AUTH_MODE_ENV] = before


def cpus_per_trial(parallel: int) -> int:
    """CPUs each of `parallel` trials asks for: an equal share of the cluster's, no more than its
    largest node has (more could never be scheduled)."""
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]]
    return max(1, min(int(max(nodes, default=1)), int(sum(nodes)) // parallel))


def local_gpus() -> int:
    """The CUDA GPUs torch sees on this machine: what a local Ray offers its trials."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def node_gpus() -> list[float]:
    """GPUs of each node trials can run on: the cluster's live nodes when Ray is joined, else this
    machine (the local Ray start_ray would start)."""
    if ray.is_initialized():
        return [n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]]
    return [float(local_gpus())]


def trial_gpus(requested: float | None, device: str, nodes: list[float]) -> float:
    """GPUs each trial asks Ray for: `requested` (--gpus-per-trial), else 1 when a node has GPUs
    and --device is not cpu, else 0. Refused, in one line, before anything is written: a negative
    share, more than the largest node has (never scheduled), a fraction above 1 (Ray takes whole
    GPUs there), GPUs for --device cpu trials, or none for --device cuda trials."""
    largest = max(nodes, default=0.0)
    if requested is None:
        return 1.0 if largest > 0 and device != "cpu" else 0.0
    if not requested >= 0:
        raise InputError(f"--gpus-per-trial must be 0 or more, not {requested:g}")
    if requested > largest:
        raise InputError(f"--gpus-per-trial {requested:g}: the largest node has {largest:g} GPU(s); a trial asking "
                         "for more would never be scheduled")
    if requested > 1 and requested != int(requested):
        raise InputError(f"--gpus-per-trial {requested:g}: above 1, whole GPUs only (Ray shares a GPU by fractions "
                         "of one)")
    if requested > 0 and device == "cpu":
        raise InputError(f"--gpus-per-trial {requested:g} with --device cpu: the trials would hold GPUs they never use")
    if requested == 0 and device.startswith("cuda"):
        raise InputError(f"--device {device} with no GPU per trial: Ray would give the trials none; give "
                         "--gpus-per-trial, or --device auto")
    return float(requested)


def describe_devices(device: str, gpus: float) -> str:
    """One line for the console: where this process runs models, what each trial asks for."""
    from edgesearch.runners.device import describe, resolve_device

    trials = (f"each trial asks Ray for {gpus:g} GPU and runs on the one it is given (on the CPU where torch sees "
              "no CUDA there)" if gpus else "trials run on the CPU (no GPU asked for)")
    return f"device: {describe(resolve_device(device))} in this process (--device {device}); {trials}"


@ray.remote(max_retries=0)  # the driver retries system failures itself (Pending), counting attempts
def _score_remote(settings: dict, candidate: dict | None, parcels: dict) -> dict:
    # imported in the worker
    from edgesearch.runners.device import trial_device_spec
    from edgesearch.runners.evaluate import score_candidate
    from edgesearch.runners.inputs import materialise

    # the GPU Ray assigned (its CUDA_VISIBLE_DEVICES makes it cuda:0 here), not --device cuda:N
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    try:
        local = materialise(settings, parcels, fetch=ray.get)
        ray_sets_visible = not os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES")
        local["device"] = trial_device_spec(local.get("device", "auto"), gpu_ids, ray_sets_visible)
        scores = score_candidate(local, candidate)
    except Exception as error:
        raise CandidateFailed(describe_error(error), this_node()) from error
    scores["node"] = this_node()
    scores["ray_gpu_ids"] = ",".join(gpu_ids)  # what Ray assigned; `device`: what torch ran on
    return scores


class CandidateFailed(Exception):
    """A candidate's own error in its trial's task, with the node it ran on (a failed trial's
    record says where it failed, as a scored one's says where it ran)."""

    def __init__(self, description: str, node: dict):
        super().__init__(description)
        self.description, self.node = description, node

    def __reduce__(self):  # Ray pickles it back to the driver
        return CandidateFailed, (self.description, self.node)


def failed_node(error: BaseException) -> dict | None:
    """The node a failed trial ran on, where its task said (CandidateFailed); None when the task
    never reported back (its worker or node died every attempt)."""
    cause = getattr(error, "cause", None) or error
    return cause.node if isinstance(cause, CandidateFailed) else None


def this_node() -> dict:
    """Which Ray node this process runs on: its id, host name and IP."""
    return {"id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "ip": ray.util.get_node_ip_address()}



@ray.remote(max_retries=SYSTEM_RETRIES, retry_exceptions=False)
def _remeasure_remote(settings: dict, candidates: dict, parcels: dict, build_keys: dict | None = None) -> dict:
    from edgesearch.runners.evaluate import remeasure_designs
    from edgesearch.runners.inputs import materialise

    remeasured = remeasure_designs(materialise(settings, parcels, fetch=ray.get), candidates, build_keys)
    node = this_node()
    return {name: dict(figures, node=node) for name, figures in remeasured.items()}


def remeasure(settings: dict, candidates: dict, cpus: int, parcels: dict, build_keys: dict | None = None) -> dict:
    """runners/evaluate.remeasure_designs as one task: every design re-timed on one node, together
    (from the libraries the trials kept on that node, where it has them: `build_keys`)."""
    return ray.get(_remeasure_remote.options(num_cpus=cpus).remote(settings, candidates, parcels, build_keys))


@dataclasses.dataclass(eq=False)
class Pending:
    """One candidate's scoring: its task's arguments, the task of its latest attempt and how many
    attempts were started."""
    settings: dict
    candidate: dict | None
    cpus: int
    parcels: dict
    gpus: float = 0.0  # GPUs the task asks Ray for (trial_gpus)
    ref: ray.ObjectRef = dataclasses.field(init=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.ref = _score_remote.options(num_cpus=self.cpus, num_gpus=self.gpus).remote(self.settings, self.candidate,
                                                                                        self.parcels)
        self.attempts += 1

    def restarted(self) -> bool:
        """Start the task again if its latest attempt (finished) ended in a system failure and
        retries are left; True if it was started again."""
        try:
            ray.get(self.ref, timeout=0)
        except SYSTEM_FAILURES:
            if self.attempts > SYSTEM_RETRIES:
                return False
            self.start()
            return True
        except Exception:  # the candidate's own error: the trial's result, not retried
            return False
        return False


def submit(settings: dict, candidate: dict | None, cpus: int, parcels: dict, gpus: float = 0.0) -> Pending:
    """Start scoring one candidate (`parcels`: the shipped inputs, shipping.put) on `cpus` CPUs and
    `gpus` GPUs (trial_gpus)."""
    return Pending(settings, candidate, cpus, parcels, gpus)


def wait_one(pending: list[Pending]) -> Pending:
    """The first of `pending` to finish for good: succeeded, failed in its own code, or out of
    retries (one that hit a system failure is started again meanwhile)."""
    done = wait_one_within(pending, None)
    assert done is not None  # no time limit
    return done


def wait_one_within(pending: list[Pending], timeout: float | None) -> Pending | None:
    """wait_one, or None when none of `pending` has finished within `timeout` seconds (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        by_ref = {p.ref: p for p in pending}
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=left)
        if not ready:
            return None
        done = by_ref[ready[0]]
        if not done.restarted():
            return done


def result(pending: Pending) -> dict:
    """The scores of `pending` (waiting for it, retrying system failures), with how many attempts
    it took; raises the task's error."""
    while True:
        ray.wait([pending.ref], num_returns=1)
        if not pending.restarted():
            return {**ray.get(pending.ref), "attempts": pending.attempts}


def describe_error(error: BaseException) -> str:
    """One line for a failed trial: the task's own exception, not Ray's wrapper."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, CandidateFailed):
        return cause.description
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
