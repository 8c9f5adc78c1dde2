"""Where the dataset lives: a local folder or an object store, behind one small contract.

The run state (SQLite, staged checkpoints) is always on local disk, where fsync and rename
work. For a local output it sits inside the output (``_bulkexport/``); for an object store
(``s3://``, ``gs://``, ``abfs://`` -- whatever ``pyarrow.fs`` supports) it sits in a local
state folder (``--state-dir``, default ``~/.cache/bulkexport``), and the run's manifest is
copied next to the data.

Publishing a file is atomic either way: locally a hidden temporary file is fsynced and
renamed into place; on an object store the file is uploaded from local disk in one object
write, which the store makes visible only once complete (a multipart upload that is never
completed leaves no object). Credentials come from the standard chains of each store
(``AWS_*`` variables, ``~/.aws/config``, instance roles); for S3-compatible servers,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` are honoured (pyarrow itself ignores them).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from .errors import ConfigError

__all__ = ["Target", "commit_file", "default_state_root", "open_target"]


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: Path, final: Path) -> None:
    """Make the complete local file ``tmp`` durable and visible as ``final`` in one atomic step."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(final.parent, directory=True)


def default_state_root() -> Path:
    """Local folder for the state of runs whose output is an object store."""
    explicit = os.environ.get("BULKEXPORT_STATE_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bulkexport"


class Target:
    """The dataset root: paths are relative to it, with ``/`` separators."""

    __slots__ = ("_fs", "_root", "local", "uri")

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, *, local: bool) -> None:
        self.uri = uri  # as the user gave it (never holds credentials: refused in open_target)
        self._fs = fs  # pyarrow filesystem
        self._root = root.rstrip("/")  # root path inside it
        self.local = local  # local filesystem: rename works

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._fs

    def path(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def local_path(self, rel: str) -> Path:
        assert self.local
        return Path(self.path(rel))

    def publish_file(self, tmp: Path, rel: str) -> int:
        """Make the complete file ``tmp`` visible as ``rel``; return its size."""
        size = tmp.stat().st_size
        if self.local:
            commit_file(tmp, self.local_path(rel))
        else:
            try:
                self.upload(tmp, rel)
            finally:
                tmp.unlink(missing_ok=True)
        return size

    def upload(self, local: Path, rel: str) -> None:
        """Copy the complete local file ``local`` to ``rel``, in one object write."""
        pafs.copy_files(str(local), self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self._fs)  # fmt: skip

    def read_bytes(self, rel: str) -> bytes:
        with self._fs.open_input_stream(self.path(rel)) as src:
            return bytes(src.read())

    def exists(self, rel: str) -> bool:
        return bool(self._fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound)

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self._fs.delete_file(self.path(rel))

    def list_names(self, rel_dir: str) -> list[str]:
        """Names of the files directly in ``rel_dir`` (empty if it does not exist)."""
        selector = pafs.FileSelector(self.path(rel_dir), allow_not_found=True, recursive=False)
        return [info.base_name for info in self._fs.get_file_info(selector) if info.type == pafs.FileType.File]

    def make_dir(self, rel_dir: str) -> None:
        if self.local:
            self.local_path(rel_dir).mkdir(parents=True, exist_ok=True)
        # Object stores have no folders: a key's prefix is enough.


def open_target(out: str | Path) -> Target:
    """Resolve ``out`` (a path or a URI) to a :class:`Target`; raise ConfigError if unusable."""
    text = str(out)
    if not text.strip() or "\0" in text:
        raise ConfigError(f"output {text!r} is not a usable folder or URI")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ConfigError(f"cannot use output {text!r}: {exc}") from None
    if len(parts.scheme) <= 1 or parts.scheme == "file":  # a path (or C:\\ on Windows)
        local = parts.path if parts.scheme == "file" else text
        if not local:
            raise ConfigError(f"output {text!r} names no folder")
        return Target(text, pafs.LocalFileSystem(), str(Path(local).absolute()), local=True)
    if parts.username or parts.password:
        raise ConfigError("do not put credentials in the output URI; use the store's standard environment")
    if parts.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_override" not in parts.query:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            fs = pafs.S3FileSystem(endpoint_override=endpoint, region=region)
            return Target(text, fs, f"{parts.netloc}{parts.path}", local=False)
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot use output {text!r}: {first}") from None
    if not root.strip("/"):
        raise ConfigError(f"output {text!r} names no bucket or container")
    return Target(text, fs, root, local=isinstance(fs, pafs.LocalFileSystem))


def state_dir_for(target: Target, run_id: str, state_root: Path | None) -> Path:
    """The local folder that holds one run's state."""
    if target.local:
        return target.local_path(f"_bulkexport/runs/{run_id}")
    key = hashlib.sha256(target.uri.encode()).hexdigest()[:16]
    return (state_root or default_state_root()) / key / "runs" / run_id
