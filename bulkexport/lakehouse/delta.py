"""Delta Lake tables through delta-rs (``deltalake``): one MERGE commit per chunk.

The newest-fetch rule needs the table's ``exported_at`` per incoming group, which no MERGE
clause can see (a NOT MATCHED clause does not know whether *another* row of the group is
newer). So each chunk is planned first (:func:`._keys.plan`: a scan of the table's key
columns, pruned to the chunk's dates), and the MERGE then applies the plan in one commit.
Its source is the winning incoming rows (``op = 'i'``) plus one marker row per winning group
(``op = 'g'``, group key and the incoming ``exported_at``)::

    ON   t.campaign_id = s.campaign_id AND t.send_id = s.send_id AND t.date = s.date
         AND ((s.op = 'g' AND t.exported_at < s.exported_at)              -- an older fetch
           OR (s.op = 'i' AND t.exported_at = s.exported_at               -- the same fetch
               AND t.channel = s.channel
               AND t.variation_name IS NOT DISTINCT FROM s.variation_name -- null-safe
               AND t.variation_api_id IS NOT DISTINCT FROM s.variation_api_id))
    WHEN MATCHED AND s.op = 'g' THEN DELETE
    WHEN MATCHED AND s.op = 'i' THEN UPDATE SET *      (except op)
    WHEN NOT MATCHED AND s.op = 'i' THEN INSERT *      (except op)

Every target row matches at most one source row (its group's marker, or the incoming row
with its key), so the MERGE is deterministic; rows of groups not in the source match
nothing and are left alone. ``t.date = s.date`` on the partition column lets delta-rs prune
the files it reads to the chunk's dates.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.schema import Field

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
)
from ._store import Location, retry_conflicts, s3_endpoint, s3_region, translate_errors

__all__ = ["DeltaLakeTable", "merge_predicate"]

_OP: Final = "bulkexport_op"
_NULLABLE: Final = frozenset({"variation_name", "variation_api_id"})
_WRITER: Final = WriterProperties(compression="ZSTD")


def merge_predicate(table: str) -> str:
    """The MERGE's ON condition for ``table`` (see the module docstring)."""
    group = " AND ".join(f"t.{k} = s.{k}" for k in GROUP_KEY)
    row = "".join(
        f" AND (t.{k} IS NOT DISTINCT FROM s.{k})" if k in _NULLABLE else f" AND t.{k} = s.{k}"
        for k in ROW_KEYS[table] if k not in GROUP_KEY
    )  # fmt: skip
    return (
        f"{group} AND ((s.{_OP} = 'g' AND t.{EXPORTED_AT} < s.{EXPORTED_AT})"
        f" OR (s.{_OP} = 'i' AND t.{EXPORTED_AT} = s.{EXPORTED_AT}{row}))"
    )


def _options(location: Location, given: Mapping[str, str] | None) -> dict[str, str]:
    options = dict(given or {})
    endpoint = s3_endpoint()
    if not location.local and endpoint and not any(k.upper() in ("AWS_ENDPOINT_URL", "ENDPOINT") for k in options):
        options["AWS_ENDPOINT_URL"] = endpoint
        options.setdefault("AWS_REGION", s3_region())
        if endpoint.startswith("http://"):
            options.setdefault("AWS_ALLOW_HTTP", "true")
    return options


def _source(rows: pa.Table, groups: pa.Table) -> pa.Table:
    """The MERGE source: the rows to write, then one marker per group they replace."""
    schema = pa.schema([f.with_nullable(True) for f in rows.schema]).append(pa.field(_OP, pa.string()))
    data = rows.append_column(_OP, pa.repeat(pa.scalar("i"), rows.num_rows)).cast(schema)
    n = groups.num_rows
    markers = pa.Table.from_arrays(
        [groups.column(f.name) if f.name in groups.column_names else pa.nulls(n, f.type) for f in list(schema)[:-1]]
        + [pa.repeat(pa.scalar("g"), n)],
        schema=schema,
    )
    return pa.concat_tables([data, markers])


