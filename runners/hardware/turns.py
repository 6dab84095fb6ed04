"""Trials that share a machine take turns to be timed, and pause their work while one is timed.

With `--parallel 2` (or several trials on one cluster node), a trial's latency would otherwise be
timed while another trial builds or fine-tunes on the same cores: on the 2-core host, a design
timed beside another trial's fine-tune took about twice as long as alone (two 4-bit designs with
2-3 int8 layers: 7.91 ms beside one, 3.97 ms alone), enough to drop a design from the front before
the final re-measure saw it.
So every trial registers itself while it runs (a marker file per process under the machine's cache)
and does its heavy work in steps (`work_step`: a fine-tune step, a validation, a build; the
sensitivity pass's changes); timing holds the machine's timing lock (no two trials timed at once),
then closes a gate that no new step passes and waits for the steps under way to end. The label
says how many other trials were running and that their steps were paused.

Locks are fcntl.flock on files under <cache>/machine: a step takes the gate shared, the work lock
shared, then lets go of the gate; a timing takes the gate, then the work lock, exclusively. A step
never waits for the gate while holding the work lock, so neither side can wait for the other forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgesearch.common.cache import cache_root

TURNS_DIR_ENV = "EDGESEARCH_TURNS_DIR"


def machine_dir() -> Path:
    """State shared by the trials of one machine: $EDGESEARCH_TURNS_DIR, else <cache>/machine (runs
    with caches of their own on one machine take turns where they name one folder here)."""
    path = Path(os.environ[TURNS_DIR_ENV]) if os.environ.get(TURNS_DIR_ENV) else cache_root() / "machine"
    (path / "running").mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def running_trial():
    """Mark this process as running a trial for as long as the block lasts."""
    marker = machine_dir() / "running" / f"{os.getpid()}-{uuid.uuid4().hex}"
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def _others_running() -> int:
    """Trials running in other live processes (markers of dead processes are left over: ignored)."""
    count = 0
    for marker in (machine_dir() / "running").iterdir():
        pid = int(marker.name.split("-", 1)[0])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass  # alive, another user's
        count += 1
    return count


_in_step = threading.local()  # how deep this thread is in work steps (steps nest: only the outer one locks)


@contextlib.contextmanager
def work_step() -> Iterator[None]:
    """One step of a trial's work: it does not start while a trial of this machine is being timed,
    and a timing waits until it has ended."""
    depth = getattr(_in_step, "depth", 0)
    if depth:
        _in_step.depth = depth + 1
        try:
            yield
        finally:
            _in_step.depth = depth
        return
    folder = machine_dir()
    with open(folder / "gate.lock", "a") as gate, open(folder / "work.lock", "a") as work:
        fcntl.flock(gate, fcntl.LOCK_SH)  # waits while a timing holds the gate
        fcntl.flock(work, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        _in_step.depth = 1
        try:
            yield
        finally:
            _in_step.depth = 0
            fcntl.flock(work, fcntl.LOCK_UN)


def in_work_steps(items: Iterable) -> Iterator:
    """`items`, each loop body that consumes one running as a work_step."""
    for item in items:
        with work_step():
            yield item


@contextlib.contextmanager
def timing_turn():
    """Hold the machine's timing lock, with the other trials' work steps paused; yields a dict whose
    `others` is set to the larger of the numbers of other trials running when the turn started and
    when it ended (sampled twice: a trial that came and went in between is not seen, so it is a lower
    bound), and `paused_s` to how long the steps under way took to end."""
    if getattr(_in_step, "depth", 0):
        raise RuntimeError("a timing inside a work step would wait for itself")
    folder = machine_dir()
    with open(folder / "timing.lock", "w") as handle, open(folder / "gate.lock", "a") as gate, \
            open(folder / "work.lock", "a") as work:
        fcntl.flock(handle, fcntl.LOCK_EX)
        waiting = time.perf_counter()
        fcntl.flock(gate, fcntl.LOCK_EX)  # no new step starts...
        fcntl.flock(work, fcntl.LOCK_EX)  # ...and the ones under way have ended
        seen = {"others": _others_running(), "paused_s": time.perf_counter() - waiting}
        try:
            yield seen
        finally:
            seen["others"] = max(seen["others"], _others_running())
            fcntl.flock(work, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)
            fcntl.flock(handle, fcntl.LOCK_UN)
