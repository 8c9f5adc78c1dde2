"""Delta Lake and Iceberg tables hold the newest fetch per (pair, date), value for value.

Real tables on disk, written by delta-rs and pyiceberg and read back by them, Polars and
DuckDB; fetches are the simulator's payloads flattened by the exporter's own Flattener,
compared with ground truth computed independently from the same payloads.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bulkexport.errors import ConfigError
from bulkexport.lakehouse import DuplicateKeyError, LakeTable, open_lake_table
from bulkexport.schema import STATS_SCHEMA, TOTALS_SCHEMA

from .lakedata import KEYS, T1, Fetch, fetch, later, latest, pairs_for, restate
from .truth import normalise

FORMATS = ["delta", "iceberg"]
PAIRS = pairs_for(300)


@pytest.fixture(scope="module")
def first() -> Fetch:
    return fetch(PAIRS, extras=True)


@pytest.fixture(scope="module")
def again() -> Fetch:
    """The same pairs fetched an hour later by another run: same numbers."""
    return fetch(PAIRS, later(1), "r2", extras=True)


@pytest.fixture(scope="module")
def restated() -> Fetch:
    """A third of the pairs restated two hours later (changed numbers, a variation gone)."""
    return fetch(PAIRS[::3], later(2), "r3", change=restate, extras=True)


def table_rows(table: LakeTable) -> list[dict[str, Any]]:
    return table.to_arrow().to_pylist()  # type: ignore[no-any-return]


def assert_table(table: LakeTable, want: dict[tuple[Any, ...], dict[str, Any]]) -> list[dict[str, Any]]:
    rows = table_rows(table)
    assert len(rows) == len(want)
    assert normalise(rows, KEYS[table.name]) == want  # also fails on a duplicate key
    return rows


def fetch_of(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], set[tuple[Any, Any]]]:
    """(pair, date) -> the (exported_at, run_id) values of its rows."""
    out: dict[tuple[Any, ...], set[tuple[Any, Any]]] = defaultdict(set)
    for r in rows:
        out[(r["campaign_id"], r["send_id"], r["date"])].add((r["exported_at"], r["run_id"]))
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["send_stats", "send_totals"])
def test_merge_rerun_restatement_and_late_fetch(
    fmt: str, name: str, tmp_path: Path, first: Fetch, again: Fetch, restated: Fetch
) -> None:
    table = open_lake_table(fmt, tmp_path, name)  # type: ignore[arg-type]
    assert table.uri == f"{tmp_path}/{name}"

    # A first merge writes the fetch, value for value, in one commit.
    result = table.merge(first.batches(name))
    assert len(result.commits) == 1 and result.version == table.version() == result.commits[-1]
    assert result.rows_in == result.rows_written == len(first.want(name)) and result.rows_stale == 0
    rows = assert_table(table, latest(name, (first, PAIRS)))
    assert {r["run_id"] for r in rows} == {"r1"} and {r["exported_at"] for r in rows} == {T1}

    # Merging the same rows again is a no-op on the contents.
    table.merge(first.batches(name))
    assert_table(table, latest(name, (first, PAIRS)))

    # Another run, same numbers, newer fetch: same row count, every row now from run r2.
    table.merge(pa.RecordBatchReader.from_batches(STATS_SCHEMA if name == "send_stats" else TOTALS_SCHEMA,
                                                  again.batches(name)))  # fmt: skip
    rows = assert_table(table, latest(name, (first, PAIRS), (again, PAIRS)))
    assert {r["run_id"] for r in rows} == {"r2"} and {r["exported_at"] for r in rows} == {later(1)}

    # A restatement of a third of the pairs: new numbers, the dropped variation is gone,
    # the other pairs (not fetched: past retention, say) keep their rows.
    result = table.merge(restated.batches(name))
    want = latest(name, (again, PAIRS), (restated, PAIRS[::3]))
    rows = assert_table(table, want)
    groups = fetch_of(rows)
    assert all(len(v) == 1 for v in groups.values())  # never two fetches in one (pair, date)
    restated_pairs = set(PAIRS[::3])
    for (cid, sid, _), seen in groups.items():
        assert seen == ({(later(2), "r3")} if (cid, sid) in restated_pairs else {(later(1), "r2")})
    if name == "send_stats":
        assert len(rows) < len(latest(name, (again, PAIRS)))  # variations really disappeared

    # An older fetch arriving late changes nothing and commits nothing.
    version = table.version()
    late = table.merge(first.batches(name))
    assert late.commits == () and late.rows_written == 0 and late.rows_stale == late.rows_in > 0
    assert table.version() == version
    assert_table(table, want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_null_keys_are_equal_keys(fmt: str, tmp_path: Path) -> None:
    """Control groups and non-push channels have no variation_api_id: a re-merge must
    update those rows, not add a second copy, and a restatement must replace them."""
    pairs = pairs_for(90)
    a, b = fetch(pairs), fetch(pairs, later(1), "r2", change=restate)
    nulls = [r for r in a.want_stats if r.get("variation_api_id") is None]
    controls = [r for r in nulls if r.get("variation_name") == "Control Group"]
    assert controls and len(nulls) > len(controls)  # both kinds of null key are exercised
    table = open_lake_table(fmt, tmp_path, "send_stats")  # type: ignore[arg-type]
    table.merge(a.stats)
    table.merge(b.stats)
    table.merge(b.stats)
    rows = assert_table(table, latest("send_stats", (a, pairs), (b, pairs)))
    got = [r for r in rows if r["variation_name"] == "Control Group"]
    want = [r for r in b.want_stats if r.get("variation_name") == "Control Group"]
    assert len(got) == len(want) and all(r["variation_api_id"] is None for r in got)
    assert {r["run_id"] for r in got} == {"r2"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunked_merge_splits_groups_and_still_converges(fmt: str, tmp_path: Path) -> None:
    """Commits of 1,500 rows cut (pair, date) groups in two; the result equals one big
    commit, and optimize() compacts the small files without changing a value."""
    pairs = pairs_for(120)
    a = fetch(pairs)
    rows = pa.Table.from_batches(a.stats)
    keys = ["campaign_id", "send_id", "date"]
    head, tail = rows.slice(0, 1500).select(keys), rows.slice(1500).select(keys)
    assert head.join(tail, keys=keys, join_type="left semi").num_rows > 0  # groups really straddle commits
    table = open_lake_table(fmt, tmp_path, "send_stats", max_rows_per_commit=1500)  # type: ignore[arg-type]
    result = table.merge(a.stats)
    assert len(result.commits) == -(-rows.num_rows // 1500) > 2
    want = latest("send_stats", (a, pairs))
    assert_table(table, want)
    files_before = _data_files(table)
    table.optimize()
    assert len(_data_files(table)) < len(files_before)
    assert_table(table, want)
    b = fetch(pairs, later(1), "r2", change=restate)
    table.merge(b.stats)
    assert_table(table, latest("send_stats", (a, pairs), (b, pairs)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_new_metric_column_evolves_the_table(fmt: str, tmp_path: Path) -> None:
    pairs = pairs_for(60)
    a = fetch(pairs)
    table = open_lake_table(fmt, tmp_path, "send_stats")  # type: ignore[arg-type]
    table.merge(a.stats)
    b = fetch(pairs[:30], later(1), "r2")
    newer = [batch.append_column("brand_new_metric", pa.array(range(batch.num_rows), pa.int64())) for batch in b.stats]
    table.merge(newer)
    got = table.to_arrow()
    assert got.schema.field("brand_new_metric").type == pa.int64()
    values = {
        (r["campaign_id"], r["send_id"], r["date"], r["channel"], r["variation_name"], r["variation_api_id"]):
            r["brand_new_metric"]
        for r in got.to_pylist()
    }  # fmt: skip
    sent = pa.Table.from_batches(newer).to_pylist()
    assert {tuple(r[k] for k in KEYS["send_stats"]): r["brand_new_metric"] for r in sent}.items() <= values.items()
    untouched = [v for k, v in values.items() if (k[0], k[1]) not in set(pairs[:30])]
    assert untouched and all(v is None for v in untouched)
    want = latest("send_stats", (a, pairs), (b, pairs[:30]))
    rows = [{k: v for k, v in r.items() if k != "brand_new_metric"} for r in got.to_pylist()]
    assert normalise(rows, KEYS["send_stats"]) == want
    # An input of the old schema still merges into the evolved table.
    c = fetch(pairs[:10], later(2), "r3")
    table.merge(c.stats)
    assert table.to_arrow().num_rows == len(want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_types_are_the_parquet_outputs(fmt: str, tmp_path: Path, first: Fetch) -> None:
    for name, schema in (("send_stats", STATS_SCHEMA), ("send_totals", TOTALS_SCHEMA)):
        table = open_lake_table(fmt, tmp_path, name)  # type: ignore[arg-type]
        table.merge(first.batches(name))
        got = table.to_arrow().schema
        assert got.names == schema.names
        for field in schema:
            assert got.field(field.name).type == field.type, field.name
            assert got.field(field.name).nullable == field.nullable, field.name


@pytest.mark.parametrize("fmt", FORMATS)
def test_polars_and_duckdb_read_the_table(
    fmt: str, tmp_path: Path, first: Fetch, restated: Fetch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polars plans Iceberg scans with pyiceberg unless the polars_iceberg plugin is
    # installed, and warns about it; pyiceberg is what we want here.
    monkeypatch.setenv("POLARS_ICEBERG_PLANNER", "pyiceberg")
    table = open_lake_table(fmt, tmp_path, "send_stats")  # type: ignore[arg-type]
    table.merge(first.stats)
    table.merge(restated.stats)
    ours = table.to_arrow()
    sent = pc.sum(ours.column("sent")).as_py()
    if fmt == "delta":
        frame = pl.read_delta(table.uri)
        from deltalake import DeltaTable

        files = DeltaTable(table.uri).file_uris()
    else:
        iceberg: Any = table
        frame = pl.scan_iceberg(iceberg.table).collect()
        files = [task.file.file_path for task in iceberg.table.scan().plan_files()]
    assert frame.height == ours.num_rows and frame["sent"].sum() == sent
    assert frame.schema["date"] == pl.Date and frame.schema["exported_at"] == pl.Datetime("us", "UTC")
    columns = [*KEYS["send_stats"], "sent", "enrolled", "revenue", "run_id", "exported_at"]
    assert sorted(frame.select(columns).rows(), key=repr) == sorted(
        (tuple(r[c] for c in columns) for r in ours.select(columns).to_pylist()), key=repr
    )
    # DuckDB: its delta/iceberg extensions are not installable offline for this duckdb
    # (see the README), so it reads the table's current data files, as listed by the format.
    listed = ", ".join(f"'{f.removeprefix('file://')}'" for f in files)
    got = duckdb.sql(
        f"SELECT count(*), sum(sent), count(DISTINCT date) FROM read_parquet([{listed}], hive_partitioning = true)"
    ).fetchall()[0]
    assert got == (ours.num_rows, sent, len(set(ours.column("date").to_pylist())))


def _data_files(table: LakeTable) -> list[str]:
    if table.format == "delta":
        from deltalake import DeltaTable

        return list(DeltaTable(table.uri).file_uris())
    iceberg: Any = table
    return [t.file.file_path for t in iceberg.table.scan().plan_files()]


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_input_is_refused_before_any_commit(fmt: str, tmp_path: Path) -> None:
    a = fetch(pairs_for(12))
    table = open_lake_table(fmt, tmp_path, "send_stats")  # type: ignore[arg-type]
    version = table.version()
    rows = pa.Table.from_batches(a.stats)
    with pytest.raises(DuplicateKeyError, match="share the key"):
        table.merge(pa.concat_tables([rows, rows.slice(0, 1)]))
    with pytest.raises(ValueError, match="'sent' is double"):
        table.merge(rows.set_column(rows.schema.get_field_index("sent"), "sent", pc.cast(rows["sent"], pa.float64())))
    with pytest.raises(ValueError, match="lack the key column 'channel'"):
        table.merge(rows.drop_columns(["channel"]))
    assert table.version() == version and table.to_arrow().num_rows == 0


def test_missing_library_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for fmt, module in (("delta", "deltalake"), ("iceberg", "pyiceberg")):
        for name in [module, *(m for m in sys.modules if m.startswith(f"{module}."))]:
            monkeypatch.setitem(sys.modules, name, None)  # what an environment without it sees
        for cached in [m for m in sys.modules if m.startswith("bulkexport.lakehouse.")]:
            monkeypatch.delitem(sys.modules, cached)
        with pytest.raises(ConfigError, match=rf"pip install 'bulkexport\[{fmt}\]'"):
            open_lake_table(fmt, tmp_path, "send_stats")  # type: ignore[arg-type]


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="table format must be one of delta, iceberg"):
        open_lake_table("hudi", tmp_path, "send_stats")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="table must be one of"):
        open_lake_table("delta", tmp_path, "sends")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="local folder or an s3://"):
        open_lake_table("delta", "ftp://host/x", "send_stats")
    with pytest.raises(ConfigError, match="Iceberg setting"):
        open_lake_table("delta", tmp_path, "send_stats", catalog_uri="sqlite:///x.db")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("a_is_newer", [False, True], ids=["older-loses", "newer-wins"])
def test_a_writer_that_commits_between_plan_and_commit_is_not_overwritten_or_duplicated(
    fmt: str, a_is_newer: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two runs merging the same (pair, date)s at once (overlapping schedules): run A plans
    its chunk, run B commits, then A commits. A commit made on a plan of an older version
    would insert B's groups a second time (pyiceberg's own retry re-applies an append on
    top of B's) or drop B's newer rows; A must plan again and end with the newest fetch."""
    pairs = PAIRS[:60]
    a = fetch(pairs, later(2 if a_is_newer else 0), "a")
    b = fetch(pairs, later(1), "b")
    table_a = open_lake_table(fmt, tmp_path, "send_stats")  # type: ignore[arg-type]
    table_b = open_lake_table(fmt, tmp_path, "send_stats")  # type: ignore[arg-type]
    module = sys.modules[type(table_a).__module__]
    real_plan = module.plan
    calls = 0

    def plan_then_let_b_commit(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        p = real_plan(*args, **kwargs)
        if calls == 1:  # A's first plan is made: B gets in before A commits
            monkeypatch.setattr(module, "plan", real_plan)
            table_b.merge(b.batches("send_stats"))
            monkeypatch.setattr(module, "plan", plan_then_let_b_commit)
        return p

    monkeypatch.setattr(module, "plan", plan_then_let_b_commit)
    result = table_a.merge(a.batches("send_stats"))
    assert calls == 2  # planned again after the conflict
    assert "another writer committed first; planning the chunk again" in caplog.text
    assert_table(table_a, latest("send_stats", (a, pairs), (b, pairs)))
    assert result.rows_stale == (0 if a_is_newer else len(a.want("send_stats")))