class DeltaLakeTable:
    """A bulkexport table stored as Delta Lake (see :class:`bulkexport.lakehouse.LakeTable`)."""

    format = "delta"

    def __init__(
        self,
        location: Location,
        name: str,
        *,
        storage_options: Mapping[str, str] | None,
        max_rows_per_commit: int,
        commit_tag: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name  # send_stats or send_totals
        self.uri = location.table(name)  # table root
        self._options = _options(location, storage_options)  # delta-rs object-store options
        self._max_rows = max_rows_per_commit  # rows per MERGE commit
        self._predicate = merge_predicate(name)
        self._tag = dict(commit_tag or {})  # written into every commit this object makes
        with translate_errors(f"open the Delta table {self.uri}", DeltaError):
            try:
                self._dt = DeltaTable(self.uri, storage_options=self._options)
            except TableNotFoundError:
                DeltaTable.create(self.uri, BASE_SCHEMAS[name], partition_by=["date"], mode="ignore",
                                  name=name, storage_options=self._options)  # fmt: skip
                self._dt = DeltaTable(self.uri, storage_options=self._options)

    def __repr__(self) -> str:
        return f"DeltaLakeTable({self.uri!r}, version={self._dt.version()})"

    def version(self) -> int:
        return int(self._dt.version())

    def _commit(self, rows: int | None = None) -> CommitProperties:
        extra = {} if rows is None else {"bulkexport.rows": str(rows)}
        return CommitProperties(custom_metadata={**self._tag, **extra})

    def commits(self, key: str, value: str, after: int | None = None) -> list[int]:
        """Versions whose commit carries ``key = value`` (see ``commit_tag``), oldest first;
        only those after version ``after`` are read (the log of a long-lived table is long)."""
        with translate_errors(f"read the history of the Delta table {self.uri}", DeltaError):
            self._dt.update_incremental()
            limit = None if after is None else max(self.version() - after, 0)
            if limit == 0:
                return []
            return sorted(int(h["version"]) for h in self._dt.history(limit) if h.get(key) == value)

    def to_arrow(self) -> pa.Table:
        with translate_errors(f"read the Delta table {self.uri}", DeltaError):
            self._dt.update_incremental()
            return self._dt.to_pyarrow_table()

    def _schema(self) -> pa.Schema:
        return pa.schema(self._dt.schema().to_arrow())

    def _scan(self, groups: pa.Table) -> Iterator[pa.Table]:
        """The table's key columns for the incoming groups, batch by batch, read by delta-rs
        (DataFusion): pruned to the groups' dates (partitions) and, through Parquet
        statistics, to their campaign id range."""
        dates = ", ".join(f"DATE '{d}'" for d in pc.unique(groups.column("date")).to_pylist())
        cids = groups.column("campaign_id")
        where = f"date IN ({dates}) AND campaign_id >= {_sql_text(pc.min(cids).as_py())}" \
                f" AND campaign_id <= {_sql_text(pc.max(cids).as_py())}"  # fmt: skip
        columns = [*GROUP_KEY, EXPORTED_AT]
        schema = BASE_SCHEMAS[self.name]
        wanted = pa.schema([schema.field(c) for c in columns])
        reader = pa.RecordBatchReader.from_stream(self._dt.scan(columns=columns, predicate=where))
        for batch in reader:
            yield match_groups(pa.Table.from_batches([batch]).select(columns).cast(wanted), groups)

    def merge(self, batches: Batches) -> MergeResult:
        commits: list[int] = []
        rows_in = written = stale = 0
        with translate_errors(f"merge into the Delta table {self.uri}", DeltaError):
            self._dt.update_incremental()
            for raw in chunks(iter_batches(batches), self._max_rows):
                rows_in += raw.num_rows
                p = retry_conflicts(functools.partial(self._merge_chunk, raw, commits), CommitFailedError,
                                    self._dt.update_incremental, self.uri)  # fmt: skip
                stale += p.stale_rows
                written += p.rows.num_rows
        return MergeResult(self._dt.version(), tuple(commits), rows_in, written, stale)

    def _merge_chunk(self, raw: pa.Table, commits: list[int]) -> Plan:
        """Plan one chunk against the table as it is, and commit it (nothing if it changes
        nothing); delta-rs refuses the commit if another writer changed what the plan read."""
        chunk, added = conform(raw, self.name, self._schema())
        p = plan(chunk, self.name, self._scan)
        if not p.rows.num_rows:
            return p
        if added:
            # A metadata-only commit of its own: delta-rs's MERGE with merge_schema
            # loses values of the target rows it copies (seen with 1.6.6).
            self._dt.alter.add_columns([Field.from_arrow(f) for f in added], commit_properties=self._commit())
            commits.append(self._dt.version())
        merger = self._dt.merge(
            _source(p.rows, p.groups), self._predicate, source_alias="s", target_alias="t",
            streamed_exec=False, writer_properties=_WRITER, commit_properties=self._commit(rows=p.rows.num_rows),
        )  # fmt: skip
        (
            merger.when_matched_delete(f"s.{_OP} = 'g'")
            .when_matched_update_all(f"s.{_OP} = 'i'", except_cols=[_OP])
            .when_not_matched_insert_all(f"s.{_OP} = 'i'", except_cols=[_OP])
            .execute()
        )
        commits.append(self._dt.version())
        return p

    def optimize(self) -> None:
        """Bin-pack small files (one commit, ``dataChange=false``: readers and time travel
        see the same rows), then vacuum only files removed longer ago than the table's
        retention (``delta.deletedFileRetentionDuration``, 7 days by default), never less:
        a reader still on an older version, or a time-travel query within the retention,
        keeps its files. Finally a checkpoint, so readers need not replay the log."""
        with translate_errors(f"optimize the Delta table {self.uri}", DeltaError):
            self._dt.update_incremental()
            self._dt.optimize.compact(writer_properties=_WRITER, commit_properties=self._commit())
            self._dt.vacuum(dry_run=False, enforce_retention_duration=True, commit_properties=self._commit())
            self._dt.create_checkpoint()


def _sql_text(value: str) -> str:
    """A SQL string literal (ids may hold any character, quotes included)."""
    return "'" + value.replace("'", "''") + "'"
