"""Standard output at the file-descriptor level: C code (TVM, the MILP solver's HiGHS) writes to
descriptor 1 directly, past Python's sys.stdout, and buffers what it writes when that is a file or a
pipe."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_LIBC = ctypes.CDLL(None)


def flush_stdout() -> None:
    """What Python and C hold for standard output, written out now."""
    sys.stdout.flush()
    _LIBC.fflush(None)


@contextmanager
def stdout_sent_to(fd: int) -> Iterator[None]:
    """Descriptor 1 points at `fd` inside the block; what was buffered before it, and in it, is
    flushed on the side it was written for. Without a descriptor 1 (closed), nothing is sent."""
    flush_stdout()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    os.dup2(fd, 1)
    try:
        yield
    finally:
        flush_stdout()
        os.dup2(saved, 1)
        os.close(saved)
