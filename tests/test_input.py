"""Pairs input a careless user or pipeline produces: control characters and stray whitespace
in ids, a pairs file that changes between runs of the same id, and pairs on standard input,
a FIFO or ``/dev/stdin``."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bulkexport
from bulkexport.simulator import FaultRule, Simulator

from .helpers import API_KEY, ENDING_AT, FAST, RUN_ID, check_equal, export_args, flat, pairs_for, run

# -- ids: control characters and whitespace -----------------------------------------------

#: C0 (tab, newline, carriage return, NUL, escape), DEL and C1 (NEL, CSI) characters.
_CONTROLS = ["\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\x9b"]


def _write(path: Path, fmt: str, rows: list[tuple[str, str]]) -> Path:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)  # CRLF: fields holding \r or \n are quoted
        writer.writerow(["campaign_id", "send_id"])
        writer.writerows(rows)
        path.write_text(buf.getvalue(), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps({"campaign_id": c, "send_id": s}) + b"\n" for c, s in rows))
    else:
        pq.write_table(pa.table({"campaign_id": [c for c, _ in rows], "send_id": [s for _, s in rows]}), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "iterable"])
async def test_control_characters_in_ids_are_refused_with_file_and_line(
    sim: Simulator, tmp_path: Path, fmt: str
) -> None:
    for n, char in enumerate(_CONTROLS):
        rows = [("c1", "s1"), ("c2", "s2"), ("c3", f"s{char}3"), ("c4", "s4")]
        if fmt == "iterable":
            source: Any = rows
            where, line = "<pairs>", 3
        else:
            source = _write(tmp_path / f"bad{n}.{fmt}", fmt, rows)
            # CSV: the header is line 1; Parquet: rows count from 1; JSON Lines: lines.
            where, line = str(source), 4 if fmt == "csv" else 3
        with pytest.raises(bulkexport.PairsInputError) as info:
            await run(sim, source, tmp_path / f"out{n}")
        err = info.value
        assert (err.source, err.line) == (where, line), repr(char)
        assert err.reason == f"send_id contains a control character (U+{ord(char):04X}) at position 2"
    assert sim.stats.requests == 0  # refused before any request


async def test_an_unpaired_surrogate_in_an_id_is_refused_with_where(sim: Simulator, tmp_path: Path) -> None:
    """Python text that is not Unicode (a lone surrogate, from bytes decoded with
    ``surrogateescape``): it cannot be stored, and used to end in a UnicodeEncodeError."""
    with pytest.raises(bulkexport.PairsInputError) as info:
        await run(sim, [("c1", "s1"), ("c\ud800", "s2")], tmp_path / "out")
    assert (info.value.line, info.value.reason) == (
        2, "campaign_id contains an unpaired surrogate (not Unicode text) (U+D800) at position 2")
    assert sim.stats.requests == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out": None}, "out must be a folder path or a URI, not NoneType"),
        ({"out": 5}, "out must be a folder path or a URI, not int"),
        ({"retry_failed": "no"}, "retry_failed must be True or False, not 'no'"),
        ({"wait": "yes"}, "wait must be True or False, not 'yes'"),
        ({"on_progress": 5}, "on_progress must be a callable taking a Progress, not int"),
    ],
    ids=["out None", "out int", "retry_failed str", "wait str", "on_progress int"],
)
async def test_library_call_mistakes_are_config_errors_before_anything(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], message: str
) -> None:
    """Each used to be taken (a folder named "None" in the working directory, a string as
    True) or to fail with a TypeError once the fetch had started."""
    monkeypatch.chdir(tmp_path)
    args = {"out": "out", **kwargs}
    with pytest.raises(bulkexport.ConfigError) as info:
        await run(sim, pairs_for(5), args.pop("out"), **args)
    assert str(info.value) == message
    assert sim.stats.requests == 0 and os.listdir(tmp_path) == []  # nothing created


async def test_whitespace_around_ids_is_trimmed_counted_and_reported(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        ("c1", "s1"),
        (" c1", "s1"),  # line 3: campaign_id trimmed
        ("c1 ", " s1 "),  # line 4: both trimmed
        ("c2", "\u00a0s2\u3000"),  # line 5: no-break and ideographic spaces
        ("c 3", "s3"),  # an inner space is part of the id
    ]
    path = _write(tmp_path / "pairs.csv", "csv", rows)
    plan = bulkexport.make_plan(path, tmp_path / "out", endpoint=sim.url, api_key=API_KEY, ending_at=ENDING_AT)
    assert plan.lines()[2] == "pairs      3 unique of 5 read, 4 ids trimmed"
    summary = await run(sim, path, tmp_path / "out")
    assert (summary.pairs_read, summary.pairs_total, summary.pairs_duplicates, summary.ids_trimmed) == (5, 3, 2, 4)
    assert flat(summary.lines()[1]) == "pairs 3 exported, 0 failed of 3 (5 read, 2 duplicates, 4 ids trimmed)"
    want = [("c1", "s1"), ("c2", "s2"), ("c 3", "s3")]
    assert sim.stats.per_pair == dict.fromkeys(want, 1)
    check_equal(tmp_path / "out", sim, want)
    logged = [r.getMessage() for r in caplog.records if "trimmed" in r.getMessage()]
    assert logged == [f"trimmed surrounding whitespace from 4 id(s) (the first: {path}:3 campaign_id)"]

    blank = _write(tmp_path / "blank.jsonl", "jsonl", [("c1", "s1"), ("c2", " \u2003 ")])
    with pytest.raises(bulkexport.PairsInputError) as info:
        await run(sim, blank, tmp_path / "out2")
    assert (info.value.line, info.value.reason) == (2, "send_id is only whitespace")


# -- a changed pairs input for the same run id ------------------------------------------------


def _gens(out: Path) -> set[str]:
    """Publish generations of the dataset's files (``part-<run>-<gen>-<n>.parquet``)."""
    return {p.name.split("-")[-2] for p in out.glob("send_*/date=*/*.parquet")}


