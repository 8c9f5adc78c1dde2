"""Library entry points: an async function for async code, a sync wrapper for schedulers.

Both return an :class:`ExportSummary` and raise the errors of :mod:`bulkexport.errors`
(``ExportSummary.status`` is ``partial`` when some pairs failed for good; that is a result,
not an exception, because the rest of the data is good and published).
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from . import env
from .client import format_ending_at
from .config import ExportConfig
from .errors import ConfigError
from .inputs import ApiKey, retention_warning
from .layout import RunLayout
from .pairs import IdCheck, PairSource, iter_items, iter_pair_file
from .pipeline import Exporter
from .state import DONE, FAILED, PENDING, RunState
from .storage import open_target
from .summary import ExportSummary, Progress

__all__ = ["BatchStream", "Plan", "export", "export_async", "make_plan", "stream_batches"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _config(
    endpoint: str | None,
    api_key: str | ApiKey | None,
    ending_at: datetime | date | str | None,
    run_id: str | None,
    allow_custom_endpoint: bool,
    options: dict[str, Any],
) -> ExportConfig:
    endpoint = endpoint or os.environ.get(env.ENDPOINT)
    if not endpoint:
        raise ConfigError(f"no endpoint: pass endpoint= or set {env.ENDPOINT}")
    key = api_key if api_key is not None else os.environ.get(env.API_KEY)
    if not key:
        raise ConfigError(f"no API key: pass api_key= or set {env.API_KEY}")
    return ExportConfig.build(
        endpoint=endpoint,
        api_key=key,
        ending_at=ending_at,
        run_id=run_id,
        allow_custom_endpoint=allow_custom_endpoint,
        **options,
    )


def _check_call(*, on_progress: object = None, **flags: object) -> None:
    """The call's own switches: a string such as ``"no"`` is truthy, and a progress callback
    that is not callable would fail only once the fetch had started."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, not {value!r:.40}")
    if on_progress is not None and not callable(on_progress):
        raise ConfigError(f"on_progress must be a callable taking a Progress, not {type(on_progress).__name__}")


