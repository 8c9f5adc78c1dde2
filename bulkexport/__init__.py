"""bulkexport: Braze send analytics (``GET /sends/data_series``) for thousands of
(campaign_id, send_id) pairs, paced under the workspace's shared rate limit, written as
Hive-partitioned Parquet that survives crashes and resumes.

Public surface (everything else is private and may change)::

    summary = await bulkexport.export_async("pairs.csv", "out/", endpoint=..., api_key=...)
    summary = bulkexport.export(pairs_iterable, "out/")         # blocking, for schedulers
    table = bulkexport.read_table("out/", "send_stats")          # read back, date typed
    async for table, batch in bulkexport.stream_batches(pairs):   # Arrow batches, own sink
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .api import BatchStream, export, export_async, make_plan, stream_batches
from .config import ExportConfig
from .errors import (
    AuthError,
    BrazeUnavailable,
    BulkExportError,
    ConfigError,
    ExportInterrupted,
    PairsInputError,
    RunInProgress,
    RunStopped,
    StorageError,
)
from .inputs import ApiKey
from .pairs import Pair
from .summary import ExportSummary

if TYPE_CHECKING:
    from .read import dataset, read_table


def __getattr__(name: str) -> Any:
    # Reading back needs pyarrow.dataset (~7 MB resident); an export never does, so it is
    # imported on first use.
    if name in ("dataset", "read_table"):
        from . import read

        return getattr(read, name)
    raise AttributeError(f"module 'bulkexport' has no attribute {name!r}")

__all__ = [
    "ApiKey",
    "AuthError",
    "BatchStream",
    "BrazeUnavailable",
    "BulkExportError",
    "ConfigError",
    "ExportConfig",
    "ExportInterrupted",
    "ExportSummary",
    "Pair",
    "PairsInputError",
    "RunInProgress",
    "RunStopped",
    "StorageError",
    "__version__",
    "dataset",
    "export",
    "export_async",
    "make_plan",
    "read_table",
    "stream_batches",
]
