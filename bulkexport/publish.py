"""Publishing: staged checkpoints become the dataset, and the run writes its documents.

:class:`ParquetPublisher` compacts the staged batches, date by date, into Parquet files of
``row_group_rows``-row groups, at most ``file_rows`` rows each, under
``<table>/date=YYYY-MM-DD/part-<run_id>-<gen>-<n>.parquet``. Each file becomes visible only
when complete (the target decides how: a rename, or one object upload). Publishing is
deterministic: a publish interrupted and redone writes the same names, which replace what the
first attempt left. Each row is encoded once here (the staged form is a raw lz4 dump).

:class:`RunDocuments` writes ``manifest.json`` and ``failures.jsonl`` atomically in the run's
state folder, mirrors them next to the data when that is elsewhere (object stores), and tells
whether a run finished on another machine.

Everything here is synchronous and runs in a worker thread; Arrow and Parquet release the GIL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from itertools import groupby
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from . import memory
from .checkpoint import StagedFiles, Staging
from .layout import RunLayout
from .schema import TABLES
from .state import Doomed, PartRecord
from .storage import TMP_SUFFIX, Target, commit_file, storage_errors
from .summary import FINISHED

__all__ = ["DOCUMENTS", "OnFile", "ParquetPublisher", "RunDocuments"]

#: Dictionary pages pay for repeated strings; for counts they cost time and no space.
_DICTIONARY_COLUMNS = ("campaign_id", "send_id", "channel", "variation_name", "variation_api_id", "run_id")

#: A run's documents, in its state folder and mirrored next to the data.
DOCUMENTS = ("manifest.json", "failures.jsonl")

#: Called once a file is visible: (path relative to the dataset, table, date, rows, bytes).
OnFile = Callable[[str, str, str, int, int], None]


class ParquetPublisher:
    """Staged parts -> Hive-partitioned Parquet files."""

    __slots__ = ("_file_rows", "_layout", "_row_group_rows", "_staging", "_target")

    def __init__(
        self, target: Target, layout: RunLayout, staging: Staging, *, row_group_rows: int, file_rows: int
    ) -> None:
        self._target = target  # the dataset root
        self._layout = layout  # names
        self._staging = staging  # where the parts are read
        self._row_group_rows = row_group_rows  # rows per row group
        self._file_rows = file_rows  # rows per file, at most

    def publish(self, parts: Iterable[PartRecord], gen: int, on_file: OnFile,
                stop: threading.Event | None = None) -> None:  # fmt: skip
        """Compact ``parts`` (in (table, date, seq) order) into the dataset.

        ``stop``, once set (the caller was cancelled), ends the publish early: partitions not
        started yet are skipped, those being written finish. A redone publish writes them all.

        Partitions are written side by side, as many as the cores, while their buffers fit in
        one row group's worth of rows between them: small partitions (a run of thousands of
        pairs) share the cores, large ones (a row group each) take turns, so the peak memory is
        a row group's whatever the run's size. File numbers are counted ahead from the rows, so
        the names are the same whichever partition finishes first (a redone publish replaces
        what an interrupted one left).
        """
        counters: dict[str, int] = {}  # table -> next file number (shared across dates)
        budget = _RowBudget(self._row_group_rows)
        shared = _Shared(self._staging, self._row_group_rows, stop)
        failed = shared.failed  # a partition failed: those not started yet are skipped
        futures: list[Future[None]] = []
        pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="bulkexport-publish")
        try:
            for (table, day), grouped in groupby(parts, key=lambda p: (p.table, p.date)):
                group = list(grouped)  # one partition's records: a few per checkpoint
                rows = sum(p.rows for p in group)
                first = counters.get(table, 0)
                counters[table] = first + _files_for(rows, self._row_group_rows, self._file_rows)
                need = min(rows, self._row_group_rows)
                budget.acquire(need)
                if failed.is_set():
                    break
                future = pool.submit(self._partition, table, day, group, gen, (first, counters[table]), on_file,
                                     shared)  # fmt: skip
                future.add_done_callback(partial(budget.settle, need, failed))
                futures.append(future)
        except BaseException:
            failed.set()
            raise
        finally:
            # Partitions already being written finish (their files are complete, and a redone
            # publish replaces them); after a failure, those not started yet are skipped.
            pool.shutdown(wait=True)
            shared.close()
        for future in futures:
            future.result()  # the first failure, in partition order

    def _partition(self, table: str, day: str, group: list[PartRecord], gen: int, numbers: tuple[int, int],
                   on_file: OnFile, shared: _Shared) -> None:  # fmt: skip
        """Write one partition as files numbered ``numbers[0]`` up to ``numbers[1]``, unless
        another partition has failed."""
        if shared.failed.is_set():
            return
        directory = self._layout.partition(table, day)
        with storage_errors(f"prepare {self._target.path(directory)}"):
            self._target.delete_matching(directory, partial(self._layout.is_part, gen=gen))
        writer = _PartitionWriter(self, directory, table, day, gen, numbers[0], on_file)
        staged = shared.files()
        try:
            for part in group:
                writer.add(staged.read(part))  # one batch per (file, table, date)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if writer.next_number != numbers[1]:  # names would collide with the next partition's
            raise RuntimeError(f"{directory}: files up to {writer.next_number}, {numbers[1]} counted ahead")
        shared.written(sum(p.rows for p in group))


#: Partitions written at once, at most (Parquet encoding and zstd release the GIL).
_THREADS = max(1, min(4, os.cpu_count() or 1))
#: Staged files each publishing thread keeps open (see StagedFiles): every file of a run of
#: up to ~7,000 typical pairs (16 checkpoints, 32 files), where opening each file for every
#: date it holds would cost ~8 % more publish CPU. Each open reader holds its file's footer
#: (~16 KB for our schemas) for the whole publish; beyond that size nothing is saved by
#: keeping more: at 214 checkpoints (~100,000 pairs) a publish took the same CPU keeping 128,
#: 32 or none (6.3-6.7 s), and kept readers cost 3-4 MB of peak (110 / 107 / 106 MB); at
#: 2,137 (~1,000,000 pairs), where nearly every read opens its file anyway, 4-6 MB.
_KEEP_OPEN = 32


class _Shared:
    """What the partitions of one publish share: the flag a failed partition raises, one
    :class:`StagedFiles` per publishing thread (all closed at the end), and the count of rows
    written since freed memory was last handed back.

    Memory goes back to the OS (:func:`memory.trim`) once a row group's worth of rows has
    been written since the last time: after every partition of a large run (each holds a row
    group at a time), every few partitions of a small one. Trimming after every small
    partition cost more than writing it: the trim walks every arena, and the next partition
    faults its pages back in (a 4,000-pair publish, 30 partitions: 0.25-0.28 s with a trim
    after each, 0.18-0.19 s without).
    """

    __slots__ = ("_all", "_local", "_lock", "_since_trim", "_staging", "_trim_every", "failed")

    def __init__(self, staging: Staging, trim_every: int, stop: threading.Event | None = None) -> None:
        self.failed = threading.Event() if stop is None else stop  # a stop skips what a failure skips
        self._staging = staging
        self._trim_every = trim_every  # rows
        self._since_trim = 0  # rows written since the last trim
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[StagedFiles] = []

    def files(self) -> StagedFiles:
        """This thread's staged files."""
        files: StagedFiles | None = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = self._staging.files(_KEEP_OPEN)
            with self._lock:
                self._all.append(files)
        return files

    def written(self, rows: int) -> None:
        """A partition of ``rows`` rows is written (its buffers freed)."""
        with self._lock:
            self._since_trim += rows
            due = self._since_trim >= self._trim_every
            if due:
                self._since_trim = 0
        if due:
            memory.trim()

    def close(self) -> None:
        with self._lock:
            for files in self._all:
                files.close()
            self._all.clear()


