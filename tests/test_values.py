"""Values that do not fit their column, end to end: the simulator serves them over loopback
(``FaultRule(kind="bad_value")``), the export writes Parquet, and we read it back.

Each value has one documented outcome (README, "Values Braze sends"): kept losslessly, or
the whole response rejected with a reason in failures.jsonl and no row in either table.
Every other pair must still equal the ground truth exactly, types included.
"""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bulkexport
from bulkexport.flatten import Flattener
from bulkexport.schema import STATS_FILE_SCHEMA, TOTALS_FILE_SCHEMA
from bulkexport.simulator import FaultRule, Simulator

from .helpers import ENDING_AT, STATS_KNOWN, TOTALS_KNOWN, pairs_for, run
from .truth import STATS_KEYS, TOTALS_KEYS, Rejected, normalise, response_rows, with_value

RUN_DIR = Path("_bulkexport") / "runs" / ENDING_AT.date().isoformat()

# (field, value served, where): the whole response is rejected.
REJECTED: list[tuple[str, Any, str]] = [
    ("sent", 1.5, "entry"),
    ("sent", "12", "entry"),
    ("sent", True, "entry"),
    ("sent", False, "entry"),
    ("opens", {"total": 1}, "entry"),
    ("opens", [1], "entry"),
    ("sent", 2**63, "entry"),
    ("sent", 2**64, "entry"),  # beyond 64 bits: JSON's parser reads it as a float
    ("sent", -(2**63) - 1, "entry"),
    ("sent", 2.0**60, "entry"),  # integral, but a double beyond 2**53 may not be the count sent
    ("enrolled", 0.5, "entry"),
    ("revenue", "12.50", "entry"),
    ("revenue", [12.5], "entry"),
    ("revenue", True, "day"),
    ("revenue", {"usd": 1}, "day"),
    ("revenue", 2**53 + 1, "day"),  # its double would not be the number sent
    ("variation_name", 7, "entry"),
    ("variation_name", {"x": "y"}, "entry"),
    ("variation_api_id", True, "entry"),
    ("conversions", 1.5, "day"),
    ("unique_recipients", "3", "day"),
    ("conversions", False, "day"),
]

# (field, value served, where, value stored): kept, exactly.
KEPT: list[tuple[str, Any, str, Any]] = [
    ("sent", 3.0, "entry", 3),
    ("sent", -5, "entry", -5),
    ("sent", 2**63 - 1, "entry", 2**63 - 1),
    ("sent", -(2**63), "entry", -(2**63)),
    ("sent", 2.0**53, "entry", 2**53),
    ("sent", None, "entry", None),
    ("conversions", -1, "day", -1),
    ("conversions", 7.0, "day", 7),
    ("unique_recipients", 0.0, "day", 0),
    ("revenue", 12, "entry", 12.0),
    ("revenue", -3.25, "entry", -3.25),
    ("revenue", 2**53, "day", float(2**53)),
    ("revenue", 1e300, "day", 1e300),
    ("revenue", -0.0, "day", -0.0),
    ("variation_name", "", "entry", ""),
    ("variation_name", "Ünïcødé 🚀 " * 300, "entry", "Ünïcødé 🚀 " * 300),
    ("variation_api_id", None, "entry", None),
]


def _pairs_with_entries(sim: Simulator, n: int) -> list[tuple[str, str]]:
    """Pairs whose window holds at least one send_stats entry (so both places exist)."""
    out = []
    for cid, sid in pairs_for(4 * n, prefix="v"):
        data = sim.payload(cid, sid, 15, ENDING_AT)["data"]
        if any(d.get("messages") for d in data):
            out.append((cid, sid))
    return out[:n]


