"""Publishing partitions side by side (``ParquetPublisher``): the same files, names and rows as
one partition at a time, and never more than a row group's rows buffered between them."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bulkexport import publish
from bulkexport.checkpoint import StagedFiles, Staging
from bulkexport.flatten import Flattener
from bulkexport.layout import RunLayout
from bulkexport.publish import ParquetPublisher, _files_for
from bulkexport.simulator import Simulator
from bulkexport.state import PartRecord
from bulkexport.storage import open_target

from .helpers import API_KEY, pairs_for

ANCHOR = date(2026, 11, 27)
ENDING = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)


def _staged(
    root: Path, pairs: list[tuple[str, str]], per_checkpoint: int
) -> tuple[Staging, RunLayout, list[PartRecord]]:
    """The simulator's answers for ``pairs``, flattened and staged as the pipeline does, in
    checkpoints of ``per_checkpoint`` responses; the parts in publishing order."""
    sim = Simulator(api_key=API_KEY, seed=0, anchor_date=ANCHOR)
    layout = RunLayout.of(open_target(root), "r1")
    staging = Staging(layout)
    staging.prepare()
    parts: list[PartRecord] = []
    flat = Flattener("r1")
    for seq, start in enumerate(range(0, len(pairs), per_checkpoint)):
        for token, (cid, sid) in enumerate(pairs[start : start + per_checkpoint], start):
            flat.add(token, cid, sid, orjson.dumps(sim.payload(cid, sid, 15, ENDING)), 1_790_000_000_000_000)
        built = flat.build()
        parts += staging.write(seq, {"send_stats": built.stats, "send_totals": built.totals})
    return staging, layout, sorted(parts, key=lambda p: (p.table, p.date, p.seq))


def _publish(root: Path, staging: Staging, layout: RunLayout, parts: list[PartRecord], *, row_group_rows: int,
             file_rows: int) -> dict[str, tuple[int, int, pa.Table]]:  # fmt: skip
    """Publish ``parts``; each file's (rows, row groups, contents) by its path."""
    files: list[tuple[str, str, str, int, int]] = []
    pub = ParquetPublisher(open_target(root), layout, staging, row_group_rows=row_group_rows, file_rows=file_rows)
    pub.publish(iter(parts), 0, lambda *f: files.append(f))
    out = {}
    for path, _table, _day, rows, _size in files:
        pf = pq.ParquetFile(root / path)
        out[path] = (rows, pf.metadata.num_row_groups, pf.read())
    return out


@pytest.mark.parametrize(
    ("rows", "group", "file_rows", "files"),
    [(0, 30, 100, 0), (1, 30, 100, 1), (90, 30, 100, 1), (95, 30, 100, 1), (100, 30, 100, 1), (101, 30, 100, 2),
     (120, 30, 100, 2), (181, 30, 90, 3), (65_536 * 64, 65_536, 4_194_304, 1), (65_536 * 64 + 1, 65_536, 4_194_304, 2)],
)  # fmt: skip
def test_files_are_counted_ahead_as_the_writer_cuts_them(rows: int, group: int, file_rows: int, files: int) -> None:
    """Hand-counted: groups of 30 fill a 100-row file with 90 rows, and a last group of up to
    10 still fits in it (95 and 100 rows: one file; 101: the last 11 rows start a second)."""
    assert _files_for(rows, group, file_rows) == files


def test_files_counted_ahead_match_the_writers_rule_everywhere() -> None:
    """The closed form against the writer's rule spelt out group by group, over every small
    size: a new file when the next group would take the open one past ``file_rows``."""
    for group in range(1, 12):
        for file_rows in range(group, 40):
            for rows in range(0, 130):
                files = in_file = 0
                full, last = divmod(rows, group)
                for size in [group] * full + ([last] if last else []):
                    if not files or in_file + size > file_rows:
                        files, in_file = files + 1, 0
                    in_file += size
                assert _files_for(rows, group, file_rows) == files, (rows, group, file_rows)


