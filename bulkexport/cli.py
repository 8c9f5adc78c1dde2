"""The ``bulkexport`` command: a thin layer over the library that prints and maps errors to
exit codes. It is the only module that prints.

Exit codes (batch schedulers key off these; documented in the README):

====  ============================================================================
0     every pair exported (or the run was already complete)
1     internal error (a bug: please report it with the log)
2     bad configuration or input (options, endpoint, pairs file, run-state conflict)
3     finished, but some pairs failed for good (see the run's failures.jsonl)
4     Braze refused the key (401) or its permission (403)
5     interrupted by SIGINT/SIGTERM; run the same command again to resume
6     output or state could not be written (disk full, permissions)
7     another process is exporting this run (same output, same run id); --wait waits
8     Braze gave no usable answer for --max-outage; run the same command again to resume
====  ============================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from . import env, memory
from ._version import __version__
from .errors import AuthError, BrazeUnavailable, ConfigError, RunInProgress, RunStopped, StorageError
from .logs import setup_logging
from .settings import add_export_options, resolve
from .summary import ExportSummary, Progress

__all__ = ["EXIT_CODES", "main"]

(EXIT_OK, EXIT_INTERNAL, EXIT_CONFIG, EXIT_PARTIAL, EXIT_AUTH, EXIT_INTERRUPTED, EXIT_STORAGE,
 EXIT_RUN_IN_PROGRESS, EXIT_UNAVAILABLE) = range(9)  # fmt: skip
EXIT_CODES = {
    EXIT_OK: "every pair exported (or the run was already complete)",
    EXIT_INTERNAL: "internal error",
    EXIT_CONFIG: "bad configuration or input",
    EXIT_PARTIAL: "finished, some pairs failed for good",
    EXIT_AUTH: "Braze refused the key or its permission",
    EXIT_INTERRUPTED: "interrupted; run again to resume",
    EXIT_STORAGE: "output or state could not be written",
    EXIT_RUN_IN_PROGRESS: "another process is exporting this run (see --wait)",
    EXIT_UNAVAILABLE: "Braze unavailable for --max-outage; run again to resume",
}

log = logging.getLogger("bulkexport")


_EXAMPLE = """\
example (nightly):
  export BRAZE_API_KEY=...            # never a flag: flags land in shell history
  bulkexport export --pairs pairs.csv --out /data/lake/braze \\
      --endpoint https://rest.iad-01.braze.com --reserve 0.3
"""


_EXIT_HELP = "\nexit codes:\n" + "".join(f"  {k}  {v}\n" for k, v in EXIT_CODES.items())


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (a scheduler's log shows the reason, not forty
    lines of usage), still exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bulkexport",
        description="Export Braze send analytics (GET /sends/data_series) for many "
        "(campaign_id, send_id) pairs into Hive-partitioned Parquet.",
        epilog="exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    )
    p.add_argument("--version", action="version", version=f"bulkexport {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    e = sub.add_parser(
        "export",
        help="export pairs from a file (the nightly job)",
        description="Fetch every pair's daily series and write send_stats and send_totals "
        "under OUT. The API key is read from BRAZE_API_KEY. Re-running the same command "
        "resumes an interrupted run and is a no-op for a finished one.",
        epilog=_EXAMPLE + _EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_export_options(e)

    d = sub.add_parser(
        "demo",
        help="export generated pairs from a local Braze simulator (no key, no network)",
        description="Start the Braze simulator on loopback, export generated pairs through "
        "it with a fast simulated rate limit and a few injected faults, and show where the "
        "data is and how to read it.",
        epilog=_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--pairs", type=int, default=3000, metavar="N", help="pairs to generate (default 3000)")
    d.add_argument("--out", default="bulkexport-demo", metavar="DIR", help="output root (default ./bulkexport-demo)")
    d.add_argument("--limit", type=int, default=2000, metavar="N",
                   help="simulated requests per 2-second window (default 2000)")
    d.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    d.add_argument("--log-format", default="text", choices=["text", "json"])
    return p


def _print_summary(summary: ExportSummary) -> None:
    for line in summary.lines():
        print(line)
    if summary.manifest:
        print(f"manifest   {summary.manifest}")
    if summary.pairs_failed and summary.failures_file:
        print(f"failures   {summary.failures_file}")


#: Set by SIGINT/SIGTERM while the run's own handlers are not installed (see :func:`main`).
_SIGNALLED = threading.Event()
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _note_signal(signum: int, frame: object) -> None:
    _SIGNALLED.set()


def _hold_signals() -> None:
    """SIGINT/SIGTERM only set a flag, read where the command can stop cleanly: an
    exception raised at an arbitrary point of a library's import can be swallowed there (the
    run then went on), and SIGTERM's default kills with 143."""
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            signal.signal(sig, _note_signal)


