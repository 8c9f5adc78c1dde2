"""Lakehouse tables survive kill -9 at any moment and live on S3 as well as on disk.

The kill test runs a real subprocess (``python -m tests.lakedata``) that merges a fetch and
then its restatement in commits of a few hundred rows, kills it with SIGKILL at random moments
between and during commits, checks after each kill that the table is at a commit (every row
exactly as one of the two fetches has it, one fetch per (pair, date), no key twice), then
lets a last run finish and compares the table with the ground truth.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from bulkexport.lakehouse import open_lake_table

from .helpers import BUCKET
from .lakedata import KEYS, fetch, later, latest, pairs_for, restate
from .truth import normalise

ROOT = Path(__file__).resolve().parents[1]


def _commits(fmt: str, out: Path) -> int:
    """Commits made so far, counted from the table's own log / metadata files."""
    folder = out / "send_stats" / ("_delta_log" if fmt == "delta" else "metadata")
    pattern = "*.json" if fmt == "delta" else "*.metadata.json"
    return len(list(folder.glob(pattern)))


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_kill9_mid_merge_then_remerge_equals_ground_truth(fmt: str, tmp_path: Path) -> None:
    # pyiceberg's write path costs about half a second per commit here: fewer rows for it.
    n_pairs, rows = (120, 800) if fmt == "delta" else (45, 700)
    pairs = pairs_for(n_pairs)
    first, second = fetch(pairs), fetch(pairs, later(1), "r2", change=restate)
    rows_of = {
        **{("a", *k): v for k, v in normalise(first.want_stats, KEYS["send_stats"]).items()},
        **{("b", *k): v for k, v in normalise(second.want_stats, KEYS["send_stats"]).items()},
    }
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "tests.lakedata", fmt, str(out), "--pairs", str(n_pairs), "--rows", str(rows)]
    rng = random.Random(f"kill-{fmt}")
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = _commits(fmt, out)
        target = seen + rng.randint(1, 3)
        deadline = time.monotonic() + 60
        while proc.poll() is None and _commits(fmt, out) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # anywhere in the next commit's work, or in its write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        # At a commit: readable, every row one of the fetches' rows, one fetch per (pair, date).
        table = open_lake_table(fmt, out, "send_stats")  # type: ignore[arg-type]
        got = table.to_arrow().to_pylist()
        by_key = normalise(got, KEYS["send_stats"])  # fails on a key held twice
        fetches: dict[tuple[Any, ...], set[str]] = {}
        for key, row, raw in zip(by_key, by_key.values(), got, strict=True):
            tag = "a" if raw["run_id"] == "r1" else "b"
            assert rows_of[(tag, *key)] == row
            fetches.setdefault(key[:3], set()).add(tag)
        assert all(len(tags) == 1 for tags in fetches.values())
    assert kills >= 3  # the kills really landed while merging
    final = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    table = open_lake_table(fmt, out, "send_stats")  # type: ignore[arg-type]
    got = table.to_arrow().to_pylist()
    assert normalise(got, KEYS["send_stats"]) == latest("send_stats", (first, pairs), (second, pairs))
    assert {r["run_id"] for r in got} == {"r2"}


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_merge_on_s3(fmt: str, s3: pafs.S3FileSystem, tmp_path: Path) -> None:
    pairs = pairs_for(30)
    a, b = fetch(pairs), fetch(pairs[::2], later(1), "r2", change=restate)
    out = f"s3://{BUCKET}/lake-{fmt}"
    for name in ("send_stats", "send_totals"):
        table = open_lake_table(fmt, out, name)  # type: ignore[arg-type]
        assert table.uri == f"{out}/{name}"
        table.merge(a.batches(name))
        table.merge(b.batches(name))
        table.merge(b.batches(name))  # idempotent on S3 too
        table.optimize()
        want = latest(name, (a, pairs), (b, pairs[::2]))
        # A fresh handle (another process, say) reads the same rows.
        again = open_lake_table(fmt, out, name)  # type: ignore[arg-type]
        assert again.version() == table.version()
        got = again.to_arrow().to_pylist()
        assert len(got) == len(want) and normalise(got, KEYS[name]) == want
    infos = s3.get_file_info(pafs.FileSelector(f"{BUCKET}/lake-{fmt}", recursive=True))
    names = [i.path for i in infos if i.type == pafs.FileType.File]
    assert any(p.endswith(".parquet") and "/send_stats/" in p for p in names)
    if fmt == "delta":
        assert any("/send_stats/_delta_log/" in p for p in names)
    else:
        assert any("/send_stats/metadata/" in p for p in names)
        # The embedded catalog cannot live in S3: it is in the local state folder.
        assert list((tmp_path / "state").rglob("iceberg_catalog.db"))