async def test_a_changed_input_adds_its_new_pairs_to_a_finished_run(sim: Simulator, tmp_path: Path) -> None:
    first = pairs_for(30, prefix="a")
    new = pairs_for(15, prefix="b")
    second = first[10:20] + new  # ten known pairs, fifteen new ones
    out = tmp_path / "out"
    a = await run(sim, first, out)
    assert (a.status, a.pairs_added, a.pairs_total) == ("complete", 30, 30)
    assert _gens(out) == {"0"}
    before = {f: (out / f).read_bytes() for f in _files(out)}

    plan = bulkexport.make_plan(second, out, endpoint=sim.url, api_key=API_KEY, ending_at=ENDING_AT)
    assert plan.lines()[2] == (
        "pairs      25 unique of 25 read; the run has 30 (30 already done, 0 failed), 15 of these are new to it"
    )
    assert plan.requests == 15

    b = await run(sim, second, out)
    assert (b.status, b.pairs_read, b.pairs_added, b.pairs_total, b.pairs_done) == ("complete", 25, 15, 45, 45)
    assert b.requests == 15  # only the new pairs: the ten known ones are never fetched again
    assert flat(b.lines()[1]) == (
        "pairs 45 exported, 0 failed of 45 (25 read, 0 duplicates, 15 new to the run, 30 done before this session)"
    )
    assert sim.stats.per_pair == dict.fromkeys(first + new, 1)
    assert _gens(out) == {"0", "1"}  # published next to the first files, which stay as they were
    assert {f: (out / f).read_bytes() for f in before} == before
    check_equal(out, sim, first + new)
    manifest = orjson.loads((out / "_bulkexport" / "runs" / RUN_ID / "manifest.json").read_bytes())
    assert manifest["status"] == "complete" and manifest["summary"]["pairs_total"] == 45
    assert sorted(f["path"] for f in manifest["files"]) == _files(out)

    c = await run(sim, second, out)  # the same input again: nothing new, nothing sent
    assert (c.status, c.pairs_added, c.requests) == ("already_complete", 0, 0)


def _files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.glob("send_*/date=*/*.parquet"))