def main(argv: Sequence[str] | None = None) -> int:
    """The command. Until the run installs its own handlers (and after it removes them),
    SIGINT and SIGTERM are noted and acted on where the command can stop cleanly: before the
    run starts, exit 5 ("interrupted"), not 143 or a traceback, however early they come
    (importing pyarrow and aiohttp takes a few hundred milliseconds). Only the interpreter's
    own start, before this module runs, is Python's."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    _SIGNALLED.clear()
    _hold_signals()
    try:
        return _main(argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupted_before_the_run() -> None:
    """Raise KeyboardInterrupt (exit 5) if a signal came while nothing listened for it."""
    if _SIGNALLED.is_set():
        raise KeyboardInterrupt


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    if args.command is None:
        _parser().print_help()
        return EXIT_CONFIG
    given = vars(args)
    memory.own_process()
    setup_logging(
        given.get("log_level") or os.environ.get(env.LOG_LEVEL) or "info",
        given.get("log_format") or os.environ.get(env.LOG_FORMAT) or "text",
        os.environ.get(env.API_KEY, ""),
    )
    try:
        if args.command == "demo":
            from .demo import demo, print_hints  # after own_process: it loads pyarrow

            _interrupted_before_the_run()
            try:
                code = _finish(asyncio.run(demo(args)))
            finally:
                _hold_signals()
            print_hints(args.out)
            return code
        settings = resolve(given)
        setup_logging(settings["log_level"], settings["log_format"], settings["api_key"] or "")
        if settings["dry_run"]:
            code = _dry_run(settings)
            _interrupted_before_the_run()  # a plan of a large input takes a while
            return code
        return _finish(asyncio.run(_export(settings)))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except RunInProgress as exc:
        log.error("%s", exc)
        return EXIT_RUN_IN_PROGRESS
    except RunStopped as exc:
        return _stopped(exc)
    except KeyboardInterrupt:
        log.warning("interrupted before the run started")
        return EXIT_INTERRUPTED
    except Exception:
        log.exception("internal error")
        return EXIT_INTERNAL


def _stopped(exc: RunStopped) -> int:
    """A run that stopped early: why, then what is committed, and the code that says what a
    scheduler should do next."""
    if isinstance(exc, StorageError):
        log.error("%s; what the run committed is kept: run the same command again once storage is fixed (files "
                  "of a publish it interrupted are replaced, never duplicated)", exc)  # fmt: skip
        code = EXIT_STORAGE
    elif isinstance(exc, AuthError):
        log.error("%s", exc)
        code = EXIT_AUTH
    elif isinstance(exc, BrazeUnavailable):
        log.error("%s: stopping; the pairs not committed stay pending, run the same command again to resume", exc)
        code = EXIT_UNAVAILABLE
    else:
        log.warning("%s", exc)
        code = EXIT_INTERRUPTED
    if exc.summary is not None:
        _print_summary(exc.summary)
    return code


def _finish(summary: ExportSummary) -> int:
    _print_summary(summary)
    # A finished run rerun still has its failed pairs missing: the scheduler must see it.
    return EXIT_PARTIAL if summary.pairs_failed else EXIT_OK


_LIBRARY_OPTIONS = (
    "length", "rate_limit", "share", "reserve", "max_rate", "burst", "concurrency", "request_timeout",
    "max_attempts", "checkpoint_interval", "overwrite", "state_dir", "max_outage", "table_format", "catalog_uri",
    "catalog_type", "rows_per_commit",
)  # fmt: skip
_MAX_BODY_MB = 1024


class _Bar:
    """The terminal progress bar (tqdm: ETA, rate and redraw handled by a well-kept library);
    off a terminal the library logs a progress line every 30 seconds instead."""

    def __init__(self) -> None:
        from tqdm import tqdm

        # A terminal that reports a 0x0 size (a fresh pty, some CI consoles) gets no bar from
        # tqdm at all; give it a sane one.
        size = shutil.get_terminal_size((100, 20))
        self._bar = tqdm(
            total=0, unit="pair", file=sys.stderr, leave=True,
            ncols=size.columns if size.columns > 40 else 100, nrows=size.lines if size.lines > 2 else 20,
        )  # fmt: skip
        self._shown = 0

    def __call__(self, p: Progress) -> None:
        bar = self._bar
        if bar.total != p.pairs_total:
            bar.total = p.pairs_total
        done = p.pairs_done + p.pairs_failed
        bar.set_postfix_str(
            f"{p.request_rate:,.1f} req/s, {p.rate_limited} x 429, {p.paused_seconds:.0f}s paused, "
            f"{p.pairs_failed} failed",
            refresh=False,
        )
        bar.update(done - self._shown)
        self._shown = done

    def close(self) -> None:
        self._bar.close()


async def _export(settings: dict[str, Any]) -> ExportSummary:
    bar = _Bar() if sys.stderr.isatty() else None
    try:
        return await _run_export(settings, bar)
    finally:
        if bar is not None:
            bar.close()


def _library_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that the library entry points take as keywords."""
    mb = settings["max_body_mb"]
    if isinstance(mb, bool) or not isinstance(mb, int) or not 1 <= mb <= _MAX_BODY_MB:
        raise ConfigError(f"--max-body-mb must be a whole number of MiB from 1 to {_MAX_BODY_MB}, got {mb!r}")
    return {
        "max_body_bytes": mb * 2**20,
        "endpoint": settings["endpoint"],
        "api_key": settings["api_key"],
        "ending_at": settings["ending_at"],
        "run_id": settings["run_id"],
        "pairs_format": settings["pairs_format"],
        "allow_custom_endpoint": settings["allow_custom_endpoint"],
        **{k: settings[k] for k in _LIBRARY_OPTIONS},
    }


async def _run_export(settings: dict[str, Any], bar: _Bar | None) -> ExportSummary:
    from .api import export_async  # after own_process: it loads pyarrow

    memory.freeze_startup()  # the imports are done
    _interrupted_before_the_run()
    try:
        return await export_async(
            settings["pairs"],
            settings["out"],
            retry_failed=settings["retry_failed"],
            wait=settings["wait"],
            handle_signals=True,  # from here on, a signal is the run's stop request
            on_progress=bar,
            **_library_kwargs(settings),
        )
    finally:
        _hold_signals()  # removing the run's handlers restored SIGTERM's default (143)


def _dry_run(settings: dict[str, Any]) -> int:
    from .api import make_plan  # after own_process: it loads pyarrow

    plan = make_plan(settings["pairs"], settings["out"], **_library_kwargs(settings))
    for line in plan.lines():
        print(line)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
