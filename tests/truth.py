"""Ground truth for export tests: what the output must hold, derived independently of
bulkexport's flattener (plain dict-per-row code over a response, written from the README's
rules rather than from flatten's code).

The rules, as the README states them:

* a day that yields no send_stats entry and has no non-null day-level field is "no data"
  and produces no row; every other day is one send_totals row;
* a day listed twice is kept once when both copies are identical (JSON types included),
  and rejects the response otherwise;
* integer metrics hold ints within int64, or integral floats within 2**53 (as ints);
  ``revenue`` holds finite floats or ints within 2**53 (as floats); variation fields hold
  strings; ``null`` is null; anything else (bools included) rejects the whole response;
* unknown fields (and every field of an unknown channel that the schema does not know) go
  to ``extra_metrics`` as JSON text.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import orjson

from bulkexport.simulator import Simulator

STATS_KEYS = ("campaign_id", "send_id", "date", "channel", "variation_name", "variation_api_id")
TOTALS_KEYS = ("campaign_id", "send_id", "date")
_STATS_BASE = {"variation_name", "variation_api_id"}
_FLOATS = {"revenue"}
_INT64 = range(-(2**63), 2**63)
_EXACT = 2**53


class Rejected(Exception):
    """The whole response cannot be stored as sent; no row of it may appear."""


def _int(name: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise Rejected(f"{name}: a boolean is not a count")
    if isinstance(v, int):
        if v in _INT64:
            return v
        raise Rejected(f"{name}: {v} is beyond int64")
    if isinstance(v, float) and math.isfinite(v) and v == math.floor(v) and abs(v) <= _EXACT:
        return int(v)
    raise Rejected(f"{name}: {v!r} is not an integer")


def _float(name: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise Rejected(f"{name}: a boolean is not an amount")
    if isinstance(v, int) and abs(v) <= _EXACT:
        return float(v)
    if isinstance(v, float) and math.isfinite(v):
        return v
    raise Rejected(f"{name}: {v!r} is not a finite amount")


def _str(name: str, v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    raise Rejected(f"{name}: {v!r} is not a string")


def _columns(obj: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """Known fields converted to what their column holds; the rest as sorted extras."""
    row: dict[str, Any] = {}
    extra = []
    for k, v in obj.items():
        if k in _STATS_BASE and k in known:
            row[k] = _str(k, v)
        elif k in _FLOATS and k in known:
            row[k] = _float(k, v)
        elif k in known:
            row[k] = _int(k, v)
        else:
            extra.append((k, orjson.dumps(v).decode()))
    row["extra_metrics"] = sorted(extra) or None
    return row


def _day_of(time: str) -> date:
    return datetime.fromisoformat(time).date()


def response_rows(
    cid: str, sid: str, payload: dict[str, Any], stats_known: set[str], totals_known: set[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of one successful response; raises :class:`Rejected` if it has none."""
    by_date: dict[date, dict[str, Any]] = {}
    for day in payload["data"]:
        d = _day_of(day["time"])
        content = {k: v for k, v in day.items() if k != "time"}
        if d in by_date:
            if json.dumps(by_date[d], sort_keys=True) != json.dumps(content, sort_keys=True):
                raise Rejected(f"day {d} listed twice with different contents")
            continue
        by_date[d] = content
    stats: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    for d, content in by_date.items():
        messages = content.get("messages") or {}
        top = {k: v for k, v in content.items() if k != "messages"}
        entries = [(channel, e) for channel, es in messages.items() for e in es]
        if not entries and all(v is None for v in top.values()):
            continue  # nothing but 'time': "no data"
        totals.append({"campaign_id": cid, "send_id": sid, "date": d, **_columns(top, totals_known)})
        for channel, e in entries:
            stats.append(
                {"campaign_id": cid, "send_id": sid, "date": d, "channel": channel,
                 **_columns(e, stats_known | _STATS_BASE)}
            )  # fmt: skip
    return stats, totals


def with_value(payload: dict[str, Any], name: str, value: Any, at: str) -> dict[str, Any]:
    """What the simulator serves for ``FaultRule(kind="bad_value", field=name, value=value,
    at=at)``, per its docstring: the field set on the first entry of the first day that has
    one, or on the first day that carries data. A copy; the payload is not changed."""
    out = copy.deepcopy(payload)
    for day in out["data"]:
        if at == "entry":
            entries = [e for es in day.get("messages", {}).values() for e in es]
            if entries:
                entries[0][name] = value
                return out
        elif day.get("messages") or set(day) - {"time", "messages"}:
            day[name] = value
            return out
    raise AssertionError("the payload has no place for the value")


def expected(
    sim: Simulator,
    pairs: Iterable[tuple[str, str]],
    length: int,
    ending_at: datetime,
    stats_known: set[str],
    totals_known: set[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of send_stats and send_totals, one dict each, for the simulator's responses."""
    stats: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    for cid, sid in dict.fromkeys(pairs):  # de-duplicated, order kept
        s, t = response_rows(cid, sid, sim.payload(cid, sid, length, ending_at), stats_known, totals_known)
        stats += s
        totals += t
    return stats, totals


def normalise(rows: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Index rows by key, dropping nulls (absent and null compare equal) and sorting extras.

    Values are paired with their type, so ``0`` and ``0.0`` (or ``1`` and ``True``) differ:
    an int metric must come back as an int, revenue as a float.
    """
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        clean = {
            k: (type(v), v) for k, v in row.items() if v is not None and k not in ("exported_at", "run_id")
        }
        if "extra_metrics" in clean:
            clean["extra_metrics"] = (list, sorted(row["extra_metrics"]))
        key = tuple(row.get(k) for k in keys)
        assert key not in out, f"duplicate row for {key}"
        out[key] = clean
    return out
