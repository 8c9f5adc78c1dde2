"""Shared fixtures: a simulator on loopback and fast export settings for tests."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
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


@pytest.fixture(autouse=True)
def _bulkexport_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bulkexport")


BUCKET = "lake"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pafs.S3FileSystem]:
    """A moto S3 server on loopback with one bucket; credentials through the standard
    environment, as a user would set them."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "BULKEXPORT_STATE_DIR": str(tmp_path / "state"),
        }.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        fs = pafs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        yield fs
    finally:
        server.terminate()
        server.wait(timeout=10)
