"""Checkpoints: what the workers fetched becomes durable, a few seconds at a time.

A pair counts as done only when the checkpoint holding its rows is committed in the run state.
The commit protocol, in this order:

1. the flattened rows are built into Arrow batches (every ``_BUILD_EVERY`` responses, and at
   each checkpoint);
2. :class:`Staging` writes one Arrow IPC file per table (rows grouped by date, one batch per
   date, lz4), under its final name, fsynced, then the staging folder once;
3. the run state records, in one SQLite transaction, the staged parts and the pairs they
   complete (and those that failed for good).

A crash before step 3 leaves files that nothing refers to: the next invocation removes them
(:meth:`Staging.remove_orphans`) and fetches their pairs again. Checkpoints are frequent
(``checkpoint_interval`` seconds, or ``checkpoint_rows`` rows) so a crash costs seconds of
work; the publisher later compacts them into row-group-sized Parquet files.

Steps 2 and 3 (only 3 for a library caller's ``batch_sink``, which gets the rows on the event
loop) run on a thread of their own, the same one for every checkpoint. glibc gives each
thread that allocates an arena, and a freed block goes back to the arena it came from:
checkpoints handed to a shared pool land on whichever idle thread wakes first, and each
arena keeps a checkpoint's worth of freed memory (a 100,000-pair export's fetch peaked at
145 MB that way, 129-130 MB on one thread, with no trim between checkpoints). On one thread
each checkpoint reuses what the last one freed, so nothing is handed back to the OS between
checkpoints. At the default pace, the trim after each checkpoint and the page faults after
it cost 0.15-0.45 % of a core, medians of five alternating runs of each: 2.42 -> 2.27 %
against the code before, 2.64 -> 2.18 % in a copy with both switches (one thread, no trim),
and the trim alone 2.88 -> 2.40 % in four. The fetch's memory goes back once, when it ends
(:meth:`Checkpointer.close`), before the publish needs its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from . import memory
from .config import ExportConfig
from .errors import AttemptError
from .flatten import Flattener
from .layout import RunLayout
from .pairs import Pair
from .schema import DATE, TABLES
from .state import PartRecord, RunState
from .storage import TMP_SUFFIX, fsync_path, storage_errors

__all__ = ["Checkpointer", "StagedFiles", "Staging"]

log = logging.getLogger("bulkexport")

_BUILD_EVERY = 128  # responses per Arrow conversion: amortises per-call costs, bounds memory
_MAX_LOGGED_UNKNOWN = 50  # distinct unknown field names logged before we go quiet
#: lz4 costs the same as no compression to write (the take and the fsync dominate), reads
#: back twice as fast as zstd, and keeps staging at a sixth of the raw size.
#: Both without Arrow's thread pool: by default Arrow hands each column's (de)compression to
#: its pool and waits, which on a few-thousand-row batch costs more in task hand-offs and
#: wake-ups than the work (a quarter of the write's CPU, a third of the read's); the
#: publisher already writes partitions side by side, and staging runs beside the event loop.
_IPC_WRITE = pa.ipc.IpcWriteOptions(compression="lz4", use_threads=False)
_IPC_READ = pa.ipc.IpcReadOptions(use_threads=False)
#: The IPC writer writes every buffer of every column separately (about 150 writes for a
#: batch of our 48 columns): through a buffer they become a few large writes. A staged file
#: of 15 batches: 19.9 -> 14.8 ms of CPU at 2,400 rows a batch, 3.9 -> 1.4 ms at 40.
_WRITE_BUFFER = 1 << 20

Failure = tuple[int, int | None, str, int, str]  # (pair id, status, reason, attempts, when)


class Staging:
    """The run's staged checkpoint files (local disk, owner-only)."""

    __slots__ = ("_layout",)

    def __init__(self, layout: RunLayout) -> None:
        self._layout = layout

    def prepare(self) -> None:
        """Create the run folder and staging, owner-only whatever the umask (the state holds
        Braze's messages and the run's parameters), and prove they are writable."""
        folder, staging = self._layout.run_dir, self._layout.staging
        with storage_errors(f"create the run state folder {folder}"):
            staging.mkdir(parents=True, exist_ok=True)
            for f in (folder, staging):
                if f.stat().st_mode & 0o777 != 0o700:
                    f.chmod(0o700)
            probe = staging / f".probe{TMP_SUFFIX}"
            probe.write_bytes(b"")
            probe.unlink()

    def remove_orphans(self, keep: set[str]) -> int:
        """Delete staged files no committed checkpoint refers to (a crash between write and
        commit leaves them); return how many."""
        staging = self._layout.staging
        if not staging.is_dir():
            return 0
        removed = 0
        with storage_errors(f"clean {staging}"):
            for entry in staging.iterdir():
                if entry.name not in keep:
                    entry.unlink()
                    removed += 1
        return removed

    def remove(self, files: set[str]) -> None:
        with storage_errors(f"clean {self._layout.staging}"):
            for name in files:
                (self._layout.staging / name).unlink(missing_ok=True)

    def read(self, part: PartRecord) -> pa.RecordBatch:
        """One staged batch, its file opened for this read only."""
        return self.files(0).read(part)

    def files(self, keep: int) -> StagedFiles:
        """A reader that keeps up to ``keep`` staged files open (one per thread)."""
        return StagedFiles(self._layout.staging, keep)

    def write(self, seq: int, tables: dict[str, list[pa.RecordBatch]]) -> list[PartRecord]:
        """Write one staged file per table; return the records to commit with the pairs.
        ``tables`` is emptied as its rows are written, so each table's rows can be freed.

        Final names at once: until the run state commits the records nothing refers to the
        files, and a crash leaves orphans. So durability costs one fsync per file and one
        for the folder, per checkpoint, and no rename.
        """
        records: list[PartRecord] = []
        written = False
        for name in list(tables):
            by_date = _sorted_by_date([b for b in tables.pop(name) if b.num_rows])
            if by_date is None:
                continue
            table, counts = by_date
            file_name = self._layout.checkpoint(seq, name)
            path = self._layout.staging / file_name
            with storage_errors(f"write checkpoint {path}"):
                with (
                    pa.OSFile(str(path), "wb") as raw,
                    pa.BufferedOutputStream(raw, _WRITE_BUFFER) as sink,
                    pa.ipc.new_file(sink, TABLES[name], options=_IPC_WRITE) as writer,
                ):
                    os.chmod(path, 0o600)  # created by Arrow with the umask's mode
                    offset = 0
                    for index, (day, rows) in enumerate(counts):
                        (batch,) = table.slice(offset, rows).to_batches()
                        offset += rows
                        writer.write_batch(batch)
                        records.append(PartRecord(seq, name, day.isoformat(), index, rows, file_name))
                fsync_path(path)
            del table  # this table's rows are on disk: free them before sorting the next
            written = True
        if written:
            with storage_errors(f"write checkpoint in {self._layout.staging}"):
                fsync_path(self._layout.staging, directory=True)
        return records


