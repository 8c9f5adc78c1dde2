"""What a merge means, independent of the table format: keys, chunks, and which rows win.

A merge keeps, for every ``(campaign_id, send_id, date)`` group, the rows of the newest
fetch. All rows of one group in one response share one ``exported_at``, so "newest fetch"
is a group-level decision:

* incoming group newer than or as new as the table's -> the table's rows of that group are
  replaced: rows of an older fetch are deleted (a variation a restatement dropped goes with
  them), rows of the same fetch are matched by row key and updated, new keys are inserted;
* incoming group older than the table's -> ignored;
* groups absent from the incoming data -> untouched (a send past Braze's retention keeps
  its last rows).

Matching rows of the *same* fetch by key instead of replacing the whole group is what lets
a run's data be committed in several bounded chunks: a group whose rows straddle two chunks
is replaced by the first and completed by the second, and merging anything twice (a resume
after a crash) changes nothing. The formats differ only in how they apply a :class:`Plan`.

Arrow's hash join refuses ``map`` payload columns (``extra_metrics``) and treats null keys
as unequal, so joins here run on key columns plus a row index, and nullable row keys are
compared through null-safe surrogates (``is_null`` flag + value with nulls filled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from ..schema import STATS_SCHEMA, TOTALS_SCHEMA

__all__ = [
    "EXPORTED_AT",
    "GROUP_KEY",
    "ROW_KEYS",
    "Batches",
    "DuplicateKeyError",
    "MergeResult",
    "Plan",
    "chunks",
    "conform",
    "incoming_groups",
    "iter_batches",
    "match_groups",
    "plan",
    "replaced_mask",
]

EXPORTED_AT: Final = "exported_at"
#: One fetch of one pair for one day: the unit the newest-fetch rule decides on.
GROUP_KEY: Final = ("campaign_id", "send_id", "date")
#: The key of one row of each table; a table holds one row per key.
ROW_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "send_stats": (*GROUP_KEY, "channel", "variation_name", "variation_api_id"),
    "send_totals": GROUP_KEY,
}
#: The in-memory schema the exporter produces for each table.
BASE_SCHEMAS: Final[dict[str, pa.Schema]] = {"send_stats": STATS_SCHEMA, "send_totals": TOTALS_SCHEMA}

_IDX: Final = "__bx_row"
_NULLABLE_KEYS: Final = frozenset({"variation_name", "variation_api_id"})
_TARGET_TS: Final = "__bx_target_ts"


class DuplicateKeyError(ValueError):
    """Incoming rows of one fetch repeat a row key; a table holds one row per key, so
    merging them would keep an arbitrary one. Nothing is committed for the chunk."""


def chunks(batches: Iterable[pa.RecordBatch], max_rows: int) -> Iterator[pa.Table]:
    """Cut a stream of batches into tables of at most ``max_rows`` rows, in order.

    Only one chunk is held at a time, so a run larger than memory merges in bounded pieces.
    """
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            take = min(batch.num_rows - offset, max_rows - held)
            pending.append(batch.slice(offset, take))
            held += take
            offset += take
            if held >= max_rows:
                yield pa.Table.from_batches(pending)
                pending, held = [], 0
    if held:
        yield pa.Table.from_batches(pending)


def conform(chunk: pa.Table, table: str, target: pa.Schema) -> tuple[pa.Table, list[pa.Field]]:
    """Check ``chunk`` against the exporter's schema and lay it out as the table's columns.

    Returns the chunk with the table's columns in the table's order (columns the chunk
    lacks are null), followed by the chunk's columns the table does not have yet; the
    latter are also returned, so the caller evolves the table's schema before writing.
    Raises ValueError naming the column when a key is missing or a type differs: silently
    casting would write wrong numbers.
    """
    base = BASE_SCHEMAS[table]
    names = set(chunk.column_names)
    for name in (*ROW_KEYS[table], EXPORTED_AT):
        if name not in names:
            raise ValueError(f"{table}: incoming batches lack the key column {name!r}")
    expected = {f.name: f.type for f in base}
    expected.update((f.name, f.type) for f in target if f.name not in expected)
    for field in chunk.schema:
        want = expected.get(field.name)
        if want is not None and not field.type.equals(want):
            raise ValueError(f"{table}: column {field.name!r} is {field.type}, the table's is {want}")
    required = {f.name for f in base if not f.nullable}
    for name in required:
        if chunk.column(name).null_count:
            raise ValueError(f"{table}: column {name!r} is required but has nulls")
    n = chunk.num_rows
    arrays: list[pa.ChunkedArray | pa.Array] = []
    fields: list[pa.Field] = []
    known = {f.name: f for f in base}
    for field in target:
        field = known.get(field.name, field)  # the exporter's own type, whatever the format calls it
        if field.name in names:
            arrays.append(chunk.column(field.name))
        elif field.nullable:
            arrays.append(pa.nulls(n, field.type))
        else:
            raise ValueError(f"{table}: incoming batches lack the required column {field.name!r}")
        fields.append(field)
    target_names = set(target.names)
    added = [f.with_nullable(True) for f in chunk.schema if f.name not in target_names]
    for field in added:
        arrays.append(chunk.column(field.name))
        fields.append(field)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), added


def _indexed(table: pa.Table, columns: Iterable[str]) -> pa.Table:
    return table.select(list(columns)).append_column(_IDX, pa.array(range(table.num_rows), pa.int64()))


def _take(table: pa.Table, joined: pa.Table) -> pa.Table:
    """Rows of ``table`` whose index survived a join, in their original order."""
    idx = joined.column(_IDX).combine_chunks()
    return table.take(idx.take(pc.sort_indices(idx)))


def newest_fetch(chunk: pa.Table) -> pa.Table:
    """Keep, for each group, only the rows of its newest fetch within ``chunk``."""
    newest = chunk.group_by(list(GROUP_KEY)).aggregate([(EXPORTED_AT, "max")])
    keyed = _indexed(chunk, (*GROUP_KEY, EXPORTED_AT))
    joined = keyed.join(newest.rename_columns([*GROUP_KEY, EXPORTED_AT]), keys=[*GROUP_KEY, EXPORTED_AT],
                        join_type="left semi")  # fmt: skip
    if joined.num_rows == chunk.num_rows:
        return chunk
    return _take(chunk, joined)


def _null_safe(table: pa.Table, keys: Iterable[str]) -> tuple[pa.Table, list[str]]:
    """``table`` plus surrogate columns that compare equal exactly when the keys are equal
    or both null (Arrow's join never matches nulls): a null flag and the value with nulls
    filled, for each key that may be null."""
    out = table
    names: list[str] = []
    for key in keys:
        if key not in _NULLABLE_KEYS:
            names.append(key)
            continue
        column = table.column(key)
        flag, value = f"__bx_null_{key}", f"__bx_val_{key}"
        out = out.append_column(flag, pc.cast(pc.is_null(column), pa.int8()))
        out = out.append_column(value, pc.fill_null(column, pa.scalar("", column.type)))
        names += [flag, value]
    return out, names


def check_unique(rows: pa.Table, table: str) -> None:
    """Raise :class:`DuplicateKeyError` naming the first repeated row key (nulls equal)."""
    keys = list(ROW_KEYS[table])
    counts = rows.select(keys).group_by(keys).aggregate([([], "count_all")])
    if counts.num_rows == rows.num_rows:
        return
    dup = counts.filter(pc.greater(counts["count_all"], 1)).slice(0, 1).to_pylist()[0]
    shown = ", ".join(f"{k}={dup[k]!r}" for k in keys)
    raise DuplicateKeyError(f"{table}: {dup['count_all']} incoming rows of one fetch share the key {shown}")


def incoming_groups(chunk: pa.Table) -> pa.Table:
    """One row per group of ``chunk`` (already reduced by :func:`newest_fetch`): the group
    key and its ``exported_at``."""
    grouped = chunk.group_by(list(GROUP_KEY)).aggregate([(EXPORTED_AT, "max")])
    return grouped.rename_columns([*GROUP_KEY, EXPORTED_AT])


def match_groups(target: pa.Table, groups: pa.Table) -> pa.Table:
    """The rows of ``target`` (group key + ``exported_at``) that belong to ``groups``.

    Called once per target batch or file, so memory follows the incoming chunk, not the
    table.
    """
    return target.select([*GROUP_KEY, EXPORTED_AT]).join(
        groups.select(list(GROUP_KEY)), keys=list(GROUP_KEY), join_type="left semi"
    )


#: What a merge accepts: a stream of record batches (or a table) of one table's schema.
Batches: TypeAlias = "pa.RecordBatchReader | Iterable[pa.RecordBatch] | pa.Table"


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What one merge committed."""

    #: the table's version (Delta) or current snapshot id (Iceberg) after the merge
    version: int | None
    #: every version / snapshot id this merge committed, oldest first; empty if nothing changed
    commits: tuple[int, ...]
    #: incoming rows read
    rows_in: int
    #: incoming rows now in the table
    rows_written: int
    #: incoming rows ignored: the table (or the input itself) held a newer fetch of their group
    rows_stale: int


def iter_batches(batches: Batches) -> Iterator[pa.RecordBatch]:
    """The record batches of any accepted input, lazily."""
    if isinstance(batches, pa.Table):
        yield from batches.to_batches()
    else:
        yield from batches


@dataclass(frozen=True, slots=True)
class Plan:
    """What one chunk changes in the table."""

    #: incoming rows to write: those of groups the table holds no newer fetch of
    rows: pa.Table
    #: those groups: group key and the incoming ``exported_at``
    groups: pa.Table
    #: incoming rows ignored because the table holds a newer fetch of their group
    stale_rows: int


def plan(chunk: pa.Table, table: str, scan: Callable[[pa.Table], Iterable[pa.Table]]) -> Plan:
    """Decide which incoming rows win.

    ``chunk`` is conformed. ``scan(groups)`` reads the table's ``(group key, exported_at)``
    rows of the incoming groups (one table per file or batch, each through
    :func:`match_groups`); the format knows how to prune that read to the groups' dates.
    """
    newest = newest_fetch(chunk)
    groups = incoming_groups(newest)
    parts = [m for m in scan(groups) if m.num_rows]
    if parts:
        target = pa.concat_tables(parts).group_by(list(GROUP_KEY)).aggregate([(EXPORTED_AT, "max")])
        target = target.rename_columns([*GROUP_KEY, _TARGET_TS])
        joined = groups.join(target, keys=list(GROUP_KEY), join_type="left outer")
        fresh = pc.or_kleene(pc.is_null(joined[_TARGET_TS]),
                             pc.less_equal(joined[_TARGET_TS], joined[EXPORTED_AT]))  # fmt: skip
        winners = joined.filter(fresh).select([*GROUP_KEY, EXPORTED_AT])
        if winners.num_rows < groups.num_rows:
            keyed = _indexed(newest, GROUP_KEY)
            newest = _take(newest, keyed.join(winners.select(list(GROUP_KEY)), keys=list(GROUP_KEY),
                                              join_type="left semi"))  # fmt: skip
            groups = winners
    check_unique(newest, table)
    return Plan(rows=newest, groups=groups, stale_rows=chunk.num_rows - newest.num_rows)


def replaced_mask(target: pa.Table, table: str, p: Plan) -> pa.Array:
    """For rows of the table (all key columns and ``exported_at``), True where the plan
    replaces the row: its group wins and the row is of an older fetch, or of the same
    fetch with a key the incoming rows carry (they are written in its place)."""
    n = target.num_rows
    keyed = _indexed(target, (*GROUP_KEY, EXPORTED_AT))
    winners = p.groups.rename_columns([*GROUP_KEY, _TARGET_TS])
    joined = keyed.join(winners, keys=list(GROUP_KEY), join_type="inner")
    if not joined.num_rows:
        return pa.array([False] * n, pa.bool_())
    older = joined.filter(pc.less(joined[EXPORTED_AT], joined[_TARGET_TS])).column(_IDX)
    same = joined.filter(pc.equal(joined[EXPORTED_AT], joined[_TARGET_TS])).column(_IDX)
    hits = [older]
    if len(same):
        keys = list(ROW_KEYS[table])
        left, left_keys = _null_safe(_indexed(target.take(same), keys), keys)
        right, right_keys = _null_safe(p.rows.select(keys), keys)
        found = left.select([*left_keys, _IDX]).join(right.select(right_keys), keys=left_keys, join_type="left semi")
        hits.append(same.take(found.column(_IDX)))
    mask = pc.is_in(pa.array(range(n), pa.int64()), value_set=pa.chunked_array(hits, pa.int64()).combine_chunks())
    return mask
