"""Shared fixtures: a simulator on loopback and fast export settings for tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from bulkexport.simulator import Simulator

from .helpers import ANCHOR, API_KEY


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_key=API_KEY, seed=11, anchor_date=ANCHOR, rate_limit=100_000, rate_window=1.0) as s:
        yield s


@pytest.fixture(autouse=True)
def _bulkexport_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bulkexport")
