"""Ingest: the input's pairs join the run, spooled into its state before any request.

The run's pairs are the **union** of every input given for its run id: each invocation reads
its input and adds the pairs the run does not have yet, so a rerun with new pairs fetches
exactly those, and pairs already in the run (done, failed or pending) are never fetched twice.
The whole input is read and checked first, so a bad line costs no budget; it is streamed into
SQLite, so a million pairs cost no memory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, ExportInterrupted
from .pairs import IdCheck, Pair, iter_items, iter_pair_file, pair_from_item
from .state import Doomed, Ingested, RunState
from .summary import ExportSummary

__all__ = ["ingest"]

log = logging.getLogger("bulkexport")


async def ingest(
    state: RunState,
    source: Any,
    pairs_format: str | None,
    summary: ExportSummary,
    replace: Doomed | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Add ``source`` (a pairs file, or an iterable or async iterable of pairs) to the run,
    and count what it held into ``summary``; with ``replace`` (``--overwrite``), make it a
    new run in place of the old one, once the whole input has passed its checks (see
    :meth:`RunState.ingest`).

    A file or iterable is read on a thread sharing the run state's connection, which a
    cancel does not stop: a cancel sets ``stop`` and waits for the thread (closing the state
    under it crashed the process). ``stop`` set by anyone (a signal's stop request) ends the
    read at the next pair, rolled back, with :class:`ExportInterrupted`; so does it between
    the items of an async iterable, which a cancel reaches directly."""
    check = IdCheck()
    stop = stop or threading.Event()
    had = 0 if replace is not None else state.count()
    if isinstance(source, str | Path):
        pairs = _until(stop, (p for _, p in iter_pair_file(source, pairs_format, check)))
        got = await _on_thread(functools.partial(state.ingest, pairs, replace=replace), stop)
    elif isinstance(source, AsyncIterable):
        got = await _ingest_async(state, source, check, replace, stop)
    elif isinstance(source, Iterable):
        pairs = _until(stop, (p for _, p in iter_items(source, check=check)))
        got = await _on_thread(functools.partial(state.ingest, pairs, replace=replace), stop)
    else:
        raise ConfigError(f"pairs must be a file path or an iterable of pairs, not {type(source).__name__}")
    s = summary
    s.pairs_read, s.pairs_duplicates, s.pairs_added = got.read, got.read - got.unique, got.added
    s.ids_trimmed = check.trimmed
    if got.unique == 0:
        log.warning("the pairs input holds no pairs")
    if got.read != got.unique:
        log.info("read %d pairs, %d duplicates ignored", got.read, got.read - got.unique)
    if check.trimmed:
        log.info("trimmed surrounding whitespace from %d id(s) (the first: %s)", check.trimmed, check.first_trimmed)
    if had and got.added:
        log.info("run %s: %d new pair(s) added to the %d it had; only they are fetched", summary.run_id, got.added,
                 had)  # fmt: skip


_STOPPED = "stopped while reading the pairs; nothing of this input was added: run the same command again"


async def _on_thread(read: Callable[[], Ingested], stop: threading.Event) -> Ingested:
    task = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()  # the reader stops at its next pair and rolls back
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # its ExportInterrupted: the cancel is what the caller hears
        raise


def _until(stop: threading.Event, pairs: Iterator[Pair]) -> Iterator[Pair]:
    """``pairs`` until ``stop`` is set (a flag read per pair: a slow source stops as soon
    as its next pair comes), then :class:`ExportInterrupted`, which rolls the ingest back."""
    for pair in pairs:
        if stop.is_set():
            raise ExportInterrupted(_STOPPED)
        yield pair


async def _ingest_async(
    state: RunState, source: AsyncIterable[Any], check: IdCheck, replace: Doomed | None, stop: threading.Event
) -> Ingested:
    state.begin_ingest(replace=replace is not None)
    read, buf = 0, []
    try:
        async for item in source:
            if stop.is_set():
                raise ExportInterrupted(_STOPPED)
            read += 1
            buf.append(pair_from_item(item, "<pairs>", read, check))
            if len(buf) >= 10_000:
                state.insert(buf)
        state.insert(buf)
    except BaseException:
        state.abort_ingest()
        raise
    unique, added = state.finish_ingest(replace)
    return Ingested(read, unique, added)
