"""Ground truth for export tests: what the Parquet output must hold, derived independently
of bulkexport's flattener (plain dict-per-row code over the simulator's own payload)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import orjson

from bulkexport.simulator import Simulator

STATS_KEYS = ("campaign_id", "send_id", "date", "channel", "variation_name", "variation_api_id")
TOTALS_KEYS = ("campaign_id", "send_id", "date")
_STATS_BASE = {"variation_name", "variation_api_id"}
_TOTALS_SKIP = {"time", "messages"}


def _extras(entry: dict[str, Any], known: set[str]) -> list[tuple[str, str]] | None:
    extra = [(k, orjson.dumps(v).decode()) for k, v in entry.items() if k not in known]
    return sorted(extra) or None


def expected(
    sim: Simulator,
    pairs: Iterable[tuple[str, str]],
    length: int,
    ending_at: datetime,
    stats_known: set[str],
    totals_known: set[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of send_stats and send_totals, one dict each, values as the API sent them."""
    stats: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    for cid, sid in dict.fromkeys(pairs):  # de-duplicated, order kept
        for day in sim.payload(cid, sid, length, ending_at)["data"]:
            if not day.get("messages"):
                continue  # an empty day past retention is "no data"
            d = date.fromisoformat(day["time"])
            top = {k: v for k, v in day.items() if k not in _TOTALS_SKIP}
            totals.append(
                {"campaign_id": cid, "send_id": sid, "date": d,
                 **{k: v for k, v in top.items() if k in totals_known},
                 "extra_metrics": _extras(top, totals_known)}
            )
            for channel, entries in day["messages"].items():
                for e in entries:
                    stats.append(
                        {"campaign_id": cid, "send_id": sid, "date": d, "channel": channel,
                         **{k: v for k, v in e.items() if k in stats_known or k in _STATS_BASE},
                         "extra_metrics": _extras(e, stats_known | _STATS_BASE)}
                    )
    return stats, totals


def normalise(rows: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Index rows by key, dropping nulls (absent and null compare equal) and sorting extras."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        clean = {k: v for k, v in row.items() if v is not None and k not in ("exported_at", "run_id")}
        if clean.get("extra_metrics") is not None:
            clean["extra_metrics"] = sorted(clean["extra_metrics"])
        key = tuple(row.get(k) for k in keys)
        assert key not in out, f"duplicate row for {key}"
        out[key] = clean
    return out
