"""Where the dataset lives: a local folder or an object store, behind one small contract.

Two classes, one contract (:class:`Target`), because the two differ in exactly what matters
for a reader never seeing a partial file:

* :class:`LocalTarget`: a file is written hidden beside its final name (``.``-prefixed,
  ``.tmp``: no reader lists it), fsynced and renamed into place; a rename replaces whatever
  an interrupted attempt left under that name.
* :class:`ObjectStoreTarget` (``s3://``, ``gs://``, ``abfs://``: whatever ``pyarrow.fs``
  opens): there is no rename, so a file is written on local disk first and uploaded in one
  object write, which the store makes visible only once complete; objects an interrupted
  publish left behind are deleted before a generation is written again; run documents are
  mirrored next to the data, so another machine sees that a run finished.

The run's state (SQLite, staged checkpoints) is always on local disk, where fsync and rename
work (see :mod:`bulkexport.layout`). Credentials come from each store's standard chain
(``AWS_*`` variables, ``~/.aws/config``, instance roles); for S3-compatible servers,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` are honoured (pyarrow itself ignores them).
"""

from __future__ import annotations

import errno
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from . import env
from .errors import ConfigError, StorageError

__all__ = [
    "LocalTarget",
    "ObjectStoreTarget",
    "Target",
    "commit_file",
    "fsync_path",
    "open_target",
    "private_file",
    "storage_errors",
]

TMP_SUFFIX = ".tmp"


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Translate OS and Arrow I/O errors into :class:`StorageError` with a message a person
    can act on (the one boundary where they are translated)."""
    try:
        yield
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise StorageError(f"cannot {what}: {reason} ({exc.filename or ''})".replace(" ()", "")) from exc
    except pa.ArrowException as exc:
        raise StorageError(f"cannot {what}: {exc}") from exc


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


def private_file(path: Path) -> None:
    """Create ``path`` if needed and make it owner-only (0600), whatever the umask.

    The state holds failure reasons taken from Braze's answers and the run's parameters:
    nobody but the job's own user has a reason to read it. SQLite creates its ``-wal`` and
    ``-shm`` files with the database file's mode, so creating that one first is enough.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):  # left by an older version or a crash
        side = path.with_name(path.name + suffix)
        if side.exists() and side.stat().st_mode & 0o777 != 0o600:
            side.chmod(0o600)


