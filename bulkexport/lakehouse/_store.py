"""Where a lakehouse table lives and how its library reaches it.

Both formats take the output as the exporter does (a local folder or ``s3://bucket/prefix``)
and put each table at ``OUT/<table>``. Credentials come from the standard AWS chain, which
both libraries read themselves; only the endpoint of an S3-compatible server is passed on
explicitly from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, as :mod:`bulkexport.storage`
does for the Parquet output, because not every client honours those variables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError, StorageError
from ..storage import ObjectStoreTarget, open_target

__all__ = ["Location", "locate", "s3_endpoint", "translate_errors"]

#: The exporter's state folder under a local output (skipped by every Hive-style reader).
STATE_DIR = "_bulkexport"


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