async def export_async(
    pairs: PairSource,
    out: str | Path,
    *,
    endpoint: str | None = None,
    api_key: str | ApiKey | None = None,
    ending_at: datetime | date | str | None = None,
    run_id: str | None = None,
    pairs_format: str | None = None,
    retry_failed: bool = False,
    allow_custom_endpoint: bool = False,
    handle_signals: bool = False,
    wait: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    **options: Any,
) -> ExportSummary:
    """Export send analytics for ``pairs`` into Hive-partitioned Parquet under ``out``.

    ``pairs``: a CSV / JSON Lines / Parquet path, or any iterable or async iterable of
    ``(campaign_id, send_id)`` tuples, :class:`Pair` or mappings with both keys.
    ``endpoint`` and ``api_key`` default to ``BRAZE_REST_ENDPOINT`` / ``BRAZE_API_KEY``.
    Other keyword options are the fields of :class:`ExportConfig` (``length``, ``share``,
    ``reserve``, ``concurrency``, ``overwrite``...). With ``handle_signals``, SIGINT and
    SIGTERM stop the run cleanly (resumable) instead of killing it. ``on_progress`` gets a
    :class:`Progress` snapshot twice a second while fetching (without it, a progress line is
    logged every 30 seconds).

    One process exports a run at a time: if another holds it, :class:`RunInProgress` is raised
    at once, or with ``wait`` this waits for it, then resumes or finds the run complete. A
    run that stops early raises a :class:`RunStopped` whose ``summary`` counts what is
    committed (pairs done, failed, pending, rows, files); the same call resumes it.
    """
    _check_call(retry_failed=retry_failed, allow_custom_endpoint=allow_custom_endpoint,
                handle_signals=handle_signals, wait=wait, on_progress=on_progress)  # fmt: skip
    cfg = _config(endpoint, api_key, ending_at, run_id, allow_custom_endpoint, options)
    exporter = Exporter(
        cfg, out, pairs_format=pairs_format, retry_failed=retry_failed, on_progress=on_progress, wait=wait
    )
    loop = asyncio.get_running_loop()
    installed = []
    if handle_signals:
        for sig in _SIGNALS:
            try:
                loop.add_signal_handler(sig, exporter.request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or a platform without signal support
    try:
        return await exporter.run(pairs)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def export(pairs: PairSource, out: str | Path, **kwargs: Any) -> ExportSummary:
    """Blocking :func:`export_async` for schedulers (Airflow, Dagster, cron scripts).

    Must not be called from a running event loop; use :func:`export_async` there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(export_async(pairs, out, **kwargs))
    raise RuntimeError("bulkexport.export() called inside an event loop; await export_async() instead")


@dataclass(frozen=True, slots=True)
class Plan:
    """What an export would do, computed without sending a request (``--dry-run``)."""

    run_id: str
    window: str  # the series requested for each pair
    pairs_read: int
    pairs_unique: int
    pairs_done: int  # already committed by an earlier session of this run
    pairs_failed: int  # recorded as failed by an earlier session
    requests: int  # at least one per pair still to fetch
    rate: float  # requests per second the run paces at
    per_window: float  # requests it may spend per rate-limit window (reserve and share applied)
    window_seconds: float
    estimated_seconds: float
    ids_trimmed: int = 0  # ids of the input whose surrounding whitespace was removed
    pairs_in_run: int = 0  # pairs the run already has (0: a new run)
    pairs_new: int = 0  # pairs of the input the run does not have yet
    warning: str | None = None  # the series lies wholly outside what Braze keeps

    def lines(self) -> list[str]:
        hours, rest = divmod(int(self.estimated_seconds + 0.5), 3600)
        pairs = f"pairs      {self.pairs_unique:,} unique of {self.pairs_read:,} read"
        if self.ids_trimmed:
            pairs += f", {self.ids_trimmed:,} ids trimmed"
        if self.pairs_in_run:
            pairs += (
                f"; the run has {self.pairs_in_run:,} ({self.pairs_done:,} already done, "
                f"{self.pairs_failed:,} failed), {self.pairs_new:,} of these are new to it"
            )
        return [
            f"run        {self.run_id} (dry run: no request sent)",
            f"series     {self.window}",
            *([f"warning    {self.warning}"] if self.warning else []),
            pairs,
            f"requests   {self.requests:,} (one per pair to fetch, before retries)",
            f"pace       {self.rate:,.1f} requests/s, at most {self.per_window:,.0f} per "
            f"{self.window_seconds:g}s window",
            f"duration   about {hours}h{rest // 60:02d}m{rest % 60:02d}s if nobody else spends the budget",
        ]


def make_plan(
    pairs: PairSource,
    out: str | Path,
    *,
    endpoint: str | None = None,
    api_key: str | ApiKey | None = None,
    ending_at: datetime | date | str | None = None,
    run_id: str | None = None,
    pairs_format: str | None = None,
    allow_custom_endpoint: bool = False,
    **options: Any,
) -> Plan:
    """Read and check the pairs (a file or a sync iterable), look at the run's state, and
    estimate the work, without any network traffic."""
    cfg = _config(endpoint, api_key, ending_at, run_id, allow_custom_endpoint, options)
    check = IdCheck()
    if isinstance(pairs, str | Path):
        items = iter_pair_file(pairs, pairs_format, check)
    elif isinstance(pairs, Iterable):
        items = iter_items(pairs, check=check)
    else:
        raise ConfigError("a plan needs a pairs file or a plain (not async) iterable of pairs")
    existing = RunLayout.of(open_target(out), cfg.run_id, Path(cfg.state_dir) if cfg.state_dir else None).state_db
    done = failed = pending = in_run = 0
    with tempfile.TemporaryDirectory(prefix="bulkexport-plan-") as tmp:
        spool = RunState(Path(tmp) / "plan.sqlite")
        try:
            read, unique, new = spool.ingest(p for _, p in items)
            if existing.exists() and not cfg.overwrite:
                # The run's pairs are the union of its inputs: only the new ones and those
                # still pending cost requests.
                new = spool.count_absent_from(existing)
                state = RunState(existing)
                try:
                    done, failed, pending = state.count(DONE), state.count(FAILED), state.count(PENDING)
                    in_run = state.count()
                finally:
                    state.close()
        finally:
            spool.close()
    requests = pending + new
    per_window = min(cfg.share, 1 - cfg.reserve) * cfg.rate_limit
    seconds = max(requests / cfg.rate, requests / per_window * cfg.window) if requests else 0.0
    return Plan(
        run_id=cfg.run_id,
        window=f"{cfg.length} days ending {format_ending_at(cfg.ending_at)}",
        pairs_read=read,
        pairs_unique=unique,
        pairs_done=done,
        pairs_failed=failed,
        requests=requests,
        rate=cfg.rate,
        per_window=per_window,
        window_seconds=cfg.window,
        estimated_seconds=seconds,
        ids_trimmed=check.trimmed,
        pairs_in_run=in_run,
        pairs_new=new,
        warning=retention_warning(cfg.ending_at, cfg.length),
    )


class BatchStream:
    """``async for table, batch in stream``: Arrow record batches of ``send_stats`` and
    ``send_totals`` (the in-memory schema, ``date`` included) for callers with their own sink.

    The same engine as :func:`export_async` (pacing, retries, de-duplication through an
    on-disk spool, failures recorded), without Parquet output and without resume: the
    spool lives in a temporary folder for the life of the iteration. ``summary`` is set
    once the iteration ends. Breaking out of the loop stops the export.
    """

    def __init__(self, pairs: Any, cfg: ExportConfig, pairs_format: str | None) -> None:
        self._pairs = pairs
        self._cfg = cfg
        self._pairs_format = pairs_format
        self.summary: ExportSummary | None = None

    async def __aiter__(self) -> AsyncIterator[tuple[str, Any]]:
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(maxsize=4)

        async def sink(table: str, batch: Any) -> None:
            await queue.put((table, batch))  # bounded: a slow consumer slows the export

        with tempfile.TemporaryDirectory(prefix="bulkexport-stream-") as tmp:
            exporter = Exporter(self._cfg, tmp, pairs_format=self._pairs_format, batch_sink=sink)

            async def produce() -> None:
                try:
                    self.summary = await exporter.run(self._pairs)
                finally:
                    await queue.put(None)

            task = asyncio.create_task(produce())
            try:
                while (item := await queue.get()) is not None:
                    yield item
                await task  # re-raises what ended the export
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)


def stream_batches(
    pairs: PairSource,
    *,
    endpoint: str | None = None,
    api_key: str | ApiKey | None = None,
    ending_at: datetime | date | str | None = None,
    pairs_format: str | None = None,
    allow_custom_endpoint: bool = False,
    **options: Any,
) -> BatchStream:
    """Export into Arrow record batches instead of Parquet; see :class:`BatchStream`."""
    cfg = _config(endpoint, api_key, ending_at, "stream", allow_custom_endpoint, options)
    return BatchStream(pairs, cfg, pairs_format)
