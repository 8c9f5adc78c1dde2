"""Lakehouse tables: ``send_stats`` and ``send_totals`` as Delta Lake or Apache Iceberg
tables that hold the latest value per key.

One contract, :class:`LakeTable`, implemented by :mod:`.delta` (delta-rs) and
:mod:`.iceberg` (pyiceberg); :func:`open_lake_table` opens or creates either::

    table = open_lake_table("delta", "/data/lake/braze", "send_stats")
    result = table.merge(batches)      # STATS_SCHEMA record batches, any number
    table.optimize()                   # once, at the end of a run

What a merge does (the same in both formats, see :mod:`._keys`): for every
``(campaign_id, send_id, date)`` in the incoming rows whose ``exported_at`` is newer than or
equal to the table's, the table's rows of that group become the incoming ones (rows a
restatement dropped are deleted); groups the table holds a newer fetch of are ignored;
other groups are untouched. Merging the same rows again changes nothing, so a run killed at
any moment re-merges what it did not record as committed. The input is read in chunks of
``max_rows_per_commit`` rows, one atomic commit each: every table version is one that some
sequence of whole chunks produced, never a half-applied chunk.

The libraries are optional extras (``pip install 'bulkexport[delta]'`` /
``'bulkexport[iceberg]'``); opening a format whose library is missing raises
:class:`~bulkexport.errors.ConfigError` naming the extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol, get_args

import pyarrow as pa

from ..config import DEFAULT_ROWS_PER_COMMIT as DEFAULT_MAX_ROWS_PER_COMMIT
from ..errors import ConfigError
from ._keys import GROUP_KEY, ROW_KEYS, Batches, DuplicateKeyError, MergeResult
from ._store import locate

__all__ = [
    "DEFAULT_MAX_ROWS_PER_COMMIT",
    "GROUP_KEY",
    "ROW_KEYS",
    "Batches",
    "DuplicateKeyError",
    "LakeTable",
    "MergeResult",
    "TableFormat",
    "TableName",
    "open_lake_table",
]

TableFormat = Literal["delta", "iceberg"]
TableName = Literal["send_stats", "send_totals"]



class LakeTable(Protocol):
    """One output table in a table format."""

    #: ``send_stats`` or ``send_totals``
    name: str
    #: ``delta`` or ``iceberg``
    format: str
    #: the table's root (local path or ``s3://`` URI)
    uri: str

    def merge(self, batches: Batches) -> MergeResult:
        """Merge record batches of the table's in-memory schema (see :mod:`bulkexport.schema`);
        one atomic commit per ``max_rows_per_commit`` rows of input."""
        ...

    def optimize(self) -> None:
        """Compact the small files that chunked merges leave; for the end of a run."""
        ...

    def version(self) -> int | None:
        """The current version (Delta) or snapshot id (Iceberg); None before any snapshot."""
        ...

    def commits(self, key: str, value: str, after: int | None = None) -> list[int]:
        """The versions / snapshot ids committed with ``commit_tag`` entry ``key = value``,
        oldest first (Delta reads its log only after version ``after``)."""
        ...

    def to_arrow(self) -> pa.Table:
        """The table's current contents (for checks and small tables)."""
        ...


def open_lake_table(
    fmt: TableFormat,
    out: str | Path,
    table: TableName,
    *,
    catalog_uri: str | None = None,
    catalog_type: str | None = None,
    catalog_properties: Mapping[str, str] | None = None,
    storage_options: Mapping[str, str] | None = None,
    state_dir: str | Path | None = None,
    max_rows_per_commit: int = DEFAULT_MAX_ROWS_PER_COMMIT,
    commit_tag: Mapping[str, str] | None = None,
) -> LakeTable:
    """Open ``OUT/<table>`` in format ``fmt``, creating it (empty, partitioned by ``date``)
    if it does not exist.

    ``storage_options`` go to the library as they are: delta-rs object-store keys
    (``AWS_REGION``, ...) or pyiceberg FileIO properties (``s3.region``, ...). For Iceberg,
    ``catalog_uri`` (with ``catalog_type`` if pyiceberg cannot tell it from the URI, and
    ``catalog_properties`` for anything else the catalog needs) replaces the embedded SQLite
    catalog, which otherwise lives at ``OUT/_bulkexport/iceberg_catalog.db`` (local output)
    or ``<state_dir>/iceberg_catalog.db`` (object-store output; ``state_dir`` defaults to
    ``~/.cache/bulkexport/<hash of OUT>``). ``commit_tag`` goes into every commit's metadata
    (Delta commit info, Iceberg snapshot summary): the exporter tags its run there, so the
    manifest can list exactly the versions a run committed, whatever else wrote meanwhile.
    """
    if fmt not in get_args(TableFormat):
        raise ConfigError(f"table format must be one of {', '.join(get_args(TableFormat))}, got {fmt!r}")
    if table not in ROW_KEYS:
        raise ConfigError(f"table must be one of {', '.join(ROW_KEYS)}, got {table!r}")
    if max_rows_per_commit < 1:
        raise ConfigError(f"max_rows_per_commit must be at least 1, got {max_rows_per_commit}")
    location = locate(out, state_dir)
    if fmt == "delta":
        if catalog_uri or catalog_type or catalog_properties:
            raise ConfigError("a catalog is an Iceberg setting; Delta tables are found by their path")
        try:
            from .delta import DeltaLakeTable
        except ImportError as exc:
            raise _missing("delta", "deltalake", exc) from None
        return DeltaLakeTable(location, table, storage_options=storage_options, max_rows_per_commit=max_rows_per_commit,
                              commit_tag=commit_tag)  # fmt: skip
    try:
        from .iceberg import IcebergLakeTable
    except ImportError as exc:
        raise _missing("iceberg", "pyiceberg", exc) from None
    return IcebergLakeTable(
        location, table, catalog_uri=catalog_uri, catalog_type=catalog_type,
        catalog_properties=catalog_properties, storage_options=storage_options,
        max_rows_per_commit=max_rows_per_commit, commit_tag=commit_tag,
    )  # fmt: skip


def _missing(fmt: str, library: str, exc: ImportError) -> Exception:
    """The error for a format whose optional library (or one it needs) is not installed."""
    if exc.name is None or exc.name.split(".")[0] not in (library, "sqlalchemy", "pyiceberg_core"):
        return exc  # a bug, not a missing extra: keep the original
    return ConfigError(f"the {fmt} table format needs {library}: pip install 'bulkexport[{fmt}]'")
