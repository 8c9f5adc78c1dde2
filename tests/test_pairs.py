"""Pair files end to end: CSV, JSON Lines and Parquet read into exports, and every malformed
input rejected with its exact file and line before a single request is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bulkexport
from bulkexport.simulator import Simulator

from .helpers import check_equal, pairs_for, run

# -- good files ----------------------------------------------------------------------------


async def test_csv_bom_extra_columns_quotes_and_blank_lines(sim: Simulator, tmp_path: Path) -> None:
    pairs = [
        ("camp, with comma", "send, with comma"),
        ("plain", "s1"),
        ('q"uote', "s,2"),
        ("plain", "s3"),
    ]
    text = (
        "\ufeffnote,send_id,campaign_id,extra\r\n"  # BOM, columns in another order, CRLF
        '"a note,\nover two lines","send, with comma","camp, with comma",x\r\n'
        "\r\n"
        ",s1,plain,\r\n"
        "   \r\n"
        '"another\nmulti-line note","s,2","q""uote",y\r\n'
        "n,s3,plain,z\r\n"
        "\r\n"
    )
    path = tmp_path / "pairs.csv"
    path.write_bytes(text.encode("utf-8"))
    out = tmp_path / "out"
    summary = await run(sim, path, out)
    assert summary.status == "complete"
    assert (summary.pairs_read, summary.pairs_total, summary.pairs_done) == (4, 4, 4)
    assert sim.stats.per_pair == dict.fromkeys(pairs, 1)
    check_equal(out, sim, pairs)


async def test_jsonl_with_blank_lines_and_extra_keys(sim: Simulator, tmp_path: Path) -> None:
    pairs = [*pairs_for(5), ("ü-camp", "送信 1")]
    lines = [orjson.dumps({"send_id": s, "campaign_id": c, "sent_at": "2026-11-20"}) for c, s in pairs]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines[:3]) + b"\n\n  \n" + b"\r\n".join(lines[3:]) + b"\n")
    out = tmp_path / "out"
    summary = await run(sim, path, out)
    assert (summary.status, summary.pairs_read, summary.pairs_done) == ("complete", 6, 6)
    assert sim.stats.per_pair == dict.fromkeys(pairs, 1)
    check_equal(out, sim, pairs)


async def test_parquet_with_extra_columns(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(9)
    table = pa.table(
        {
            "n": list(range(9)),
            "send_id": [s for _, s in pairs],
            "campaign_id": pa.array([c for c, _ in pairs], pa.large_string()),
        }
    )
    path = tmp_path / "pairs.parquet"
    pq.write_table(table, path, row_group_size=4)
    out = tmp_path / "out"
    summary = await run(sim, path, out)
    assert (summary.status, summary.pairs_read, summary.pairs_done) == ("complete", 9, 9)
    assert sim.stats.per_pair == dict.fromkeys(pairs, 1)
    check_equal(out, sim, pairs)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_duplicates_in_a_file_are_exported_once(sim: Simulator, tmp_path: Path, fmt: str) -> None:
    pairs = pairs_for(12)
    rows = pairs + pairs[3:7] + [pairs[0], pairs[0]]  # 18 records, 12 unique
    path = _write(tmp_path, fmt, rows)
    out = tmp_path / "out"
    summary = await run(sim, path, out)
    assert (summary.pairs_read, summary.pairs_total, summary.pairs_done) == (18, 12, 12)
    assert sim.stats.requests == 12
    assert sim.stats.per_pair == dict.fromkeys(pairs, 1)
    check_equal(out, sim, pairs)


async def test_header_only_csv_is_an_empty_complete_run(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("campaign_id,send_id\n")
    summary = await run(sim, path, tmp_path / "out")
    assert summary.status == "complete"
    assert (summary.pairs_read, summary.pairs_total, summary.pairs_done) == (0, 0, 0)
    assert sim.stats.requests == 0


async def test_pairs_format_overrides_the_extension(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(3)
    path = tmp_path / "pairs.data"
    path.write_bytes(b"".join(orjson.dumps({"campaign_id": c, "send_id": s}) + b"\n" for c, s in pairs))
    with pytest.raises(bulkexport.PairsInputError) as info:
        await run(sim, path, tmp_path / "out")
    assert (info.value.source, info.value.line) == (str(path), 0)
    assert "extension" in info.value.reason
    summary = await run(sim, path, tmp_path / "out", pairs_format="jsonl")
    assert (summary.status, summary.pairs_done) == ("complete", 3)
    check_equal(tmp_path / "out", sim, pairs)


# -- malformed files -----------------------------------------------------------------------


def _write(tmp_path: Path, fmt: str, rows: list[tuple[str, str]], name: str = "pairs") -> Path:
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "csv":
        path.write_text("campaign_id,send_id\n" + "".join(f"{c},{s}\n" for c, s in rows))
    elif fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps({"campaign_id": c, "send_id": s}) + b"\n" for c, s in rows))
    else:
        pq.write_table(pa.table({"campaign_id": [c for c, _ in rows], "send_id": [s for _, s in rows]}), path)
    return path


# (file name, content, line, reason fragment)
_BAD_TEXT: list[tuple[str, bytes, int, str]] = [
    ("too_many.csv", b"campaign_id,send_id\nc1,s1\nc2,s2,oops\nc3,s3\n", 3, "expected 2 fields, got 3"),
    ("too_few.csv", b"campaign_id,send_id\nc1,s1\nc2,s2\nc3\n", 4, "expected 2 fields, got 1"),
    ("empty_send.csv", b"campaign_id,send_id\nc1,s1\nc2,\n", 3, "send_id is empty"),
    ("empty_campaign.csv", b"campaign_id,send_id\n\n,s1\n", 3, "campaign_id is empty"),
    ("no_header.csv", b"c1,s1\nc2,s2\n", 1, "header must name campaign_id and send_id"),
    ("wrong_header.csv", b"campaign,send_id\nc1,s1\n", 1, "header must name campaign_id and send_id"),
    ("twice_header.csv", b"campaign_id,send_id,campaign_id\nc1,s1,c9\n", 1, "header names campaign_id more than once"),
    ("empty.csv", b"", 1, "empty file"),
    (
        "after_multiline.csv",
        b'campaign_id,send_id,note\nc1,s1,"one\ntwo\nthree"\n\nc2,s2,n\nc3,s3\n',
        7,
        "expected 3 fields, got 2",
    ),
    ("bad_quote.csv", b'campaign_id,send_id\nc1,s1\nc2,"s2"x\nc3,s3\n', 3, "CSV syntax error"),
    (
        "bad_json.jsonl",
        b'{"campaign_id": "c1", "send_id": "s1"}\n\n{"campaign_id": "c2", "send_id": \n',
        3,
        "not valid JSON",
    ),
    (
        "not_object.jsonl",
        b'{"campaign_id": "c1", "send_id": "s1"}\n["c2", "s2"]\n',
        2,
        "expected a JSON object",
    ),
    (
        "missing_key.jsonl",
        b'{"campaign_id": "c1", "send_id": "s1"}\n{"campaign_id": "c2"}\n',
        2,
        "missing send_id",
    ),
    (
        "int_id.jsonl",
        b'{"campaign_id": "c1", "send_id": "s1"}\n{"campaign_id": 7, "send_id": "s2"}\n',
        2,
        "campaign_id must be a string, got int",
    ),
    (
        "null_id.jsonl",
        b'{"campaign_id": "c1", "send_id": null}\n',
        1,
        "send_id must be a string, got NoneType",
    ),
    ("empty_id.jsonl", b'\n\n{"campaign_id": "c1", "send_id": ""}\n', 3, "send_id is empty"),
]


@pytest.mark.parametrize("name, content, line, reason", _BAD_TEXT, ids=[b[0] for b in _BAD_TEXT])
async def test_malformed_text_file_names_file_and_line(
    sim: Simulator, tmp_path: Path, name: str, content: bytes, line: int, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(bulkexport.PairsInputError) as info:
        await run(sim, path, tmp_path / "out")
    err = info.value
    assert (err.source, err.line) == (str(path), line)
    assert reason in err.reason
    assert str(err).startswith(f"{path}:{line}: ")
    assert sim.stats.requests == 0


async def test_non_utf8_csv_line_is_named(sim: Simulator, tmp_path: Path) -> None:
    lines = [b"campaign_id,send_id"] + [f"c{i},s{i}".encode() for i in range(300)]
    lines[201] = b"c\xff,s"  # physical line 202
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(bulkexport.PairsInputError) as info:
        await run(sim, path, tmp_path / "out")
    assert (info.value.source, info.value.line) == (str(path), 202)
    assert "not UTF-8" in info.value.reason
    assert sim.stats.requests == 0


@pytest.mark.parametrize(
    "table, line, reason",
    [
        (
            pa.table({"campaign_id": ["c1", "c2", "c3"], "send_id": ["s1", "s2", None]}),
            3,
            "send_id must be a string, got NoneType",
        ),
        (
            pa.table({"campaign_id": [None, "c2"], "send_id": ["s1", "s2"]}),
            1,
            "campaign_id must be a string, got NoneType",
        ),
        (pa.table({"campaign_id": ["c1", ""], "send_id": ["s1", "s2"]}), 2, "campaign_id is empty"),
        (pa.table({"campaign_id": ["c1"], "send_id": [5]}), 1, "send_id must be a string, got int"),
        (pa.table({"campaign_id": ["c1"], "send": ["s1"]}), 0, "lacks column(s) send_id"),
    ],
    ids=["null_last", "null_first", "empty", "int", "missing_column"],
)
async def test_malformed_parquet_names_file_and_row(
    sim: Simulator, tmp_path: Path, table: pa.Table, line: int, reason: str
) -> None:
    path = tmp_path / "pairs.parquet"
    pq.write_table(table, path)
    with pytest.raises(bulkexport.PairsInputError) as info:
        await run(sim, path, tmp_path / "out")
    assert (info.value.source, info.value.line) == (str(path), line)
    assert reason in info.value.reason
    assert sim.stats.requests == 0


async def test_missing_file(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(bulkexport.PairsInputError) as info:
        await run(sim, path, tmp_path / "out")
    assert (info.value.source, info.value.line, info.value.reason) == (str(path), 0, "no such file")
    assert sim.stats.requests == 0


_LONG = 20_000


def _long_file(tmp_path: Path, fmt: str, last: Any) -> tuple[Path, int]:
    """A long pairs file whose last record is ``last`` (bad); returns its path and line."""
    pairs = pairs_for(_LONG)
    path = tmp_path / f"long.{fmt}"
    if fmt == "csv":
        body = "".join(f"{c},{s}\n" for c, s in pairs)
        path.write_text("campaign_id,send_id\n" + body + last)
        return path, _LONG + 2
    if fmt == "jsonl":
        body_b = b"".join(orjson.dumps({"campaign_id": c, "send_id": s}) + b"\n" for c, s in pairs)
        path.write_bytes(body_b + last)
        return path, _LONG + 1
    cids = [c for c, _ in pairs] + [last[0]]
    sids = [s for _, s in pairs] + [last[1]]
    pq.write_table(pa.table({"campaign_id": cids, "send_id": sids}), path, row_group_size=5000)
    return path, _LONG + 1


@pytest.mark.parametrize(
    "fmt, last",
    [("csv", "c-last,\n"), ("jsonl", b'{"campaign_id": "c-last"}\n'), ("parquet", ("c-last", None))],
    ids=["csv", "jsonl", "parquet"],
)
async def test_error_in_last_line_of_long_file_costs_no_request(
    sim: Simulator, tmp_path: Path, fmt: str, last: Any
) -> None:
    path, line = _long_file(tmp_path, fmt, last)
    out = tmp_path / "out"
    with pytest.raises(bulkexport.PairsInputError) as info:
        await run(sim, path, out)
    assert (info.value.source, info.value.line) == (str(path), line)
    assert sim.stats.requests == 0
    # The failed read left no half-ingested pairs: the corrected input runs as a fresh run.
    fixed = pairs_for(6, prefix="fixed")
    summary = await run(sim, _write(tmp_path, fmt, fixed, name="fixed"), out)
    assert summary.status == "complete"
    assert (summary.pairs_read, summary.pairs_total, summary.pairs_done) == (6, 6, 6)
    assert sim.stats.per_pair == dict.fromkeys(fixed, 1)
    check_equal(out, sim, fixed)
