"""A run folder: where it is, its lock (one search at a time), and its run.json (the run's settings,
written when the run starts and read on --resume), with what is derived from them."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from edgesearch.common.errors import InputError
from edgesearch.common.files import write_text_atomically

RUN_FILE = "run.json"


def run_folder(out: str | None, profile: str, space: str, preset: str) -> Path:
    """--out, else reports/<profile>-<space>[-<preset>] under the current directory (never inside
    the installed package)."""
    if out:
        return Path(out).resolve()
    suffix = "" if preset == "default" else f"-{preset}"
    return Path.cwd().resolve() / "reports" / f"{profile}-{space}{suffix}"


class RunLock:
    """One search per run folder at a time (a second one would corrupt the trial bookkeeping)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"

    def __enter__(self):
        # never follow a link planted at .lock (open(..., "w") would truncate its target) and never
        # truncate: the lock is the open file, not its content
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise InputError(f"cannot open the run folder's lock {self.path} ({error.strerror}); "
                             "if it is a symbolic link, remove it") from None
        self.handle = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another search is running in {self.path.parent}") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2))


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a run folder this command cannot use (before any slow work): a resume needs a run
    there; a new run needs the folder absent or empty (the report would overwrite other files)."""
    run_file = run_dir / RUN_FILE
    if resume and not run_file.exists():
        raise InputError(f"nothing to resume in {run_dir} (no {RUN_FILE})")
    if not resume and run_file.exists():
        raise InputError(f"{run_dir} already holds a run; pass --resume to continue it or --out for a new one")
    if not resume and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise InputError(f"{run_dir} exists and is not an empty folder or a run folder; choose another --out")


def prepare_run_dir(run_dir: Path, run: dict, resume: bool, explicit: dict | None = None) -> dict:
    """Create (or, with resume, reopen) a run folder; returns the run's settings. On resume,
    settings given explicitly on the command line (`explicit`, None = not given) must match the run's."""
    check_run_dir(run_dir, resume)
    run_file = run_dir / RUN_FILE
    if resume:
        stored = json.loads(run_file.read_text())
        if stored.get("space_sha256", run["space_sha256"]) != run["space_sha256"]:
            # the study's stored choices would no longer match the space's: sampling would break
            raise InputError(f"space {stored['space_file']} changed since the run in {run_dir} started; "
                             "start a new run with --out")
        for key, value in (explicit or {}).items():
            if value is not None and stored.get(key) != value:
                raise InputError(f"the run in {run_dir} started with {key} {stored.get(key)!r}, not {value!r}; "
                                 "start a new run with --out")
        stored["trials"] = max(stored["trials"], run["trials"])  # a resume may ask for more trials
        stored["trust_checkpoint"] = run.get("trust_checkpoint", False)  # this command line's, never the folder's
        _write_json(run_file, stored)
        return stored
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_file, run)
    return run


def memory_budget(run: dict) -> dict:
    """The run's hard memory budget ({kind, bytes, source}); runs from before memory_limit had the
    profile's SRAM."""
    return run.get("memory_budget") or {"kind": "sram", "bytes": run["sram_budget_bytes"], "source": "profile"}


def run_budgets(run: dict, base: dict) -> dict:
    """The constraints of the study: memory (hard), latency (if asked), accuracy floor (if asked)."""
    drop = run.get("max_map_drop")
    return {"memory_bytes": memory_budget(run)["bytes"], "memory_kind": memory_budget(run)["kind"],
            "latency_ms": run.get("latency_budget_ms"),
            "map_floor": base["map50_95"] * (1 - drop) if drop else None}


def run_measurement(run: dict) -> dict | None:
    """The run's measurement plan; runs from before it recorded latency_mode (RPC profiles only)."""
    if "measurement" in run:
        return run["measurement"]
    mode = run.get("latency_mode")
    if mode == "estimated":
        return {"kind": "estimate", "why": run.get("latency_mode_why") or "no device when the run started"}
    return {"kind": "rpc"} if mode == "measured" else None
