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
    from .api import BatchStream, export, export_async, make_plan, stream_batches
    from .read import dataset, read_table

#: Names whose modules load pyarrow and aiohttp, imported on first use: the command must choose
#: Arrow's allocator before pyarrow loads (see :mod:`bulkexport.memory`), and reading back
#: needs pyarrow.dataset (~7 MB resident), which an export never does.
_LAZY = {
    "BatchStream": "api", "export": "api", "export_async": "api", "make_plan": "api", "stream_batches": "api",
    "dataset": "read", "read_table": "read",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bulkexport' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # once is enough
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
