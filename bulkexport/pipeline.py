"""The whole flow of one run; the only module that knows every stage.

::

    pairs source --ingest--> RunState (SQLite spool, dedup)
         |
    feeder --bounded queue--> N workers --(limiter, client, retries)--> Flattener
                                                                          |
                                  checkpointer: build -> staged IPC -> commit pairs done
                                                                          |
                                  publish: staged -> row-group-sized Parquet -> manifest

Memory is bounded by the queue (2 x concurrency pairs), the flattener (a build every
``_BUILD_EVERY`` responses) and the checkpoint buffer (``checkpoint_rows``, with workers
waiting when a slow disk lets it reach twice that) -- never by the number of pairs.

A pair counts as done only when the checkpoint holding its rows is committed in the run
state; a stop, a crash or an auth failure at any moment leaves every other pair pending, so
the next invocation with the same run id fetches exactly those.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from ._version import __version__
from .client import BrazeClient, format_ending_at
from .config import ExportConfig, retention_warning
from .errors import AttemptError, AuthError, BrazeUnavailable, ConfigError, ExportInterrupted, RunStopped, StorageError
from .flatten import Flattener
from .limiter import RateController
from .pairs import IdCheck, Pair, iter_items, iter_pair_file, pair_from_item
from .retry import RetryPolicy, attempt_with_retries
from .runlock import RunLock
from .sink import Sink
from .state import DONE, FAILED, PENDING, Ingested, RunState
from .storage import open_target
from .summary import FINISHED, ExportSummary, Progress

__all__ = ["Exporter"]

log = logging.getLogger("bulkexport")

_BUILD_EVERY = 128  # responses per Arrow conversion: amortises per-call costs, bounds memory
_STOP_GRACE = 5.0  # seconds in-flight requests get to finish after a stop request
_MAX_LOGGED_UNKNOWN = 50  # distinct unknown field names logged before we go quiet
_MANIFEST_VERSION = 1


class Exporter:
    """One run: construct, then ``await run(source)``; ``request_stop()`` from a signal."""

    def __init__(
        self,
        cfg: ExportConfig,
        out: str | Path,
        *,
        pairs_format: str | None = None,
        retry_failed: bool = False,
        progress_interval: float = 30.0,
        on_progress: Callable[[Progress], None] | None = None,
        batch_sink: Callable[[str, pa.RecordBatch], Awaitable[None]] | None = None,
        wait: bool = False,
    ) -> None:
        self.cfg = cfg
        self._wait = wait  # for another process holding the run
        self._retry = RetryPolicy(cfg.max_attempts, cfg.max_rate_limited, cfg.backoff_initial, cfg.backoff_max)
        self.out = str(out)
        # With a batch sink, rows go to the caller at each checkpoint instead of to Parquet.
        self._batch_sink = batch_sink
        self._pairs_format = pairs_format
        self._retry_failed = retry_failed
        # Without a callback, a log line every ``progress_interval`` seconds (cron logs);
        # with one (a progress bar on a terminal), a snapshot twice a second.
        self._on_progress = on_progress
        self._progress_interval = progress_interval if on_progress is None else 0.5
        self._client: BrazeClient | None = None
        self._ok = 0  # pairs exported this session
        self._failed = 0  # pairs failed for good this session
        self._failed_before = 0  # ... and in earlier sessions
        self._sink = Sink(
            open_target(out), cfg.run_id, row_group_rows=cfg.row_group_rows, file_rows=cfg.file_rows,
            state_root=Path(cfg.state_dir) if cfg.state_dir else None,
        )
        self.summary = ExportSummary(run_id=cfg.run_id, out=self.out)
        self._stop = asyncio.Event()
        self._stopping = False
        # Filled in by run():
        self._state: RunState | None = None
        self._flat = Flattener(cfg.run_id)
        self._buf_tables: dict[str, list[pa.RecordBatch]] = {"send_stats": [], "send_totals": []}
        self._buf_rows = 0
        self._buf_done: list[int] = []
        self._buf_failed: list[tuple[int, int | None, str, int, str]] = []
        self._ckpt_lock = asyncio.Lock()
        self._ckpt_wake = asyncio.Event()
        self._ckpt_drained = asyncio.Event()
        self._seq = 0
        self._unknown: set[str] = set()
        self._limiter: RateController | None = None
        self._started = time.monotonic()

    def request_stop(self) -> None:
        """Stop taking new pairs; in-flight ones finish (or are abandoned after a grace)."""
        if not self._stopping:
            log.warning("stop requested: finishing in-flight requests, then committing")
        self._stopping = True
        self._stop.set()

    # ------------------------------------------------------------------------------------
    async def run(self, source: Any) -> ExportSummary:
        """Ingest ``source`` into the run, fetch what is pending, publish.

        Holds the run's lock throughout (:class:`RunInProgress` if another process has it).
        Raises :class:`ConfigError`, or a :class:`RunStopped` (:class:`AuthError`,
        :class:`ExportInterrupted`, :class:`StorageError`, :class:`BrazeUnavailable`) whose
        ``summary`` counts what is committed; ``self.summary`` is filled in either way.
        """
        self._started = time.monotonic()
        lock = RunLock(self._sink.run_dir.parent / f"{self.cfg.run_id}.lock", self.cfg.run_id, wait=self._wait,
                       stopping=self._stop)  # fmt: skip
        try:
            async with lock:
                try:
                    return await self._run(source)
                except RunStopped as exc:
                    self._stopped(exc)
                    raise
        finally:
            self.summary.wall_seconds = time.monotonic() - self._started
            if self._state is not None:
                self._state.close()

    def _stopped(self, exc: RunStopped) -> None:
        """The run stops early: count what is committed, say so in the run's manifest (status
        tells a scheduler it is not finished), and hand the counts to the caller."""
        s = self.summary
        s.status = (
            "unavailable" if isinstance(exc, BrazeUnavailable)
            else "auth_refused" if isinstance(exc, AuthError)
            else "storage_error" if isinstance(exc, StorageError)
            else "interrupted"
        )  # fmt: skip
        exc.summary = s
        state = self._state
        if state is None:
            return
        with contextlib.suppress(StorageError, OSError):  # best effort: the disk may be the problem
            self._fill_counts(state)
            self._write_outputs(state)

    async def _run(self, source: Any) -> ExportSummary:
        cfg, s = self.cfg, self.summary
        if (
            not cfg.overwrite
            and not (self._sink.run_dir / "state.sqlite").exists()
            and self._sink.published_elsewhere()
        ):
            s.status = "already_complete"
            log.warning(
                "run %s is already complete in %s (finished on another machine, whose state holds its pairs): "
                "this input was not compared with them; use --run-id to export new pairs",
                cfg.run_id,
                self.out,
            )
            return s
        state = self._open_state()
        cfg = self.cfg  # a resumed run may have taken back its original ending_at
        await self._ingest(state, source)
        s.pairs_total = state.count()
        if self._retry_failed:
            n = state.reset_failed()
            log.info("retrying %d pair(s) that failed before", n)
            if n:
                state.put("phase", "fetching")
        pending = state.count(PENDING)
        s.pairs_resumed = state.count(DONE)
        if state.get("phase") == "published" and pending == 0:
            self._fill_counts(state)
            if not (self._sink.run_dir / "manifest.json").exists():
                # A kill between the publish and the manifest: write it now.
                s.status = "partial" if s.pairs_failed else "complete"
                self._write_outputs(state)
            s.status = "already_complete"
            log.info("run %s is already complete; nothing to do (use --overwrite to redo it)", cfg.run_id)
            return s
        removed = self._sink.remove_orphans(state.staged_files())
        if removed:
            log.info("removed %d incomplete checkpoint file(s) left by an earlier crash", removed)
        self._seq = int(state.get("next_seq") or 0)
        if pending:
            warning = retention_warning(cfg.ending_at, cfg.length)
            if warning:
                log.warning("%s", warning)
            log.info(
                "run %s: %d pairs, %d to fetch%s; length=%d ending_at=%s, pacing at %.1f req/s",
                cfg.run_id,
                s.pairs_total,
                pending,
                f" ({s.pairs_resumed} done earlier)" if s.pairs_resumed else "",
                cfg.length,
                format_ending_at(cfg.ending_at),
                cfg.rate,
            )
            state.put("phase", "fetching")
            await self._fetch(state)
            left = state.count(PENDING)
            if left:  # every worker ended and nothing failed: this would be a bug of ours
                raise RuntimeError(f"{left} pairs are still pending after the fetch; run again to resume")
        gen, staged = await self._publish(state)
        self._fill_counts(state)
        s.status = "partial" if s.pairs_failed else "complete"
        self._write_outputs(state)
        self._finish_publish(state, gen, staged)
        log.info(
            "run %s %s: %d exported, %d failed, %d files",
            cfg.run_id,
            s.status,
            s.pairs_done,
            s.pairs_failed,
            s.files,
        )
        return s

    # -- state ----------------------------------------------------------------------------
    def _open_state(self) -> RunState:
        cfg = self.cfg
        path = self._sink.run_dir / "state.sqlite"
        if cfg.overwrite and path.exists():
            old = RunState(path)
            published = [p[0] for p in old.published()]
            old.close()
            self._sink.remove_run(published)
            log.info("--overwrite: removed run %s (%d published files)", cfg.run_id, len(published))
        self._sink.prepare()
        state = self._state = RunState(path)
        params = {
            "endpoint": cfg.endpoint,
            "length": cfg.length,
            "ending_at": format_ending_at(cfg.ending_at),
        }
        known = state.get("params")
        if known is None:
            state.put("params", params)
        elif known != params and cfg.ending_at_default and {**known, "ending_at": params["ending_at"]} == params:
            # Same run, started earlier today with "now" as its end: resume it with that end,
            # so the resumed pairs describe the same series as those already written.
            self.cfg = dataclasses.replace(cfg, ending_at=datetime.fromisoformat(known["ending_at"]))
            log.info("resuming run %s with its original ending_at=%s", cfg.run_id, known["ending_at"])
        elif known != params:
            diff = ", ".join(
                f"{k}: {known.get(k)!r} then, {v!r} now" for k, v in params.items() if known.get(k) != v
            )
            raise ConfigError(
                f"run {cfg.run_id} already exists in {self.out} with other parameters ({diff}); "
                "pass the same values to resume it, --run-id for a new run, or --overwrite"
            )
        return state

    async def _ingest(self, state: RunState, source: Any) -> None:
        """Add the input's pairs to the run: the run's pairs are the union of every input
        given for its run id, so a rerun with new pairs fetches exactly those, and pairs
        already in the run (done, failed or pending) are never fetched twice."""
        check = IdCheck()
        had = state.count()
        if isinstance(source, str | Path):
            got = await asyncio.to_thread(
                state.ingest, (p for _, p in iter_pair_file(source, self._pairs_format, check))
            )
        elif isinstance(source, AsyncIterable):
            got = await self._ingest_async(state, source, check)
        elif isinstance(source, Iterable):
            got = await asyncio.to_thread(state.ingest, (p for _, p in iter_items(source, check=check)))
        else:
            raise ConfigError(
                f"pairs must be a file path or an iterable of pairs, not {type(source).__name__}"
            )
        s = self.summary
        s.pairs_read, s.pairs_duplicates, s.pairs_added = got.read, got.read - got.unique, got.added
        s.ids_trimmed = check.trimmed
        if got.unique == 0:
            log.warning("the pairs input holds no pairs")
        if got.read != got.unique:
            log.info("read %d pairs, %d duplicates ignored", got.read, got.read - got.unique)
        if check.trimmed:
            log.info(
                "trimmed surrounding whitespace from %d id(s) (the first: %s)", check.trimmed, check.first_trimmed
            )
        if had and got.added:
            log.info(
                "run %s: %d new pair(s) added to the %d it had; only they are fetched", self.cfg.run_id, got.added, had
            )

    async def _ingest_async(self, state: RunState, source: AsyncIterable[Any], check: IdCheck) -> Ingested:
        state.begin_ingest()
        read, buf = 0, []
        try:
            async for item in source:
                read += 1
                buf.append(pair_from_item(item, "<pairs>", read, check))
                if len(buf) >= 10_000:
                    state.insert(buf)
            state.insert(buf)
        except BaseException:
            state.abort_ingest()
            raise
        unique, added = state.finish_ingest()
        return Ingested(read, unique, added)

    # -- fetching -------------------------------------------------------------------------
    async def _fetch(self, state: RunState) -> None:
        cfg = self.cfg
        limiter = self._limiter = RateController(
            limit=cfg.rate_limit,
            window=cfg.window,
            share=cfg.share,
            reserve=cfg.reserve,
            burst=cfg.burst,
            max_rate=cfg.max_rate,
            max_pause=cfg.max_pause,
            max_outage=cfg.max_outage,
        )
        try:
            await self._fetch_with(state, limiter)
        finally:
            await limiter.aclose()

    async def _fetch_with(self, state: RunState, limiter: RateController) -> None:
        cfg = self.cfg
        started = time.monotonic()
        queue: asyncio.Queue[tuple[int, Pair] | None] = asyncio.Queue(maxsize=cfg.concurrency * 2)
        fatal: BaseException | None = None
        try:
            async with BrazeClient(cfg, limiter) as client:
                self._client = client
                self._failed_before = state.count(FAILED)
                progress = asyncio.create_task(self._progress_loop(started))
                feeder = asyncio.create_task(self._feed(state, queue))
                workers = [asyncio.create_task(self._work(queue, client)) for _ in range(cfg.concurrency)]
                ckpt = asyncio.create_task(self._checkpoint_loop())
                try:
                    fatal = await self._supervise(feeder, workers, limiter)
                finally:
                    for t in (feeder, *workers):
                        t.cancel()
                    await asyncio.gather(feeder, *workers, return_exceptions=True)
                    ckpt.cancel()
                    progress.cancel()
                    await asyncio.gather(ckpt, progress, return_exceptions=True)
                    if self._on_progress is not None:
                        self._on_progress(self.progress(started))  # the bar ends at the real count
                    self._account(client, limiter, started)
        finally:
            # Whatever ended the fetch, commit what is complete so a resume skips it.
            await asyncio.shield(self._checkpoint())
        if fatal is not None:
            raise fatal
        if self._stopping:
            raise ExportInterrupted(
                f"run {cfg.run_id} stopped by request after {self.summary.requests} requests; "
                "run the same command again to resume"
            )

    async def _supervise(
        self, feeder: asyncio.Task[None], workers: list[asyncio.Task[None]], limiter: RateController
    ) -> BaseException | None:
        """Wait for the workers; return the first fatal error, or the controller's verdict that
        Braze is unavailable. After a stop request, give in-flight requests a grace period,
        then abandon them (their pairs stay pending)."""
        pending: set[asyncio.Task[Any]] = set(workers)
        stop_wait = asyncio.create_task(self._stop.wait())
        outage = asyncio.create_task(limiter.failure())
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending | {stop_wait, outage}, return_when=asyncio.FIRST_COMPLETED
                )
                pending -= {stop_wait, outage}
                if outage in done:
                    return outage.result()
                if stop_wait in done:
                    done.discard(stop_wait)
                    if pending:
                        finished, late = await asyncio.wait(pending, timeout=_STOP_GRACE)
                        for t in late:
                            t.cancel()
                        await asyncio.gather(*late, return_exceptions=True)
                        done |= finished
                        pending = set()
                for t in done:
                    if not t.cancelled() and t.exception() is not None:
                        return t.exception()
            if feeder.done() and not feeder.cancelled():
                return feeder.exception()
            return None
        finally:
            stop_wait.cancel()
            outage.cancel()

    async def _feed(self, state: RunState, queue: asyncio.Queue[tuple[int, Pair] | None]) -> None:
        finished = False
        try:
            for item in state.pending():
                if self._stopping:
                    break
                await queue.put(item)
            finished = not self._stopping
        finally:
            if finished:
                for _ in range(self.cfg.concurrency):
                    await queue.put(None)
            else:
                # Stopping or failing: drop what is queued (it stays pending in the state)
                # and wake every idle worker.
                while not queue.empty():
                    queue.get_nowait()
                for _ in range(self.cfg.concurrency):
                    queue.put_nowait(None)

    async def _work(self, queue: asyncio.Queue[tuple[int, Pair] | None], client: BrazeClient) -> None:
        cfg = self.cfg
        while not self._stopping:
            item = await queue.get()
            if item is None:
                return
            await self._export_pair(item[0], item[1], client)
            if len(self._flat) >= _BUILD_EVERY:
                self._build()
            if self._buf_rows >= cfg.checkpoint_rows:
                self._ckpt_wake.set()
                if self._buf_rows >= 2 * cfg.checkpoint_rows:
                    # Back-pressure: the disk is slower than the network; wait for it.
                    self._ckpt_drained.clear()
                    await self._ckpt_drained.wait()

    async def _attempt(self, pid: int, pair: Pair, client: BrazeClient) -> None:
        body = await client.fetch(pair)
        self._flat.add(pid, pair.campaign_id, pair.send_id, body, time.time_ns() // 1000)

    async def _export_pair(self, pid: int, pair: Pair, client: BrazeClient) -> None:
        """Fetch and flatten one pair, retrying what is worth it; record it if it fails."""
        limiter = client.limiter
        outcome = await attempt_with_retries(
            lambda: self._attempt(pid, pair, client),
            self._retry,
            blame=lambda since: limiter.blames(pair, since),
        )
        self.summary.retries += outcome.attempts - 1
        if outcome.error is None:
            self._ok += 1
        else:
            self._record_failure(pid, pair, outcome.error, outcome.attempts)

    def _record_failure(self, pid: int, pair: Pair, exc: AttemptError, attempts: int) -> None:
        self._failed += 1
        when = datetime.now(UTC).isoformat(timespec="seconds")
        # Reasons come from Braze's answers: redacted before they reach the state, the
        # manifest or a log, whatever the server chose to echo.
        redact = self.cfg.api_key.redact
        self._buf_failed.append((pid, exc.status, redact(exc.reason), attempts, when))
        log.warning(
            "pair failed for good after %d attempt(s): campaign_id=%r send_id=%r: %s",
            attempts,
            pair.campaign_id,
            pair.send_id,
            redact(str(exc)),
        )

    def _build(self) -> None:
        if not len(self._flat):
            return
        fb = self._flat.build()
        self._buf_tables["send_stats"].extend(fb.stats)
        self._buf_tables["send_totals"].extend(fb.totals)
        self._buf_rows += fb.stats_rows + fb.totals_rows
        self._buf_done.extend(fb.done)
        when = datetime.now(UTC).isoformat(timespec="seconds")
        for token, reason in fb.rejected.items():
            reason = self.cfg.api_key.redact(reason)
            self._ok, self._failed = self._ok - 1, self._failed + 1
            self._buf_failed.append((token, 200, reason, 1, when))
            log.warning("pair %d rejected: %s", token, reason)
        new = (fb.unknown_fields | {f"channel:{c}" for c in fb.unknown_channels}) - self._unknown
        for name in sorted(new):
            if len(self._unknown) < _MAX_LOGGED_UNKNOWN:
                log.warning(
                    "Braze sent %s the schema does not know; kept (see extra_metrics)",
                    f"a channel {name[8:]!r}" if name.startswith("channel:") else f"a field {name!r}",
                )
            self._unknown.add(name)

    # -- checkpoints ----------------------------------------------------------------------
    async def _checkpoint_loop(self) -> None:
        cfg = self.cfg
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ckpt_wake.wait(), timeout=cfg.checkpoint_interval)
            self._ckpt_wake.clear()
            # Shielded: cancelling this loop at the end of the fetch must not abandon a
            # checkpoint between its file write and its commit (the final checkpoint waits
            # for it on the lock).
            await asyncio.shield(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Write what is complete and mark its pairs done, in that order."""
        async with self._ckpt_lock:
            self._build()
            if not (self._buf_done or self._buf_failed):
                self._ckpt_drained.set()
                return
            state = self._state
            assert state is not None
            tables, self._buf_tables = self._buf_tables, {"send_stats": [], "send_totals": []}
            done, self._buf_done = self._buf_done, []
            failed, self._buf_failed = self._buf_failed, []
            rows, self._buf_rows = self._buf_rows, 0
            seq = self._seq
            self._seq += 1
            self._ckpt_drained.set()
            try:
                if self._batch_sink is not None:
                    for name, batches in tables.items():
                        for batch in batches:
                            if batch.num_rows:
                                await self._batch_sink(name, batch)
                    tables = {}
                # File write, fsync and the SQLite commit (another fsync) all off the event
                # loop: a slow disk must not stall requests in flight.
                await asyncio.to_thread(self._write_and_commit, state, seq, tables, done, failed)
            except StorageError:
                self.request_stop()
                raise
            log.debug("checkpoint %d: %d pairs, %d rows", seq, len(done), rows)

    def _write_and_commit(
        self,
        state: RunState,
        seq: int,
        tables: dict[str, list[pa.RecordBatch]],
        done: list[int],
        failed: list[tuple[int, int | None, str, int, str]],
    ) -> None:
        parts = self._sink.write_checkpoint(seq, tables)
        state.commit_checkpoint(seq, parts, done, failed)

    def progress(self, started: float) -> Progress:
        """A snapshot of the fetch (counts include pairs not yet committed)."""
        s, lim, client = self.summary, self._limiter, self._client
        return Progress(
            pairs_total=s.pairs_total,
            pairs_done=s.pairs_resumed + self._ok,
            pairs_failed=self._failed_before + self._failed,
            requests=client.requests if client else 0,
            rate_limited=lim.stats.rate_limited if lim else 0,
            paused_seconds=lim.stats.paused_seconds if lim else 0.0,
            pace=lim.target_rate if lim else 0.0,
            elapsed=time.monotonic() - started,
        )

    async def _progress_loop(self, started: float) -> None:
        while True:
            await asyncio.sleep(self._progress_interval)
            p = self.progress(started)
            if self._on_progress is not None:
                self._on_progress(p)
                continue
            log.info(
                "progress: %d/%d pairs done, %d failed, %d requests (%.1f/s), %d x 429, %.0fs paused",
                p.pairs_done, p.pairs_total, p.pairs_failed, p.requests, p.request_rate,
                p.rate_limited, p.paused_seconds,
            )

    def _account(self, client: BrazeClient, limiter: RateController, started: float) -> None:
        s = self.summary
        s.requests += client.requests
        for k, v in client.statuses.items():
            s.statuses[k] = s.statuses.get(k, 0) + v
        s.fetch_seconds += time.monotonic() - started
        s.rate_limited += limiter.stats.rate_limited
        s.paused_seconds += limiter.stats.paused_seconds
        s.limit = limiter.stats.limit
        s.base_rate = limiter.base_rate
        s.max_in_flight = limiter.stats.max_in_flight

    # -- publishing -----------------------------------------------------------------------
    async def _publish(self, state: RunState) -> tuple[int, set[str]]:
        """Compact staged parts into the dataset; return the generation and the staged files
        to remove once the run's outputs are written and the publish is marked done."""
        staged = state.staged_files()
        gen = int(state.get("published_gen") if state.get("published_gen") is not None else -1) + 1
        state.put("phase", "publishing")
        files: list[tuple[str, str, str, int, int]] = []
        if staged:
            await asyncio.to_thread(self._sink.publish, state.unpublished_parts(), gen, lambda *f: files.append(f))
        for f in files:
            state.record_published(*f)
        if files:
            log.info("published %d file(s) for run %s", len(files), self.cfg.run_id)
        return gen, staged

    def _finish_publish(self, state: RunState, gen: int, staged: set[str]) -> None:
        """Last step: a crash before it makes the next invocation publish (the same names)
        and write the manifest again; after it the run is complete."""
        state.mark_published(gen)
        state.put("phase", "published")
        self._sink.remove_staged(staged)

    def _fill_counts(self, state: RunState) -> None:
        """What is committed, from the run state (never from in-memory counters, which also
        hold work a stop or crash did not commit)."""
        s = self.summary
        s.pairs_total = state.count()
        s.pairs_done = state.count(DONE)
        s.pairs_failed = state.count(FAILED)
        s.pairs_pending = state.count(PENDING)
        rows = state.rows_committed()
        s.stats_rows = rows.get("send_stats", 0)
        s.totals_rows = rows.get("send_totals", 0)
        s.files = len(state.published())
        s.unknown_fields = sorted(n for n in self._unknown if not n.startswith("channel:"))
        s.unknown_channels = sorted(n[8:] for n in self._unknown if n.startswith("channel:"))

    def _write_outputs(self, state: RunState) -> None:
        """The failures file (streamed) and the manifest, whose ``status`` says whether the
        run finished (``complete``, ``partial``) or stopped early, resumable."""
        s, sink = self.summary, self._sink
        s.wall_seconds = time.monotonic() - self._started
        redact = self.cfg.api_key.redact  # also for a state an older version wrote
        first: list[dict[str, Any]] = []  # the manifest lists the first thousand

        def lines() -> Iterator[bytes]:
            for f in state.failures():
                doc = {"campaign_id": f.campaign_id, "send_id": f.send_id, "status": f.status,
                       "message": redact(f.message), "attempts": f.attempts, "failed_at": f.failed_at}  # fmt: skip
                if len(first) < 1000:
                    first.append(doc)
                yield orjson.dumps(doc) + b"\n"

        s.failures_file = sink.write_bytes("failures.jsonl", lines())
        manifest = {
            "manifest_version": _MANIFEST_VERSION,
            "bulkexport_version": __version__,
            "run_id": self.cfg.run_id,
            "status": s.status,
            "finished": s.status in FINISHED,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": self.cfg.describe(),
            "summary": s.to_dict(),
            "files": [
                {"path": p, "table": t, "date": d, "rows": r, "bytes": b}
                for p, t, d, r, b in state.published()
            ],
            "failures": first,
            "failures_total": s.pairs_failed,
        }
        s.manifest = sink.write_json("manifest.json", manifest)
