"""One process per run: an OS file lock that the kernel releases when its holder dies.

Two invocations of one run (a slow night and a cron entry that fires again, an orchestrator
retrying too early) would fetch the same pairs and commit them twice. The lock is
``flock(2)`` through filelock, on a file beside the run's state folder (so ``--overwrite``,
which removes that folder, never removes the lock under its holder). ``kill -9`` releases it:
there is never a stale lock to clean up. Soft locks (a marker file) are refused, because they
do go stale.

What it protects: every invocation that uses the same state folder, i.e. the same machine
(or a shared filesystem with working ``flock``). Two machines exporting the same run into one
object store each hold their own local lock: schedule a run on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from .errors import RunInProgress, StorageError

__all__ = ["RunLock"]

log = logging.getLogger("bulkexport")

_POLL = 0.5  # seconds between attempts while waiting for the holder


class RunLock:
    """``async with RunLock(path, run_id, wait=..., stopping=...)`` holds the run."""

    __slots__ = ("_lock", "_path", "_run_id", "_stopping", "_wait")

    def __init__(self, path: Path, run_id: str, *, wait: bool, stopping: asyncio.Event | None = None) -> None:
        self._path = path  # the lock file
        self._run_id = run_id  # for messages
        self._wait = wait  # wait for the holder instead of failing at once
        self._stopping = stopping  # set by a stop request: give up waiting
        self._lock = FileLock(path, timeout=0, mode=0o600, fallback_to_soft=False, preserve_lock_file=True)

    def _holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self._path.read_text().strip() or "0")
            if pid:
                return f" (pid {pid})"
        return ""

    async def __aenter__(self) -> RunLock:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {self._path.parent}: {exc.strerror}") from exc
        announced = False
        while True:
            try:
                self._lock.acquire()
                break
            except Timeout:
                if not self._wait:
                    raise RunInProgress(
                        f"run {self._run_id} is being exported by another process{self._holder()}; "
                        "this one stops (use --wait to wait for it, or --run-id for another run)"
                    ) from None
            except OSError as exc:
                raise StorageError(f"cannot lock {self._path}: {exc.strerror or exc}") from exc
            if not announced:
                log.info("run %s is being exported by another process%s; waiting for it", self._run_id,
                         self._holder())  # fmt: skip
                announced = True
            if self._stopping is not None and self._stopping.is_set():
                raise RunInProgress(f"stopped while waiting for run {self._run_id}")
            await asyncio.sleep(_POLL)
        # Who holds it, for the next invocation's message; the lock itself is the flock.
        with contextlib.suppress(OSError):
            self._path.write_text(f"{os.getpid()}\n")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(OSError):
            self._path.write_text("")
        self._lock.release()
