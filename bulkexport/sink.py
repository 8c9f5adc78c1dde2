"""Writing rows durably: checkpoint parts under the run's state folder, then the dataset.

Two stages, because the two goals pull apart. Checkpoints must be frequent (a killed run
should refetch seconds of work, not minutes), while the published dataset should hold few,
row-group-sized files. So:

* :meth:`Sink.write_checkpoint` writes one Arrow IPC file per table per checkpoint under
  ``_bulkexport/runs/<run_id>/staging/`` (lz4-compressed, one record batch per date),
  fsynced; the run state's commit is what makes it count.
* :meth:`Sink.publish` compacts the staged batches, date by date, into Parquet files of
  ``row_group_rows``-row groups, at most ``file_rows`` rows each, under
  ``<table>/date=YYYY-MM-DD/part-<run_id>-<gen>-<n>.parquet``. Each file is written under a
  hidden temporary name (``.``-prefixed, ``.tmp`` suffix: no reader lists it) and renamed
  into place only when complete, so a reader never sees a partial file.

File names hold only the run id (validated to ``[A-Za-z0-9._-]``), a generation and a
counter: campaign and send ids never become paths, whatever characters they contain.
Everything here is synchronous and runs in a worker thread (``asyncio.to_thread``); Arrow
and Parquet encoding release the GIL.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from itertools import groupby
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import StorageError
from .schema import DATE, TABLES
from .state import PartRecord
from .storage import Target, commit_file, fsync_path, state_dir_for
from .summary import FINISHED

__all__ = ["STATE_DIR", "Sink"]

#: Folder under the output root that holds run state; the leading underscore makes
#: pyarrow, Spark and Hive-style readers skip it.
STATE_DIR = "_bulkexport"
#: lz4 costs the same as no compression to write (the take and the fsync dominate), reads
#: back twice as fast as zstd, and keeps staging at a sixth of the raw size.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
#: Dictionary pages pay for repeated strings; for counts they cost time and no space.
_DICTIONARY_COLUMNS = ("campaign_id", "send_id", "channel", "variation_name", "variation_api_id", "run_id")
_TMP_SUFFIX = ".tmp"


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Translate OS errors into :class:`StorageError` with a message a person can act on."""
    try:
        yield
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise StorageError(f"cannot {what}: {reason} ({exc.filename or ''})".replace(" ()", "")) from exc
    except pa.ArrowException as exc:
        raise StorageError(f"cannot {what}: {exc}") from exc


