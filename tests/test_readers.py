"""The output is one table to every common reader: pyarrow, DuckDB and Polars discover the
date partitions and see the same rows with the documented types."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

import bulkexport
from bulkexport.simulator import Simulator

from .conftest import pairs_for, run


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
