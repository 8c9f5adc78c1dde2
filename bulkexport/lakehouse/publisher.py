"""Publishing into lakehouse tables: a run's staged checkpoints merged into ``send_stats``
and ``send_totals`` (``--table-format delta|iceberg``), instead of Parquet files.

The run stages its rows exactly as for Parquet; only the last phase differs. What a crash
may leave, and what the next invocation does about it:

* **Tables opened before the fetch.** A missing library, an unreachable catalog or bad
  credentials fail the run at once, not after an hour of requests; a folder that holds the
  other format's files is refused (:func:`check_output`).
* **Each table merged in one call** (:meth:`LakeTable.merge`: chunks of
  ``max_rows_per_commit`` rows, one atomic commit each), then recorded as merged in the run
  state. A kill during a merge leaves the table at a commit boundary; the next invocation
  merges that table's staged rows again, which changes nothing for the chunks already in
  (same fetch, same key: the row is replaced by itself) and completes the rest. A table
  recorded as merged is not merged again.
* **Optimised once both are merged**, then the run writes its manifest. Compaction holds
  the same rows, so a kill there only costs a re-merge and a second compaction.
* **Every commit is tagged** with the run (``bulkexport.run_id``, ``bulkexport.run``): the
  manifest lists the versions / snapshots this run committed, read back from the tables
  themselves, so commits of a killed session are listed too, and commits another run made
  meanwhile are not.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

from ..checkpoint import Staging
from ..config import ExportConfig
from ..state import RunState
from ..storage import Target
from . import LakeTable, TableFormat, TableName, open_lake_table
from ._keys import BASE_SCHEMAS
from ._store import check_output

__all__ = ["LakePublisher"]

#: Commit metadata keys (Delta commit info, Iceberg snapshot summary).
RUN_ID_TAG = "bulkexport.run_id"
RUN_TAG = "bulkexport.run"  # run id and a token of this run's state: unique across --overwrite

class LakePublisher:
    """Staged parts -> merged into the run's Delta or Iceberg tables."""

    __slots__ = ("_cfg", "_out", "_staging", "_state_dir", "_tables")

    def __init__(self, cfg: ExportConfig, out: str, state_dir: Path, staging: Staging) -> None:
        self._cfg = cfg  # format, catalog, run id
        self._out = out  # the output root, as given
        self._state_dir = state_dir  # the output's local state folder (embedded Iceberg catalog)
        self._staging = staging  # where the parts are read
        self._tables: dict[str, LakeTable] = {}

    async def open(self, target: Target, state: RunState) -> None:
        """Check the output and open (creating if needed) both tables; before the fetch."""
        token = state.get("lake_token")
        if token is None:
            token = uuid.uuid4().hex
            state.put("lake_token", token)
        tag = {RUN_ID_TAG: self._cfg.run_id, RUN_TAG: f"{self._cfg.run_id}/{token}"}

        def work() -> dict[str, LakeTable]:
            check_output(target, self._cfg.table_format)
            return {
                name: open_lake_table(
                    cast(TableFormat, self._cfg.table_format),
                    self._out,
                    cast(TableName, name),
                    catalog_uri=self._cfg.catalog_uri,
                    catalog_type=self._cfg.catalog_type,
                    state_dir=self._state_dir,
                    commit_tag=tag,
                    max_rows_per_commit=self._cfg.rows_per_commit,
                )
                for name in BASE_SCHEMAS
            }

        self._tables = await asyncio.to_thread(work)
        if state.get("lake_start") is None:  # the versions before this run's first commit
            state.put("lake_start", {name: t.version() for name, t in self._tables.items()})

    async def publish(self, state: RunState, gen: int) -> None:
        """Merge every table's unpublished parts (skipping a table already merged for this
        generation), then compact both."""
        key = f"lake_merged_{gen}"
        merged: list[str] = list(state.get(key) or [])
        for name, table in self._tables.items():
            if name in merged:
                continue
            result = await asyncio.to_thread(table.merge, self._batches(state, name))
            merged.append(name)
            state.put(key, merged)
            if result.rows_stale:
                # Not an error: a later run fetched those (pair, date)s already.
                state.put(f"lake_stale_{name}", int(state.get(f"lake_stale_{name}") or 0) + result.rows_stale)
        for table in self._tables.values():
            await asyncio.to_thread(table.optimize)

    def _batches(self, state: RunState, name: str) -> Iterator[pa.RecordBatch]:
        """The staged batches of one table with their date column back (staging keeps the
        date in the part's record, as Hive keeps it in the folder name)."""
        schema = BASE_SCHEMAS[name]
        for part in state.unpublished_parts(table=name):
            batch = self._staging.read(part)
            day = pa.repeat(pa.scalar(date.fromisoformat(part.date), pa.date32()), batch.num_rows)
            yield pa.RecordBatch.from_arrays([*batch.columns, day], schema=schema)

    async def describe(self, state: RunState) -> list[dict[str, Any]]:
        """For the manifest: each table, its version now and the commits this run made."""
        token = state.get("lake_token")
        start: dict[str, int | None] = state.get("lake_start") or {}
        stale = {name: int(state.get(f"lake_stale_{name}") or 0) for name in self._tables}

        def work() -> list[dict[str, Any]]:
            return [
                {
                    "table": name,
                    "format": t.format,
                    "uri": t.uri,
                    "version": t.version(),
                    "version_before_run": start.get(name),
                    "commits": t.commits(RUN_TAG, f"{self._cfg.run_id}/{token}", start.get(name)),
                    "rows_stale": stale[name],
                }
                for name, t in self._tables.items()
            ]

        return await asyncio.to_thread(work)

    def versions(self) -> dict[str, int | None]:
        return {name: t.version() for name, t in self._tables.items()}