class Target(ABC):
    """The dataset root; paths are relative to it, with ``/`` separators."""

    __slots__ = ("_fs", "_root", "uri")

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str) -> None:
        self.uri = uri  # as the user gave it (never holds credentials: refused in open_target)
        self._fs = fs  # pyarrow filesystem
        self._root = root.rstrip("/")  # root path inside it

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._fs

    def path(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def url(self, rel: str) -> str:
        """Where a reader finds ``rel``: a path for a local folder, a URI for a store."""
        return f"{self.uri.rstrip('/')}/{rel}"

    # -- what differs -------------------------------------------------------------------------
    @abstractmethod
    def state_dir(self, state_root: Path | None) -> Path:
        """The local folder that holds this output's run state (``runs/<run_id>`` below it)."""

    @abstractmethod
    def check(self) -> None:
        """Fail now, not after the fetch, if the output cannot be written."""

    @abstractmethod
    def scratch(self, rel_dir: str, run_dir: Path) -> Path:
        """A local folder where a file for ``rel_dir`` is written before it becomes visible."""

    @abstractmethod
    def publish_file(self, tmp: Path, rel: str) -> int:
        """Make the complete local file ``tmp`` visible as ``rel``; return its size."""


    @abstractmethod
    def mirror(self, local: Path, rel: str) -> str:
        """A run document written in the state folder, made visible next to the data if the
        state folder is elsewhere; return where readers find it."""

    @abstractmethod
    def finished_elsewhere_document(self, rel: str) -> bytes | None:
        """The mirrored document ``rel``, if a run writes its documents away from its state
        (object stores); None otherwise."""

    # -- the same for both --------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return bool(self._fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound)

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self._fs.delete_file(self.path(rel))

    def delete_matching(self, rel_dir: str, matches: Callable[[str], bool]) -> int:
        """Delete the files directly in ``rel_dir`` whose names ``matches``; return how many.

        Publishing clears its generation's names in a partition before writing it again:
        an interrupted attempt's files are not always replaced by name, since file numbers
        are counted per table across dates, and a rerun that adds pairs of an earlier date
        shifts them (the old files would stay beside the new, every row twice)."""
        doomed = [name for name in self.list_names(rel_dir) if matches(name)]
        for name in doomed:
            self.delete(f"{rel_dir}/{name}")
        return len(doomed)

    def list_names(self, rel_dir: str) -> list[str]:
        """Names of the files directly in ``rel_dir`` (empty if it does not exist)."""
        selector = pafs.FileSelector(self.path(rel_dir), allow_not_found=True, recursive=False)
        return [info.base_name for info in self._fs.get_file_info(selector) if info.type == pafs.FileType.File]


class LocalTarget(Target):
    """A folder on this machine; the run state lives inside it, under ``_bulkexport/``."""

    __slots__ = ()

    def local_path(self, rel: str) -> Path:
        return Path(self.path(rel))

    def url(self, rel: str) -> str:
        return str(self.local_path(rel))

    def state_dir(self, state_root: Path | None) -> Path:
        return self.local_path("_bulkexport")

    def check(self) -> None:
        self.local_path("").mkdir(parents=True, exist_ok=True)

    def scratch(self, rel_dir: str, run_dir: Path) -> Path:
        folder = self.local_path(rel_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder  # beside its final name: a rename within one folder is atomic

    def publish_file(self, tmp: Path, rel: str) -> int:
        size = tmp.stat().st_size
        commit_file(tmp, self.local_path(rel))
        return size

    def mirror(self, local: Path, rel: str) -> str:
        return str(local)  # the state folder is inside the output already

    def finished_elsewhere_document(self, rel: str) -> bytes | None:
        return None


class ObjectStoreTarget(Target):
    """An object store; the run state lives in a local state folder (``--state-dir``)."""

    __slots__ = ()

    def state_dir(self, state_root: Path | None) -> Path:
        if state_root is None:
            explicit = os.environ.get(env.STATE_DIR)
            cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            state_root = Path(explicit) if explicit else Path(cache) / "bulkexport"
        return state_root / hashlib.sha256(self.uri.encode()).hexdigest()[:16]

    def check(self) -> None:
        """Bad credentials or a missing bucket fail here, not after the fetch: listing the
        root alone would not tell, since a missing folder lists as empty."""
        bucket = self._root.split("/", 1)[0]
        if self._fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"cannot use the output {self.uri}: bucket {bucket!r} does not exist "
                               "(or these credentials cannot see it)")  # fmt: skip
        self.list_names("")

    def scratch(self, rel_dir: str, run_dir: Path) -> Path:
        return run_dir  # written locally, uploaded whole

    def publish_file(self, tmp: Path, rel: str) -> int:
        size = tmp.stat().st_size
        try:
            self._upload(tmp, rel)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def mirror(self, local: Path, rel: str) -> str:
        self._upload(local, rel)
        return self.url(rel)

    def finished_elsewhere_document(self, rel: str) -> bytes | None:
        if not self.exists(rel):
            return None
        with self._fs.open_input_stream(self.path(rel)) as src:
            return bytes(src.read())

    def _upload(self, local: Path, rel: str) -> None:
        pafs.copy_files(str(local), self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self._fs)  # fmt: skip


def open_target(out: str | Path) -> Target:
    """Resolve ``out`` (a path or a URI) to a :class:`Target`; raise ConfigError if unusable."""
    if not isinstance(out, str | os.PathLike):  # str(None) is a folder named "None"
        raise ConfigError(f"out must be a folder path or a URI, not {type(out).__name__}")
    text = os.fspath(out)
    if not isinstance(text, str):
        raise ConfigError("out must be a folder path or a URI given as text, not bytes")
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
        return LocalTarget(text, pafs.LocalFileSystem(), str(Path(local).absolute()))
    if parts.username or parts.password:
        raise ConfigError("do not put credentials in the output URI; use the store's standard environment")
    text = _canonical(text, parts.scheme, parts.netloc, parts.path, parts.query)
    parts = urlsplit(text)
    if parts.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_override" not in parts.query:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            fs = pafs.S3FileSystem(endpoint_override=endpoint, region=region)
            return ObjectStoreTarget(text, fs, f"{parts.netloc}{parts.path}")
    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot use output {text!r}: {first}") from None
    if not root.strip("/"):
        raise ConfigError(f"output {text!r} names no bucket or container")
    if isinstance(fs, pafs.LocalFileSystem):
        return LocalTarget(text, fs, root)
    return ObjectStoreTarget(text, fs, root)


def _canonical(text: str, scheme: str, netloc: str, path: str, query: str) -> str:
    """One spelling per object-store prefix. The run's local state folder and lock are found
    by hashing the URI, while the store itself ignores a trailing ``/``: two spellings of
    one prefix would be two runs writing the same object names, each overwriting the
    other's files. An empty or relative segment (``//``, ``.``, ``..``) names no clear
    folder and is refused."""
    inner = path.removeprefix("/").rstrip("/")
    segments = inner.split("/") if inner else []
    if any(seg in ("", ".", "..") for seg in segments):
        raise ConfigError(f"output {text!r}: a path segment is empty, '.' or '..'; write the prefix plainly")
    rest = "/" + "/".join(segments) if segments else ""
    return f"{scheme}://{netloc}{rest}" + (f"?{query}" if query else "")