@pytest.mark.parametrize("pure_python", [False, True], ids=["c", "python"])
async def test_every_value_has_its_documented_outcome(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure_python: bool
) -> None:
    if pure_python:  # the engine's flattener then takes the Python loop for every response
        monkeypatch.setenv("BULKEXPORT_PURE_PYTHON", "1")
    sim.extras = True
    special = _pairs_with_entries(sim, len(REJECTED) + len(KEPT) + 1)
    rejected = dict(zip(special, REJECTED, strict=False))
    kept = dict(zip(special[len(REJECTED) :], KEPT, strict=False))
    not_json = special[-1]  # Infinity is not JSON: the body is refused, retried, then failed
    normal = pairs_for(40)
    for pair, (name, value, at, *_) in [*rejected.items(), *kept.items(), (not_json, ("revenue", math.inf, "day"))]:
        sim.faults.append(
            FaultRule(kind="bad_value", field=name, value=value, at=at, times=None,
                      match=lambda c, s, p=pair: (c, s) == p)
        )  # fmt: skip

    summary = await run(sim, normal + special, tmp_path, max_attempts=2)
    assert summary.status == "partial"
    assert (summary.pairs_done, summary.pairs_failed) == (40 + len(KEPT), len(REJECTED) + 1)

    # failures.jsonl: one line per bad pair, status 200, the field and the value as sent.
    failures = {
        (f["campaign_id"], f["send_id"]): f
        for f in map(orjson.loads, (tmp_path / RUN_DIR / "failures.jsonl").read_bytes().splitlines())
    }
    assert set(failures) == {*rejected, not_json}
    for pair, (name, value, at) in rejected.items():
        f = failures[pair]
        assert (f["status"], f["attempts"]) == (200, 1), f
        shown = orjson.dumps(orjson.loads(json.dumps(value))).decode()  # as parsed from the body
        assert f"field {name!r} is {shown}, expected " in f["message"], (value, f["message"])
        assert ("send_totals" if at == "day" else "send_stats") in f["message"]
        assert f["message"].endswith("no row of this response was written")
        with pytest.raises(Rejected):  # the independent reference agrees it cannot be stored
            served = with_value(sim.payload(*pair, 15, ENDING_AT), name, value, at)
            response_rows(*pair, served, STATS_KNOWN, TOTALS_KNOWN)
    assert failures[not_json]["status"] == 200 and failures[not_json]["attempts"] == 2
    assert "not valid JSON" in failures[not_json]["message"]

    # The tables: bad pairs have no row at all; every other pair equals the truth exactly.
    want_stats: list[dict[str, Any]] = []
    want_totals: list[dict[str, Any]] = []
    for pair in normal + special:
        if pair in failures:
            continue
        payload = sim.payload(*pair, 15, ENDING_AT)
        if pair in kept:
            payload = with_value(payload, *kept[pair][:3])
        s, t = response_rows(*pair, payload, STATS_KNOWN, TOTALS_KNOWN)
        want_stats += s
        want_totals += t
    stats = bulkexport.read_table(tmp_path, "send_stats").to_pylist()
    totals = bulkexport.read_table(tmp_path, "send_totals").to_pylist()
    assert not [r for r in stats + totals if (r["campaign_id"], r["send_id"]) in failures]
    assert normalise(stats, STATS_KEYS) == normalise(want_stats, STATS_KEYS)
    assert normalise(totals, TOTALS_KEYS) == normalise(want_totals, TOTALS_KEYS)
    assert (summary.stats_rows, summary.totals_rows) == (len(want_stats), len(want_totals))

    # The lossless cases hold exactly the stored value, with the column's Python type.
    for pair, (name, _value, at, stored) in kept.items():
        payload = with_value(sim.payload(*pair, 15, ENDING_AT), name, _value, at)
        target = _target_row(payload, stats if at == "entry" else totals, pair, at)
        assert target[name] == stored and type(target[name]) is type(stored), (name, _value, target[name])
        if type(stored) is float:
            assert math.copysign(1, target[name]) == math.copysign(1, stored)  # -0.0 stays -0.0

    # One type per column in every file, whatever its batch held (3.0 next to ints, nulls).
    for table, schema in (("send_stats", STATS_FILE_SCHEMA), ("send_totals", TOTALS_FILE_SCHEMA)):
        for f in (tmp_path / table).rglob("*.parquet"):
            assert pq.read_schema(f).remove_metadata() == schema.remove_metadata()


def _target_row(payload: dict[str, Any], rows: list[dict[str, Any]], pair: tuple[str, str], at: str) -> dict[str, Any]:
    """The output row that holds the injected value (see :func:`truth.with_value`)."""
    for day in payload["data"]:
        d = date.fromisoformat(day["time"])
        mine = [r for r in rows if (r["campaign_id"], r["send_id"], r["date"]) == (*pair, d)]
        if at == "entry":
            for channel, entries in day.get("messages", {}).items():
                if entries:
                    e = entries[0]
                    (row,) = [r for r in mine if r["channel"] == channel
                              and r["variation_api_id"] == e.get("variation_api_id")
                              and r["variation_name"] == e.get("variation_name")]  # fmt: skip
                    return row
        elif mine:
            (row,) = mine
            return row
    raise AssertionError("no row holds the injected value")


