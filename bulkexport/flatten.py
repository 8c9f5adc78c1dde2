"""Response bytes -> Arrow record batches: the CPU hot path, pure and synchronous.

Two loops, one set of rules. ``orjson`` parses the body; then the C extension
(``_speedups.c``, built at install when a compiler is there) walks the well-formed common
case straight into column buffers (a response costs about a fifth of the Python loop). It
leaves anything doubtful (a value that does not fit, a day listed twice, an odd ``time``,
wrong nesting), keeping nothing of it, to the Python loop below, which decides every case.
Without the extension, or with ``$BULKEXPORT_PURE_PYTHON`` set, the Python loop does
everything; the tests run both and compare them with the same reference.

How the Python loop stays fast: a response's entries are appended, untouched, as value tuples into
groups keyed by their tuple of field names (entries of one channel share one key set), so
the per-value work in Python is a C-level ``tuple(dict.values())``. At :meth:`Flattener.build`
each group is transposed with ``zip(*rows)`` and each column becomes one Arrow array in one
C call. A typical response touches a handful of groups and no per-row dicts are created.

How it stays exact: a column whose values all have the expected Python type (and, for
``revenue``, lie within +-2**53) goes through ``array.array``, which converts in C and
refuses anything else. Every other column takes a checked path that decides value by value,
never through pyarrow's type inference (which turns ``true`` into 1.0 next to floats) or
its conversion to a target type (which truncates ``1.5`` to 1 for int64). What Braze sent
either fits its column losslessly or the whole response is rejected, with a reason, and
writes no row at all:

=============================  ==============================================================
value                          outcome
=============================  ==============================================================
integer metric: JSON int       kept, negative values included, if within int64
integer metric: ``3.0``        kept as the int 3 (integral float, abs <= 2**53: lossless)
integer metric: ``1.5``,       response rejected (``FlatBatch.rejected``): the field, the
``"12"``, ``true``, object,    value as JSON text, the table, channel and day
list, beyond int64
``revenue``: JSON int          kept as float64 if abs <= 2**53 (beyond, the double would
                               not be the number sent: rejected)
``revenue``: finite float      kept as float64
``revenue``: ``"12.50"``,      response rejected
``true``, object, list
``variation_name``,            string or null; anything else: response rejected
``variation_api_id``
any known field: ``null``      kept as null ("not reported", never 0)
unknown field or channel       kept in ``extra_metrics`` as the JSON text of the value
=============================  ==============================================================

``bool`` is never a number here, although Python makes it an ``int`` subclass. orjson
reads an integer beyond 2**64 as the nearest float, so it meets the float rules: rejected
as an integer metric (beyond 2**53), kept as that double for ``revenue``.

Which days are data: a day that yields no ``send_stats`` entry and carries no non-null
day-level field (``{"time": ...}`` alone, or with ``"messages": {}``) is "no data" (past
Braze's 14-day retention) and produces no row. Any other day is a ``send_totals`` row, even
with ``"messages": {}`` and all-zero totals: zero and "not reported" are different facts, and
conversions keep arriving after the messages stop. A day listed twice in one response is
kept once if both copies are identical (same fields, same values and JSON types), and
rejects the response otherwise: two rows for one key would be a duplicate in the dataset,
and nothing says which copy is right.

Structural problems (not JSON, ``message`` not ``success``, wrong nesting) raise
:class:`BadResponse` from :meth:`Flattener.add` with nothing appended, so the caller can
retry the request. Rejections (values, conflicting days) are reported by :meth:`build` in
:attr:`FlatBatch.rejected`; retrying would fetch the same values again.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from types import ModuleType
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

_speedups: ModuleType | None
try:
    from . import _speedups  # the hot loop in C, built at install when a compiler is there
except ImportError:  # pragma: no cover - depends on the machine that installed the package
    _speedups = None

_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_INT, _FLOAT, _STR = 0, 1, 2
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
#: Beyond this, not every integer has an exact double: the bound of lossless int <-> float.
_EXACT: Final = 2**53
_BAD: Final = object()  # a value that does not fit its column


def _fit_int(v: Any) -> Any:
    t = type(v)
    if t is int:
        return v if _I64_MIN <= v <= _I64_MAX else _BAD
    if t is float:
        return int(v) if v.is_integer() and -_EXACT <= v <= _EXACT else _BAD
    return None if v is None else _BAD


def _fit_float(v: Any) -> Any:
    t = type(v)
    if t is float:
        return v if math.isfinite(v) else _BAD
    if t is int:
        return float(v) if -_EXACT <= v <= _EXACT else _BAD
    return None if v is None else _BAD


def _fit_str(v: Any) -> Any:
    return v if v is None or type(v) is str else _BAD


#: kind -> (the value as its column holds it, or _BAD; what the column accepts, for reasons)
_FIT: Final[dict[int, tuple[Callable[[Any], Any], str]]] = {
    _INT: (_fit_int, "expected an integer within int64 (an integral float only within 2**53)"),
    _FLOAT: (_fit_float, "expected a finite number (an integer only within 2**53)"),
    _STR: (_fit_str, "expected a string or null"),
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

    The common case (every value a plain int; for revenue, plain numbers within 2**53)
    goes through ``array.array``, which converts in C, refuses floats, bools and
    out-of-range ints, and is handed to Arrow without a copy. Anything else (nulls, mixed
    types, bad values) is decided value by value by the ``_FIT`` rules.
    """
    types = set(map(type, values))
    if kind == _INT:
        if types == _ONLY_INT:
            try:
                return _from_buffer(pa.int64(), array("q", values))
            except OverflowError:
                pass
    elif kind == _FLOAT:
        # Within 2**53 in magnitude every int has an exact double (and JSON has no NaN).
        if types and types <= _INT_OR_FLOAT and min(values) >= -_EXACT and max(values) <= _EXACT:
            return _from_buffer(pa.float64(), array("d", values))
    elif types == _ONLY_STR:
        return pa.array(values, pa.string())
    fit = _FIT[kind][0]
    fitted = [fit(v) for v in values]
    bad = [i for i, v in enumerate(fitted) if v is _BAD]
    if bad:
        raise _BadValues(name, bad)
    return pa.array(fitted, _ARROW_TYPE[kind])


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


