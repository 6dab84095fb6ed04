"""A run folder: where it is, its lock (one search at a time), and its run.json (the run's RunConfig,
search/run_config.py: written when the run starts, read back and checked on --resume)."""

from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path

from edgesearch.common.errors import InputError
from edgesearch.search.run_config import RUN_FILE, RunConfig


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


def prepare_run_dir(run_dir: Path, run: RunConfig, resume: bool, explicit: dict | None = None) -> RunConfig:
    """Create (or, with resume, reopen) a run folder; returns the run's settings. On resume, the
    stored settings hold, but for more trials when asked and this command line's trust; settings
    given explicitly on the command line (`explicit`, None = not given) must match the run's."""
    check_run_dir(run_dir, resume)
    if resume:
        stored = RunConfig.read(run_dir, trust_checkpoint=run.trust_checkpoint)
        if stored.space_sha256 and stored.space_sha256 != run.space_sha256:
            # the study's stored choices would no longer match the space's: sampling would break
            raise InputError(f"space {stored.space_file} changed since the run in {run_dir} started; "
                             "start a new run with --out")
        for key, value in (explicit or {}).items():
            if value is not None and getattr(stored, key) != value:
                raise InputError(f"the run in {run_dir} started with {key} {getattr(stored, key)!r}, not {value!r}; "
                                 "start a new run with --out")
        stored = dataclasses.replace(stored, trials=max(stored.trials, run.trials))  # a resume may ask for more
        stored.write(run_dir)
        return stored
    run_dir.mkdir(parents=True, exist_ok=True)
    run.write(run_dir)
    return run