async def test_an_interrupted_run_given_another_input_does_both(sim: Simulator, tmp_path: Path) -> None:
    first = pairs_for(40, prefix="a")
    new = pairs_for(10, prefix="b")
    out = tmp_path / "out"
    # One worker, a 401 on the 21st pair: the run stops there with twenty pairs committed.
    sim.faults.append(FaultRule(kind="status", status=401, times=1, match=lambda c, s: (c, s) == first[20]))
    with pytest.raises(bulkexport.AuthError):
        await run(sim, first, out, concurrency=1)
    summary = await run(sim, first[30:] + new, out)
    assert (summary.status, summary.pairs_added, summary.pairs_total, summary.pairs_resumed) == (
        "complete", 10, 50, 20,
    )  # fmt: skip
    assert summary.requests == 30  # the twenty pairs left of the first input, the ten new ones
    assert sim.stats.per_pair == {**dict.fromkeys(first + new, 1), first[20]: 2}
    check_equal(out, sim, first + new)


# -- standard input, /dev/stdin and FIFOs -----------------------------------------------------


async def _cli_with_stdin(args: list[Any], data: bytes) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env["BRAZE_API_KEY"] = API_KEY
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bulkexport.cli", *map(str, args),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate(data)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _csv_bytes(pairs: list[tuple[str, str]]) -> bytes:
    return ("campaign_id,send_id\n" + "".join(f"{c},{s}\n" for c, s in pairs)).encode()


async def test_pairs_piped_to_standard_input(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(12)
    out = tmp_path / "out"
    code, stdout, stderr = await _cli_with_stdin(
        export_args(sim, "-", out, "--pairs-format", "csv"), _csv_bytes(pairs + pairs[:2])
    )
    assert code == 0, stderr
    assert flat(stdout.splitlines()[1]) == "pairs 12 exported, 0 failed of 12 (14 read, 2 duplicates)"
    assert sim.stats.per_pair == dict.fromkeys(pairs, 1)
    check_equal(out, sim, pairs)

    # Without a format there is no name to tell it from: exit 2, one line that says what to add.
    code, stdout, stderr = await _cli_with_stdin(export_args(sim, "-", tmp_path / "o2"), _csv_bytes(pairs))
    assert (code, stdout) == (2, "")
    (line,) = stderr.strip().splitlines()
    assert line.endswith(
        "<stdin>:0: reading pairs from standard input ('-') needs --pairs-format csv, jsonl or parquet"
    )

    # A bad line on standard input is named like one in a file.
    code, _, stderr = await _cli_with_stdin(
        export_args(sim, "-", tmp_path / "o3", "--pairs-format", "csv"), b"campaign_id,send_id\nc1,s1\nc2,\n"
    )
    assert code == 2 and stderr.strip().endswith("<stdin>:3: send_id is empty")
    assert sim.stats.requests == 12


async def test_parquet_on_standard_input_and_jsonl_on_dev_stdin(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(9)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"campaign_id": [c for c, _ in pairs], "send_id": [s for _, s in pairs]}), sink)
    code, stdout, stderr = await _cli_with_stdin(
        export_args(sim, "-", tmp_path / "pq", "--pairs-format", "parquet"), sink.getvalue().to_pybytes()
    )
    assert code == 0, stderr
    check_equal(tmp_path / "pq", sim, pairs)

    lines = b"".join(orjson.dumps({"campaign_id": c, "send_id": s}) + b"\n" for c, s in pairs)
    code, stdout, stderr = await _cli_with_stdin(
        export_args(sim, "/dev/stdin", tmp_path / "js", "--pairs-format", "jsonl", "--run-id", "js"), lines
    )
    assert code == 0, stderr
    assert stdout.splitlines()[0] == "run js: complete"
    assert sim.stats.per_pair == dict.fromkeys(pairs, 2)


async def test_pairs_from_a_fifo(sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bulkexport")
    pairs = pairs_for(20)
    fifo = tmp_path / "pairs.fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "wb") as fh:  # blocks until the export opens the other end
            fh.write(_csv_bytes(pairs))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    summary = await bulkexport.export_async(
        fifo, tmp_path / "out", endpoint=sim.url, api_key=API_KEY, ending_at=ENDING_AT, pairs_format="csv", **FAST
    )
    thread.join(5)
    assert (summary.status, summary.pairs_done) == ("complete", 20)
    check_equal(tmp_path / "out", sim, pairs)
