"""End to end over loopback HTTP: the Parquet output equals the simulator's ground truth."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bulkexport
from bulkexport import checkpoint
from bulkexport.checkpoint import Checkpointer, Staging
from bulkexport.schema import (
    KNOWN_CHANNELS,
    STATS_FILE_SCHEMA,
    TOTALS_FILE_SCHEMA,
)
from bulkexport.simulator import CHANNEL_METRICS, Simulator

from .helpers import check_equal, pairs_for, run, until


async def test_output_equals_ground_truth_for_every_channel(sim: Simulator, tmp_path: Path) -> None:
    sim.extras = True
    pairs = pairs_for(400)
    summary = await run(sim, pairs, tmp_path)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_failed, summary.pairs_total) == (400, 0, 400)
    n_stats, n_totals = check_equal(tmp_path, sim, pairs)
    assert (summary.stats_rows, summary.totals_rows) == (n_stats, n_totals)
    channels = set(bulkexport.read_table(tmp_path, "send_stats", columns=["channel"]).column(0).to_pylist())
    assert set(CHANNEL_METRICS) <= channels  # every documented channel was exercised
    assert "line" in channels - KNOWN_CHANNELS  # and an unknown one was kept
    assert summary.unknown_channels == ["line"]
    assert "amp_opens" in summary.unknown_fields
    # Days past the retention with day totals and no messages are rows (issue 12): some all
    # zeros, some with conversions that arrived after the messages stopped.
    sent_days = set(zip(*(bulkexport.read_table(tmp_path, "send_stats", columns=["campaign_id", "send_id", "date"])
                          .to_pydict().values()), strict=True))  # fmt: skip
    totals = bulkexport.read_table(tmp_path, "send_totals").to_pylist()
    quiet = [r for r in totals if (r["campaign_id"], r["send_id"], r["date"]) not in sent_days]
    assert any(r["conversions"] == 0 for r in quiet) and any(r["conversions"] and r["revenue"] for r in quiet)
    assert 100 < len(quiet) < n_totals // 4


async def test_types_are_stable_and_partitions_typed(sim: Simulator, tmp_path: Path) -> None:
    await run(sim, pairs_for(60), tmp_path)
    stats = bulkexport.read_table(tmp_path, "send_stats")
    assert stats.schema.field("date").type == pa.date32()
    assert stats.schema.field("exported_at").type == pa.timestamp("us", tz="UTC")
    assert stats.schema.field("revenue").type == pa.float64()
    assert stats.schema.field("sent").type == pa.int64()
    # Every file has exactly the declared schema, whatever the batch held (revenue sent as 0).
    files = sorted((tmp_path / "send_stats").rglob("*.parquet"))
    assert files
    for f in files:
        assert pq.read_schema(f).remove_metadata() == STATS_FILE_SCHEMA.remove_metadata()
    for f in sorted((tmp_path / "send_totals").rglob("*.parquet")):
        assert pq.read_schema(f).remove_metadata() == TOTALS_FILE_SCHEMA.remove_metadata()
    assert set(stats.column("run_id").to_pylist()) == {"2026-11-27"}
    zero_revenue = [r for r in stats.column("revenue").to_pylist() if r == 0]
    assert zero_revenue and all(isinstance(r, float) for r in zero_revenue)


async def test_files_depend_on_partitions_not_pairs(sim: Simulator, tmp_path: Path) -> None:
    few, many = tmp_path / "few", tmp_path / "many"
    s1 = await run(sim, pairs_for(20), few, checkpoint_interval=0.01)
    s2 = await run(sim, pairs_for(600), many, checkpoint_interval=0.01)
    dates = {p.name for p in (many / "send_stats").iterdir()}
    # One file per table and date, whatever the number of pairs or checkpoints.
    assert s2.files == 2 * len(dates)
    assert s1.files <= s2.files
    for table in ("send_stats", "send_totals"):
        for part in (many / table).iterdir():
            assert len(list(part.glob("*.parquet"))) == 1
    # No temporary or hidden files are visible in the dataset.
    assert not [p for p in many.rglob("*") if p.name.startswith(".")]


def held_checkpointers(monkeypatch: pytest.MonkeyPatch) -> list[Checkpointer]:
    """Every Checkpointer the export makes, held by the test (so only ``close`` ends its
    thread, and a spy can read its state)."""
    made: list[Checkpointer] = []
    init = Checkpointer.__init__

    def keep(self: Checkpointer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Checkpointer, "__init__", keep)
    return made


async def test_every_checkpoint_is_written_on_one_thread_that_ends_with_the_fetch(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """glibc gives every thread that allocates an arena of its own: checkpoints handed to a
    shared pool land on any of its idle threads, and each arena keeps a checkpoint's worth of
    freed memory (bulkexport.checkpoint)."""
    threads: list[tuple[str, int]] = []
    checkpointers = held_checkpointers(monkeypatch)  # so only close() can end the thread
    write = Staging.write

    def spy(self: Staging, seq: int, tables: dict[str, list[pa.RecordBatch]]) -> object:
        threads.append((threading.current_thread().name, threading.get_ident()))
        return write(self, seq, tables)

    monkeypatch.setattr(Staging, "write", spy)
    sim.latency = 0.02  # a fetch of ~1 s: a checkpoint every few responses
    pairs = pairs_for(300)
    await run(sim, pairs, tmp_path, checkpoint_interval=0.01, concurrency=8)
    check_equal(tmp_path, sim, pairs)
    assert len(checkpointers) == 1 and len(threads) >= 5
    assert len(set(threads)) == 1 and threads[0][0] == "bulkexport-checkpoint_0"
    await until(lambda: not [t for t in threading.enumerate() if t.name.startswith("bulkexport-checkpoint")])


async def test_a_slow_disk_holds_the_workers_back_before_the_rows_held_pass_two_checkpoints(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows held in memory are those buffered plus those of the checkpoint being written. When
    the disk is slower than the network, the workers wait once both together reach twice
    ``checkpoint_rows``: counting only the buffer let it fill to twice that while an equal
    checkpoint was still being written (at 0 ms with typical responses, a 6,000-pair export
    peaked at 156-159 MB that way, 129-140 MB with the bound)."""
    monkeypatch.setattr(checkpoint, "_BUILD_EVERY", 1)  # rows counted as each response arrives
    limit, concurrency = 400, 4
    held: list[int] = []  # rows in memory as each checkpoint is written
    checkpointers = held_checkpointers(monkeypatch)
    write = Staging.write

    def slow_disk(self: Staging, seq: int, tables: dict[str, list[pa.RecordBatch]]) -> object:
        def rows_held() -> int:  # being written, plus buffered
            return sum(b.num_rows for bs in tables.values() for b in bs) + checkpointers[0]._rows

        held.append(rows_held())
        time.sleep(0.1)  # the buffer fills meanwhile
        held.append(rows_held())
        return write(self, seq, tables)

    monkeypatch.setattr(Staging, "write", slow_disk)
    pairs = pairs_for(400)
    await run(sim, pairs, tmp_path, checkpoint_rows=limit, concurrency=concurrency, checkpoint_interval=3600)
    stats, totals = check_equal(tmp_path, sim, pairs)
    # Past the bound by at most the responses in flight when it was reached (one a worker).
    per_pair = Counter(
        (row["campaign_id"], row["send_id"])
        for table in ("send_stats", "send_totals")
        for row in bulkexport.read_table(tmp_path, table).select(["campaign_id", "send_id"]).to_pylist()
    )
    most = max(per_pair.values())
    assert stats + totals > 8 * limit and len(held) >= 8
    assert max(held) <= 2 * limit + concurrency * most < 4 * limit, (held, most)


