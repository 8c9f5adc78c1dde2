"""What every client of the suite fetches: the simulator's settings, the pairs and their bodies.

One place, so that bulkexport, the peers and the per-stage benchmark see the same data, and
the numbers of different sections can be set side by side. Only the simulator's public
ground truth (``Simulator.send_date``, ``Simulator.payload``) is used here, never the engine.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

from bulkexport.config import DEFAULT_LENGTH

#: Shaped like a Braze key (36 characters): the CLI refuses keys under 16 characters.
API_KEY = "0f8b2c6e-3d1a-4e5f-9b7c-2a6d8e4f1c03"
SEED = 0
ANCHOR = date(2026, 11, 27)
ENDING_AT = "2026-11-27T23:59:59Z"
#: bulkexport's default series length: a pair sent 13-14 days before the anchor fills 14 days.
LENGTH = DEFAULT_LENGTH
TYPICAL_DAYS = 14
TYPICAL_ENTRIES = 4  # channel/variation entries per day
#: Rate limit given to the simulator and the CLI when pacing is not what is measured.
UNTHROTTLED = 100_000_000


def ending_at() -> datetime:
    return datetime.fromisoformat(ENDING_AT)


def typical_pairs(n: int) -> list[tuple[str, str]]:
    """``n`` distinct pairs whose response is the typical one: 14 full days x 4 entries.

    A pair sent 13 or 14 days before the anchor fills 14 days of the 15-day window; its entry
    count is the same every day, so a one-day payload on the send day tells it cheaply. About
    one candidate in ten qualifies (~3 ms per pair found).
    """
    from bulkexport.simulator import Simulator

    sim = Simulator(api_key=API_KEY, seed=SEED, anchor_date=ANCHOR)
    wanted = {ANCHOR.toordinal() - 13, ANCHOR.toordinal() - 14}
    out: list[tuple[str, str]] = []
    i = 0
    while len(out) < n:
        cid, sid = f"cmp{i % 499:03d}", f"snd{i:07d}"
        i += 1
        sent = sim.send_date(cid, sid)
        if sent.toordinal() not in wanted:
            continue
        day = sim.payload(cid, sid, 1, datetime(sent.year, sent.month, sent.day, 12, tzinfo=UTC))
        entries = sum(len(v) for v in day["data"][0]["messages"].values())
        if entries == TYPICAL_ENTRIES:
            out.append((cid, sid))
    return out


def typical_bodies(pairs: list[tuple[str, str]]) -> list[bytes]:
    """The simulator's exact response bodies for ``pairs`` (``orjson.dumps(payload)``)."""
    import orjson

    from bulkexport.simulator import Simulator

    sim = Simulator(api_key=API_KEY, seed=SEED, anchor_date=ANCHOR)
    bodies = [orjson.dumps(sim.payload(c, s, LENGTH, ending_at())) for c, s in pairs]
    for b in bodies[:8]:
        days = [d for d in orjson.loads(b)["data"] if d.get("messages")]
        if len(days) != TYPICAL_DAYS:
            raise AssertionError("the simulator's data model changed: a typical pair no longer has 14 days")
    return bodies


def scale_pairs(n: int) -> Iterator[tuple[str, str]]:
    """Ordinary simulator pairs (sent 0-20 days before the anchor: ~52 rows each), generated
    lazily so that nothing of size ``n`` is held."""
    return ((f"scl{i % 997:03d}", f"s{i:08d}") for i in range(n))


def write_pairs_csv(path: Path, pairs: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> Path:
    """The CLI's input format (``campaign_id,send_id`` header), streamed to disk."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("campaign_id", "send_id"))
        w.writerows(pairs)
    return path


def read_pairs_csv(path: str | Path) -> list[tuple[str, str]]:
    """The pairs of a file written by :func:`write_pairs_csv`."""
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        return [(c, s) for c, s in rows]
