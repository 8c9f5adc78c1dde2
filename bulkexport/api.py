"""Library entry points: an async function for async code, a sync wrapper for schedulers.

Both return an :class:`ExportSummary` and raise the errors of :mod:`bulkexport.errors`
(``ExportSummary.status`` is ``partial`` when some pairs failed for good; that is a result,
not an exception, because the rest of the data is good and published).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import ApiKey, ExportConfig
from .errors import ConfigError
from .pipeline import Exporter
from .summary import ExportSummary

__all__ = ["export", "export_async"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _config(
    endpoint: str | None,
    api_key: str | ApiKey | None,
    ending_at: datetime | str | None,
    run_id: str | None,
    allow_custom_endpoint: bool,
    options: dict[str, Any],
) -> ExportConfig:
    endpoint = endpoint or os.environ.get("BRAZE_REST_ENDPOINT")
    if not endpoint:
        raise ConfigError("no endpoint: pass endpoint= or set BRAZE_REST_ENDPOINT")
    key = api_key if api_key is not None else os.environ.get("BRAZE_API_KEY")
    if not key:
        raise ConfigError("no API key: pass api_key= or set BRAZE_API_KEY")
    return ExportConfig.build(
        endpoint=endpoint,
        api_key=key,
        ending_at=ending_at,
        run_id=run_id,
        allow_custom_endpoint=allow_custom_endpoint,
        **options,
    )


async def export_async(
    pairs: Any,
    out: str | Path,
    *,
    endpoint: str | None = None,
    api_key: str | ApiKey | None = None,
    ending_at: datetime | str | None = None,
    run_id: str | None = None,
    pairs_format: str | None = None,
    retry_failed: bool = False,
    allow_custom_endpoint: bool = False,
    handle_signals: bool = False,
    on_exporter: Callable[[Exporter], None] | None = None,
    **options: Any,
) -> ExportSummary:
    """Export send analytics for ``pairs`` into Hive-partitioned Parquet under ``out``.

    ``pairs``: a CSV / JSON Lines / Parquet path, or any iterable or async iterable of
    ``(campaign_id, send_id)`` tuples, :class:`Pair` or mappings with both keys.
    ``endpoint`` and ``api_key`` default to ``BRAZE_REST_ENDPOINT`` / ``BRAZE_API_KEY``.
    Other keyword options are the fields of :class:`ExportConfig` (``length``, ``share``,
    ``reserve``, ``concurrency``, ``overwrite``...). With ``handle_signals``, SIGINT and
    SIGTERM stop the run cleanly (resumable) instead of killing it.
    """
    cfg = _config(endpoint, api_key, ending_at, run_id, allow_custom_endpoint, options)
    exporter = Exporter(cfg, out, pairs_format=pairs_format, retry_failed=retry_failed)
    if on_exporter is not None:
        on_exporter(exporter)
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


def export(pairs: Any, out: str | Path, **kwargs: Any) -> ExportSummary:
    """Blocking :func:`export_async` for schedulers (Airflow, Dagster, cron scripts).

    Must not be called from a running event loop; use :func:`export_async` there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(export_async(pairs, out, **kwargs))
    raise RuntimeError("bulkexport.export() called inside an event loop; await export_async() instead")
