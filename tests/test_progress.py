"""Progress: a bar on a terminal (a real pseudo-terminal here), log lines off one."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

from bulkexport.simulator import Simulator

from .helpers import API_KEY, pairs_for


def _read_all(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO once the child side is closed
            return
        if not data:
            return
        chunks.append(data)


async def test_progress_bar_on_a_terminal(sim: Simulator, tmp_path: Path) -> None:
    sim.latency = 0.1  # long enough for several redraws
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("campaign_id,send_id\n" + "".join(f"{c},{s}\n" for c, s in pairs_for(120)))
    master, slave = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bulkexport.cli", "export", "--pairs", str(pairs), "--out", str(tmp_path / "out"),
             "--endpoint", sim.url, "--ending-at", "2026-11-27T23:59:59Z", "--concurrency", "8"],
            env={**os.environ, "BRAZE_API_KEY": API_KEY, "COLUMNS": "120"},
            stdout=subprocess.PIPE, stderr=slave, timeout=60,
        )
    finally:
        os.close(slave)
    reader.join(timeout=5)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen
    assert "120/120" in screen  # the bar reached the total
    assert screen.count("\r") >= 3  # and was redrawn in place while running
    assert "req/s" in screen and "x 429" in screen
    assert "pairs      120 exported" in proc.stdout.decode()  # the summary still goes to stdout
    assert API_KEY not in screen