class Sink:
    """The layout of one run: local state and staging, and the dataset's target."""

    __slots__ = ("file_rows", "row_group_rows", "run_dir", "run_id", "staging", "target")

    def __init__(
        self, target: Target, run_id: str, *, row_group_rows: int, file_rows: int, state_root: Path | None = None
    ) -> None:
        self.target = target  # dataset root: local folder or object store
        self.run_id = run_id  # validated: safe in file names
        self.run_dir = state_dir_for(target, run_id, state_root)  # state, staging, manifest (local)
        self.staging = self.run_dir / "staging"  # checkpoint files
        self.row_group_rows = row_group_rows  # rows per Parquet row group
        self.file_rows = file_rows  # rows per Parquet file, at most

    def prepare(self) -> None:
        with storage_errors(f"create the run state folder {self.run_dir}"):
            self.staging.mkdir(parents=True, exist_ok=True)
            # Owner-only, whatever the umask: the state holds Braze's messages and the run's
            # parameters. The dataset itself keeps the default mode: it is meant to be read.
            for folder in (self.run_dir, self.staging):
                if folder.stat().st_mode & 0o777 != 0o700:
                    folder.chmod(0o700)
            probe = self.staging / f".probe{_TMP_SUFFIX}"
            probe.write_bytes(b"")
            probe.unlink()
        with storage_errors(f"use the output {self.target.uri}"):
            if self.target.local:
                self.target.make_dir("")
            else:
                self.target.list_names("")  # fails now, not after the fetch, on bad credentials

    def remove_orphans(self, keep: set[str]) -> int:
        """Delete staged files no committed checkpoint refers to (a crash between write and
        commit leaves them); return how many."""
        removed = 0
        if not self.staging.is_dir():
            return 0
        with storage_errors(f"clean {self.staging}"):
            for entry in self.staging.iterdir():
                if entry.name not in keep:
                    entry.unlink()
                    removed += 1
        return removed

    # -- checkpoints --------------------------------------------------------------------------
    def write_checkpoint(self, seq: int, tables: dict[str, list[pa.RecordBatch]]) -> list[PartRecord]:
        """Write one staged file per table; return the records to commit with the pairs.

        The files get their final names at once: until the run state commits the records,
        nothing refers to them, and a crash leaves them as orphans that the next invocation
        removes. So durability costs one fsync per file and one for the folder, per
        checkpoint, and no rename.
        """
        records: list[PartRecord] = []
        written: list[Path] = []
        for name, batches in tables.items():
            batches = [b for b in batches if b.num_rows]
            if not batches:
                continue
            # The one copy of the rows before Parquet: grouped by date (a take over the
            # chunks, no concatenation first), then zero-copy slices, one batch per date.
            table = pa.Table.from_batches(batches)
            table = table.take(pc.sort_indices(table.column(DATE)))
            counts = pc.value_counts(table.column(DATE))  # in order of appearance: ascending
            file_name = f"ckpt-{seq:08d}-{name}.arrow"
            path = self.staging / file_name
            with storage_errors(f"write checkpoint {path}"):
                with (
                    pa.OSFile(str(path), "wb") as sink,
                    pa.ipc.new_file(sink, TABLES[name], options=_IPC_OPTIONS) as writer,
                ):
                    os.chmod(path, 0o600)  # created by Arrow with the umask's mode
                    offset = 0
                    for index, entry in enumerate(counts.to_pylist()):
                        day, rows = entry["values"], entry["counts"]
                        part = table.slice(offset, rows).drop_columns([DATE])
                        offset += rows
                        (batch,) = part.to_batches()  # one batch per date: PartRecord.batch
                        writer.write_batch(batch)
                        records.append(PartRecord(seq, name, day.isoformat(), index, rows, file_name))
                fsync_path(path)
            written.append(path)
        if written:
            with storage_errors(f"write checkpoint in {self.staging}"):
                fsync_path(self.staging, directory=True)
        return records

    # -- publishing ---------------------------------------------------------------------------
    def publish(
        self,
        parts: Iterable[PartRecord],
        gen: int,
        on_file: Callable[[str, str, str, int, int], None],
    ) -> None:
        """Compact staged parts into the dataset; ``on_file(path, table, date, rows, bytes)``
        is called after each file is visible. Deterministic: a crashed publish redone
        writes the same names, which atomically replace what the first attempt left."""
        counters: dict[str, int] = {}
        for (table, day), group in groupby(parts, key=lambda p: (p.table, p.date)):
            directory = f"{table}/{DATE}={day}"
            with storage_errors(f"create {self.target.path(directory)}"):
                self.target.make_dir(directory)
                if not self.target.local:
                    # No rename on object stores: objects of this generation left by an
                    # interrupted publish (possibly on another machine) go before we write.
                    prefix = f"part-{self.run_id}-{gen}-"
                    for name in self.target.list_names(directory):
                        if name.startswith(prefix):
                            self.target.delete(f"{directory}/{name}")
            writer = _PartitionWriter(self, directory, table, day, gen, counters, on_file)
            try:
                for part in group:
                    # One record batch per (file, table, date): each file is opened once per
                    # date, and closed before the next, so descriptors stay few.
                    with (
                        storage_errors(f"read checkpoint {part.file}"),
                        pa.memory_map(str(self.staging / part.file)) as source,
                    ):
                        batch = pa.ipc.open_file(source).get_batch(part.batch)  # lz4: cheap to read
                        writer.add(batch)
                writer.close()
            except BaseException:
                writer.abort()
                raise

    def remove_staged(self, files: set[str]) -> None:
        with storage_errors(f"clean {self.staging}"):
            for name in files:
                (self.staging / name).unlink(missing_ok=True)

    def write_bytes(self, name: str, data: bytes | Iterable[bytes]) -> str:
        """Write a run document (manifest, failures; ``data`` whole or as chunks, streamed so
        a million failures cost no memory) atomically next to the run state, and next to the
        data when that is an object store; return where readers find it."""
        final = self.run_dir / name
        tmp = self.run_dir / f".{name}{_TMP_SUFFIX}"
        with storage_errors(f"write {final}"):
            _write_private(tmp, [data] if isinstance(data, bytes) else data)
            commit_file(tmp, final)
        if self.target.local:
            return str(final)
        rel = f"{STATE_DIR}/runs/{self.run_id}/{name}"
        with storage_errors(f"write {self.target.path(rel)}"):
            self.target.upload(final, rel)
        return f"{self.target.uri.rstrip('/')}/{rel}"

    def write_json(self, name: str, doc: object) -> str:
        return self.write_bytes(name, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    def published_elsewhere(self) -> bool:
        """An object-store run finished on another machine: its manifest is next to the data
        and says so (a run that stopped early writes one too, with its status)."""
        if self.target.local:
            return False
        rel = f"{STATE_DIR}/runs/{self.run_id}/manifest.json"
        with storage_errors(f"read {self.target.uri}"):
            if not self.target.exists(rel):
                return False
            try:
                status = orjson.loads(self.target.read_bytes(rel)).get("status")
            except (orjson.JSONDecodeError, AttributeError):
                return False
            return status in FINISHED

    def remove_run(self, published: list[str]) -> None:
        """``--overwrite``: delete a run's published files and its state."""
        with storage_errors("remove the earlier run"):
            for rel in published:
                self.target.delete(rel)
            if not self.target.local:
                for name in ("manifest.json", "failures.jsonl"):
                    self.target.delete(f"{STATE_DIR}/runs/{self.run_id}/{name}")
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _write_private(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to a new owner-only (0600) file, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, 0o600)  # a leftover file of that name may have had another mode
        for chunk in chunks:
            fh.write(chunk)


class _PartitionWriter:
    """Streams batches of one table and date into row-group-sized Parquet files."""

    __slots__ = (
        "_buffer", "_buffered", "_counters", "_day", "_dir", "_file_rows", "_gen", "_on_file",
        "_path", "_sink", "_table", "_tmp", "_writer",
    )  # fmt: skip

    def __init__(
        self,
        sink: Sink,
        directory: str,
        table: str,
        day: str,
        gen: int,
        counters: dict[str, int],
        on_file: Callable[[str, str, str, int, int], None],
    ) -> None:
        self._sink = sink  # sizes, run id, output root
        self._dir = directory  # the partition folder, relative to the target
        self._table = table  # table name
        self._day = day  # partition value
        self._gen = gen  # publish generation, part of file names
        self._counters = counters  # table -> next file number (shared across dates)
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
        group = self._sink.row_group_rows
        while self._buffered >= group:
            table = pa.Table.from_batches(self._buffer)
            self._write(table.slice(0, group))
            rest = table.slice(group)
            self._buffer = rest.to_batches()
            self._buffered = rest.num_rows

    def close(self) -> None:
        if self._buffered:
            self._write(pa.Table.from_batches(self._buffer))
        self._buffer, self._buffered = [], 0
        self._finish_file()

    def _write(self, table: pa.Table) -> None:
        """Write ``table`` as one row group, starting a new file when the open one is full."""
        if self._writer is not None and self._file_rows + table.num_rows > self._sink.file_rows:
            self._finish_file()
        if self._writer is None:
            n = self._counters.get(self._table, 0)
            self._counters[self._table] = n + 1
            name = f"part-{self._sink.run_id}-{self._gen}-{n:05d}.parquet"
            self._path = f"{self._dir}/{name}"
            target = self._sink.target
            # Locally, a hidden file beside its final name (rename is atomic within a folder);
            # for an object store, a local file that is uploaded whole once complete.
            folder = target.local_path(self._dir) if target.local else self._sink.run_dir
            self._tmp = folder / f".{name}{_TMP_SUFFIX}"
            with storage_errors(f"write {self._path}"):
                self._writer = pq.ParquetWriter(
                    str(self._tmp), TABLES[self._table], compression="zstd",
                    use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in TABLES[self._table].names],
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
        with storage_errors(f"write {self._sink.target.path(self._path)}"):
            self._writer.close()
            size = self._sink.target.publish_file(self._tmp, self._path)
        self._on_file(self._path, self._table, self._day, self._file_rows, size)
        self._writer = None
