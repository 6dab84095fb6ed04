"""The per-user cache folder every part of edgesearch shares."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """EDGESEARCH_CACHE, else $XDG_CACHE_HOME/edgesearch, else ~/.cache/edgesearch (not created here)."""
    if os.environ.get("EDGESEARCH_CACHE"):
        return Path(os.environ["EDGESEARCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgesearch"


def cache_dir() -> Path:
    """cache_root(), created on first use (datasets, MNIST, trained base models, analyses)."""
    path = cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path
