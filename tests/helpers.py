"""What the tests share: the fixed test data, driving the real CLI, and comparing an export
with the simulator's ground truth. Fixtures live in conftest.py; everything else is here."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

import bulkexport
from bulkexport import ExportSummary, export_async
from bulkexport.cli import (
    EXIT_AUTH,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_RUN_IN_PROGRESS,
    EXIT_STORAGE,
    EXIT_UNAVAILABLE,
)
from bulkexport.schema import STATS_FLOAT_METRICS, STATS_INT_METRICS, TOTALS_FLOAT_METRICS, TOTALS_INT_METRICS
from bulkexport.simulator import Simulator

from .truth import STATS_KEYS, TOTALS_KEYS, expected, normalise

__all__ = [
    "EXIT_AUTH", "EXIT_CONFIG", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_RUN_IN_PROGRESS",
    "EXIT_STORAGE", "EXIT_UNAVAILABLE",
]  # fmt: skip

ANCHOR = date(2026, 11, 27)


ENDING_AT = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)


API_KEY = "sk-test-0123456789abcdef-SECRET"


#: Settings that keep tests fast: no real-world backoffs, quick checkpoints.
FAST: dict[str, Any] = {
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "request_timeout": 5.0,
    "checkpoint_interval": 0.2,
    "concurrency": 16,
    "rate_limit": 100_000,
    "window": 1.0,
    "reserve": 0.0,
}


def pairs_for(n: int, prefix: str = "c") -> list[tuple[str, str]]:
    return [(f"{prefix}{i // 3:04d}", f"s{i:05d}") for i in range(n)]


async def run(sim: Simulator, pairs: Any, out: Path, **overrides: Any) -> ExportSummary:
    options = {**FAST, **overrides}
    return await export_async(
        pairs,
        out,
        endpoint=options.pop("endpoint", sim.url),
        api_key=options.pop("api_key", API_KEY),
        ending_at=options.pop("ending_at", ENDING_AT),
        length=options.pop("length", 15),
        **options,
    )


async def until(condition: Callable[[], bool], limit: float = 60.0, every: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail the test after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    for _ in itertools.count():
        if condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {limit}s")
        await asyncio.sleep(every)


STATS_KNOWN = set(STATS_INT_METRICS) | set(STATS_FLOAT_METRICS)


TOTALS_KNOWN = set(TOTALS_INT_METRICS) | set(TOTALS_FLOAT_METRICS)


def check_equal(out: Path, sim: Simulator, pairs: list[tuple[str, str]], length: int = 15) -> tuple[int, int]:
    want_stats, want_totals = expected(sim, pairs, length, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN)
    got_stats = bulkexport.read_table(out, "send_stats").to_pylist()
    got_totals = bulkexport.read_table(out, "send_totals").to_pylist()
    assert len(got_stats) == len(want_stats)
    assert len(got_totals) == len(want_totals)
    assert normalise(got_stats, STATS_KEYS) == normalise(want_stats, STATS_KEYS)
    assert normalise(got_totals, TOTALS_KEYS) == normalise(want_totals, TOTALS_KEYS)
    return len(want_stats), len(want_totals)


CLI = (sys.executable, "-m", "bulkexport.cli")


RUN_ID = "2026-11-27"  # the default run id: the date of --ending-at


async def cli(*args: str | Path, key: str | None = API_KEY) -> tuple[int, str, str]:
    """Run the console script; return exit code, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    if key is not None:
        env["BRAZE_API_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        *CLI, *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def export_args(sim: Simulator, pairs: Path, out: Path, *extra: str) -> list[str | Path]:
    return [
        "export", "--pairs", pairs, "--out", out, "--endpoint", sim.url,
        "--ending-at", "2026-11-27",  # a bare date: 23:59:59Z, conftest's ENDING_AT
        "--rate-limit", "3600000", "--reserve", "0", "--timeout", "5",
        "--checkpoint-interval", "0.2", "--concurrency", "8", *extra,
    ]  # fmt: skip


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "internal error" not in stderr


def flat(text: str) -> str:
    return " ".join(text.split())


ROOT = Path(__file__).resolve().parents[1]


INTERVAL = 0.2  # --checkpoint-interval


CONCURRENCY = 8


TABLES = ("send_stats", "send_totals")


Trigger = Callable[[], Awaitable[bool]]


# -- driving the CLI -------------------------------------------------------------------------
def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["campaign_id", "send_id"])
        w.writerows(pairs)
    return path


