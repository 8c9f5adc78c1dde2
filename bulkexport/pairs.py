"""Where (campaign_id, send_id) pairs come from: files or iterables, read lazily.

Every reader is a generator, so a million-line file costs one line of memory here; the
run state (``state.py``) spools pairs to disk and removes duplicates. Readers raise
:class:`PairsInputError` naming the file and line of the first bad record: the engine reads
the whole input before it sends the first request, so a bad file costs no budget.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .errors import PairsInputError

__all__ = ["MAX_ID_LENGTH", "Pair", "PairSource", "iter_pair_file", "pair_from_item"]

#: Braze ids are short (custom send ids: at most 64 ASCII characters); anything this long
#: is a broken input line, not an id.
MAX_ID_LENGTH = 1024
_FIELDS = ("campaign_id", "send_id")


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


def _check_id(name: str, value: object, where: str, line: int) -> str:
    if not isinstance(value, str):
        raise PairsInputError(where, line, f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise PairsInputError(where, line, f"{name} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise PairsInputError(where, line, f"{name} is longer than {MAX_ID_LENGTH} characters")
    if "\x00" in value:
        raise PairsInputError(where, line, f"{name} contains a NUL character")
    return value


def pair_from_item(item: object, where: str, index: int) -> Pair:
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
    return Pair(_check_id("campaign_id", cid, where, index), _check_id("send_id", sid, where, index))


def iter_pair_file(path: str | Path, fmt: str | None = None) -> Iterator[tuple[int, Pair]]:
    """Yield ``(line_number, pair)`` from a CSV, JSON Lines or Parquet file.

    The format comes from ``fmt`` or the file extension. Line numbers are physical lines
    for text formats (what an editor shows) and 1-based row numbers for Parquet.
    """
    p = Path(path)
    kind = (fmt or _format_from_suffix(p)).lower()
    if not p.is_file():
        raise PairsInputError(p, 0, "no such file")
    if kind == "csv":
        yield from _iter_csv(p)
    elif kind in ("jsonl", "ndjson"):
        yield from _iter_jsonl(p)
    elif kind == "parquet":
        yield from _iter_parquet(p)
    else:
        raise PairsInputError(p, 0, f"unknown pairs format {kind!r} (use csv, jsonl or parquet)")


def _format_from_suffix(p: Path) -> str:
    suffix = p.suffix.lower().lstrip(".")
    if suffix in ("csv", "txt"):
        return "csv"
    if suffix in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if suffix in ("parquet", "pq"):
        return "parquet"
    raise PairsInputError(p, 0, "cannot tell the format from the extension; use .csv, .jsonl or .parquet")


def _decoded_lines(fh: Iterable[bytes], p: Path) -> Iterator[str]:
    """Decode line by line, so a non-UTF-8 byte is reported at its own line number."""
    for number, raw in enumerate(fh, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PairsInputError(p, number, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        # Spreadsheets save CSV with a byte-order mark that would corrupt the header.
        yield text.removeprefix("\ufeff") if number == 1 else text


def _iter_csv(p: Path) -> Iterator[tuple[int, Pair]]:
    with open(p, "rb") as fh:
        reader = csv.reader(_decoded_lines(fh, p), strict=True)
        start = 0  # physical lines consumed before the current record
        try:
            header = next(reader, None)
            if header is None:
                raise PairsInputError(p, 1, "empty file: expected a header line 'campaign_id,send_id'")
            names = [h.strip() for h in header]
            if not set(_FIELDS) <= set(names):
                raise PairsInputError(p, 1, f"header must name campaign_id and send_id, got {header!r}")
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
                yield line, Pair(
                    _check_id("campaign_id", row[ci], str(p), line),
                    _check_id("send_id", row[si], str(p), line),
                )
        except csv.Error as exc:
            # Reported where the broken record starts (an unclosed quote runs to the end).
            raise PairsInputError(p, start + 1, f"CSV syntax error: {exc}") from None


def _iter_jsonl(p: Path) -> Iterator[tuple[int, Pair]]:
    with open(p, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise PairsInputError(p, number, f"not valid JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise PairsInputError(p, number, "expected a JSON object with campaign_id and send_id")
            yield number, pair_from_item(item, str(p), number)


def _iter_parquet(p: Path) -> Iterator[tuple[int, Pair]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
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
            yield (
                row,
                Pair(_check_id("campaign_id", cid, str(p), row), _check_id("send_id", sid, str(p), row)),
            )


def iter_items(items: Iterable[Any], where: str = "<pairs>") -> Iterator[tuple[int, Pair]]:
    """Number and validate library-supplied pairs."""
    for index, item in enumerate(items, start=1):
        yield index, pair_from_item(item, where, index)
