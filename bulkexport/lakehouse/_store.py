"""Where a lakehouse table lives and how its library reaches it.

Both formats take the output as the exporter does (a local folder or ``s3://bucket/prefix``)
and put each table at ``OUT/<table>``. Credentials come from the standard AWS chain, which
both libraries read themselves; only the endpoint of an S3-compatible server is passed on
explicitly from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, as :mod:`bulkexport.storage`
does for the Parquet output, because not every client honours those variables.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from ..errors import ConfigError, StorageError
from ..layout import STATE_DIR
from ..schema import DATE, TABLES
from ..storage import ObjectStoreTarget, Target, open_target, storage_errors

__all__ = ["Location", "check_output", "locate", "retry_conflicts", "s3_endpoint", "translate_errors"]

T = TypeVar("T")
log = logging.getLogger("bulkexport")

@dataclass(frozen=True, slots=True)
class Location:
    """The output root, resolved once."""

    #: absolute local path, or the ``s3://`` URI without a trailing slash
    root: str
    #: local folder (True) or object store
    local: bool
    #: local folder for state that cannot live in an object store (the Iceberg SQLite catalog)
    state: Path

    def table(self, name: str) -> str:
        return f"{self.root}/{name}"


def locate(out: str | Path, state_dir: str | Path | None = None) -> Location:
    """Resolve ``out``; raise ConfigError for anything but a local folder or ``s3://``."""
    text = str(out)
    parts = urlsplit(text)
    if len(parts.scheme) <= 1 or parts.scheme == "file":
        folder = Path(parts.path if parts.scheme == "file" else text).absolute()
        return Location(str(folder), True, Path(state_dir) if state_dir else folder / STATE_DIR)
    if parts.username or parts.password:
        raise ConfigError("do not put credentials in the output URI; use the store's standard environment")
    if parts.scheme not in ("s3", "s3a") or not parts.netloc:
        raise ConfigError(f"table formats write to a local folder or an s3://bucket/prefix URI, not {text!r}")
    root = f"s3://{parts.netloc}{parts.path}".rstrip("/")
    if state_dir is None:
        target = open_target(root)  # the exporter's own state folder for this output
        assert isinstance(target, ObjectStoreTarget)
        state = target.state_dir(None)
    else:
        state = Path(state_dir)
    return Location(root, False, state)


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint the environment names, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


#: A commit another writer got in first is planned again from the table as it now is (the
#: plan read the table), at most this many times, with growing random waits.
CONFLICT_RETRIES = 8


def retry_conflicts(step: Callable[[], T], conflict: type[Exception], refresh: Callable[[], None], table: str) -> T:
    """Run ``step`` (plan and commit one chunk) until it commits without a conflict.

    Two runs of different run ids merging into one table at once (overlapping schedules)
    must both end correct: each plan is made against one version and only commits on top
    of it, so the loser re-reads the table and plans again rather than failing the run.
    """
    for attempt in itertools.count(1):
        try:
            return step()
        except conflict:
            if attempt > CONFLICT_RETRIES:
                raise
            log.warning("%s: another writer committed first; planning the chunk again (%d/%d)", table, attempt,
                        CONFLICT_RETRIES)  # fmt: skip
            time.sleep(random.uniform(0.0, min(5.0, 0.05 * 2**attempt)))
            refresh()
    raise AssertionError("unreachable")


@contextmanager
def translate_errors(what: str, *kinds: type[BaseException]) -> Iterator[None]:
    """Turn the storage and commit failures of a table library into :class:`StorageError`:
    the caller retries once storage is back, and the table is at its last commit."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"cannot {what}: {exc.strerror or exc}") from exc
    except kinds as exc:
        raise StorageError(f"cannot {what}: {exc}") from exc


#: What marks a table folder as each format's.
_MARKERS = {"delta": "_delta_log", "iceberg": "metadata"}


def check_output(target: Target, fmt: str) -> None:
    """Refuse an output whose table folders hold another format: Parquet files appended
    next to a Delta table would be read by Hive-style readers as duplicates, and a Delta
    log over loose Parquet would hide them."""
    for table in TABLES:
        with storage_errors(f"read {target.url(table)}"):
            if target.filesystem.get_file_info(target.path(table)).type != pafs.FileType.Directory:
                continue  # nothing there yet (or something a write will report, in its place)
            selector = pafs.FileSelector(target.path(table), recursive=False)
            names = {info.base_name for info in target.filesystem.get_file_info(selector)}
        found = sorted(name for name, marker in _MARKERS.items() if marker in names and name != fmt)
        if found:
            raise ConfigError(f"{target.url(table)} is a {found[0]} table; pass --table-format {found[0]}, "
                              "or write this format to another folder")  # fmt: skip
        table_folder = any(marker in names for marker in _MARKERS.values())
        if fmt != "parquet" and not table_folder and any(n.startswith(f"{DATE}=") for n in names):
            raise ConfigError(f"{target.url(table)} holds Parquet files of earlier runs; a {fmt} table needs a folder "
                              "of its own (another --out)")  # fmt: skip
