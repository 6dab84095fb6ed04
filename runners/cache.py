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
