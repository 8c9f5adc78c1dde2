"""Where (campaign_id, send_id) pairs come from: files, standard input or iterables, read lazily.

Every reader is a generator, so a million-line file costs one line of memory here; the
run state (``state.py``) spools pairs to disk and removes duplicates. Readers raise
:class:`PairsInputError` naming the file and line of the first bad record: the engine reads
the whole input before it sends the first request, so a bad file costs no budget.

Ids are checked where they are read, the same way for every source: a control character
(C0, DEL, C1) anywhere is an error, because Braze answers 400 for it after the request was
spent; surrounding whitespace is trimmed (``c1``, `` c1`` and ``c1 `` are one id) and
counted, so the summary can say how many ids were touched.
"""

from __future__ import annotations

import csv
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from .errors import PairsInputError

__all__ = ["MAX_ID_LENGTH", "STDIN", "IdCheck", "Pair", "PairSource", "iter_pair_file", "pair_from_item"]

#: Braze ids are short (custom send ids: at most 64 ASCII characters); anything this long
#: is a broken input line, not an id.
MAX_ID_LENGTH = 1024
#: The pairs "path" that means standard input (``--pairs -``).
STDIN = "-"
_STDIN_NAME = "<stdin>"
_FIELDS = ("campaign_id", "send_id")
#: Unicode category Cc: C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # control characters, lone surrogates


class Pair(NamedTuple):
    """One export unit: a campaign and one of its sends."""

    campaign_id: str
    send_id: str


#: What the library accepts as pairs.
PairSource = (
    str
    | Path
    | Iterable["Pair | tuple[str, str] | Mapping[str, Any]"]
    | AsyncIterable["Pair | tuple[str, str] | Mapping[str, Any]"]
)


class IdCheck:
    """Checks and trims the ids of one input, and counts what it trimmed."""

    __slots__ = ("first_trimmed", "trimmed")

    def __init__(self) -> None:
        self.trimmed = 0  # ids whose surrounding whitespace was removed
        self.first_trimmed: str | None = None  # where the first one was, "file:line field"

    def id(self, name: str, value: object, where: str, line: int) -> str:
        if not isinstance(value, str):
            raise PairsInputError(where, line, f"{name} must be a string, got {type(value).__name__}")
        if not value:
            raise PairsInputError(where, line, f"{name} is empty")
        if len(value) > MAX_ID_LENGTH:
            raise PairsInputError(where, line, f"{name} is longer than {MAX_ID_LENGTH} characters")
        bad = _CONTROL.search(value)
        if bad is not None:
            what = "an unpaired surrogate (not Unicode text)" if bad.group() >= "\ud800" else "a control character"
            raise PairsInputError(
                where, line, f"{name} contains {what} (U+{ord(bad.group()):04X}) at position {bad.start() + 1}"
            )
        trimmed = value.strip()
        if len(trimmed) != len(value):
            if not trimmed:
                raise PairsInputError(where, line, f"{name} is only whitespace")
            self.trimmed += 1
            if self.first_trimmed is None:
                self.first_trimmed = f"{where}:{line} {name}"
        return trimmed

    def pair(self, cid: object, sid: object, where: str, line: int) -> Pair:
        return Pair(self.id("campaign_id", cid, where, line), self.id("send_id", sid, where, line))


def pair_from_item(item: object, where: str, index: int, check: IdCheck | None = None) -> Pair:
    """Accept a Pair, a 2-tuple/list or a mapping with both keys (library input)."""
    if isinstance(item, Mapping):
        missing = [f for f in _FIELDS if f not in item]
        if missing:
            raise PairsInputError(where, index, f"missing {', '.join(missing)}")
        cid, sid = item["campaign_id"], item["send_id"]
    elif isinstance(item, tuple | list) and len(item) == 2:
        cid, sid = item
    else:
        raise PairsInputError(
            where, index, f"expected a (campaign_id, send_id) pair, got {type(item).__name__}"
        )
    return (check or IdCheck()).pair(cid, sid, where, index)