def test_partitions_side_by_side_write_what_one_at_a_time_writes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Same staged parts, published with one thread and with four: the same file names, the
    same rows in the same order, the same row groups. Small sizes make several files per
    partition, numbered across partitions, so a name counted wrong would show."""
    pairs = pairs_for(60)
    results = []
    for threads in (1, 4):
        root = tmp_path / f"t{threads}"
        staging, layout, parts = _staged(root, pairs, per_checkpoint=7)
        monkeypatch.setattr(publish, "_THREADS", threads)
        results.append(_publish(root, staging, layout, parts, row_group_rows=40, file_rows=100))
    serial, parallel = results
    assert sorted(serial) == sorted(parallel)
    assert len(serial) > 30  # several files in most partitions
    staged_rows = sum(p.rows for p in parts)
    assert sum(rows for rows, _, _ in parallel.values()) == staged_rows
    for path, (rows, groups, table) in serial.items():
        assert parallel[path][:2] == (rows, groups)
        assert parallel[path][2].equals(table), path
    # Numbered per table across its dates, in date order: the names a publish has always
    # used, so a resumed publish replaces what an interrupted one (of any version) left.
    for name in ("send_stats", "send_totals"):
        paths = sorted(p for p in parallel if p.startswith(f"{name}/"))  # date=... sorts by date
        assert [int(p.rsplit("-", 1)[1].split(".")[0]) for p in paths] == list(range(len(paths)))


def test_partitions_side_by_side_buffer_at_most_a_row_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows asked of the budget at once never exceed one row group's, whatever the threads:
    the peak memory of a publish is a row group's. Partitions that fit a group together run
    together (reads are slowed so that they overlap), larger ones take turns."""
    staging, layout, parts = _staged(tmp_path, pairs_for(80), per_checkpoint=10)
    real_read = StagedFiles.read

    def slow_read(self: StagedFiles, part: PartRecord) -> Any:
        time.sleep(0.01)
        return real_read(self, part)

    monkeypatch.setattr(StagedFiles, "read", slow_read)
    lock = threading.Lock()
    in_use = [0, 0]  # now, most

    class Watched(publish._RowBudget):
        def acquire(self, rows: int) -> None:
            super().acquire(rows)
            with lock:
                in_use[0] += rows
                in_use[1] = max(in_use[1], in_use[0])

        def release(self, rows: int) -> None:
            with lock:
                in_use[0] -= rows
            super().release(rows)

    monkeypatch.setattr(publish, "_RowBudget", Watched)
    monkeypatch.setattr(publish, "_THREADS", 4)
    largest = max(sum(p.rows for p in parts if (p.table, p.date) == key) for key in {(p.table, p.date) for p in parts})
    side_by_side, in_turn = range(largest + 1, largest * 3 + 1), range(largest // 2, largest // 2 + 1)
    for group, most in ((largest * 3, side_by_side), (largest // 2, in_turn)):
        out = _publish(tmp_path, staging, layout, parts, row_group_rows=group, file_rows=group * 10)
        assert sum(rows for rows, _, _ in out.values()) == sum(p.rows for p in parts)
        assert in_use[1] in most  # side by side (more than any one partition) / one at a time
        assert in_use[0] == 0
        in_use[1] = 0


def test_a_failing_partition_fails_the_publish_and_nothing_after_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first partition's second staged file is unreadable (slowly: by then every other
    partition is queued): the publish raises that error, that partition leaves no file,
    visible or temporary, the queued partitions are dropped rather than written after it, and
    the staged file it read before is closed."""
    staging, layout, parts = _staged(tmp_path, pairs_for(30), per_checkpoint=10)
    bad = parts[1]  # the first partition's second part: its first file is open by then
    assert (bad.table, bad.date) == (parts[0].table, parts[0].date)
    real_read = StagedFiles.read

    def read(self: StagedFiles, part: PartRecord) -> Any:
        if part == bad:
            time.sleep(0.3)
            raise OSError(28, "No space left on device")
        return real_read(self, part)

    monkeypatch.setattr(StagedFiles, "read", read)
    alive: list[StagedFiles] = []

    class Kept(publish._Shared):
        def files(self) -> StagedFiles:
            alive.append(super().files())
            return alive[-1]

    monkeypatch.setattr(publish, "_Shared", Kept)
    monkeypatch.setattr(publish, "_THREADS", 1)
    with pytest.raises(OSError, match="No space left"):
        _publish(tmp_path, staging, layout, parts, row_group_rows=1_000_000, file_rows=1_000_000)
    assert len({(p.table, p.date) for p in parts}) > 10
    assert [p for p in tmp_path.rglob("*") if p.is_file() and ".parquet" in p.name] == []
    assert len(alive) == 1 and _open_staged(layout) == []


def _open_staged(layout: RunLayout) -> list[str]:
    """Staged files this process holds open (Linux: its descriptors' targets)."""
    fds = Path("/proc/self/fd")
    found = []
    for fd in fds.iterdir():
        try:
            target = (fds / fd.name).readlink()
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.parent == layout.staging.resolve():
            found.append(target.name)
    return sorted(found)


def test_staged_files_kept_open_read_what_a_fresh_open_reads_and_stay_bounded(tmp_path: Path) -> None:
    """Every staged batch read through :class:`StagedFiles` equals the one a fresh open reads
    (``Staging.read``), whether its file is kept open or opened for that read; at most
    ``keep`` files are open in between, none after ``close``."""
    staging, layout, parts = _staged(tmp_path, pairs_for(40), per_checkpoint=8)
    files = sorted({p.file for p in parts})
    assert len(files) == 10  # 5 checkpoints x 2 tables
    reader = staging.files(keep=3)
    for part in parts:  # publishing order: every file once per date
        assert reader.read(part).equals(staging.read(part)), part
        assert len(_open_staged(layout)) <= 3
    kept = _open_staged(layout)
    assert len(kept) == 3 and set(kept) <= set(files)
    reader.close()
    assert _open_staged(layout) == []


def test_a_publish_closes_every_staged_file_it_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two threads keeping files open, a publish ends with no staged file open (closed,
    not left to the garbage collector: the readers are kept alive here), and writes every
    staged row."""
    staging, layout, parts = _staged(tmp_path, pairs_for(40), per_checkpoint=8)
    alive: list[StagedFiles] = []

    class Kept(publish._Shared):
        def files(self) -> StagedFiles:
            files = super().files()
            alive.append(files)
            return files

    monkeypatch.setattr(publish, "_Shared", Kept)
    monkeypatch.setattr(publish, "_THREADS", 2)
    out = _publish(tmp_path, staging, layout, parts, row_group_rows=1_000, file_rows=10_000)
    assert sum(rows for rows, _, _ in out.values()) == sum(p.rows for p in parts)
    assert len(alive) == len({(p.table, p.date) for p in parts})  # one reader asked per partition
    assert _open_staged(layout) == []


def test_memory_goes_back_once_a_row_group_of_rows_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions at least a row group large trim after each; smaller ones every time their
    rows since the last trim reach a row group (one thread: partitions end in order)."""
    staging, layout, parts = _staged(tmp_path, pairs_for(40), per_checkpoint=8)
    sizes = [sum(p.rows for p in g) for _, g in groupby(parts, key=lambda p: (p.table, p.date))]
    assert len(sizes) == 30 and min(sizes) > 10
    trims: list[int] = []
    monkeypatch.setattr(publish.memory, "trim", lambda: trims.append(1))
    monkeypatch.setattr(publish, "_THREADS", 1)
    _publish(tmp_path, staging, layout, parts, row_group_rows=min(sizes), file_rows=10 * max(sizes))
    assert len(trims) == 30  # every partition holds at least a row group
    trims.clear()
    group = sum(sizes) // 4
    _publish(tmp_path, staging, layout, parts, row_group_rows=group, file_rows=10 * group)
    # By hand, partitions of 76, 84, 97, 98, 106, 120 | 127, 137, 153, 153 | 133, 141, 128,
    # 128, 117 | then the totals' 13-37 rows (411 in all) of 2,209, trimming at 552:
    assert sizes[:15] == [76, 84, 97, 98, 106, 120, 127, 137, 153, 153, 133, 141, 128, 128, 117]
    assert (sum(sizes), group, sum(sizes[15:])) == (2209, 552, 411)
    assert len(trims) == 3