class _RowBudget:
    """Rows the partitions being written may buffer between them: a counting semaphore whose
    permits are rows (a partition asks for its rows, at most a row group's)."""

    __slots__ = ("_cond", "_free")

    def __init__(self, rows: int) -> None:
        self._free = rows
        self._cond = threading.Condition()

    def acquire(self, rows: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._free >= rows)
            self._free -= rows

    def release(self, rows: int) -> None:
        with self._cond:
            self._free += rows
            self._cond.notify_all()

    def settle(self, rows: int, failed: threading.Event, done: Future[None]) -> None:
        """A partition's end: its rows back to the budget, after flagging its failure (so the
        producer, woken by the rows, sees the flag)."""
        if not done.cancelled() and done.exception() is not None:
            failed.set()
        self.release(rows)


def _files_for(rows: int, row_group_rows: int, file_rows: int) -> int:
    """How many files :class:`_PartitionWriter` makes of ``rows`` rows: row groups of
    ``row_group_rows`` (the last one shorter), a new file when the next group would take the
    open one past ``file_rows`` (so a file holds ``file_rows // row_group_rows`` full groups,
    and the short one joins the last file if it still fits)."""
    full, last = divmod(rows, row_group_rows)
    if not full:
        return 1 if last else 0
    per_file = file_rows // row_group_rows  # at least 1: the configuration checks it
    files = -(-full // per_file)
    in_last = (full - (files - 1) * per_file) * row_group_rows
    return files + (1 if last and in_last + last > file_rows else 0)


class _PartitionWriter:
    """Streams batches of one table and date into row-group-sized Parquet files."""

    __slots__ = (
        "_buffer", "_buffered", "_day", "_dir", "_file_rows", "_gen", "_next", "_on_file", "_path", "_pub",
        "_table", "_tmp", "_writer",
    )  # fmt: skip

    def __init__(
        self, pub: ParquetPublisher, directory: str, table: str, day: str, gen: int, first: int, on_file: OnFile,
    ) -> None:  # fmt: skip
        self._pub = pub  # sizes, names, the target
        self._dir = directory  # the partition folder, relative to the target
        self._table = table  # table name
        self._day = day  # partition value
        self._gen = gen  # publish generation, part of file names
        self._next = first  # the next file's number
        self._on_file = on_file  # called once a file is visible
        self._buffer: list[pa.RecordBatch] = []  # rows not yet written
        self._buffered = 0  # rows in _buffer
        self._writer: pq.ParquetWriter | None = None  # open file, if any
        self._path: str | None = None  # its final name, relative to the target
        self._tmp: Path | None = None  # its temporary name
        self._file_rows = 0  # rows in the open file

    def add(self, batch: pa.RecordBatch) -> None:
        self._buffer.append(batch)
        self._buffered += batch.num_rows
        group = self._pub._row_group_rows
        while self._buffered >= group:
            table = pa.Table.from_batches(self._buffer)
            self._write(table.slice(0, group))
            rest = table.slice(group)
            self._buffer = rest.to_batches()
            self._buffered = rest.num_rows

    @property
    def next_number(self) -> int:
        return self._next

    def close(self) -> None:
        if self._buffered:
            self._write(pa.Table.from_batches(self._buffer))
        self._buffer, self._buffered = [], 0
        self._finish_file()

    def _write(self, table: pa.Table) -> None:
        """Write ``table`` as one row group, starting a new file when the open one is full."""
        pub = self._pub
        if self._writer is not None and self._file_rows + table.num_rows > pub._file_rows:
            self._finish_file()
        if self._writer is None:
            name = pub._layout.part(self._gen, self._next)
            self._next += 1
            self._path = f"{self._dir}/{name}"
            with storage_errors(f"write {self._path}"):
                self._tmp = pub._target.scratch(self._dir, pub._layout.run_dir) / f".{name}{TMP_SUFFIX}"
                schema = TABLES[self._table]
                self._writer = pq.ParquetWriter(
                    str(self._tmp), schema, compression="zstd",
                    use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in schema.names],
                )  # fmt: skip
            self._file_rows = 0
        with storage_errors(f"write {self._path}"):
            # Chunked is fine: the writer streams the chunks into one row group; combining them
            # first would hold a second copy of the row group in memory.
            self._writer.write_table(table, row_group_size=table.num_rows)
        self._file_rows += table.num_rows

    def abort(self) -> None:
        """Drop the file being written: it never becomes visible."""
        if self._writer is not None:
            with suppress(OSError, pa.ArrowException):
                self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def _finish_file(self) -> None:
        if self._writer is None:
            return
        assert self._path is not None and self._tmp is not None
        with storage_errors(f"write {self._pub._target.path(self._path)}"):
            self._writer.close()
            size = self._pub._target.publish_file(self._tmp, self._path)
        self._on_file(self._path, self._table, self._day, self._file_rows, size)
        self._writer = None