class StagedFiles:
    """Staged batches read through files kept open, for a reader that visits each file many
    times (publishing reads one batch of every file per date).

    Opening an Arrow IPC file costs ~150 µs whatever its size (measured: 154 µs for a file of
    two tiny columns, 175 µs for a staged one), as much as reading one of its batches (a
    checkpoint's rows of one date). Arrow does not promise that a file reader may be shared
    between threads: one per thread. At most ``keep`` files stay open; later ones are opened
    for each read, so descriptors stay bounded whatever the run's size. Plain reads rather
    than memory maps: a batch owns its memory, and the pages of files kept open do not count
    in the process's resident memory.
    """

    __slots__ = ("_dir", "_keep", "_open")

    def __init__(self, directory: Path, keep: int) -> None:
        self._dir = directory
        self._keep = keep
        self._open: dict[str, tuple[pa.NativeFile, pa.ipc.RecordBatchFileReader]] = {}

    def read(self, part: PartRecord) -> pa.RecordBatch:
        with storage_errors(f"read checkpoint {part.file}"):
            entry = self._open.get(part.file)
            if entry is not None:
                return entry[1].get_batch(part.batch)
            source = pa.OSFile(str(self._dir / part.file))
            kept = False
            try:
                reader = pa.ipc.open_file(source, options=_IPC_READ)
                if len(self._open) < self._keep:
                    self._open[part.file] = (source, reader)
                    kept = True  # closed by close()
                return reader.get_batch(part.batch)
            finally:
                if not kept:
                    source.close()

    def close(self) -> None:
        for source, _ in self._open.values():
            source.close()
        self._open.clear()


