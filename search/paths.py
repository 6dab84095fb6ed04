"""Where edgesearch keeps things, and how it writes them without leaving half-written state."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from edgesearch.reports.page import atomic_write
from edgesearch.runners.cache import cache_root


def cache_dir() -> Path:
    """Per-user cache (datasets, MNIST, trained base models, analyses), created on first use."""
    path = cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to a uniquely named temporary file beside `path`, then rename it over `path`:
    a reader sees the old file or the new one, never half of one (reports/page.atomic_write)."""
    atomic_write(Path(path), text.encode())


@contextlib.contextmanager
def atomic_directory(target: Path):
    """Yield an empty staging folder that is renamed to `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():  # another process finished the same build first: keep theirs
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
