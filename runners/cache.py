"""The per-user cache folder every part of edgesearch shares (search/ re-exports it; runners do
not import search/)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """EDGESEARCH_CACHE, else $XDG_CACHE_HOME/edgesearch, else ~/.cache/edgesearch (not created here)."""
    if os.environ.get("EDGESEARCH_CACHE"):
        return Path(os.environ["EDGESEARCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesearch"


def new_file_mode(path: Path) -> int:
    """The mode a rewrite of `path` gets: the mode it has now, else what the process's umask gives
    a new file (never mkstemp's private 0600 or a forced 0644). As reports/page.new_file_mode
    (runners do not import reports/)."""
    import stat

    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        pass
    try:  # Linux >= 4.7: read the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask
