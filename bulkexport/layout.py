"""Every path of one run, in one place.

::

    OUT/                                    the dataset (a folder, or an object store)
      send_stats/date=YYYY-MM-DD/part-<run_id>-<gen>-<n>.parquet
      send_totals/date=YYYY-MM-DD/...
      _bulkexport/runs/<run_id>/{manifest.json, failures.jsonl}      (object stores: mirrored)

    STATE/runs/<run_id>/                    local: OUT/_bulkexport; object store: --state-dir/<hash>
      state.sqlite                          pairs, what is done, staged parts, published files
      staging/ckpt-<seq>-<table>.arrow      checkpoints not yet published
      manifest.json, failures.jsonl         run documents
    STATE/runs/<run_id>.lock                the run's lock (beside its folder: --overwrite
                                            removes the folder, never the lock under its holder)

The leading underscore of ``_bulkexport`` makes pyarrow, Spark and Hive-style readers skip it.
Names hold only the run id (validated to ``[A-Za-z0-9._-]``), numbers and table names:
campaign and send ids never become paths, whatever characters they contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .storage import Target

__all__ = ["STATE_DIR", "RunLayout"]

#: Folder under the output root for run documents (and, locally, run state).
STATE_DIR = "_bulkexport"
#: A published file's name: run id, generation, number (see RunLayout.part).
_PART = re.compile(r"part-(.+)-(\d+)-(\d{5,})\.parquet")


@dataclass(frozen=True, slots=True)
class RunLayout:
    """The local and dataset paths of one run."""

    run_id: str  # validated: safe in file names
    run_dir: Path  # local: state, staging and documents

    @classmethod
    def of(cls, target: Target, run_id: str, state_root: Path | None = None) -> RunLayout:
        return cls(run_id, target.state_dir(state_root) / "runs" / run_id)

    @property
    def state_db(self) -> Path:
        return self.run_dir / "state.sqlite"

    @property
    def staging(self) -> Path:
        return self.run_dir / "staging"

    @property
    def lock(self) -> Path:
        return self.run_dir.parent / f"{self.run_id}.lock"

    def document(self, name: str) -> Path:
        """A run document (``manifest.json``, ``failures.jsonl``) in the state folder."""
        return self.run_dir / name

    def mirrored(self, name: str) -> str:
        """The same document next to the data, relative to the dataset root."""
        return f"{STATE_DIR}/runs/{self.run_id}/{name}"

    def checkpoint(self, seq: int, table: str) -> str:
        """A staged checkpoint's file name (under :attr:`staging`)."""
        return f"ckpt-{seq:08d}-{table}.arrow"

    @staticmethod
    def partition(table: str, day: str) -> str:
        """A table's partition folder, relative to the dataset root (Hive style)."""
        return f"{table}/date={day}"

    def part(self, gen: int, n: int) -> str:
        """A published Parquet file's name (under its partition folder)."""
        return f"part-{self.run_id}-{gen}-{n:05d}.parquet"

    def is_part(self, name: str, gen: int | None = None) -> bool:
        """Whether ``name`` is one of this run's published files (of generation ``gen``, or
        any). Matched whole, not by prefix: run ``a``'s prefix ``part-a-0-`` also starts
        run ``a-0``'s names, and what matches here gets deleted."""
        found = _PART.fullmatch(name)
        return found is not None and found[1] == self.run_id and (gen is None or int(found[2]) == gen)
