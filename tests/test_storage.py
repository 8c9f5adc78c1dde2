"""Storage faults: a write that fails mid-run stops the run with exit 6 and a clear message,
and leaves the published dataset exactly as it was."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from pathlib import Path

import bulkexport
from bulkexport.simulator import Simulator

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
