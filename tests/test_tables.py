"""``--table-format delta|iceberg`` end to end: the exporter, the simulator on loopback, and
the tables read back with their own libraries (deltalake, pyiceberg, Polars), never with
bulkexport's. The merge rules themselves are tested in test_lakehouse.py; here the run:
ground truth value for value, reruns, restatements, kill -9 mid-merge, S3, the manifest."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable
from pyiceberg.catalog.sql import SqlCatalog

from bulkexport import ConfigError, ExportConfig
from bulkexport.schema import STATS_SCHEMA, TOTALS_SCHEMA
from bulkexport.simulator import Simulator

from .helpers import (
    BUCKET,
    ENDING_AT,
    EXIT_CONFIG,
    EXIT_OK,
    STATS_KNOWN,
    TABLES,
    TOTALS_KNOWN,
    Cli,
    assert_no_traceback,
    pairs_for,
    run,
    until,
    write_pairs,
)
from .lakedata import KEYS, restate
from .truth import expected, normalise

FORMATS = ("delta", "iceberg")
SCHEMAS = {"send_stats": STATS_SCHEMA, "send_totals": TOTALS_SCHEMA}


def _catalog(out: Path) -> SqlCatalog:
    """The embedded catalog where the README says it is, opened by pyiceberg itself."""
    db = out / "_bulkexport" / "iceberg_catalog.db"
    assert db.is_file()
    return SqlCatalog("bulkexport", uri=f"sqlite:///{db}", warehouse=str(out))


def read(fmt: str, out: Path, table: str) -> pa.Table:
    if fmt == "delta":
        return DeltaTable(str(out / table)).to_pyarrow_table()
    return _catalog(out).load_table(("bulkexport", table)).scan().to_arrow()


def versions(fmt: str, out: Path, table: str) -> list[int]:
    """Every version / snapshot of a table, oldest first, from the library's own history."""
    if fmt == "delta":
        return sorted(int(h["version"]) for h in DeltaTable(str(out / table)).history())
    snapshots = _catalog(out).load_table(("bulkexport", table)).snapshots()
    return [s.snapshot_id for s in sorted(snapshots, key=lambda s: s.sequence_number or 0)]


def check_truth(fmt: str, out: Path, sim: Simulator, pairs: list[tuple[str, str]]) -> tuple[int, int]:
    """The tables hold exactly the ground truth: same keys, same values, no other row."""
    want = dict(zip(TABLES, expected(sim, pairs, 15, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN), strict=True))
    for table in TABLES:
        got = read(fmt, out, table)
        assert got.num_rows == len(want[table]), table
        assert normalise(got.to_pylist(), KEYS[table]) == normalise(want[table], KEYS[table]), table
    return len(want["send_stats"]), len(want["send_totals"])


def manifest(summary: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(summary.manifest).read_text())
    return doc