async def test_row_groups_and_file_rotation(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(200)
    await run(sim, pairs, tmp_path, row_group_rows=100, file_rows=300)
    check_equal(tmp_path, sim, pairs)
    for f in (tmp_path / "send_stats").rglob("*.parquet"):
        meta = pq.ParquetFile(f).metadata
        assert meta.num_rows <= 300
        assert all(meta.row_group(i).num_rows <= 100 for i in range(meta.num_row_groups))


@pytest.mark.parametrize(
    "cid, sid",
    [
        ("camp/../x", "send=1/2"),
        ("..", "."),
        ("with space", "inner  two  spaces"),
        ('quote"d', "it's"),
        ("üñîçødé-キャンペーン", "送信-🚀"),
        ("amp&er=sand?#", "percent%2B+plus"),
        ("back\\slash", "no-break\u00a0space"),
    ],
)
async def test_awkward_ids_round_trip(sim: Simulator, tmp_path: Path, cid: str, sid: str) -> None:
    summary = await run(sim, [(cid, sid)], tmp_path)
    assert summary.status == "complete"
    check_equal(tmp_path, sim, [(cid, sid)])
    # Ids never become paths: only the date partitions and our own file names exist.
    for p in (tmp_path / "send_stats").rglob("*"):
        assert p.name.startswith(("date=", "part-2026-11-27-"))


async def test_duplicates_exported_once(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(30)
    summary = await run(sim, pairs + pairs[:10] + [pairs[0]], tmp_path)
    assert (summary.pairs_read, summary.pairs_total, summary.pairs_done) == (41, 30, 30)
    assert sim.stats.requests == 30
    check_equal(tmp_path, sim, pairs)


async def test_async_iterable_and_length(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(25)

    async def gen():  # type: ignore[no-untyped-def]
        for p in pairs:
            yield {"campaign_id": p[0], "send_id": p[1]}

    await run(sim, gen(), tmp_path, length=3)
    check_equal(tmp_path, sim, pairs, length=3)
    dates = {p.name for p in (tmp_path / "send_stats").iterdir()}
    assert dates <= {"date=2026-11-25", "date=2026-11-26", "date=2026-11-27"}
    assert all("length=3&ending_at=2026-11-27T23%3A59%3A59Z" in q for q in sim.stats.last_queries)


async def test_rerun_is_a_noop_and_overwrite_redoes(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(40)
    first = await run(sim, pairs, tmp_path)
    requests = sim.stats.requests
    again = await run(sim, pairs, tmp_path)
    assert again.status == "already_complete"
    assert sim.stats.requests == requests  # no request spent
    assert again.files == first.files
    redo = await run(sim, pairs, tmp_path, overwrite=True)
    assert redo.status == "complete"
    assert sim.stats.requests == 2 * requests
    check_equal(tmp_path, sim, pairs)  # replaced, not duplicated


async def test_later_run_appends_and_latest_query(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(10)
    await run(sim, pairs, tmp_path, run_id="night-1")
    await run(sim, pairs, tmp_path, run_id="night-2")
    stats = bulkexport.read_table(tmp_path, "send_stats")
    assert set(stats.column("run_id").to_pylist()) == {"night-1", "night-2"}
    glob = f"{tmp_path}/send_stats/**/*.parquet"
    latest = (
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true) "
        "QUALIFY rank() OVER (PARTITION BY campaign_id, send_id, date ORDER BY exported_at DESC) = 1"
    )
    rows = duckdb.sql(f"SELECT run_id, count(*) FROM ({latest}) GROUP BY run_id").fetchall()
    assert rows == [("night-2", stats.num_rows // 2)]


async def test_default_ending_at_reruns_resume_the_same_run(sim: Simulator, tmp_path: Path) -> None:
    """Without --ending-at the end is "now", which differs at every invocation; a rerun the
    same day must still be the same run (here: already complete), not a conflict."""
    pairs = pairs_for(10)
    first = await run(sim, pairs, tmp_path, ending_at=None)
    assert first.status == "complete"
    requests = sim.stats.requests
    again = await run(sim, pairs, tmp_path, ending_at=None)
    assert again.status == "already_complete"
    assert sim.stats.requests == requests
    # An explicit, different end for the same run id is a conflict, said clearly.
    with pytest.raises(bulkexport.ConfigError, match=r"already exists .* with other parameters"):
        await run(sim, pairs, tmp_path, ending_at=None, run_id=first.run_id, length=3)
