"""One run, as a short sequence of phases over the steps that do the work.

::

    lock --> open state --> ingest --> fetch --------------------> publish --> documents --> done
    (runlock) (state)       (ingest)   (fetch: FetchPool, workers;   (publish)   (manifest,
                                        checkpoint: Checkpointer,                failures)
                                        Staging)

Each phase leaves the run state consistent, so whatever stops the run (a kill, a signal, a
401, a full disk, an outage) the same call resumes it: committed pairs are skipped, orphans
of the crash removed, and the rest fetched. A pair counts as done only once the checkpoint
holding its rows is committed; the run is finished only once its manifest is written and its
publish marked done (a crash in between makes the next invocation publish the same names
again and rewrite the manifest).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from ._version import __version__
from .checkpoint import Checkpointer, Staging
from .client import format_ending_at
from .config import ExportConfig
from .errors import AuthError, BrazeUnavailable, ConfigError, ExportInterrupted, RunStopped, StorageError
from .fetch import FetchPool
from .ingest import ingest
from .inputs import retention_warning
from .lakehouse._store import check_output
from .layout import RunLayout
from .publish import DOCUMENTS, ParquetPublisher, RunDocuments
from .runlock import RunLock
from .state import DONE, FAILED, PENDING, Doomed, RunState
from .storage import open_target, storage_errors
from .summary import FINISHED, ExportSummary, Progress

__all__ = ["Exporter"]

log = logging.getLogger("bulkexport")

_MANIFEST_VERSION = 1


async def _to_the_end(step: Awaitable[None], what: str, *, on_cancel: Callable[[], None] | None = None) -> None:
    """Await ``step`` even when the caller is cancelled meanwhile, then pass the cancel on.

    The last checkpoint's commit and the publish run on threads of their own, which a cancel
    does not stop: a caller cancelled during one would otherwise go on to close the run state
    and release the run's lock under it (a checkpoint's pairs fetched again next time and its
    error reaching nobody; a publish still writing while another run may start). The pairs'
    reader is kept the same way (see :func:`~bulkexport.ingest.ingest`). ``on_cancel`` lets
    the step finish early (the publish skips the partitions it has not started). A second
    cancel stops the wait (a disk that hangs must not make the export uncancellable); what the
    step then raises is logged rather than lost.
    """
    task = asyncio.ensure_future(step)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        task.add_done_callback(functools.partial(_log_late_failure, what))
        await asyncio.wait({task})
        raise


def _params(cfg: ExportConfig) -> dict[str, Any]:
    """What a run is: a rerun with other values is another run (or needs --overwrite)."""
    return {"endpoint": cfg.endpoint, "length": cfg.length, "ending_at": format_ending_at(cfg.ending_at)}


def _log_late_failure(what: str, task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed after the export was cancelled: %s", what, task.exception())


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
        self.cfg = cfg  # as given (a resumed run may resolve another ending_at: see _open)
        self.out = str(out)
        self._pairs_format = pairs_format
        self._retry_failed = retry_failed  # fetch the pairs that failed before, again
        self._progress = (on_progress, progress_interval)
        self._batch_sink = batch_sink  # rows go to the caller instead of to Parquet
        self._wait = wait  # for another process holding the run
        target = self._target = open_target(out)
        layout = self._layout = RunLayout.of(target, cfg.run_id, Path(cfg.state_dir) if cfg.state_dir else None)
        self._staging = Staging(layout)
        self._documents = RunDocuments(target, layout)
        self._publisher = ParquetPublisher(target, layout, self._staging, row_group_rows=cfg.row_group_rows,
                                           file_rows=cfg.file_rows)  # fmt: skip
        self._lake: LakePublisher | None = None  # --table-format delta|iceberg
        if cfg.table_format != "parquet":
            if batch_sink is not None:
                raise ConfigError("batches streamed to the caller have no table format; leave table_format unset")
            from .lakehouse.publisher import LakePublisher  # the table libraries load only when used

            state_root = Path(cfg.state_dir) if cfg.state_dir else None
            self._lake = LakePublisher(cfg, self.out, target.state_dir(state_root), self._staging)
        self.summary = ExportSummary(run_id=cfg.run_id, out=self.out)
        self._stop = asyncio.Event()
        self._reading = threading.Event()  # set: the pairs' reader stops (see ingest)
        self._state: RunState | None = None
        self._unknown: set[str] = set()  # unknown fields and channels this session saw
        self._tables_doc: list[dict[str, Any]] = []  # lakehouse tables, for the manifest
        self._started = time.monotonic()

    def request_stop(self) -> None:
        """Stop taking new pairs; in-flight ones finish (or are abandoned after a grace)."""
        if not self._stop.is_set():
            log.warning("stop requested: finishing in-flight requests, then committing")
        self._stop.set()
        self._reading.set()  # the pairs' reader, if it is still reading, stops and rolls back

    async def run(self, source: Any) -> ExportSummary:
        """Ingest ``source`` into the run, fetch what is pending, publish.

        Holds the run's lock throughout (:class:`RunInProgress` if another process has it).
        Raises :class:`ConfigError`, or a :class:`RunStopped` (:class:`AuthError`,
        :class:`ExportInterrupted`, :class:`StorageError`, :class:`BrazeUnavailable`) whose
        ``summary`` counts what is committed; ``self.summary`` is filled in either way.
        """
        self._started = time.monotonic()
        try:
            async with RunLock(self._layout.lock, self.cfg.run_id, wait=self._wait, stopping=self._stop):
                try:
                    return await self._run(source)
                except RunStopped as exc:
                    self._stopped(exc)
                    raise
        finally:
            self.summary.wall_seconds = time.monotonic() - self._started
            if self._state is not None:
                self._state.close()

    async def _run(self, source: Any) -> ExportSummary:
        s = self.summary
        if not self.cfg.overwrite and not self._layout.state_db.exists() and self._documents.finished_elsewhere():
            s.status = "already_complete"
            log.warning("run %s is already complete in %s (finished on another machine, whose state holds its pairs): "
                        "this input was not compared with them; use --run-id to export new pairs", self.cfg.run_id,
                        self.out)  # fmt: skip
            return s
        state, cfg, replace = self._open()
        # A stop request (a signal) ends the read too, rolled back: an --overwrite stopped
        # while reading its input leaves the old run as it was.
        await ingest(state, source, self._pairs_format, s, replace, self._reading)
        if replace is not None:
            state.put("params", _params(cfg))
        if self._stop.is_set():  # after the input was committed: an --overwrite's deletions wait for the next run
            raise ExportInterrupted(f"run {cfg.run_id} stopped by request after reading its pairs; run the same "
                                    "command again to resume")  # fmt: skip
        await self._remove_replaced(state)  # also what an --overwrite killed before the end left
        if self._lake is not None:
            await self._lake.open(self._target, state)
        else:
            await asyncio.to_thread(check_output, self._target, "parquet")
        if self._retry_failed:
            n = state.reset_failed()
            log.info("retrying %d pair(s) that failed before", n)
            if n:
                state.put("phase", "fetching")
        pending = state.count(PENDING)
        s.pairs_total, s.pairs_resumed = state.count(), state.count(DONE)
        if state.get("phase") == "published" and pending == 0:
            self._fill_counts(state)
            if not self._layout.document("manifest.json").exists():
                s.status = "partial" if s.pairs_failed else "complete"  # a kill before the manifest
                await self._describe_tables(state)
                self._write_documents(state, cfg)
            elif self._lake is not None:
                self.summary.tables = self._lake.versions()
            s.status = "already_complete"
            log.info("run %s is already complete; nothing to do (use --overwrite to redo it)", cfg.run_id)
            return s
        removed = self._staging.remove_orphans(state.staged_files())
        if removed:
            log.info("removed %d incomplete checkpoint file(s) left by an earlier crash", removed)
        if pending:
            await self._fetch(state, cfg, pending)
        gen, staged = await self._publish(state)
        await self._describe_tables(state)
        self._fill_counts(state)
        s.status = "partial" if s.pairs_failed else "complete"
        self._write_documents(state, cfg)
        state.mark_published(gen)  # the last step: after it, the run is complete
        state.put("phase", "published")
        self._staging.remove(staged)
        log.info("run %s %s: %d exported, %d failed, %s", cfg.run_id, s.status, s.pairs_done, s.pairs_failed,
                 f"{s.files} files" if not s.tables else f"tables at {s.tables}")  # fmt: skip
        return s

    def _open(self) -> tuple[RunState, ExportConfig, Doomed | None]:
        """The run's state, and its resolved configuration: a run started earlier today with
        "now" as its end resumes with that end, so all its pairs describe one series.

        With ``--overwrite`` and an earlier run, also what the new run, once its input has
        passed its checks, replaces: nothing is deleted here (a mistyped or bad pairs file
        must not cost the earlier run its data)."""
        cfg = self.cfg
        path = self._layout.state_db
        replacing = cfg.overwrite and path.exists()
        self._staging.prepare()
        with storage_errors(f"use the output {self._target.uri}"):
            self._target.check()  # fails now, not after the fetch
        state = self._state = RunState(path)
        if replacing:
            # Every file of the run in every partition it staged rows for (published or not:
            # a publish that failed or was killed left files no table lists), and its documents.
            partitions = [] if self._lake is not None else state.partitions()
            return state, cfg, [
                *(("partition", self._layout.partition(table, day)) for table, day in partitions),
                *(("document", name) for name in DOCUMENTS),
            ]
        params = _params(cfg)
        known = state.get("params")
        if known is None:
            state.put("params", params)
        elif known != params and cfg.ending_at_default and {**known, "ending_at": params["ending_at"]} == params:
            cfg = dataclasses.replace(cfg, ending_at=datetime.fromisoformat(known["ending_at"]))
            log.info("resuming run %s with its original ending_at=%s", cfg.run_id, known["ending_at"])
        elif known != params:
            diff = ", ".join(f"{k}: {known.get(k)!r} then, {v!r} now" for k, v in params.items() if known.get(k) != v)
            raise ConfigError(f"run {cfg.run_id} already exists in {self.out} with other parameters ({diff}); "
                              "pass the same values to resume it, --run-id for a new run, or --overwrite")  # fmt: skip
        return state, cfg, None

    async def _remove_replaced(self, state: RunState) -> None:
        """Delete what an ``--overwrite`` replaced (recorded with the new run's pairs, so an
        invocation killed halfway leaves the rest to the next one), before anything is
        published again under the same names."""
        doomed = state.doomed()
        if doomed:
            removed = await asyncio.to_thread(self._documents.remove_replaced, doomed, self._layout.is_part)
            state.clear_doomed()
            log.info("--overwrite: removed run %s (%d published files)", self.cfg.run_id, removed)

    async def _fetch(self, state: RunState, cfg: ExportConfig, pending: int) -> None:
        s = self.summary
        warning = retention_warning(cfg.ending_at, cfg.length)
        if warning:
            log.warning("%s", warning)
        log.info("run %s: %d pairs, %d to fetch%s; length=%d ending_at=%s, pacing at %.1f req/s", cfg.run_id,
                 s.pairs_total, pending, f" ({s.pairs_resumed} done earlier)" if s.pairs_resumed else "", cfg.length,
                 format_ending_at(cfg.ending_at), cfg.rate)  # fmt: skip
        state.put("phase", "fetching")
        ckpt = Checkpointer(cfg, state, self._staging, batch_sink=self._batch_sink)
        pool = FetchPool(cfg, state, ckpt, self._stop, on_progress=self._progress[0],
                         progress_interval=self._progress[1])  # fmt: skip
        try:
            fatal = await pool.run(s)
        finally:
            # Whatever ended the fetch, commit what is complete so a resume skips it.
            await _to_the_end(ckpt.close(), "the last checkpoint")
            self._unknown |= ckpt.unknown
        if fatal is not None:
            raise fatal
        if self._stop.is_set():
            raise ExportInterrupted(f"run {cfg.run_id} stopped by request after {s.requests} requests; "
                                    "run the same command again to resume")  # fmt: skip
        left = state.count(PENDING)
        if left:  # every worker ended and nothing failed: this would be a bug of ours
            raise RuntimeError(f"{left} pairs are still pending after the fetch; run again to resume")

    async def _publish(self, state: RunState) -> tuple[int, set[str]]:
        """Compact staged parts into the dataset; return the generation and the staged files
        to remove once the run's documents are written and the publish is marked done."""
        staged = state.staged_files()
        gen = int(state.get("published_gen") if state.get("published_gen") is not None else -1) + 1
        state.put("phase", "publishing")
        files: list[tuple[str, str, str, int, int]] = []
        if staged and self._lake is not None:
            await self._lake.publish(state, gen)
        elif staged:
            # Again, now: another run (another run id: another lock) may have made a Delta or
            # Iceberg table of this folder while this one was fetching.
            await asyncio.to_thread(check_output, self._target, "parquet")
            parts = state.unpublished_parts()
            stop = threading.Event()
            publish = asyncio.to_thread(self._publisher.publish, parts, gen, lambda *f: files.append(f), stop)
            await _to_the_end(publish, "the publish", on_cancel=stop.set)
        state.record_published(files)
        if files:
            log.info("published %d file(s) for run %s", len(files), self.cfg.run_id)
        return gen, staged

    async def _describe_tables(self, state: RunState) -> None:
        """Lakehouse formats: the tables' versions and this run's commits, for the manifest."""
        if self._lake is not None:
            self._tables_doc = await self._lake.describe(state)
            self.summary.tables = {d["table"]: d["version"] for d in self._tables_doc}

    def _stopped(self, exc: RunStopped) -> None:
        """The run stops early: count what is committed, say so in the run's manifest (its
        status tells a scheduler it is not finished), and hand the counts to the caller."""
        s = self.summary
        s.status = (
            "unavailable" if isinstance(exc, BrazeUnavailable)
            else "auth_refused" if isinstance(exc, AuthError)
            else "storage_error" if isinstance(exc, StorageError)
            else "interrupted"
        )  # fmt: skip
        exc.summary = s
        if self._state is not None:
            with contextlib.suppress(StorageError, OSError):  # best effort: the disk may be the problem
                self._fill_counts(self._state)
                self._write_documents(self._state, self.cfg)

    def _fill_counts(self, state: RunState) -> None:
        """What is committed, from the run state (never from in-memory counters, which also
        hold work a stop or crash did not commit)."""
        s = self.summary
        s.pairs_total, s.pairs_pending = state.count(), state.count(PENDING)
        s.pairs_done, s.pairs_failed = state.count(DONE), state.count(FAILED)
        rows = state.rows_committed()
        s.stats_rows, s.totals_rows = rows.get("send_stats", 0), rows.get("send_totals", 0)
        s.files = len(state.published())
        s.unknown_fields = sorted(n for n in self._unknown if not n.startswith("channel:"))
        s.unknown_channels = sorted(n[8:] for n in self._unknown if n.startswith("channel:"))

    def _write_documents(self, state: RunState, cfg: ExportConfig) -> None:
        """The failures file (streamed) and the manifest, whose ``status`` says whether the
        run finished (``complete``, ``partial``) or stopped early, resumable."""
        s, docs = self.summary, self._documents
        s.wall_seconds = time.monotonic() - self._started
        redact = cfg.api_key.redact  # also for a state an older version wrote
        first: list[dict[str, Any]] = []  # the manifest lists the first thousand

        def lines() -> Iterator[bytes]:
            for f in state.failures():
                doc = {"campaign_id": f.campaign_id, "send_id": f.send_id, "status": f.status,
                       "message": redact(f.message), "attempts": f.attempts, "failed_at": f.failed_at}  # fmt: skip
                if len(first) < 1000:
                    first.append(doc)
                yield orjson.dumps(doc) + b"\n"

        s.failures_file = docs.write("failures.jsonl", lines())
        s.manifest = docs.write_json("manifest.json", {
            "manifest_version": _MANIFEST_VERSION, "bulkexport_version": __version__, "run_id": cfg.run_id,
            "status": s.status, "finished": s.status in FINISHED,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"), "parameters": cfg.describe(),
            "summary": s.to_dict(),
            "table_format": cfg.table_format, "tables": self._tables_doc,
            "files": [{"path": p, "table": t, "date": d, "rows": r, "bytes": b} for p, t, d, r, b in state.published()],
            "failures": first, "failures_total": s.pairs_failed,
        })  # fmt: skip
