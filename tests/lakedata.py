"""Fetches for lakehouse tests: the simulator's payloads flattened as the exporter does,
with the ground truth computed independently (tests/truth.py) from the same payloads.

Also a worker entry point (``python -m tests.lakedata``) that merges fetches into a table,
for the kill -9 test.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from bulkexport.flatten import Flattener
from bulkexport.simulator import Simulator

from .helpers import ANCHOR, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN, pairs_for
from .truth import STATS_KEYS, TOTALS_KEYS, expected, normalise

__all__ = ["pairs_for"]

LENGTH = 15
KEYS = {"send_stats": STATS_KEYS, "send_totals": TOTALS_KEYS}
T1 = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)

Payload = dict[str, Any]
Restate = Callable[[str, str, Payload], Payload]


def restate(cid: str, sid: str, payload: Payload) -> Payload:
    """Braze restating a pair's days: every number of its last day with data changes, and
    that day's last variation of its first channel disappears (kept if it is the only one)."""
    doc = copy.deepcopy(payload)
    days = [d for d in doc["data"] if d.get("messages")]
    if not days:
        return doc
    day = days[-1]
    day["unique_recipients"] += 1000
    for entries in day["messages"].values():
        for entry in entries:
            for name, value in entry.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    entry[name] = value + 7
    first = next(iter(day["messages"].values()))
    if len(first) > 1:
        first.pop()
    return doc


class _Source:
    """What tests/truth.py needs of a simulator: payloads, here possibly restated."""

    def __init__(self, sim: Simulator, change: Restate | None, extras: bool) -> None:
        self._sim, self._change, self._extras = sim, change, extras

    def payload(self, cid: str, sid: str, length: int, ending_at: datetime) -> Payload:
        doc = self._sim.payload(cid, sid, length, ending_at, extras=self._extras)
        return self._change(cid, sid, doc) if self._change else doc


@dataclass
class Fetch:
    """One fetch of some pairs: the exporter's batches and the rows they must become."""

    exported_at: datetime
    run_id: str
    stats: list[pa.RecordBatch]
    totals: list[pa.RecordBatch]
    want_stats: list[dict[str, Any]]
    want_totals: list[dict[str, Any]]

    def batches(self, table: str) -> list[pa.RecordBatch]:
        return self.stats if table == "send_stats" else self.totals

    def want(self, table: str) -> list[dict[str, Any]]:
        return self.want_stats if table == "send_stats" else self.want_totals


def fetch(
    pairs: Iterable[tuple[str, str]],
    exported_at: datetime = T1,
    run_id: str = "r1",
    *,
    change: Restate | None = None,
    extras: bool = False,
    seed: int = 11,
) -> Fetch:
    pairs = list(pairs)
    source = _Source(Simulator(seed=seed, anchor_date=ANCHOR), change, extras)
    flat = Flattener(run_id)
    us = int(exported_at.timestamp() * 1_000_000)
    for token, (cid, sid) in enumerate(pairs):
        flat.add(token, cid, sid, orjson.dumps(source.payload(cid, sid, LENGTH, ENDING_AT)), us)
    built = flat.build()
    assert not built.rejected
    stats, totals = expected(source, pairs, LENGTH, ENDING_AT, STATS_KNOWN, TOTALS_KNOWN)  # type: ignore[arg-type]
    return Fetch(exported_at, run_id, built.stats, built.totals, stats, totals)


def latest(table: str, *fetches: tuple[Fetch, Iterable[tuple[str, str]]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The expected table after merging ``fetches`` (each with the pairs it covers), by the
    rule stated plainly: for each (pair, date), the rows of the newest fetch that has it."""
    best: dict[tuple[Any, ...], tuple[datetime, list[dict[str, Any]]]] = {}
    for f, pairs in fetches:
        wanted = set(pairs)
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for row in f.want(table):
            if (row["campaign_id"], row["send_id"]) in wanted:
                groups.setdefault((row["campaign_id"], row["send_id"], row["date"]), []).append(row)
        for group, rows in groups.items():
            if group not in best or best[group][0] <= f.exported_at:
                best[group] = (f.exported_at, rows)
    return normalise([r for _, rows in best.values() for r in rows], KEYS[table])


def later(hours: float) -> datetime:
    return T1 + timedelta(hours=hours)


def _worker(argv: list[str] | None = None) -> None:
    """Merge fetch A (at T1), then its restatement B (at T1 + 1h), into one table, in small
    commits; run again after a kill, it converges on B."""
    from bulkexport.lakehouse import open_lake_table

    parser = argparse.ArgumentParser()
    parser.add_argument("fmt")
    parser.add_argument("out")
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args(argv)
    pairs = pairs_for(args.pairs)
    first = fetch(pairs)
    second = fetch(pairs, later(1), "r2", change=restate)
    table = open_lake_table(args.fmt, args.out, "send_stats", max_rows_per_commit=args.rows)
    for f in (first, second):
        result = table.merge(f.stats)
        print(f"merged {f.run_id}: {result.commits}", flush=True)


if __name__ == "__main__":
    _worker()