def _sorted_by_date(batches: list[pa.RecordBatch]) -> tuple[pa.Table, list[tuple[date, int]]] | None:
    """The rows of ``batches`` grouped by date, without the date column (it becomes the
    partition), and (date, rows) in ascending order; None without rows.

    The one copy of the rows before Parquet, made a column at a time, each original column
    dropped as soon as its copy exists: a checkpoint's peak is its rows plus one column, not
    twice its rows (a typical checkpoint's send_stats is ~13 MB in 49 columns), for the same
    work as one ``Table.take``.
    """
    if not batches:
        return None
    table = pa.Table.from_batches(batches)
    batches.clear()
    order = pc.sort_indices(table.column(DATE))
    days = table.column(DATE).take(order)
    counts = [(e["values"], e["counts"]) for e in pc.value_counts(days).to_pylist()]  # ascending
    schema = table.schema.remove(table.schema.get_field_index(DATE))
    columns = [table.column(n) for n in schema.names]
    del table, days
    for i, column in enumerate(columns):
        columns[i] = column.take(order)
        del column  # the last reference to the original column's chunks
    return pa.Table.from_arrays(columns, schema=schema), counts


class Checkpointer:
    """Buffers what the workers fetch, builds it into Arrow, and commits it durably.

    Memory is bounded by the flattener (a build every ``_BUILD_EVERY`` responses) and the
    rows held: those buffered plus those of the checkpoint being written. Workers wait when
    both together reach twice ``checkpoint_rows`` (a disk, or a checkpoint thread short of
    CPU, slower than the network): counting the buffer alone let it reach twice that while
    an equal checkpoint was still being written, 156-159 MB at the peak of an unthrottled
    run of typical responses where the bound holds it at 129-140.
    """

    def __init__(
        self,
        cfg: ExportConfig,
        state: RunState,
        staging: Staging,
        *,
        batch_sink: Callable[[str, pa.RecordBatch], Awaitable[None]] | None = None,
    ) -> None:
        self._cfg = cfg  # run id, key (redaction), checkpoint sizes
        self._state = state  # where commits go
        self._staging = staging  # where rows go (unless batch_sink)
        self._batch_sink = batch_sink  # the library caller's own sink (stream_batches)
        self._flat = Flattener(cfg.run_id)
        self._tables: dict[str, list[pa.RecordBatch]] = {"send_stats": [], "send_totals": []}
        self._rows = 0  # rows buffered
        self._done: list[int] = []  # pair ids whose rows are buffered
        self._failed: list[Failure] = []  # pairs failed for good, to commit
        self._seq = int(state.get("next_seq") or 0)  # next checkpoint number
        self._lock = asyncio.Lock()  # one checkpoint at a time
        self._wake = asyncio.Event()  # the buffer is full enough: checkpoint now
        self._drained = asyncio.Event()  # a checkpoint took the buffer, or committed it
        self._committing = 0  # rows of the checkpoint being written and committed
        self._failure: Exception | None = None  # a checkpoint that failed: the run is over
        # Every file write, fsync and SQLite commit, in order (see the module docstring).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bulkexport-checkpoint")
        self.exported = 0  # pairs fetched this session (committed or about to be)
        self.failed = 0  # pairs failed for good this session
        self.unknown: set[str] = set()  # unknown fields and ("channel:"-prefixed) channels seen

    # -- called by the workers ----------------------------------------------------------------
    def add(self, pid: int, pair: Pair, body: bytes) -> None:
        """Flatten one response (raises :class:`BadResponse` for a body worth retrying)."""
        self._flat.add(pid, pair.campaign_id, pair.send_id, body, time.time_ns() // 1000)

    def record_failure(self, pid: int, pair: Pair, exc: AttemptError, attempts: int) -> None:
        self.failed += 1
        # Reasons come from Braze's answers: redacted before they reach the state, the
        # manifest or a log, whatever the server chose to echo.
        redact = self._cfg.api_key.redact
        self._failed.append((pid, exc.status, redact(exc.reason), attempts, _now()))
        log.warning("pair failed for good after %d attempt(s): campaign_id=%r send_id=%r: %s", attempts,
                    pair.campaign_id, pair.send_id, redact(str(exc)))  # fmt: skip

    async def after_pair(self) -> None:
        """Build every few dozen responses; checkpoint early when the buffer is full, and
        hold the worker back while the rows held (buffered, and being written) reach twice
        a checkpoint: the disk is slower than the network."""
        if len(self._flat) >= _BUILD_EVERY:
            self._build()
        limit = self._cfg.checkpoint_rows
        if self._rows >= limit:
            self._wake.set()
        while self._rows + self._committing >= 2 * limit:
            self._drained.clear()
            await self._drained.wait()

    # -- the checkpoint loop ------------------------------------------------------------------
    async def run(self) -> None:
        """Checkpoint every ``checkpoint_interval`` seconds, or sooner when woken; cancel it
        at the end of the fetch, then :meth:`close`."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the inner result
            # when a cancel arrives just as the wake completes, swallowing the cancel. A worker
            # waking this loop with the last pair of the fetch, then finishing, is exactly that:
            # the fetch cancels the loop and would wait for it forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._cfg.checkpoint_interval):
                    await self._wake.wait()
            self._wake.clear()
            # Shielded: cancelling this loop must not abandon a checkpoint between its file
            # write and its commit (the final one waits for it on the lock).
            # Its outcome is taken by a callback: when this loop is cancelled mid-write, a
            # shield stops watching, and a failure would surface only as a traceback from
            # the garbage collector; the final flush reports it instead.
            flush = asyncio.ensure_future(self.flush())
            flush.add_done_callback(lambda f: f.cancelled() or f.exception())
            await asyncio.shield(flush)

    async def flush(self) -> None:
        """Write what is complete and mark its pairs done, in that order. After a failed
        checkpoint every flush raises its error: the pairs it held are still pending, and
        committing later ones would let a resume-free run claim to be whole."""
        async with self._lock:
            if self._failure is not None:
                raise self._failure
            self._build()
            if not (self._done or self._failed):
                self._drained.set()
                return
            tables, self._tables = self._tables, {"send_stats": [], "send_totals": []}
            done, self._done = self._done, []
            failed, self._failed = self._failed, []
            rows, self._rows = self._rows, 0
            seq, self._seq = self._seq, self._seq + 1
            self._committing = rows
            self._drained.set()
            try:
                if self._batch_sink is not None:
                    for name, batches in tables.items():
                        for batch in batches:
                            if batch.num_rows:
                                await self._batch_sink(name, batch)
                    tables = {}
                # File write, fsync and the SQLite commit (another fsync) all off the event
                # loop: a slow disk must not stall requests in flight.
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._thread, self._commit, seq, tables, done, failed)
            except Exception as exc:
                self._failure = exc
                raise
            finally:
                self._committing = 0
                self._drained.set()
            log.debug("checkpoint %d: %d pairs, %d rows", seq, len(done), rows)

    async def close(self) -> None:
        """The final :meth:`flush` (its error, if any, raised); then the checkpoint thread
        ends, and the memory the checkpoints kept for each other goes back to the OS."""
        try:
            await self.flush()
        finally:
            self._thread.shutdown(wait=False)  # idle: the flush waited for its commit
            memory.trim()

    def _commit(self, seq: int, tables: dict[str, list[pa.RecordBatch]], done: list[int],
                failed: list[Failure]) -> None:  # fmt: skip
        records = self._staging.write(seq, tables)
        tables.clear()  # the rows are on disk: free them for the next checkpoint (the caller holds this dict)
        self._state.commit_checkpoint(seq, records, done, failed)

    def _build(self) -> None:
        if not len(self._flat):
            return
        fb = self._flat.build()
        self._tables["send_stats"].extend(fb.stats)
        self._tables["send_totals"].extend(fb.totals)
        self._rows += fb.stats_rows + fb.totals_rows
        self._done.extend(fb.done)
        for token, reason in fb.rejected.items():
            reason = self._cfg.api_key.redact(reason)
            self.exported, self.failed = self.exported - 1, self.failed + 1
            self._failed.append((token, 200, reason, 1, _now()))
            log.warning("pair %d rejected: %s", token, reason)
        new = (fb.unknown_fields | {f"channel:{c}" for c in fb.unknown_channels}) - self.unknown
        for name in sorted(new):
            if len(self.unknown) < _MAX_LOGGED_UNKNOWN:
                what = f"a channel {name[8:]!r}" if name.startswith("channel:") else f"a field {name!r}"
                log.warning("Braze sent %s the schema does not know; kept (see extra_metrics)", what)
            self.unknown.add(name)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

