"""``RunState``, the run's durable memory, on its own: what an ingest adds, what a checkpoint
makes true at once, what publishing reads and marks, what a failed write leaves."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from bulkexport import StorageError
from bulkexport.pairs import Pair
from bulkexport.state import _UNPUBLISHED, DONE, FAILED, PENDING, Failure, Ingested, PartRecord, RunState


@pytest.fixture
def state(tmp_path: Path) -> Iterator[RunState]:
    s = RunState(tmp_path / "run" / "state.sqlite")
    yield s
    s.close()


def pairs(*ids: int) -> list[Pair]:
    return [Pair(f"c{i}", f"s{i}") for i in ids]


def test_ingest_is_a_union_that_keeps_input_order(state: RunState) -> None:
    assert state.ingest(pairs(3, 1, 3, 2)) == Ingested(read=4, unique=3, added=3)
    # Again with one new pair (and the old ones, and a duplicate of the new one).
    assert state.ingest(pairs(2, 9, 1, 9), chunk=2) == Ingested(read=4, unique=3, added=1)
    assert state.ingest([]) == Ingested(0, 0, 0)
    assert [p for _, p in state.pending(page=2)] == pairs(3, 1, 2, 9)
    assert state.count() == state.count(PENDING) == 4


def test_a_failed_ingest_adds_nothing(state: RunState) -> None:
    state.ingest(pairs(1))

    def broken() -> Iterator[Pair]:
        yield from pairs(2, 3)
        raise ValueError("line 3: not a pair")

    with pytest.raises(ValueError, match="line 3"):
        state.ingest(broken(), chunk=1)  # chunks already inserted are rolled back too
    assert [p for _, p in state.pending()] == pairs(1)
    assert state.ingest(pairs(2)) == Ingested(1, 1, 1)  # and the state is usable after it


def test_a_checkpoint_is_all_or_nothing(state: RunState) -> None:
    state.ingest(pairs(1, 2, 3, 4))
    ids = {p: i for i, p in state.pending()}
    parts = [
        PartRecord(0, "send_stats", "2026-11-26", 0, 7, "ckpt-00000000-send_stats.arrow"),
        PartRecord(0, "send_stats", "2026-11-27", 1, 5, "ckpt-00000000-send_stats.arrow"),
        PartRecord(0, "send_totals", "2026-11-27", 0, 2, "ckpt-00000000-send_totals.arrow"),
    ]
    failure = (ids[pairs(3)[0]], 404, "no such send", 1, "2026-11-28T01:00:00+00:00")
    state.commit_checkpoint(0, parts, [ids[pairs(1)[0]], ids[pairs(2)[0]]], [failure])
    assert (state.count(DONE), state.count(FAILED), state.count(PENDING)) == (2, 1, 1)
    assert state.get("next_seq") == 1
    assert list(state.failures()) == [Failure("c3", "s3", 404, "no such send", 1, "2026-11-28T01:00:00+00:00")]
    assert state.rows_committed() == {"send_stats": 12, "send_totals": 2}
    # The same parts again (a bug, or a replayed checkpoint) violate the key: nothing of it lands.
    with pytest.raises(StorageError, match="cannot write run state"):
        state.commit_checkpoint(0, parts, [ids[pairs(4)[0]]], [])
    assert state.count(DONE) == 2 and state.rows_committed() == {"send_stats": 12, "send_totals": 2}
    assert [p for _, p in state.pending()] == pairs(4)


def test_publishing_reads_in_order_and_marks_a_generation(state: RunState) -> None:
    state.ingest(pairs(1, 2))
    recs = [
        PartRecord(1, "send_totals", "2026-11-27", 0, 1, "b"),
        PartRecord(1, "send_stats", "2026-11-27", 0, 3, "b"),
        PartRecord(0, "send_stats", "2026-11-27", 0, 2, "a"),
        PartRecord(0, "send_stats", "2026-11-26", 1, 4, "a"),
    ]
    state.commit_checkpoint(0, [r for r in recs if r.seq == 0], [1], [])
    state.commit_checkpoint(1, [r for r in recs if r.seq == 1], [2], [])
    order = [(r.table, r.date, r.seq) for r in state.unpublished_parts(page=1)]
    assert order == [("send_stats", "2026-11-26", 0), ("send_stats", "2026-11-27", 0),
                     ("send_stats", "2026-11-27", 1), ("send_totals", "2026-11-27", 1)]  # fmt: skip
    assert [r.table for r in state.unpublished_parts(table="send_totals")] == ["send_totals"]
    assert state.staged_files() == {"a", "b"}
    state.record_published([("send_stats/date=2026-11-26/part-r-0-00000.parquet", "send_stats", "2026-11-26", 4, 900)])
    state.mark_published(0)
    assert list(state.unpublished_parts()) == [] and state.staged_files() == set()
    assert state.get("published_gen") == 0
    assert state.published() == [("send_stats/date=2026-11-26/part-r-0-00000.parquet", "send_stats", "2026-11-26",
                                  4, 900)]  # fmt: skip


def test_publishing_order_comes_from_an_index_not_a_sort(state: RunState) -> None:
    """A sort of every unpublished part holds memory that grows with the run (3.5 MB of a
    300,000-pair publish's peak, in memray) for the whole publish; the index streams them."""
    with closing(sqlite3.connect(state.path)) as db:  # a state made by this version
        for table in (None, "send_stats"):
            plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + _UNPUBLISHED, (table, table)))
            assert "USING INDEX parts_unpublished" in plan and "TEMP B-TREE" not in plan, plan


def test_retry_failed_makes_them_pending_again(state: RunState) -> None:
    state.ingest(pairs(1, 2))
    state.commit_checkpoint(0, [], [], [(1, 500, "boom", 6, "t"), (2, None, "timeout", 6, "t")])
    assert state.reset_failed() == 2
    assert state.count(PENDING) == 2 and list(state.failures()) == []
    assert state.reset_failed() == 0


def test_facts_round_trip_as_json_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    s = RunState(path)
    s.put("params", {"length": 15, "ending_at": "2026-11-27T23:59:59Z"})
    s.put("lake_merged_0", ["send_stats"])
    s.close()
    again = RunState(path)
    try:
        assert again.get("params") == {"length": 15, "ending_at": "2026-11-27T23:59:59Z"}
        assert again.get("lake_merged_0") == ["send_stats"] and again.get("missing") is None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        again.close()


def test_count_absent_from_another_run(tmp_path: Path) -> None:
    old = RunState(tmp_path / "old.sqlite")
    old.ingest(pairs(1, 2, 3))
    old.close()
    spool = RunState(tmp_path / "spool.sqlite")
    try:
        spool.ingest(pairs(2, 3, 4, 5))
        assert spool.count_absent_from(tmp_path / "old.sqlite") == 2
    finally:
        spool.close()


def test_an_unusable_state_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError, match="cannot open run state"):
        RunState(tmp_path / "file" / "state.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(StorageError, match="cannot open run state"):
        RunState(garbage)