def _body(days: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"message": "success", "data": days})


#: The flattener's two paths: the C loop (the common case) and pure Python.
BOTH = pytest.mark.parametrize("accelerate", [True, False], ids=["c", "python"])


@BOTH
def test_int_metric_is_int64_whether_a_batch_held_floats_ints_or_nothing(accelerate: bool) -> None:
    """A column's type never depends on what its batch held."""
    flat = Flattener("r", accelerate=accelerate)
    entry = {"variation_name": "A", "sent": 3.0, "revenue": 0}
    flat.add(1, "c", "s1", _body([{"time": "2026-11-20", "messages": {"email": [entry]}, "conversions": 2.0}]), 0)
    floats = flat.build()
    flat.add(2, "c", "s2", _body([{"time": "2026-11-20", "messages": {"email": [{**entry, "sent": 4}]},
                                   "conversions": 5}]), 0)  # fmt: skip
    ints = flat.build()
    control = {"variation_name": "Control Group", "enrolled": 9, "unique_recipients": 9, "revenue": 1.5}
    flat.add(3, "c", "s3", _body([{"time": "2026-11-20", "messages": {"sms": [control]}}]), 0)
    only_control = flat.build()
    flat.add(4, "c", "s4", _body([{"time": "2026-11-20", "messages": {"line": [{"friend_adds": 1}]}, "x": None}]), 0)
    only_unknown = flat.build()
    for fb in (floats, ints, only_control, only_unknown):
        assert fb.rejected == {}
        for batch in fb.stats + fb.totals:
            assert batch.schema.field("revenue").type == pa.float64()
            assert batch.schema.field("conversions").type == pa.int64()
        assert fb.stats[0].schema.field("sent").type == pa.int64()
    assert floats.stats[0].column("sent").to_pylist() == [3]
    assert floats.totals[0].column("conversions").to_pylist() == [2]
    assert ints.stats[0].column("sent").to_pylist() == [4]
    assert only_control.stats[0].column("sent").null_count == 1
    assert only_unknown.stats[0].column("extra_metrics").to_pylist() == [[("friend_adds", "1")]]
    assert only_unknown.totals[0].column("extra_metrics").to_pylist() == [[("x", "null")]]


@BOTH
def test_a_day_listed_twice(accelerate: bool) -> None:
    """Identical copies are one row; copies that differ (even 1 vs 1.0) reject the response."""
    day = {"time": "2026-11-20", "messages": {"email": [{"variation_name": "A", "sent": 1}]}, "conversions": 1}
    flat = Flattener("r", accelerate=accelerate)
    flat.add(1, "c", "same", _body([day, {"time": "2026-11-21"}, dict(reversed(day.items()))]), 0)
    flat.add(2, "c", "differ", _body([day, {**day, "conversions": 1.0}]), 0)
    flat.add(3, "c", "quiet", _body([{"time": "2026-11-20"}, {"time": "2026-11-20", "messages": {}}]), 0)
    fb = flat.build()
    assert fb.done == [1]
    assert fb.rejected == {
        2: "day 2026-11-20 is listed twice with different contents; no row of this response was written",
        3: "day 2026-11-20 is listed twice with different contents; no row of this response was written",
    }
    assert (fb.stats_rows, fb.totals_rows) == (1, 1)
    assert fb.stats[0].column("send_id").to_pylist() == ["same"]


@BOTH
def test_integers_beyond_64_bits_are_read_as_doubles(accelerate: bool) -> None:
    """The README's caveat: the JSON parser reads an integer beyond 2**64 as the nearest
    double; revenue keeps it (as it would keep 1.18e21), a count rejects it."""
    flat = Flattener("r", accelerate=accelerate)
    day = b'{"time": "2026-11-20", "messages": {}, "revenue": %d}' % 2**70
    flat.add(1, "c", "s1", b'{"message": "success", "data": [%s]}' % day, 0)
    day = b'{"time": "2026-11-20", "messages": {}, "conversions": %d}' % (2**64 + 1)
    flat.add(2, "c", "s2", b'{"message": "success", "data": [%s]}' % day, 0)
    fb = flat.build()
    assert fb.done == [1]
    assert fb.totals[0].column("revenue").to_pylist() == [float(2**70)]
    assert fb.rejected[2].startswith("field 'conversions' is 1.8446744073709552e+19, expected an integer within int64")
