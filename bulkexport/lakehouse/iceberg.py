"""Apache Iceberg tables through pyiceberg: copy-on-write, one catalog commit per chunk.

pyiceberg's own ``upsert`` does not fit: it builds one filter expression per incoming row
(slow past a few thousand rows, and it cannot express null-safe keys), never deletes a
row a restatement dropped, and needs the whole input in memory. Each chunk is therefore
planned exactly as for Delta (:func:`._keys.plan`), then applied copy-on-write in one
transaction:

1. the data files of the chunk's dates (manifest pruning on the ``date`` partition and the
   ``campaign_id`` range) are read, key columns only, to find the table's rows of the
   incoming groups;
2. each file holding a row the plan replaces (:func:`._keys.replaced_mask`: an older fetch
   of a winning group, or the same fetch with a key the incoming rows carry) is rewritten
   without those rows;
3. one snapshot removes the rewritten files and adds their rewrites and the incoming rows
   (``append`` when nothing is removed, ``overwrite`` otherwise), with a schema update
   first if the input has new columns.

The transaction commits by swapping the table's metadata pointer in the catalog, a single
row update in SQLite for the embedded catalog, so a ``kill -9`` leaves the table at its
previous snapshot; the files an interrupted chunk wrote are unreferenced (orphans that
Iceberg's orphan-file maintenance removes) and never read.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Iterator, Mapping
from contextlib import suppress
from typing import Any, Final, cast

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, GreaterThanOrEqual, In, LessThanOrEqual
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table, Transaction

from ._keys import (
    BASE_SCHEMAS,
    EXPORTED_AT,
    GROUP_KEY,
    ROW_KEYS,
    Batches,
    MergeResult,
    Plan,
    chunks,
    conform,
    iter_batches,
    match_groups,
    plan,
    replaced_mask,
)
from ._store import Location, retry_conflicts, s3_endpoint, s3_region, translate_errors

__all__ = ["CATALOG_FILE", "NAMESPACE", "IcebergLakeTable", "open_catalog"]

NAMESPACE: Final = "bulkexport"
#: The embedded catalog's file, under ``OUT/_bulkexport/`` or the state folder.
CATALOG_FILE: Final = "iceberg_catalog.db"
#: Data files smaller than this are compacted by :meth:`IcebergLakeTable.optimize`.
SMALL_FILE_BYTES: Final = 32 * 1024 * 1024
_ERRORS: Final = (CommitFailedException,)
#: Table properties bulkexport relies on: no blind commit retries (see ``_merge_chunk``).
_PROPERTIES: Final = {"commit.retry.num-retries": "0"}


def _file_io_properties(location: Location, given: Mapping[str, str] | None) -> dict[str, str]:
    props = dict(given or {})
    endpoint = s3_endpoint()
    if not location.local and endpoint and "s3.endpoint" not in props:
        props["s3.endpoint"] = endpoint
        props.setdefault("s3.region", s3_region())
    return props


def open_catalog(
    location: Location,
    *,
    catalog_uri: str | None = None,
    catalog_type: str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> Catalog:
    """The catalog holding the ``bulkexport`` namespace: the one ``catalog_uri`` names, or
    the embedded SQLite file (created on first use, nothing to set up)."""
    props = _file_io_properties(location, storage_options)
    if catalog_uri:
        extra = {"uri": catalog_uri, **({"type": catalog_type} if catalog_type else {})}
        catalog = load_catalog(NAMESPACE, **{**props, **dict(catalog_properties or {}), **extra})
    else:
        location.state.mkdir(parents=True, exist_ok=True)
        catalog = SqlCatalog(NAMESPACE, uri=f"sqlite:///{location.state / CATALOG_FILE}",
                             warehouse=location.root, **props)  # fmt: skip
    catalog.create_namespace_if_not_exists(NAMESPACE)
    return catalog


class IcebergLakeTable:
    """A bulkexport table stored as Apache Iceberg (see :class:`bulkexport.lakehouse.LakeTable`)."""

    format = "iceberg"

    def __init__(
        self,
        location: Location,
        name: str,
        *,
        catalog_uri: str | None,
        catalog_type: str | None,
        catalog_properties: Mapping[str, str] | None,
        storage_options: Mapping[str, str] | None,
        max_rows_per_commit: int,
        commit_tag: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name  # send_stats or send_totals
        self.uri = location.table(name)  # table root (its data/ and metadata/ folders)
        self._max_rows = max_rows_per_commit  # rows per commit
        self._tag = dict(commit_tag or {})  # snapshot summary properties of every commit
        self._touched: list[tuple[FileScanTask, pa.Table]] = []  # files of the chunk's groups, while planning
        with translate_errors(f"open the Iceberg table bulkexport.{name}", *_ERRORS):
            self._catalog = open_catalog(
                location, catalog_uri=catalog_uri, catalog_type=catalog_type,
                catalog_properties=catalog_properties, storage_options=storage_options,
            )  # fmt: skip
            self._table = self._open_or_create()

    def __repr__(self) -> str:
        return f"IcebergLakeTable({NAMESPACE}.{self.name!r} at {self.uri!r}, snapshot={self.version()})"

    def _open_or_create(self) -> Table:
        ident = (NAMESPACE, self.name)
        try:
            table = self._catalog.load_table(ident)
        except NoSuchTableError:
            txn = self._catalog.create_table_transaction(
                ident, schema=BASE_SCHEMAS[self.name], location=self.uri, properties=_PROPERTIES
            )
            with txn.update_spec() as spec:
                spec.add_identity("date")
            with suppress(TableAlreadyExistsError):  # another process created it first: use theirs
                txn.commit_transaction()
            table = self._catalog.load_table(ident)
        if any(table.metadata.properties.get(k) != v for k, v in _PROPERTIES.items()):
            # A table created elsewhere (or by an older bulkexport): one metadata commit.
            with suppress(CommitFailedException):  # another writer set them first
                table.transaction().set_properties(_PROPERTIES).commit_transaction()
            table = table.refresh()
        return table

    @property
    def table(self) -> Table:
        """The pyiceberg table (for readers: ``table.scan()``, Polars ``scan_iceberg``)."""
        return self._table

    def version(self) -> int | None:
        snapshot = self._table.current_snapshot()
        return None if snapshot is None else int(snapshot.snapshot_id)

    def commits(self, key: str, value: str, after: int | None = None) -> list[int]:
        """Snapshot ids whose summary carries ``key = value`` (see ``commit_tag``), oldest
        first (``after`` is for Delta's sake: snapshot ids are not ordered, and the snapshot
        list is in the table metadata already)."""
        with translate_errors(f"read the snapshots of the Iceberg table {NAMESPACE}.{self.name}", *_ERRORS):
            self._table = self._table.refresh()
            snapshots = sorted(self._table.snapshots(), key=lambda s: s.sequence_number or 0)
            return [int(s.snapshot_id) for s in snapshots if s.summary is not None and s.summary.get(key) == value]

    def to_arrow(self) -> pa.Table:
        with translate_errors(f"read the Iceberg table {NAMESPACE}.{self.name}", *_ERRORS):
            self._table = self._table.refresh()
            return self._table.scan().to_arrow()

    def _arrow_schema(self, txn: Transaction) -> pa.Schema:
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        return pa.schema([f.remove_metadata() for f in schema_to_pyarrow(txn.table_metadata.schema())])

    def _scan(self, txn: Transaction, groups: pa.Table) -> Iterator[pa.Table]:
        """The table's key columns for the incoming groups, file by file; remembers the
        files that hold any, for the rewrite."""
        cids = groups.column("campaign_id")
        # pyiceberg's predicates are pydantic models whose synthesized signatures mypy
        # reads instead of their real __init__ (term, literal): called untyped.
        where: BooleanExpression = And(
            cast(Any, In)("date", set(pc.unique(groups.column("date")).to_pylist())),
            cast(Any, GreaterThanOrEqual)("campaign_id", pc.min(cids).as_py()),
            cast(Any, LessThanOrEqual)("campaign_id", pc.max(cids).as_py()),
        )
        metadata = txn.table_metadata
        keys = ArrowScan(metadata, self._table.io, metadata.schema().select(*GROUP_KEY, EXPORTED_AT), AlwaysTrue())
        wanted = pa.schema([BASE_SCHEMAS[self.name].field(c) for c in (*GROUP_KEY, EXPORTED_AT)])
        self._touched = []
        for task in self._table.scan(row_filter=where).plan_files():
            found = match_groups(keys.to_table([task]).select(wanted.names).cast(wanted), groups)
            if found.num_rows:
                self._touched.append((task, found))
            yield found

    def merge(self, batches: Batches) -> MergeResult:
        commits: list[int] = []
        rows_in = written = stale = 0
        with translate_errors(f"merge into the Iceberg table {NAMESPACE}.{self.name}", *_ERRORS):
            self._table = self._table.refresh()
            for raw in chunks(iter_batches(batches), self._max_rows):
                rows_in += raw.num_rows
                p = retry_conflicts(functools.partial(self._merge_chunk, raw, commits), CommitFailedException,
                                    self._refresh, f"{NAMESPACE}.{self.name}")  # fmt: skip
                stale += p.stale_rows
                written += p.rows.num_rows
        return MergeResult(self.version(), tuple(commits), rows_in, written, stale)

    def _refresh(self) -> None:
        self._table = self._table.refresh()

    def _merge_chunk(self, raw: pa.Table, commits: list[int]) -> Plan:
        """Plan one chunk against the table as it is, and commit it in one transaction.

        The table is created with pyiceberg's own commit retries off: a retry re-applies
        the same snapshot on top of another writer's (an append stays an append), so two
        runs merging the same groups at once would both insert them. A refused commit
        comes back here instead, and the chunk is planned again against the new snapshot.
        """
        txn = self._table.transaction()
        chunk, added = conform(raw, self.name, self._arrow_schema(txn))
        if added:
            with txn.update_schema() as update:
                update.union_by_name(pa.schema(added))
        p = plan(chunk, self.name, lambda groups: self._scan(txn, groups))
        if not p.rows.num_rows:
            return p
        self._apply(txn, p)
        self._table = txn.commit_transaction()
        commits.append(int(self._table.current_snapshot().snapshot_id))  # type: ignore[union-attr]
        return p

    def _apply(self, txn: Transaction, p: Plan) -> None:
        """Stage one snapshot: rewritten files out, their rewrites and the new rows in.

        The rows a rewritten file keeps are written together with the incoming rows (one
        file per partition rather than one per rewritten file), flushed every
        ``max_rows_per_commit`` rows so memory stays bounded.
        """
        metadata = txn.table_metadata
        io = self._table.io
        write_uuid, counter = uuid.uuid4(), itertools.count()
        removed: list[DataFile] = []
        added: list[DataFile] = []
        pending: list[pa.Table] = []

        def flush() -> None:
            if pending:
                added.extend(_dataframe_to_data_files(metadata, pa.concat_tables(pending), io, write_uuid, counter))
                pending.clear()

        full = ArrowScan(metadata, io, metadata.schema(), AlwaysTrue())
        keys = [*ROW_KEYS[self.name], EXPORTED_AT]
        key_schema = pa.schema([BASE_SCHEMAS[self.name].field(c) for c in keys])
        for task, found in self._touched:
            if not found.join(p.groups.select(list(GROUP_KEY)), keys=list(GROUP_KEY), join_type="left semi").num_rows:
                continue  # only groups the plan leaves alone (the table's fetch is newer)
            rows = full.to_table([task])
            mask = replaced_mask(rows.select(keys).cast(key_schema), self.name, p)
            if not pc.any(mask).as_py():
                continue
            removed.append(task.file)
            kept = rows.filter(pc.invert(mask))
            if kept.num_rows:
                pending.append(kept.select(p.rows.column_names).cast(p.rows.schema))
                if sum(t.num_rows for t in pending) >= self._max_rows:
                    flush()
        pending.append(p.rows)
        flush()
        self._touched = []
        update = txn.update_snapshot(snapshot_properties=self._tag)
        producer: Any = update.overwrite() if removed else update.fast_append()
        with producer as snapshot:
            for data_file in removed:
                snapshot.delete_data_file(data_file)
            for data_file in added:
                snapshot.append_data_file(data_file)

    def optimize(self) -> None:
        """Bin-pack each partition's small files (under 32 MiB) into files of up to
        ``max_rows_per_commit`` rows, in one ``overwrite`` snapshot that holds the same rows.

        pyiceberg 0.12 has no compaction of its own (``rewrite_data_files`` is Spark's), so
        this uses the merge's copy-on-write path. Snapshots are not expired: pyiceberg's
        ``expire_snapshots`` only edits metadata (it deletes no file), and keeping them
        keeps time travel; expiring snapshots and removing orphan files is the job of the
        lake's Iceberg maintenance (Spark, Trino), as for any Iceberg table.
        """
        with translate_errors(f"optimize the Iceberg table {NAMESPACE}.{self.name}", *_ERRORS):
            self._table = self._table.refresh()
            if self._table.current_snapshot() is None:
                return
            small: dict[Any, list[FileScanTask]] = {}
            for task in self._table.scan().plan_files():
                if task.file.file_size_in_bytes < SMALL_FILE_BYTES and not task.delete_files:
                    small.setdefault(task.file.partition, []).append(task)
            bins = [b for tasks in small.values() for b in _bins(tasks, self._max_rows) if len(b) > 1]
            if not bins:
                return
            txn = self._table.transaction()
            metadata, io = txn.table_metadata, self._table.io
            full = ArrowScan(metadata, io, metadata.schema(), AlwaysTrue())
            write_uuid, counter = uuid.uuid4(), itertools.count()
            with txn.update_snapshot(snapshot_properties=self._tag).overwrite() as snapshot:
                for group in bins:
                    rows = full.to_table(group)
                    for data_file in _dataframe_to_data_files(metadata, rows, io, write_uuid, counter):
                        snapshot.append_data_file(data_file)
                    for task in group:
                        snapshot.delete_data_file(task.file)
            self._table = txn.commit_transaction()


def _bins(tasks: list[FileScanTask], max_rows: int) -> Iterator[list[FileScanTask]]:
    """Consecutive groups of files whose rows add up to at most ``max_rows``."""
    current: list[FileScanTask] = []
    rows = 0
    for task in sorted(tasks, key=lambda t: t.file.record_count):
        if current and rows + task.file.record_count > max_rows:
            yield current
            current, rows = [], 0
        current.append(task)
        rows += task.file.record_count
    if current:
        yield current
