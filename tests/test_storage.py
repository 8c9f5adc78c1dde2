"""Storage faults: a write that fails mid-run stops the run with exit 6 and a clear message,
and leaves the published dataset exactly as it was."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import bulkexport
from bulkexport import ExportConfig, StorageError
from bulkexport.checkpoint import Checkpointer, Staging
from bulkexport.errors import AttemptError
from bulkexport.layout import RunLayout
from bulkexport.pairs import Pair
from bulkexport.simulator import Simulator
from bulkexport.state import FAILED, PENDING, PartRecord, RunState
from bulkexport.storage import LocalTarget, ObjectStoreTarget, Target

from .helpers import API_KEY, pairs_for


def _write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("campaign_id,send_id\n" + "".join(f"{c},{s}\n" for c, s in pairs))


async def cli(sim: Simulator, pairs: Path, out: Path, *extra: str, fsize: int | None = None) -> tuple[int, str]:
    def limit_file_size() -> None:  # runs in the child: a "disk" that fills at `fsize` bytes
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bulkexport.cli", "export", "--pairs", str(pairs), "--out", str(out),
        "--endpoint", sim.url, "--ending-at", "2026-11-27T23:59:59Z", "--checkpoint-interval", "0.2",
        *extra,
        env={**os.environ, "BRAZE_API_KEY": API_KEY},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit_file_size,
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, (out_b + err_b).decode()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for table in ("send_stats", "send_totals")
        if (root / table).exists()
        for p in sorted((root / table).rglob("*"))
        if p.is_file()
    }


async def test_disk_full_during_a_run_leaves_the_dataset_unchanged(sim: Simulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = tmp_path / "first.csv"
    _write_pairs(first, pairs_for(30, prefix="a"))
    code, text = await cli(sim, first, out, "--run-id", "night-1")
    assert code == 0, text
    before = _snapshot(out)
    assert before

    second = tmp_path / "second.csv"
    _write_pairs(second, pairs_for(300, prefix="b"))
    code, text = await cli(sim, second, out, "--run-id", "night-2", fsize=150_000)
    assert code == 6, text
    assert "Traceback" not in text
    assert "cannot write" in text and ("File too large" in text or "disk is full" in text), text
    # The earlier run's files are untouched and nothing of the failed run is visible.
    assert _snapshot(out) == before
    assert set(bulkexport.read_table(out, "send_stats").column("run_id").to_pylist()) == {"night-1"}

    # With room again, the same command resumes and completes the second run.
    code, text = await cli(sim, second, out, "--run-id", "night-2")
    assert code == 0, text
    runs = bulkexport.read_table(out, "send_totals").column("run_id").to_pylist()
    assert set(runs) == {"night-1", "night-2"}


async def test_a_checkpoint_failing_after_its_loop_was_cancelled_fails_the_final_flush(tmp_path: Path) -> None:
    """The fetch ends (its checkpoint loop cancelled) while a checkpoint is still writing,
    and that write fails: the final flush must raise that error, not commit later work as
    if nothing were missing, and the failure must not surface as a garbage-collector
    traceback ("Task exception was never retrieved")."""
    gate = threading.Event()

    class FullDisk(Staging):
        def write(self, seq: int, tables: dict[str, list[pa.RecordBatch]]) -> list[PartRecord]:
            gate.wait(10)
            raise StorageError("cannot write checkpoint: the disk is full")

    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    cfg = ExportConfig.build(endpoint="https://rest.iad-01.braze.com", api_key="k" * 36, checkpoint_interval=0.01)
    state = RunState(tmp_path / "run" / "state.sqlite")
    try:
        state.ingest([Pair("c1", "s1"), Pair("c2", "s2")])
        (first, pair), (second, other) = state.pending()
        ckpt = Checkpointer(cfg, state, FullDisk(RunLayout("r", tmp_path / "run")))
        ckpt.record_failure(first, pair, AttemptError("no such send", 404), 1)
        loop_task = asyncio.create_task(ckpt.run())
        await asyncio.sleep(0.2)  # the loop's checkpoint is now blocked in its write
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        ckpt.record_failure(second, other, AttemptError("no such send", 404), 1)
        gate.set()
        with pytest.raises(StorageError, match="disk is full"):
            await ckpt.flush()
        # Nothing was committed: both pairs are still pending for a resume.
        assert (state.count(PENDING), state.count(FAILED)) == (2, 0)
        del loop_task
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == []
    finally:
        gate.set()
        state.close()
        loop.set_exception_handler(None)


@pytest.mark.parametrize("kind", [LocalTarget, ObjectStoreTarget])
def test_clearing_a_generation_deletes_that_runs_names_only(tmp_path: Path, kind: type[Target]) -> None:
    """Run ids may hold dashes and digits: run ``a``'s generation 0 prefix, ``part-a-0-``,
    also starts run ``a-0``'s names. Names are matched whole, so clearing run ``a``'s
    generation 0 leaves every other run's files, and its own other generations."""
    root = tmp_path / "out"
    target = kind(str(root), pafs.LocalFileSystem(), str(root))  # an object store's code over a folder
    folder = root / "send_stats" / "date=2026-11-20"
    folder.mkdir(parents=True)
    names = ["part-a-0-00000.parquet", "part-a-0-00017.parquet", "part-a-1-00000.parquet",
             "part-a-0-0-00000.parquet", "part-a-00-00000.parquet.tmp", ".part-a-0-00001.parquet.tmp",
             "part-b-0-00000.parquet", "part-a-0-7.parquet", "other.parquet"]  # fmt: skip
    for name in names:
        (folder / name).write_bytes(b"x")
    layout = RunLayout.of(target, "a")
    assert target.delete_matching("send_stats/date=2026-11-20", partial(layout.is_part, gen=0)) == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(names[2:])
    assert [n for n in names[2:] if RunLayout.of(target, "a-0").is_part(n)] == ["part-a-0-0-00000.parquet"]
    assert [n for n in names[2:] if layout.is_part(n)] == ["part-a-1-00000.parquet"]
