"""The output is one table to every common reader: pyarrow, DuckDB and Polars discover the
date partitions and see the same rows with the documented types."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import bulkexport
import bulkexport.schema
from bulkexport.schema import STATS_FILE_SCHEMA, TOTALS_FILE_SCHEMA
from bulkexport.simulator import FaultRule, Simulator

from .helpers import ANCHOR, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN, pairs_for, run
from .truth import STATS_KEYS, TOTALS_KEYS, expected, normalise, response_rows, with_value


async def test_pyarrow_duckdb_and_polars_agree_with_typed_columns(sim: Simulator, tmp_path: Path) -> None:
    sim.extras = True
    summary = await run(sim, pairs_for(80), tmp_path)
    ours = bulkexport.read_table(tmp_path, "send_stats")
    assert ours.num_rows == summary.stats_rows > 0

    # Plain pyarrow with hive partitioning, no help from us.
    plain = pads.dataset(tmp_path / "send_stats", format="parquet", partitioning="hive").to_table()
    assert plain.num_rows == ours.num_rows

    glob = f"{tmp_path}/send_stats/**/*.parquet"
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
    types = dict(zip(rel.columns, (str(t) for t in rel.types), strict=True))
    assert types["date"] == "DATE"
    assert types["exported_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["sent"] == "BIGINT" and types["enrolled"] == "BIGINT"
    assert types["revenue"] == "DOUBLE"
    assert types["extra_metrics"] == "MAP(VARCHAR, VARCHAR)"
    got = duckdb.sql(
        f"SELECT count(*), sum(sent), sum(revenue), min(date), max(date) FROM read_parquet('{glob}', "
        "hive_partitioning = true)"
    ).fetchall()[0]
    sent = pa.compute.sum(ours.column("sent")).as_py()
    revenue = pa.compute.sum(ours.column("revenue")).as_py()
    dates = ours.column("date").to_pylist()
    assert got[0] == ours.num_rows and got[1] == sent
    assert abs(got[2] - revenue) < 1e-6 * max(1.0, abs(revenue))
    assert (got[3], got[4]) == (min(dates), max(dates))

    frame = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert frame.height == ours.num_rows
    assert frame.schema["date"] == pl.Date
    assert frame.schema["exported_at"] == pl.Datetime("us", "UTC")
    assert frame.schema["sent"] == pl.Int64 and frame.schema["revenue"] == pl.Float64
    assert frame["sent"].sum() == sent
    assert frame["date"].min() == min(dates) and isinstance(frame["date"].min(), date)

    totals = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{tmp_path}/send_totals/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert totals == [(summary.totals_rows,)]


async def test_two_runs_read_as_one_table_whatever_the_first_held(sim: Simulator, tmp_path: Path) -> None:
    """Run 1 writes files whose batches held only an unknown channel, only a control group,
    no messages, and columns that are null throughout (``sent``, ``variation_api_id``); run 2
    appends ordinary data. Every file has the declared schema, and pyarrow, DuckDB and
    Polars read the two runs as one table with the documented types and exact values."""
    sim.extras = True
    day = ANCHOR - timedelta(days=3)
    ending = datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC)
    full = [p for p in pairs_for(60, prefix="t") if any(d.get("messages") for d in sim.payload(*p, 1, ending)["data"])]
    control = {"variation_name": "Control Group", "enrolled": 7, "unique_recipients": 7, "revenue": 0}
    odd = {
        full[0]: {"line": [{"variation_name": "Variant 1", "friend_adds": 5}]},  # only an unknown channel
        full[1]: {"sms": [control]},  # only a control group
        full[2]: {},  # day totals only
    }
    for pair, messages in odd.items():
        sim.faults.append(FaultRule(kind="bad_value", field="messages", value=messages, at="day", times=None,
                                    match=lambda c, s, p=pair: (c, s) == p))  # fmt: skip
    first = await run(sim, list(odd), tmp_path, run_id="night-1", ending_at=ending, length=1)
    sim.faults.clear()
    normal = pairs_for(40)
    second = await run(sim, normal, tmp_path, run_id="night-2")
    assert first.status == second.status == "complete"

    want: dict[str, list[dict[str, Any]]] = {"send_stats": [], "send_totals": []}
    for pair, messages in odd.items():
        s, t = response_rows(*pair, with_value(sim.payload(*pair, 1, ending), "messages", messages, "day"),
                             STATS_KNOWN, TOTALS_KNOWN)  # fmt: skip
        want["send_stats"] += s
        want["send_totals"] += t
    assert not [r for r in want["send_stats"] if r.get("sent") is not None or r.get("variation_api_id")]
    truth_stats, truth_totals = expected(sim, normal, 15, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN)
    want["send_stats"] += truth_stats
    want["send_totals"] += truth_totals

    for table, schema in (("send_stats", STATS_FILE_SCHEMA), ("send_totals", TOTALS_FILE_SCHEMA)):
        files = sorted((tmp_path / table).rglob("*.parquet"))
        assert {r for r in ("night-1", "night-2") if any(f.name.startswith(f"part-{r}-") for f in files)} == {
            "night-1",
            "night-2",
        }
        for f in files:
            assert pq.read_schema(f).remove_metadata() == schema.remove_metadata()
        # pyarrow, plain: one table, both runs, the ground truth value for value.
        plain = pads.dataset(tmp_path / table, format="parquet", partitioning=bulkexport.schema.partitioning())
        rows = plain.to_table().to_pylist()
        keys = STATS_KEYS if table == "send_stats" else TOTALS_KEYS
        for run_id, pairs in (("night-1", set(odd)), ("night-2", set(normal))):
            got = [r for r in rows if r["run_id"] == run_id]
            mine = [r for r in want[table] if (r["campaign_id"], r["send_id"]) in pairs]
            assert normalise(got, keys) == normalise(mine, keys)
        # DuckDB and Polars: the same rows, the documented types.
        glob = f"{tmp_path}/{table}/**/*.parquet"
        rel = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
        types = dict(zip(rel.columns, (str(t) for t in rel.types), strict=True))
        assert types["revenue"] == "DOUBLE" and types["conversions"] == "BIGINT" and types["date"] == "DATE"
        assert types["extra_metrics"] == "MAP(VARCHAR, VARCHAR)"
        frame = pl.scan_parquet(glob, hive_partitioning=True).collect()
        assert frame.height == len(rows) == len(want[table]) == rel.shape[0]
        assert frame.schema["revenue"] == pl.Float64 and frame.schema["conversions"] == pl.Int64
        revenue = sum(r["revenue"] for r in want[table] if r.get("revenue") is not None)
        assert frame["revenue"].sum() == pytest.approx(revenue, rel=1e-12)
        assert _duck(f"SELECT sum(revenue) FROM read_parquet('{glob}')") == [(pytest.approx(revenue),)]
        if table == "send_stats":
            assert types["sent"] == "BIGINT" and types["variation_api_id"] == "VARCHAR"
            assert frame.schema["sent"] == pl.Int64 and frame.schema["variation_api_id"] == pl.String
            sent = sum(r.get("sent") or 0 for r in want[table])
            assert frame["sent"].sum() == sent
            assert _duck(f"SELECT sum(sent) FROM read_parquet('{glob}')") == [(sent,)]
            with_sent = sum(r.get("sent") is not None for r in truth_stats)
            assert _duck(f"SELECT run_id, count(sent), count(*) FROM read_parquet('{glob}') GROUP BY 1 ORDER BY 1") == [
                ("night-1", 0, 2),
                ("night-2", with_sent, len(truth_stats)),
            ]


def _duck(sql: str) -> list[tuple[Any, ...]]:
    return duckdb.sql(sql).fetchall()