class RunDocuments:
    """``manifest.json`` and ``failures.jsonl``: in the state folder, and next to the data."""

    __slots__ = ("_layout", "_target")

    def __init__(self, target: Target, layout: RunLayout) -> None:
        self._target = target
        self._layout = layout

    def write(self, name: str, data: bytes | Iterable[bytes]) -> str:
        """Write a document (whole, or as chunks: streamed, so a million failures cost no
        memory) atomically and owner-only; return where readers find it."""
        final = self._layout.document(name)
        tmp = final.with_name(f".{name}{TMP_SUFFIX}")
        with storage_errors(f"write {final}"):
            _write_private(tmp, [data] if isinstance(data, bytes) else data)
            commit_file(tmp, final)
        rel = self._layout.mirrored(name)
        with storage_errors(f"write {self._target.url(rel)}"):
            return self._target.mirror(final, rel)

    def write_json(self, name: str, doc: object) -> str:
        return self.write(name, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    def finished_elsewhere(self) -> bool:
        """A run whose documents live apart from its state (object stores) finished on
        another machine: its manifest next to the data says so (a run that stopped early
        writes one too, with its status)."""
        with storage_errors(f"read {self._target.uri}"):
            doc = self._target.finished_elsewhere_document(self._layout.mirrored("manifest.json"))
        if doc is None:
            return False
        try:
            return orjson.loads(doc).get("status") in FINISHED
        except (orjson.JSONDecodeError, AttributeError):
            return False

    def remove_replaced(self, doomed: Doomed, is_part: Callable[[str], bool]) -> int:
        """``--overwrite``: delete the replaced run's published files (``is_part`` tells them
        in each of its partitions) and documents; return how many files went."""
        removed = 0
        with storage_errors("remove the earlier run"):
            for kind, rel in doomed:
                if kind == "partition":
                    removed += self._target.delete_matching(rel, is_part)
                else:
                    self._layout.document(rel).unlink(missing_ok=True)
                    if self._target.finished_elsewhere_document(self._layout.mirrored(rel)) is not None:
                        self._target.delete(self._layout.mirrored(rel))
        return removed


def _write_private(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to a new owner-only (0600) file, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, 0o600)  # a leftover file of that name may have had another mode
        for chunk in chunks:
            fh.write(chunk)
