"""The result of a run, as the library returns it and the CLI prints it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FINISHED", "ExportSummary", "Progress", "Status"]

#: ``complete``: every pair exported. ``partial``: finished, some pairs failed for good.
#: ``already_complete``: the run id was finished before; nothing was fetched. The run stopped
#: early, resumable, with what it committed kept: ``interrupted`` (a signal or stop request),
#: ``unavailable`` (Braze did not answer for ``max_outage``), ``auth_refused`` (401/403),
#: ``storage_error`` (the output or state could not be written).
Status = Literal[
    "complete", "partial", "already_complete", "interrupted", "unavailable", "auth_refused", "storage_error"
]
#: Statuses of a run that finished (a manifest with one of these means: nothing left to do).
FINISHED: frozenset[str] = frozenset({"complete", "partial"})


@dataclass(slots=True)
class ExportSummary:
    """Counts and timings of one invocation (a resumed run counts its earlier sessions'
    pairs in ``pairs_done``; requests and timings are this invocation's)."""

    run_id: str
    out: str
    status: Status = "complete"
    pairs_total: int = 0  # unique pairs in the run
    pairs_read: int = 0  # records read from this invocation's input (duplicates included)
    pairs_duplicates: int = 0  # records of this input that repeat an earlier one of it
    pairs_added: int = 0  # pairs this input added to the run (all of them for a new run)
    ids_trimmed: int = 0  # ids of this input whose surrounding whitespace was removed
    pairs_done: int = 0  # exported, in this run (all sessions)
    pairs_failed: int = 0  # failed for good
    pairs_pending: int = 0  # neither yet: a stopped run fetches them when resumed
    pairs_resumed: int = 0  # already done when this invocation started
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0  # HTTP 429 responses
    statuses: dict[int, int] = field(default_factory=dict)
    stats_rows: int = 0  # send_stats rows written by this run
    totals_rows: int = 0  # send_totals rows written by this run
    files: int = 0  # Parquet files this run published
    #: lakehouse formats: each table's version (Delta) or snapshot id (Iceberg) after the run
    tables: dict[str, int | None] = field(default_factory=dict)
    wall_seconds: float = 0.0
    fetch_seconds: float = 0.0
    paused_seconds: float = 0.0
    limit: int | None = None  # X-RateLimit-Limit learnt from Braze
    base_rate: float = 0.0  # requests/s the run paced at before feedback
    max_in_flight: int = 0
    unknown_fields: list[str] = field(default_factory=list)
    unknown_channels: list[str] = field(default_factory=list)
    manifest: str | None = None
    failures_file: str | None = None

    @property
    def request_rate(self) -> float:
        """Achieved requests per second while fetching."""
        return self.requests / self.fetch_seconds if self.fetch_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["request_rate"] = round(self.request_rate, 3)
        out["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        return out

    def lines(self) -> list[str]:
        """The human summary, one fact per line."""
        limit = f"{self.limit:,}/window (learnt)" if self.limit else "not reported"
        notes = [f"{self.pairs_read:,} read", f"{self.pairs_duplicates:,} duplicates"]
        if self.pairs_added != self.pairs_total:  # the run had pairs before this input
            notes.append(f"{self.pairs_added:,} new to the run")
        if self.ids_trimmed:
            notes.append(f"{self.ids_trimmed:,} ids trimmed")
        if self.pairs_resumed:
            notes.append(f"{self.pairs_resumed:,} done before this session")
        return [
            f"run {self.run_id}: {self.status}",
            f"pairs      {self.pairs_done:,} exported, {self.pairs_failed:,} failed"
            + (f", {self.pairs_pending:,} pending" if self.pairs_pending else "")
            + f" of {self.pairs_total:,} ({', '.join(notes)})",
            f"requests   {self.requests:,} ({self.retries:,} retries, {self.rate_limited:,} x 429)",
            f"rows       send_stats {self.stats_rows:,}, send_totals {self.totals_rows:,} (committed)",
            (f"tables     {', '.join(f'{t} at {v}' for t, v in self.tables.items())} (version / snapshot)"
             if self.tables else f"files      {self.files:,} Parquet files published"),
            f"time       {self.wall_seconds:.1f}s wall, {self.paused_seconds:.1f}s paused",
            f"rate       {self.request_rate:,.1f} requests/s achieved "
            f"(paced at {self.base_rate:,.1f}/s; limit {limit})",
        ]


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot while fetching, for progress bars and log lines."""

    pairs_total: int
    pairs_done: int  # exported, this session and before
    pairs_failed: int  # failed for good, this session and before
    requests: int  # this session
    rate_limited: int  # 429s this session
    paused_seconds: float
    pace: float  # requests per second the limiter allows right now
    elapsed: float  # seconds since the fetch started

    @property
    def request_rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0
