"""Response bytes -> Arrow record batches: the CPU hot path, pure and synchronous.

Three loops, one set of rules. When the C extension (``_speedups.c``, built at install
when a compiler is there) is present, its reader takes the common case straight from the
bytes: a strict subset of JSON (known fields and channels, each key once, no escapes,
numbers that fit their column) read into column buffers with no Python object per key or
value (a typical 20 KB response: ~26 us, where ``orjson.loads`` alone takes ~50). Anything
else it leaves, keeping nothing, to ``orjson`` and the C loop over the parsed objects, which
leaves anything doubtful (a value that does not fit, a day listed twice, an odd ``time``,
wrong nesting) to the Python loop below, which decides every case. Each loop only has to be
right about what it accepts. Without the extension, or with ``$BULKEXPORT_PURE_PYTHON``
set, the Python loop does everything; the tests run both and compare them with the same
reference.

The value rules (what fits a column, what rejects a response) are in
:mod:`bulkexport.values`; the column builders of both loops in :mod:`bulkexport.columns`.

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

import os
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
import pyarrow as pa

from . import env
from .columns import (
    _ABSENT,
    _accumulated,
    _accumulator,
    _canonical,
    _check_channels,
    _Conflict,
    _GroupError,
    _speedups,
    _TableBuilder,
)
from .errors import BadResponse
from .schema import EXPORTED_AT_TYPE, KNOWN_CHANNELS, STATS_SCHEMA, TOTALS_SCHEMA
from .values import _EPOCH_ORDINAL, _STATS_FIELDS, _STATS_KINDS, _TOTALS_FIELDS, _TOTALS_KINDS, _day_text, _json_text

__all__ = ["FlatBatch", "Flattener"]

_CHANNELS: tuple[str, ...] = tuple(sorted(KNOWN_CHANNELS))  # for the C reader, which matches bytes


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
        "_direct",
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
            accelerate = not os.environ.get(env.PURE_PYTHON)
        self._accel = (
            (
                _accumulator(_STATS_FIELDS, channel=True),
                _accumulator(_TOTALS_FIELDS, channel=False),
                _speedups.flatten_days,
                _speedups.flatten_body,
            )
            if accelerate and _speedups is not None
            else None
        )  # (stats accumulator, totals accumulator, the C loop over objects, the C reader of bytes)
        self._stats = _TableBuilder("send_stats", STATS_SCHEMA, _STATS_KINDS, channel=True)
        self._totals = _TableBuilder("send_totals", TOTALS_SCHEMA, _TOTALS_KINDS, channel=False)
        self._tokens: list[int] = []  # slot -> caller's pair token
        self._cids: list[str] = []  # slot -> campaign_id
        self._sids: list[str] = []  # slot -> send_id
        self._ts: list[int] = []  # slot -> exported_at, microseconds since the epoch
        self._dates: dict[object, int] = {}  # "YYYY-MM-DD" -> days since epoch (memo)
        self._channels: set[str] = set()  # channels not in the schema, seen since last build
        self._rejected: dict[int, str] = {}  # slot -> reason, for responses rejected by add()
        self._direct = 0  # responses the C reader took from their bytes (the tests check it does)

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
        slot = len(self._tokens)
        accel = self._accel
        # Three loops, each taking what it is sure of and leaving the rest, with nothing
        # kept, to the next: the C reader of the bytes (no Python object per key and value),
        # the C loop over orjson's objects, and the Python loop, which decides every case.
        rows = None if accel is None else accel[3](body, slot, accel[0], accel[1], _CHANNELS)
        if rows is None:
            rows = self._add_parsed(slot, body)
        else:
            self._direct += 1
        self._tokens.append(token)
        self._cids.append(campaign_id)
        self._sids.append(send_id)
        self._ts.append(exported_at_us)
        return rows

    def _add_parsed(self, slot: int, body: bytes) -> int:
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
        accel = self._accel
        got = None if accel is None else accel[2](data, slot, accel[0], accel[1], KNOWN_CHANNELS, self._channels)
        if got is not None:
            return int(got)
        try:
            return self._add_days(slot, data)
        except (BadResponse, _Conflict) as exc:
            self._stats.rollback(slot)
            self._totals.rollback(slot)
            if type(exc) is BadResponse:
                raise
            self._rejected[slot] = str(exc)
            return 0

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
