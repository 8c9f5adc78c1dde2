"""The two ways a response's rows become columns.

:class:`_TableBuilder` is the Python loop's: entries are appended untouched, as value tuples,
into groups keyed by their tuple of field names (entries of one channel share one key set), so
the per-value work is a C-level ``tuple(dict.values())``; at build each group is transposed
with ``zip(*rows)`` and each column converted by the value rules (:mod:`bulkexport.values`).
:func:`_accumulated` turns the C loop's buffers (``_speedups.Acc``) into a record batch
without a copy. Both produce the in-memory schemas of :mod:`bulkexport.schema`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Final

import orjson
import pyarrow as pa

from .errors import BadResponse
from .schema import EXTRA_TYPE
from .values import (
    _ARROW_TYPE,
    _FIT,
    _STR,
    _BadValues,
    _convert,
    _day_text,
    _extras_column,
    _json_text,
    _nulls,
)

_speedups: ModuleType | None
try:
    from . import _speedups  # the hot loop in C, built at install when a compiler is there
except ImportError:  # pragma: no cover - depends on the machine that installed the package
    _speedups = None


class _Group:
    """Rows that share one tuple of field names."""

    __slots__ = ("keys", "meta", "rows")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys  # field names, in the order of every row's values
        self.rows: list[tuple[Any, ...]] = []  # one value tuple per output row
        self.meta: list[tuple[Any, ...]] = []  # (slot, date days[, channel]) per row


class _TableBuilder:
    """Collects one output table's rows; converts them to Arrow on :meth:`build`."""

    __slots__ = ("_channel", "_kinds", "_schema", "groups", "name")

    def __init__(self, name: str, schema: pa.Schema, kinds: dict[str, int], *, channel: bool) -> None:
        self.name = name  # the output table, for rejection reasons
        self._schema = schema  # in-memory schema (file columns + date)
        self._kinds = kinds  # known field -> _INT/_FLOAT/_STR
        self._channel = channel  # whether meta carries a channel (send_stats)
        self.groups: dict[tuple[str, ...], _Group] = {}

    def group(self, keys: tuple[str, ...]) -> _Group:
        g = self.groups.get(keys)
        if g is None:
            g = self.groups[keys] = _Group(keys)
        return g

    def rollback(self, slot: int) -> None:
        """Drop the rows of ``slot``: they are always the tail of each group."""
        for g in self.groups.values():
            while g.meta and g.meta[-1][0] == slot:
                g.meta.pop()
                g.rows.pop()

    def drop_slots(self, slots: set[int]) -> None:
        for g in self.groups.values():
            keep = [i for i, m in enumerate(g.meta) if m[0] not in slots]
            g.rows = [g.rows[i] for i in keep]
            g.meta = [g.meta[i] for i in keep]

    def reason(self, bad: _BadValues, group: _Group, row: int) -> str:
        """Why a response was rejected, in words its reader can act on without our code."""
        value = group.rows[row][group.keys.index(bad.column)]
        meta = group.meta[row]
        where = f"{self.name}, {_day_text(meta[1])}"
        if self._channel:
            where += f", channel {meta[2]!r:.60}"
        return (
            f"field {bad.column!r} is {_json_text(value)}, {_FIT[self._kinds[bad.column]][1]} "
            f"({where}); no row of this response was written"
        )

    def build(self, pair_columns: dict[str, pa.Array], unknown: set[str]) -> list[pa.RecordBatch]:
        """Convert every group; raise :class:`_GroupError` on the first bad column."""
        batches = []
        for g in self.groups.values():
            n = len(g.rows)
            if not n:
                continue
            meta = list(zip(*g.meta, strict=True))
            slots = pa.array(meta[0], pa.int32())
            columns: dict[str, pa.Array] = {name: arr.take(slots) for name, arr in pair_columns.items()}
            columns["date"] = pa.array(meta[1], pa.int32()).view(pa.date32())
            if self._channel:
                columns["channel"] = pa.array(meta[2], pa.string())
            extras: list[tuple[str, tuple[Any, ...]]] = []
            for name, values in zip(g.keys, zip(*g.rows, strict=True), strict=True):
                kind = self._kinds.get(name)
                if kind is None:
                    extras.append((name, values))
                    continue
                try:
                    columns[name] = _convert(name, values, kind)
                except _BadValues as exc:
                    raise _GroupError(exc, g, self) from None
            if extras:
                unknown.update(name for name, _ in extras)
                columns["extra_metrics"] = _extras_column(extras, n)
            arrays = [columns[f.name] if f.name in columns else _nulls(n, f.type) for f in self._schema]
            batches.append(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        # One batch per group, not concatenated: the checkpoint's sort by date copies the rows
        # anyway, and a take over a few dozen chunks costs what it costs over one.
        return batches

    def clear(self) -> None:
        self.groups = {}


class _Conflict(Exception):
    """A response that is well formed but names one day twice with different contents."""


_ABSENT: Final = object()  # a day without 'messages'


def _canonical(day: tuple[Any, dict[str, Any]]) -> bytes:
    """A day's contents as comparable bytes: key order is irrelevant, JSON types are not
    (``1``, ``1.0`` and ``true`` differ, where Python's ``==`` would call them equal)."""
    raw, rest = day
    return orjson.dumps([raw is not _ABSENT, None if raw is _ABSENT else raw, rest], option=orjson.OPT_SORT_KEYS)


def _check_channels(messages: dict[str, Any]) -> None:
    for channel, entries in messages.items():
        if type(entries) is not list or any(type(e) is not dict for e in entries):
            raise BadResponse(f"messages[{channel!r:.60}] must be a list of objects")


class _GroupError(Exception):
    def __init__(self, bad: _BadValues, group: _Group, table: _TableBuilder) -> None:
        super().__init__(bad.column)
        self.bad = bad
        self.group = group
        self.table = table


def _accumulator(fields: tuple[tuple[str, int], ...], *, channel: bool) -> Any:
    assert _speedups is not None
    return _speedups.Acc({name: i for i, (name, _) in enumerate(fields)}, bytes(k for _, k in fields), channel)


def _accumulated(
    acc: Any, fields: tuple[tuple[str, int], ...], schema: pa.Schema, pair_columns: dict[str, pa.Array],
    unknown: set[str],
) -> pa.RecordBatch | None:
    """The C accumulator's rows as one record batch: its buffers become Arrow arrays as they
    are (int64/float64 values and validity bitmaps), strings in one C call per column."""
    n, slots, days, channels, cols, extras = acc.take()
    if not n:
        return None
    columns: dict[str, pa.Array] = {}
    slot_arr = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(slots)])
    columns = {name: arr.take(slot_arr) for name, arr in pair_columns.items()}
    columns["date"] = pa.Array.from_buffers(pa.date32(), n, [None, pa.py_buffer(days)])
    if channels is not None:
        columns["channel"] = pa.array(channels, pa.string())
    for (name, kind), col in zip(fields, cols, strict=True):
        if kind == _STR:
            if col.count(None) < n:
                columns[name] = pa.array(col, pa.string())
            continue
        bitmap, values, nulls = col
        if nulls < n:
            validity = None if bitmap is None else pa.py_buffer(bitmap)
            columns[name] = pa.Array.from_buffers(_ARROW_TYPE[kind], n, [validity, pa.py_buffer(values)], nulls)
    if extras:
        rows: list[list[tuple[str, str]] | None] = [None] * n
        for row, name, value in extras:
            unknown.add(name)
            cell = rows[row]
            if cell is None:
                cell = rows[row] = []
            cell.append((name, orjson.dumps(value).decode()))
        columns["extra_metrics"] = pa.array(rows, type=EXTRA_TYPE)
    arrays = [columns[f.name] if f.name in columns else _nulls(n, f.type) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
