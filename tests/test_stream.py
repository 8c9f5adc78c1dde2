"""The library's own-sink interface: Arrow record batches instead of Parquet files."""

from __future__ import annotations

import asyncio

import pyarrow as pa

import bulkexport
from bulkexport.schema import STATS_SCHEMA, TOTALS_SCHEMA
from bulkexport.simulator import FaultRule, Simulator

from .helpers import API_KEY, ENDING_AT, FAST, STATS_KNOWN, TOTALS_KNOWN, pairs_for
from .truth import STATS_KEYS, TOTALS_KEYS, expected, normalise


async def test_stream_batches_equal_ground_truth(sim: Simulator) -> None:
    sim.extras = True
    pairs = pairs_for(120)
    bad = pairs[7]
    sim.faults.append(FaultRule(kind="status", status=404, times=None, match=lambda c, s: (c, s) == bad))
    stream = bulkexport.stream_batches(
        pairs + pairs[:5], endpoint=sim.url, api_key=API_KEY, ending_at=ENDING_AT, **FAST
    )
    got: dict[str, list[pa.RecordBatch]] = {"send_stats": [], "send_totals": []}
    async for table, batch in stream:
        got[table].append(batch)
    assert all(b.schema == STATS_SCHEMA for b in got["send_stats"])
    assert all(b.schema == TOTALS_SCHEMA for b in got["send_totals"])
    good = [p for p in pairs if p != bad]
    want_stats, want_totals = expected(sim, good, 15, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN)
    rows = [r for b in got["send_stats"] for r in b.to_pylist()]
    assert normalise(rows, STATS_KEYS) == normalise(want_stats, STATS_KEYS)
    rows = [r for b in got["send_totals"] for r in b.to_pylist()]
    assert normalise(rows, TOTALS_KEYS) == normalise(want_totals, TOTALS_KEYS)
    assert stream.summary is not None
    assert (stream.summary.pairs_done, stream.summary.pairs_failed, stream.summary.files) == (119, 1, 0)


async def test_breaking_out_stops_the_export(sim: Simulator) -> None:
    sim.latency = 0.01
    stream = bulkexport.stream_batches(
        pairs_for(2000), endpoint=sim.url, api_key=API_KEY, ending_at=ENDING_AT,
        **{**FAST, "checkpoint_interval": 0.05},
    )  # fmt: skip
    async for _table, _batch in stream:
        break
    requests = sim.stats.requests
    assert requests < 2000
    await asyncio.sleep(0.3)
    assert sim.stats.requests - requests <= FAST["concurrency"]  # nothing new after the stop