def iter_pair_file(
    path: str | Path, fmt: str | None = None, check: IdCheck | None = None
) -> Iterator[tuple[int, Pair]]:
    """Yield ``(line_number, pair)`` from a CSV, JSON Lines or Parquet file.

    ``"-"`` reads standard input, which has no name to tell the format from, so ``fmt`` is
    then required; FIFOs, ``/dev/stdin`` and other readable non-regular files work like files.
    The format comes from ``fmt`` or the file extension. Line numbers are physical lines
    for text formats (what an editor shows) and 1-based row numbers for Parquet.
    """
    check = check or IdCheck()
    if str(path) == STDIN:
        if not fmt:
            raise PairsInputError(
                _STDIN_NAME, 0, "reading pairs from standard input ('-') needs --pairs-format csv, jsonl or parquet"
            )
        yield from _iter_stream(sys.stdin.buffer, _STDIN_NAME, fmt.lower(), check)
        return
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise PairsInputError(p, 0, "no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise PairsInputError(p, 0, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(mode):
        raise PairsInputError(p, 0, "is a folder, not a pairs file")
    kind = (fmt or _format_from_suffix(p)).lower()
    try:
        fh = open(p, "rb")  # noqa: SIM115 -- the with below closes it; open errors get their own message
    except OSError as exc:
        raise PairsInputError(p, 0, f"cannot read: {exc.strerror or exc}") from None
    with fh:
        yield from _iter_stream(fh, str(p), kind, check)


def _iter_stream(fh: IO[bytes], where: str, kind: str, check: IdCheck) -> Iterator[tuple[int, Pair]]:
    if kind == "csv":
        yield from _iter_csv(fh, where, check)
    elif kind in ("jsonl", "ndjson"):
        yield from _iter_jsonl(fh, where, check)
    elif kind == "parquet":
        yield from _iter_parquet(fh, where, check)
    else:
        raise PairsInputError(where, 0, f"unknown pairs format {kind!r} (use csv, jsonl or parquet)")


def _format_from_suffix(p: Path) -> str:
    suffix = p.suffix.lower().lstrip(".")
    if suffix in ("csv", "txt"):
        return "csv"
    if suffix in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if suffix in ("parquet", "pq"):
        return "parquet"
    raise PairsInputError(
        p, 0, "cannot tell the format from the extension; use .csv, .jsonl or .parquet, or --pairs-format"
    )


def _decoded_lines(fh: Iterable[bytes], p: str) -> Iterator[str]:
    """Decode line by line, so a non-UTF-8 byte is reported at its own line number."""
    for number, raw in enumerate(fh, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PairsInputError(p, number, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        # Spreadsheets save CSV with a byte-order mark that would corrupt the header.
        yield text.removeprefix("\ufeff") if number == 1 else text


def _iter_csv(fh: IO[bytes], p: str, check: IdCheck) -> Iterator[tuple[int, Pair]]:
    reader = csv.reader(_decoded_lines(fh, p), strict=True)
    start = 0  # physical lines consumed before the current record
    try:
        header = next(reader, None)
        if header is None:
            raise PairsInputError(p, 1, "empty file: expected a header line 'campaign_id,send_id'")
        names = [h.strip() for h in header]
        if not set(_FIELDS) <= set(names):
            raise PairsInputError(p, 1, f"header must name campaign_id and send_id, got {header!r}")
        twice = [f for f in _FIELDS if names.count(f) > 1]
        if twice:  # which column is meant? Taking the first silently could export the wrong ids
            raise PairsInputError(p, 1, f"header names {twice[0]} more than once, got {header!r}")
        ci, si = names.index("campaign_id"), names.index("send_id")
        width = len(names)
        start = reader.line_num
        for row in reader:
            line = start + 1
            start = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                raise PairsInputError(p, line, f"expected {width} fields, got {len(row)}")
            yield line, check.pair(row[ci], row[si], p, line)
    except csv.Error as exc:
        # Reported where the broken record starts (an unclosed quote runs to the end).
        raise PairsInputError(p, start + 1, f"CSV syntax error: {exc}") from None


def _iter_jsonl(fh: IO[bytes], p: str, check: IdCheck) -> Iterator[tuple[int, Pair]]:
    for number, raw in enumerate(fh, start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PairsInputError(p, number, f"not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise PairsInputError(p, number, "expected a JSON object with campaign_id and send_id")
        yield number, pair_from_item(item, p, number, check)


def _iter_parquet(fh: IO[bytes], p: str, check: IdCheck) -> Iterator[tuple[int, Pair]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with ExitStack() as stack:
        if not fh.seekable():
            # Parquet keeps its index at the end of the file: a pipe is spooled to a temporary
            # file first (on disk, not in memory).
            spool = stack.enter_context(tempfile.TemporaryFile(prefix="bulkexport-pairs-"))
            shutil.copyfileobj(fh, spool, 1 << 20)
            spool.seek(0)
            fh = spool
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowException, OSError) as exc:
            raise PairsInputError(p, 0, f"not a readable Parquet file ({exc})") from None
        names = pf.schema_arrow.names
        missing = [f for f in _FIELDS if f not in names]
        if missing:
            raise PairsInputError(p, 0, f"Parquet file lacks column(s) {', '.join(missing)}")
        row = 0
        for batch in pf.iter_batches(batch_size=65_536, columns=list(_FIELDS)):
            for cid, sid in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                row += 1
                yield row, check.pair(cid, sid, p, row)


def iter_items(
    items: Iterable[Any], where: str = "<pairs>", check: IdCheck | None = None
) -> Iterator[tuple[int, Pair]]:
    """Number and validate library-supplied pairs."""
    check = check or IdCheck()
    for index, item in enumerate(items, start=1):
        yield index, pair_from_item(item, where, index, check)
