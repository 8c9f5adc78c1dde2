"""Shared fixtures: a simulator on loopback and fast export settings for tests."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from bulkexport import ExportSummary, export_async
from bulkexport.simulator import Simulator

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


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_key=API_KEY, seed=11, anchor_date=ANCHOR, rate_limit=100_000, rate_window=1.0) as s:
        yield s


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


@pytest.fixture(autouse=True)
def _bulkexport_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bulkexport")
