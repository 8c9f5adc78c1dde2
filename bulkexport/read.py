"""Reading the output back: the dataset as one table, partitions typed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from .schema import TABLES, partitioning
from .storage import open_target

__all__ = ["dataset", "read_table"]


def dataset(out: str | Path, table: str = "send_stats") -> ds.Dataset:
    """A pyarrow dataset over one output table (a folder or an object-store URI), with
    ``date`` typed ``date32``.

    Hidden (``.``) and state (``_``) files are ignored, as every Hive-style reader does.
    """
    if table not in TABLES:
        raise ValueError(f"table must be one of {sorted(TABLES)}, got {table!r}")
    target = open_target(out)
    return ds.dataset(
        target.path(table),
        filesystem=target.filesystem,
        format="parquet",
        schema=TABLES[table].append(pa.field("date", pa.date32())),
        partitioning=partitioning(),
    )


def read_table(out: str | Path, table: str = "send_stats", **kwargs: Any) -> pa.Table:
    """The whole table in memory (``kwargs`` go to ``Dataset.to_table``: columns, filter)."""
    return dataset(out, table).to_table(**kwargs)