@pytest.mark.parametrize("fmt", FORMATS)
async def test_export_rerun_restatement(
    sim: Simulator, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 pairs as a table; again under another run id (same rows); again after Braze
    restated days (new numbers, a variation gone): always exactly the ground truth."""
    monkeypatch.setenv("POLARS_ICEBERG_PLANNER", "pyiceberg")  # the polars_iceberg plugin is not installed
    pairs, out = pairs_for(300), tmp_path / "lake"
    first = await run(sim, pairs, out, table_format=fmt, run_id="night-1")
    assert first.status == "complete" and first.pairs_done == 300
    stats_rows, totals_rows = check_truth(fmt, out, sim, pairs)
    assert (first.stats_rows, first.totals_rows) == (stats_rows, totals_rows)
    doc = manifest(first)
    assert doc["table_format"] == fmt and doc["files"] == []
    for entry in doc["tables"]:
        # The manifest's versions are the library's: this run's commits, ending at the current one.
        history = versions(fmt, out, entry["table"])
        assert entry["commits"] and set(entry["commits"]) <= set(history)
        assert entry["version"] == history[-1] == first.tables[entry["table"]]
    # Types as in the Parquet output: the in-memory schema, field for field.
    for table in TABLES:
        got = read(fmt, out, table).schema
        assert [(f.name, f.type) for f in got] == [(f.name, f.type) for f in SCHEMAS[table]], table

    second = await run(sim, pairs, out, table_format=fmt, run_id="night-2")
    assert second.status == "complete"
    assert check_truth(fmt, out, sim, pairs) == (stats_rows, totals_rows)  # the row count is unchanged
    assert not set(manifest(second)["tables"][0]["commits"]) & set(doc["tables"][0]["commits"])

    sim.restate = restate
    third = await run(sim, pairs, out, table_format=fmt, run_id="night-3")
    assert third.status == "complete"
    new_stats, new_totals = check_truth(fmt, out, sim, pairs)  # the truth now includes the restatement
    assert new_totals == totals_rows and new_stats < stats_rows  # dropped variations are gone
    # Polars reads the same table (its own reader, not pyarrow's).
    frame = (
        pl.read_delta(str(out / "send_stats"))
        if fmt == "delta"
        else pl.scan_iceberg(_catalog(out).load_table(("bulkexport", "send_stats"))).collect()
    )
    assert frame.height == new_stats
    want_sent = sum(r.get("sent") or 0 for r in expected(sim, pairs, 15, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN)[0])
    assert frame["sent"].sum() == want_sent


@pytest.mark.parametrize("fmt", FORMATS)
async def test_finished_run_rerun_is_a_no_op(sim: Simulator, tmp_path: Path, fmt: str) -> None:
    pairs, out = pairs_for(30), tmp_path / "lake"
    first = await run(sim, pairs, out, table_format=fmt)
    before = {t: versions(fmt, out, t) for t in TABLES}
    requests = sim.stats.requests
    again = await run(sim, pairs, out, table_format=fmt)
    assert again.status == "already_complete"
    assert sim.stats.requests == requests
    assert {t: versions(fmt, out, t) for t in TABLES} == before
    assert again.tables == first.tables


@pytest.mark.parametrize("fmt", FORMATS)
async def test_kill_during_merge_then_resume(sim: Simulator, tmp_path: Path, fmt: str) -> None:
    """``kill -9`` while the run merges (small commits, so the kill lands between two of
    them), then the same command: the table equals the ground truth, and the manifest lists
    the commits of both sessions."""
    pairs = pairs_for(300)
    out = tmp_path / "lake"
    extra = ("--rate-limit", "3600000", "--reserve", "0", "--table-format", fmt, "--rows-per-commit", "400")
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), out, tmp_path / "logs", extra=extra)
    folder = out / "send_stats" / ("_delta_log" if fmt == "delta" else "metadata")
    seen: list[str] = []

    async def merging() -> bool:
        # A few commits of send_stats exist (creation + at least two chunks): mid-merge.
        names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
        if len(names) >= 4:
            seen[:] = names
            return True
        return False

    killed = await cli.run_until(merging, limit=60)
    assert killed.rc == -signal.SIGKILL, killed.stderr
    assert_no_traceback(killed)
    resumed = await cli.run(limit=60)
    assert resumed.rc == EXIT_OK, resumed.stderr
    assert resumed.requests == 0  # every pair was committed before the publish began
    stats_rows, _ = check_truth(fmt, out, sim, pairs)
    doc = json.loads((out / "_bulkexport" / "runs" / "2026-11-27" / "manifest.json").read_text())
    stats = next(t for t in doc["tables"] if t["table"] == "send_stats")
    assert set(stats["commits"]) <= set(versions(fmt, out, "send_stats"))
    # The resumed session alone commits every chunk once (re-merging rows already in
    # changes no value) and perhaps a compaction; the killed session's commits, read back
    # from the table's tags, make at least two more.
    chunks = -(-stats_rows // 400)
    assert len(stats["commits"]) >= chunks + 2, (len(stats["commits"]), chunks, seen)


def _state_catalog(endpoint: str) -> SqlCatalog:
    """The embedded catalog of an object-store output: in the local state folder."""
    (db,) = Path(os.environ["BULKEXPORT_STATE_DIR"]).rglob("iceberg_catalog.db")
    return SqlCatalog("bulkexport", uri=f"sqlite:///{db}", **{"s3.endpoint": endpoint, "s3.region": "us-east-1"})


@pytest.mark.parametrize("fmt", FORMATS)
async def test_on_s3(sim: Simulator, s3: pafs.S3FileSystem, tmp_path: Path, fmt: str) -> None:
    """The same tables on an S3 API (moto on loopback); the embedded Iceberg catalog lives in
    the local state folder, the data next to the Parquet output's place."""
    pairs = pairs_for(60)
    out = f"s3://{BUCKET}/{fmt}"
    summary = await run(sim, pairs, out, table_format=fmt)  # type: ignore[arg-type]
    assert summary.status == "complete"
    want = expected(sim, pairs, 15, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN)
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for table, rows in zip(TABLES, want, strict=True):
        if fmt == "delta":
            options = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
            got = DeltaTable(f"{out}/{table}", storage_options=options).to_pyarrow_table()
        else:
            got = _state_catalog(endpoint).load_table(("bulkexport", table)).scan().to_arrow()
        assert normalise(got.to_pylist(), KEYS[table]) == normalise(rows, KEYS[table])
    names = [i.path for i in s3.get_file_info(pafs.FileSelector(f"{BUCKET}/{fmt}", recursive=True))]
    assert any("/send_stats/" in n and n.endswith(".parquet") for n in names)


async def test_formats_do_not_mix(sim: Simulator, tmp_path: Path) -> None:
    """A folder holding one format refuses another, before any request: Parquet files next
    to a Delta table would be double-counted by Hive-style readers."""
    pairs, out = pairs_for(9), tmp_path / "lake"
    await run(sim, pairs, out, table_format="delta", run_id="a")
    requests = sim.stats.requests
    for fmt in ("parquet", "iceberg"):
        with pytest.raises(ConfigError, match="is a delta table"):
            await run(sim, pairs, out, table_format=fmt, run_id=f"b-{fmt}")
    parquet = tmp_path / "parquet"
    await run(sim, pairs, parquet, run_id="a")
    with pytest.raises(ConfigError, match="holds Parquet files of earlier runs"):
        await run(sim, pairs, parquet, table_format="iceberg", run_id="b")
    assert sim.stats.requests == requests + len(pairs)


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
async def test_a_table_made_while_a_parquet_run_fetches_stops_its_publish(
    sim: Simulator, tmp_path: Path, fmt: str
) -> None:
    """Two run ids (two locks) on one folder, started together: a Parquet run, and a Delta
    or Iceberg run that creates its tables while the first is still fetching. Both used to
    succeed, leaving Parquet files beside the table (every row twice for a Hive-style
    reader, or a read that fails on the date column). The Parquet run checks the folder
    again before it publishes, and refuses."""
    sim.latency = 0.02
    out = tmp_path / "lake"
    parquet = asyncio.create_task(run(sim, pairs_for(400, prefix="p-"), out, run_id="p", concurrency=8))
    await until(lambda: sim.stats.requests >= 20)
    await run(sim, pairs_for(9, prefix="t-"), out, table_format=fmt, run_id="t")
    assert not parquet.done()
    with pytest.raises(ConfigError, match=f"is a {fmt} table"):
        await parquet
    assert not [p for p in out.rglob("part-p-*")]  # nothing of the Parquet run published


def test_catalog_settings_need_iceberg_and_hide_passwords() -> None:
    base: dict[str, Any] = {"endpoint": "https://rest.iad-01.braze.com", "api_key": "k" * 32}
    with pytest.raises(ConfigError, match="catalog_uri is an Iceberg setting"):
        ExportConfig.build(**base, table_format="delta", catalog_uri="http://catalog:8181")
    with pytest.raises(ConfigError, match="table_format must be one of parquet, delta, iceberg"):
        ExportConfig.build(**base, table_format="hudi")
    cfg = ExportConfig.build(**base, table_format="iceberg", catalog_uri="postgresql://etl:hunter22@db:5432/cat")
    described = json.dumps(cfg.describe())
    assert "hunter22" not in described and "postgresql://etl:***@db:5432/cat" in described


async def test_cli_bad_format_is_a_usage_error(sim: Simulator, tmp_path: Path) -> None:
    """A typo in the format is a usage error (exit 2) naming the choices, no traceback."""
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs_for(3)), tmp_path / "out", tmp_path / "logs",
              extra=("--table-format", "hudi"))  # fmt: skip
    att = await cli.run()
    assert att.rc == EXIT_CONFIG
    assert "invalid choice: 'hudi'" in att.stderr and "iceberg" in att.stderr
    assert_no_traceback(att)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("fmt", "library"), [("delta", "deltalake"), ("iceberg", "pyiceberg")])
async def test_missing_library_fails_before_any_request(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, library: str
) -> None:
    """Without the optional extra the run stops at once, saying what to install; not after
    the night's requests."""
    for name in [m for m in sys.modules if m == library or m.startswith(f"{library}.")] or [library]:
        monkeypatch.setitem(sys.modules, name, None)  # `import library` (and its parts) now fails
    monkeypatch.delitem(sys.modules, f"bulkexport.lakehouse.{fmt}", raising=False)
    with pytest.raises(ConfigError, match=rf"needs {library}: pip install 'bulkexport\[{fmt}\]'"):
        await run(sim, pairs_for(3), tmp_path / "out", table_format=fmt)
    assert sim.stats.requests == 0
