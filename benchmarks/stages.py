"""Every call the suite makes into bulkexport's internals, one function per stage.

The per-stage benchmark (``children.py``, ``stages``) times these functions and nothing
else, so when the engine's hot path changes, this module is the only one to adapt: keep each
function's contract (what goes in, what comes out) and change its body.

Stages, in pipeline order, for one typical response:

* ``parse``: the body to Python objects (``orjson.loads``). Off the path when the C reader
  takes the body: then it is the reference for what parsing alone used to cost.
* ``flatten``: one response into the flattener (``Flattener.add``; today it reads the body
  itself, see :data:`FLATTEN_INCLUDES_PARSE` and :func:`read_from_bytes`).
* ``build``: the flattener's buffers to Arrow batches (``Flattener.build``, every
  :data:`BUILD_EVERY` responses, as the pipeline does).
* ``stage``: a checkpoint made durable (``Staging.write``, fsyncs included).
* ``publish``: staged checkpoints into the Hive-partitioned Parquet dataset
  (``ParquetPublisher.publish``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson

from bulkexport.checkpoint import _BUILD_EVERY, Staging
from bulkexport.config import ExportConfig
from bulkexport.flatten import Flattener
from bulkexport.layout import RunLayout
from bulkexport.publish import ParquetPublisher
from bulkexport.storage import open_target


def _default(name: str) -> int:
    """An ExportConfig default, so the benchmark buffers and writes as a default run does."""
    (value,) = (f.default for f in dataclasses.fields(ExportConfig) if f.name == name)
    if not isinstance(value, int):
        raise TypeError(f"ExportConfig.{name} has no integer default")
    return value


#: Responses per build, as the pipeline buffers them.
BUILD_EVERY: int = _BUILD_EVERY
#: Rows buffered per checkpoint, as the pipeline does by default.
CHECKPOINT_ROWS: int = _default("checkpoint_rows")
#: True while ``flatten`` reads the body itself: the report then shows parse + flatten as one.
FLATTEN_INCLUDES_PARSE = True
RUN_ID = "bench"
_EXPORTED_AT_US = 1_790_000_000_000_000


def parse(body: bytes) -> Any:
    return orjson.loads(body)


def new_flattener() -> Any:
    return Flattener(RUN_ID)


def flatten(flat: Any, token: int, campaign_id: str, send_id: str, body: bytes) -> None:
    flat.add(token, campaign_id, send_id, body, _EXPORTED_AT_US)


def read_from_bytes(flat: Any) -> int:
    """Responses the C reader took straight from their bytes (the rest went through orjson)."""
    return int(flat._direct)


def pending(flat: Any) -> int:
    """Responses added since the last build."""
    return len(flat)


@dataclasses.dataclass
class Built:
    """What a build hands to the checkpointer: per table, the batches, and the row counts."""

    tables: dict[str, list[Any]]
    stats_rows: int
    totals_rows: int
    sent: int  # sum of send_stats.sent, for the cross-check against the straightforward way


def build(flat: Any) -> Built:
    import pyarrow.compute as pc

    fb = flat.build()
    sent = sum(pc.sum(b.column("sent")).as_py() or 0 for b in fb.stats)
    return Built({"send_stats": fb.stats, "send_totals": fb.totals}, fb.stats_rows, fb.totals_rows, sent)


@dataclasses.dataclass
class Sink:
    """The run's staging and its Parquet publisher over one dataset folder."""

    staging: Staging
    publisher: ParquetPublisher


def open_sink(root: Path) -> Any:
    """A sink over a fresh local dataset folder, with the run's default layout."""
    target = open_target(root)
    layout = RunLayout.of(target, RUN_ID)
    staging = Staging(layout)
    staging.prepare()
    publisher = ParquetPublisher(target, layout, staging, row_group_rows=_default("row_group_rows"),
                                 file_rows=_default("file_rows"))  # fmt: skip
    return Sink(staging, publisher)


def merge(into: dict[str, list[Any]], built: Built) -> None:
    """Buffer a build's batches for the next checkpoint, as the pipeline does."""
    for name, batches in built.tables.items():
        into.setdefault(name, []).extend(batches)


def stage(sink: Any, seq: int, tables: dict[str, list[Any]]) -> list[Any]:
    """Write checkpoint ``seq`` durably; return what publishing needs to find it. ``tables``
    is left as it was (the benchmark stages the same checkpoints in every repeat)."""
    parts: list[Any] = sink.staging.write(seq, {name: list(batches) for name, batches in tables.items()})
    return parts


def publish(sink: Any, parts: list[Any]) -> list[tuple[str, str, str, int, int]]:
    """Publish every staged part; return (path, table, date, rows, bytes) per file."""
    files: list[tuple[str, str, str, int, int]] = []
    parts = sorted(parts, key=lambda p: (p.table, p.date, p.seq))  # RunState.unpublished_parts' order
    sink.publisher.publish(parts, 0, lambda *f: files.append(f))
    return files
