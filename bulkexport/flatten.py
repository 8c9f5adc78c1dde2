"""Response bytes -> Arrow record batches: the CPU hot path, pure and synchronous.

How it stays fast: a response's entries are appended, untouched, as value tuples into
groups keyed by their tuple of field names (entries of one channel share one key set), so
the per-value work in Python is a C-level ``tuple(dict.values())``. At :meth:`Flattener.build`
each group is transposed with ``zip(*rows)`` and each column becomes one Arrow array in one
C call. A typical response touches a handful of groups and no per-row dicts are created.

How it stays exact: columns are converted with Arrow's type *inference*, then checked
against the schema. pyarrow truncates ``1.5`` silently when given an int64 target type,
so we never give it one for data we have not checked: an inferred float column for an
integer metric is cast with overflow/truncation checks, and any value that fails is traced
back to its response, whose pair is then rejected with a reason -- never written wrong.

Structural problems (not JSON, ``message`` not ``success``, wrong nesting) raise
:class:`BadResponse` from :meth:`Flattener.add` with nothing appended, so the caller can
retry the request.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

import orjson
import pyarrow as pa

from .errors import BadResponse
from .schema import (
    EXPORTED_AT_TYPE,
    EXTRA_TYPE,
    KNOWN_CHANNELS,
    STATS_FLOAT_METRICS,
    STATS_INT_METRICS,
    STATS_SCHEMA,
    STATS_STRING_FIELDS,
    TOTALS_FLOAT_METRICS,
    TOTALS_INT_METRICS,
    TOTALS_SCHEMA,
)

__all__ = ["FlatBatch", "Flattener"]

_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_INT, _FLOAT, _STR = 0, 1, 2
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

_VALID: Final[dict[int, Callable[[object], bool]]] = {
    _INT: lambda v: (
        v is None
        or (type(v) is int and _I64_MIN <= v <= _I64_MAX)
        or (type(v) is float and v.is_integer() and abs(v) <= 2**53)
    ),
    _FLOAT: lambda v: v is None or ((type(v) is int or type(v) is float) and abs(v) <= 2**53),
    _STR: lambda v: v is None or type(v) is str,
}
_ARROW_TYPE: Final = {_INT: pa.int64(), _FLOAT: pa.float64(), _STR: pa.string()}
_ONLY_INT: Final = {int}
_ONLY_STR: Final = {str}
_INT_OR_FLOAT: Final = {int, float}


class _BadValues(Exception):
    """Row positions (within one group) whose values do not fit their column."""

    def __init__(self, column: str, rows: list[int]) -> None:
        super().__init__(column)
        self.column = column
        self.rows = rows


def _convert(name: str, values: tuple[Any, ...], kind: int) -> pa.Array:
    """Build one column exactly, or raise :class:`_BadValues` naming the offending rows.

    The common case (every value a plain int, or a plain number for revenue) goes through
    ``array.array``, which converts in C and refuses floats and out-of-range ints, and is
    handed to Arrow without a copy. Anything else (nulls, mixed types) takes the checked
    inference path.
    """
    types = set(map(type, values))
    if kind == _INT and types == _ONLY_INT:
        try:
            return _from_buffer(pa.int64(), array("q", values))
        except OverflowError:
            pass
    elif kind == _FLOAT and types and types <= _INT_OR_FLOAT:
        return _from_buffer(pa.float64(), array("d", values))
    elif kind == _STR and types == _ONLY_STR:
        return pa.array(values, pa.string())
    target = _ARROW_TYPE[kind]
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        arr = None
    if arr is not None:
        t = arr.type
        if t == target:
            return arr
        if pa.types.is_null(t):
            return pa.nulls(len(values), target)
        try:
            if kind == _INT and t == pa.float64():
                return arr.cast(target, safe=True)  # raises on 1.5, keeps 3.0 as 3
            if kind == _FLOAT and t == pa.int64():
                return arr.cast(target)  # inference already refused ints beyond 2**53
        except pa.ArrowInvalid:
            pass
    valid = _VALID[kind]
    bad = [i for i, v in enumerate(values) if not valid(v)]
    raise _BadValues(name, bad or list(range(len(values))))


_NULLS: dict[pa.DataType, pa.Array] = {}


def _nulls(n: int, type_: pa.DataType) -> pa.Array:
    """An all-null column of length ``n``: a zero-copy slice of one shared array per type,
    since most metric columns of most groups are absent (a channel lacks them)."""
    arr = _NULLS.get(type_)
    if arr is None or len(arr) < n:
        arr = _NULLS[type_] = pa.nulls(max(n, 2 * len(arr) if arr is not None else 65_536), type_)
    return arr.slice(0, n)


def _from_buffer(type_: pa.DataType, buf: array[Any]) -> pa.Array:
    return pa.Array.from_buffers(type_, len(buf), [None, pa.py_buffer(buf)])


class _Group:
    """Rows that share one tuple of field names."""

    __slots__ = ("keys", "meta", "rows")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys  # field names, in the order of every row's values
        self.rows: list[tuple[Any, ...]] = []  # one value tuple per output row
        self.meta: list[tuple[Any, ...]] = []  # (slot, date days[, channel]) per row


class _TableBuilder:
    """Collects one output table's rows; converts them to Arrow on :meth:`build`."""

    __slots__ = ("_channel", "_kinds", "_schema", "groups")

    def __init__(self, schema: pa.Schema, kinds: dict[str, int], *, channel: bool) -> None:
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

    def build(self, pair_columns: dict[str, pa.Array], unknown: set[str]) -> list[pa.RecordBatch]:
        """Convert every group; raise ``(_BadValues, group)`` on the first bad column."""
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
                    raise _GroupError(exc, g) from None
            if extras:
                unknown.update(name for name, _ in extras)
                columns["extra_metrics"] = _extras_column(extras, n)
            arrays = [columns[f.name] if f.name in columns else _nulls(n, f.type) for f in self._schema]
            batches.append(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        if len(batches) > 1:
            # One dense batch per build: downstream (checkpoint sort, IPC) costs per chunk.
            combined: list[pa.RecordBatch] = pa.Table.from_batches(batches).combine_chunks().to_batches()
            return combined
        return batches

    def clear(self) -> None:
        self.groups = {}


class _GroupError(Exception):
    def __init__(self, bad: _BadValues, group: _Group) -> None:
        super().__init__(bad.column)
        self.bad = bad
        self.group = group


def _extras_column(extras: list[tuple[str, tuple[Any, ...]]], n: int) -> pa.Array:
    """Unknown fields as a map of name -> JSON text, lossless whatever their type."""
    encoded = [(name, [orjson.dumps(v).decode() for v in values]) for name, values in extras]
    rows = [[(name, vals[i]) for name, vals in encoded] for i in range(n)]
    return pa.array(rows, type=EXTRA_TYPE)


@dataclass(slots=True)
class FlatBatch:
    """What one :meth:`Flattener.build` produced."""

    stats: list[pa.RecordBatch]
    totals: list[pa.RecordBatch]
    #: pair tokens whose rows are in the batches
    done: list[int]
    #: pair token -> reason, for responses whose values did not fit the schema
    rejected: dict[int, str] = field(default_factory=dict)
    #: field names and channels the schema does not know (kept in ``extra_metrics``)
    unknown_fields: set[str] = field(default_factory=set)
    unknown_channels: set[str] = field(default_factory=set)
    stats_rows: int = 0
    totals_rows: int = 0


_STATS_KINDS: Final = {
    **{n: _INT for n in STATS_INT_METRICS},
    **{n: _FLOAT for n in STATS_FLOAT_METRICS},
    **{n: _STR for n in STATS_STRING_FIELDS},
}
_TOTALS_KINDS: Final = {
    **{n: _INT for n in TOTALS_INT_METRICS},
    **{n: _FLOAT for n in TOTALS_FLOAT_METRICS},
}


class Flattener:
    """Accumulates parsed responses of many pairs; emits Arrow batches on :meth:`build`.

    Not thread-safe and not async: the pipeline calls it from the event loop, one response
    at a time, and builds every few dozen responses so Python objects never pile up.
    """

    __slots__ = (
        "_channels",
        "_cids",
        "_dates",
        "_run_id",
        "_sids",
        "_stats",
        "_tokens",
        "_totals",
        "_ts",
    )

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id  # written into every row
        self._stats = _TableBuilder(STATS_SCHEMA, _STATS_KINDS, channel=True)
        self._totals = _TableBuilder(TOTALS_SCHEMA, _TOTALS_KINDS, channel=False)
        self._tokens: list[int] = []  # slot -> caller's pair token
        self._cids: list[str] = []  # slot -> campaign_id
        self._sids: list[str] = []  # slot -> send_id
        self._ts: list[int] = []  # slot -> exported_at, microseconds since the epoch
        self._dates: dict[object, int] = {}  # "YYYY-MM-DD" -> days since epoch (memo)
        self._channels: set[str] = set()  # channels not in the schema, seen since last build

    def __len__(self) -> int:
        """Responses added since the last build."""
        return len(self._tokens)

    def _day(self, value: object) -> int:
        days = self._dates.get(value)
        if days is None:
            if type(value) is not str:
                raise BadResponse(f"day 'time' must be an ISO date string, got {value!r:.40}")
            text = value[:10] if len(value) > 10 and value[10] in "T " else value
            try:
                days = date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL
            except ValueError:
                raise BadResponse(f"day 'time' is not an ISO date: {value!r:.40}") from None
            if len(self._dates) < 4096:
                self._dates[value] = days
        return days

    def add(self, token: int, campaign_id: str, send_id: str, body: bytes, exported_at_us: int) -> int:
        """Take one response body; return its number of send_stats rows.

        Raises :class:`BadResponse` (nothing retained) when the body is not a successful
        export of the documented shape.
        """
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadResponse(f"response is not valid JSON ({exc.msg} at byte {exc.pos})") from None
        if type(doc) is not dict:
            raise BadResponse("response is not a JSON object")
        message = doc.get("message")
        if message != "success":
            raise BadResponse(f"Braze reported {message!r:.200} instead of 'success'")
        data = doc.get("data")
        if type(data) is not list:
            raise BadResponse(f"'data' must be a list, got {type(data).__name__}")
        slot = len(self._tokens)
        try:
            rows = self._add_days(slot, data)
        except BadResponse:
            self._stats.rollback(slot)
            self._totals.rollback(slot)
            raise
        self._tokens.append(token)
        self._cids.append(campaign_id)
        self._sids.append(send_id)
        self._ts.append(exported_at_us)
        return rows

    def _add_days(self, slot: int, data: list[Any]) -> int:
        stats_groups = self._stats.groups
        totals_groups = self._totals.groups
        new_stats_group = self._stats.group
        rows = 0
        for day in data:
            if type(day) is not dict:
                raise BadResponse("each 'data' entry must be an object")
            days = self._day(day.pop("time", None))
            messages = day.pop("messages", None)
            if not messages:
                # Past the 14-day retention Braze returns empty days: no data, not zeros.
                continue
            if type(messages) is not dict:
                raise BadResponse("'messages' must be an object of channel -> list")
            totals = totals_groups.get(tuple(day)) or self._totals.group(tuple(day))
            totals.rows.append(tuple(day.values()))
            totals.meta.append((slot, days))
            for channel, entries in messages.items():
                if type(entries) is not list:
                    raise BadResponse(f"messages[{channel!r:.60}] must be a list")
                meta = (slot, days, channel)
                if channel not in KNOWN_CHANNELS:
                    self._channels.add(channel)
                try:
                    # The hottest loop: no per-entry type check; a non-object entry fails
                    # in tuple() or .values() and is reported below.
                    for entry in entries:
                        keys = tuple(entry)
                        group = stats_groups.get(keys)
                        if group is None:
                            group = new_stats_group(keys)
                        group.rows.append(tuple(entry.values()))
                        group.meta.append(meta)
                except (AttributeError, TypeError):
                    raise BadResponse(f"messages[{channel!r:.60}] entries must be objects") from None
                rows += len(entries)
        return rows

    def build(self) -> FlatBatch:
        """Convert everything added since the last build and start afresh."""
        out = FlatBatch(stats=[], totals=[], done=[])
        bad_slots: dict[int, str] = {}
        while True:
            try:
                pair_columns = self._pair_columns()
                unknown: set[str] = set()
                out.stats = self._stats.build(pair_columns, unknown)
                out.totals = self._totals.build(pair_columns, unknown)
                break
            except _GroupError as exc:
                # Reject the responses holding bad values, then convert the rest again.
                rows, group = exc.bad.rows, exc.group
                slots = {group.meta[i][0] for i in rows}
                for i in rows:
                    slot = group.meta[i][0]
                    if slot not in bad_slots:
                        value = group.rows[i][group.keys.index(exc.bad.column)]
                        bad_slots[slot] = (
                            f"field {exc.bad.column!r} has a value that does not fit its "
                            f"column: {value!r:.60}"
                        )
                self._stats.drop_slots(slots)
                self._totals.drop_slots(slots)
        out.unknown_fields = unknown
        out.unknown_channels, self._channels = self._channels, set()
        out.rejected = {self._tokens[s]: r for s, r in bad_slots.items()}
        out.done = [t for s, t in enumerate(self._tokens) if s not in bad_slots]
        out.stats_rows = sum(b.num_rows for b in out.stats)
        out.totals_rows = sum(b.num_rows for b in out.totals)
        self._stats.clear()
        self._totals.clear()
        self._tokens, self._cids, self._sids, self._ts = [], [], [], []
        return out

    def _pair_columns(self) -> dict[str, pa.Array]:
        n = len(self._tokens)
        return {
            "campaign_id": pa.array(self._cids, pa.string()),
            "send_id": pa.array(self._sids, pa.string()),
            "exported_at": pa.array(self._ts, pa.int64()).view(EXPORTED_AT_TYPE),
            "run_id": pa.repeat(pa.scalar(self._run_id, pa.string()), n),
        }