@dataclass
class Attempt:
    rc: int | None = None
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)
    killed_at: float | None = None  # time.time() of the signal, when one was sent
    started_at: float = 0.0  # time.time() at the start
    ended_at: float = 0.0  # time.time() once it has exited
    requests: int = 0  # simulator requests seen during this attempt
    elapsed: float = 0.0


@dataclass
class Cli:
    """Runs ``bulkexport export`` against ``sim`` with fixed arguments; one log per attempt."""

    sim: Simulator
    pairs: Path
    out: Path
    logs: Path
    extra: tuple[str, ...] = ()
    attempts: list[Attempt] = field(default_factory=list)

    def argv(self, *more: str) -> list[str]:
        return [
            sys.executable, "-m", "bulkexport.cli", "export",
            "--pairs", str(self.pairs),
            "--out", str(self.out),
            "--endpoint", self.sim.url,
            "--ending-at", "2026-11-27T23:59:59Z",
            "--checkpoint-interval", str(INTERVAL),
            "--concurrency", str(CONCURRENCY),
            *self.extra,
            *more,
        ]  # fmt: skip

    async def start(self, *more: str) -> tuple[asyncio.subprocess.Process, Attempt, Path, Path]:
        n = len(self.attempts)
        self.logs.mkdir(parents=True, exist_ok=True)
        out_log, err_log = self.logs / f"{n}.out", self.logs / f"{n}.err"
        env = {**os.environ, "BRAZE_API_KEY": API_KEY}
        env.pop("BRAZE_REST_ENDPOINT", None)
        with out_log.open("wb") as o, err_log.open("wb") as e:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(*more), stdout=o, stderr=e, stdin=asyncio.subprocess.DEVNULL, env=env, cwd=ROOT
            )
        att = Attempt()
        self.attempts.append(att)
        return proc, att, out_log, err_log

    async def run(self, *more: str, limit: float = 30.0) -> Attempt:
        """Run to its end (no signal)."""
        return await self.run_until(None, *more, limit=limit)

    async def run_until(
        self, trigger: Trigger | None, *more: str, sig: int = signal.SIGKILL, limit: float = 30.0
    ) -> Attempt:
        """Run; when ``trigger()`` (polled every ms) turns true, send ``sig``; wait for the
        end. Fails the test if the command is still running after ``limit`` seconds."""
        base = self.sim.stats.requests
        started = time.monotonic()
        proc, att, out_log, err_log = await self.start(*more)
        att.started_at = time.time()
        deadline = started + limit
        try:
            while proc.returncode is None:
                if trigger is not None and att.killed_at is None and await trigger():
                    att.killed_at = time.time()
                    proc.send_signal(sig)
                if time.monotonic() > deadline:
                    pytest.fail(f"bulkexport did not finish within {limit}s (hang?); args {more}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.001)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        att.rc = proc.returncode
        att.ended_at = time.time()
        att.elapsed = time.monotonic() - started
        att.requests = self.sim.stats.requests - base
        att.stdout = out_log.read_text()
        att.stderr = err_log.read_text()
        return att


def run_dir(out: Path) -> Path:
    return out / "_bulkexport" / "runs" / RUN_ID


def committed_pairs(out: Path) -> set[tuple[str, str]]:
    """Pairs the run state records as done (read-only: the files are left as the kill
    left them, WAL included, for the next attempt to recover)."""
    db = run_dir(out) / "state.sqlite"
    if not db.exists():
        return set()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return set(con.execute("SELECT campaign_id, send_id FROM pairs WHERE status = 1"))
    except sqlite3.OperationalError:  # killed before the tables were created
        return set()
    finally:
        con.close()


def request_log(sim: Simulator) -> list[tuple[float, tuple[str, str]]]:
    """(arrival time, pair) of every request the simulator has served so far."""
    stats = sim.stats
    assert len(stats.timestamps) == len(stats.last_queries) < 1000  # the deque keeps 1000
    out = []
    for t, q in zip(stats.timestamps, stats.last_queries, strict=True):
        query = dict(parse_qsl(q))
        out.append((t, (query["campaign_id"], query["send_id"])))
    return out


def assert_no_traceback(att: Attempt) -> None:
    assert "Traceback" not in att.stderr, att.stderr
    assert "internal error" not in att.stderr, att.stderr


def free_port() -> int:
    """A TCP port nothing listens on (for a server started later, or for none at all)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

#: The bucket the ``s3`` fixture creates on its moto server.
BUCKET = "lake"
