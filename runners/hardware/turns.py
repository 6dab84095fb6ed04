"""Trials that share a machine take turns to be timed, and say how many others ran meanwhile.

With `--parallel 2` (or several trials on one cluster node), a trial's latency would otherwise be
timed while another trial builds or fine-tunes on the same cores. Here every trial registers
itself while it runs (a marker file per process under the machine's cache), and timing holds an
exclusive lock on that machine, so no two trials are timed at once; the label then says how many
other trials were running (fine-tuning, validating, building) while this one was timed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path

from edgesearch.common.cache import cache_root


def machine_dir() -> Path:
    """<cache>/machine: state shared by the trials of one machine."""
    path = cache_root() / "machine"
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


@contextlib.contextmanager
def timing_turn():
    """Hold the machine's timing lock; yields a dict whose `others` is set to the larger of the
    numbers of other trials running when the turn started and when it ended (sampled twice: a
    trial that came and went in between is not seen, so it is a lower bound)."""
    with open(machine_dir() / "timing.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        seen = {"others": _others_running()}
        try:
            yield seen
        finally:
            seen["others"] = max(seen["others"], _others_running())
            fcntl.flock(handle, fcntl.LOCK_UN)