def _day_text(days: int) -> str:
    return date.fromordinal(days + _EPOCH_ORDINAL).isoformat()


def _json_text(value: Any, limit: int = 60) -> str:
    """The value as Braze sent it (JSON, not Python repr: ``true``, ``"12"``), shortened."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    #: pair token -> reason, for responses rejected whole: a value that does not fit its
    #: column, or a day listed twice with different contents (none of their rows is here)
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


#: Known fields in schema order, with their kinds: the C accumulators' columns.
_STATS_FIELDS: Final = tuple((f.name, _STATS_KINDS[f.name]) for f in STATS_SCHEMA if f.name in _STATS_KINDS)
_TOTALS_FIELDS: Final = tuple((f.name, _TOTALS_KINDS[f.name]) for f in TOTALS_SCHEMA if f.name in _TOTALS_KINDS)


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


class Flattener:
    """Accumulates parsed responses of many pairs; emits Arrow batches on :meth:`build`.

    Not thread-safe and not async: the pipeline calls it from the event loop, one response
    at a time, and builds every few dozen responses so Python objects never pile up.
    """

    __slots__ = (
        "_accel",
        "_channels",
        "_cids",
        "_dates",
        "_rejected",
        "_run_id",
        "_sids",
        "_stats",
        "_tokens",
        "_totals",
        "_ts",
    )

    def __init__(self, run_id: str, *, accelerate: bool | None = None) -> None:
        self._run_id = run_id  # written into every row
        # The C accumulators (stats, totals), unless the extension is missing or not wanted
        # (accelerate=False, or $BULKEXPORT_PURE_PYTHON set: the tests run both ways).
        if accelerate is None:
            accelerate = not os.environ.get("BULKEXPORT_PURE_PYTHON")
        self._accel = (
            (
                _accumulator(_STATS_FIELDS, channel=True),
                _accumulator(_TOTALS_FIELDS, channel=False),
                _speedups.flatten_days,
            )
            if accelerate and _speedups is not None
            else None
        )  # (stats accumulator, totals accumulator, the C loop)
        self._stats = _TableBuilder("send_stats", STATS_SCHEMA, _STATS_KINDS, channel=True)
        self._totals = _TableBuilder("send_totals", TOTALS_SCHEMA, _TOTALS_KINDS, channel=False)
        self._tokens: list[int] = []  # slot -> caller's pair token
        self._cids: list[str] = []  # slot -> campaign_id
        self._sids: list[str] = []  # slot -> send_id
        self._ts: list[int] = []  # slot -> exported_at, microseconds since the epoch
        self._dates: dict[object, int] = {}  # "YYYY-MM-DD" -> days since epoch (memo)
        self._channels: set[str] = set()  # channels not in the schema, seen since last build
        self._rejected: dict[int, str] = {}  # slot -> reason, for responses rejected by add()

    def __len__(self) -> int:
        """Responses added since the last build."""
        return len(self._tokens)

    def _day(self, value: object) -> int:
        if type(value) is not str:  # before the memo lookup: a list or object is unhashable
            raise BadResponse(f"day 'time' must be an ISO date string, got {_json_text(value, 40)}")
        days = self._dates.get(value)
        if days is None:
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
        export of the documented shape. A response that is well formed but cannot be
        stored as sent (a day listed twice with different contents here, a value that does
        not fit its column at :meth:`build`) is kept as a token and reported in
        :attr:`FlatBatch.rejected`, with no row.
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
        accel = self._accel
        # The C loop takes the well-formed common case; it leaves anything doubtful (and
        # keeps nothing of it) to the Python loop below, which decides every other case.
        got = None
        if accel is not None:
            got = accel[2](data, slot, accel[0], accel[1], KNOWN_CHANNELS, self._channels)
        try:
            rows = got if got is not None else self._add_days(slot, data)
        except (BadResponse, _Conflict) as exc:
            self._stats.rollback(slot)
            self._totals.rollback(slot)
            if type(exc) is BadResponse:
                raise
            self._rejected[slot] = str(exc)
            rows = 0
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
        seen: dict[int, tuple[Any, dict[str, Any]]] = {}  # days -> ('messages' as sent, other fields)
        conflict: str | None = None
        for day in data:
            if type(day) is not dict:
                raise BadResponse("each 'data' entry must be an object")
            days = self._day(day.pop("time", None))
            raw = day.pop("messages", _ABSENT)  # absent, null and {} differ for duplicates
            messages = {} if raw is None or raw is _ABSENT else raw
            if type(messages) is not dict:
                raise BadResponse("'messages' must be an object of channel -> list")
            first = seen.get(days)
            if first is not None:
                if _canonical(first) != _canonical((raw, day)) and conflict is None:
                    conflict = (
                        f"day {_day_text(days)} is listed twice with different contents; "
                        "no row of this response was written"
                    )
                _check_channels(messages)  # a malformed copy is still malformed
                continue  # an identical copy adds nothing
            seen[days] = (raw, day)
            day_rows = 0
            for channel, entries in messages.items():
                if type(entries) is not list:
                    raise BadResponse(f"messages[{channel!r:.60}] must be a list")
                if not entries:
                    continue
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
                day_rows += len(entries)
            if not day_rows and all(v is None for v in day.values()):
                # Nothing but 'time' (past Braze's 14-day retention): "no data", not zeros.
                continue
            keys = tuple(day)
            totals = totals_groups.get(keys) or self._totals.group(keys)
            totals.rows.append(tuple(day.values()))
            totals.meta.append((slot, days))
            rows += day_rows
        if conflict is not None:
            raise _Conflict(conflict)
        return rows

    def build(self) -> FlatBatch:
        """Convert everything added since the last build and start afresh."""
        out = FlatBatch(stats=[], totals=[], done=[])
        bad_slots, self._rejected = self._rejected, {}
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
                        bad_slots[slot] = exc.table.reason(exc.bad, group, i)
                self._stats.drop_slots(slots)
                self._totals.drop_slots(slots)
        if self._accel is not None:
            for acc, fields, schema, batches in (
                (self._accel[0], _STATS_FIELDS, STATS_SCHEMA, out.stats),
                (self._accel[1], _TOTALS_FIELDS, TOTALS_SCHEMA, out.totals),
            ):
                batch = _accumulated(acc, fields, schema, pair_columns, unknown)
                if batch is not None:
                    batches.append(batch)
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
