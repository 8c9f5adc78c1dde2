"""Peak memory of the command: which allocator Arrow uses, and handing freed memory back.

A run's working set is small and bounded (a checkpoint's rows, one row group at publish), but
glibc keeps what Python, SQLite, zstd and Arrow free in per-thread arenas, and the checkpoint
and publish threads each get one. Without help the process's resident size creeps up by what
those arenas hold: measured on a 10,000-pair export, 167-196 MB peak; with a ``malloc_trim``
after each checkpoint and between partitions at publish, 141-147 MB, for about 0.02 ms of
CPU a pair (0.640 -> 0.658 ms, in system time: the pages given back and taken again).

Both are decisions for the program that owns the process: the CLI calls :func:`own_process`;
the library, imported by someone else's program, leaves its allocator alone and trims nothing.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

__all__ = ["own_process", "trim"]

_trim: Callable[[int], int] | None = None  # glibc's malloc_trim, once the process is ours


def own_process() -> None:
    """The CLI owns its process: Arrow gets the C library's allocator (freed buffers go back to
    the OS, where mimalloc keeps them; ``$ARROW_DEFAULT_MEMORY_POOL`` still decides if set), and
    :func:`trim` starts returning freed memory (glibc only; elsewhere a no-op)."""
    global _trim
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
    try:
        _trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        _trim = None


def trim() -> None:
    """Give freed heap memory back to the OS, if the process is ours (see :func:`own_process`)."""
    if _trim is not None:
        _trim(0)
