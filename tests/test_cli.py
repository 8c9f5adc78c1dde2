"""The real ``bulkexport`` console script, run as a subprocess against the in-process simulator
(``asyncio.create_subprocess_exec`` keeps the event loop, and so the simulator, serving), and
the secrecy of the API key everywhere it could leak."""

from __future__ import annotations

import logging
import re
import traceback
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest

import bulkexport
from bulkexport.cli import EXIT_CODES
from bulkexport.simulator import FaultRule, Simulator

from .helpers import (
    API_KEY,
    RUN_ID,
    STATS_KNOWN,
    TOTALS_KNOWN,
    check_equal,
    cli,
    export_args,
    flat,
    no_traceback,
    pairs_for,
    run,
)
from .truth import STATS_KEYS, TOTALS_KEYS, expected, normalise

WRONG_KEY = "sk-wrong-fedcba9876543210-ALSO-SECRET"


def _pairs_csv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("campaign_id,send_id\n" + "".join(f"{c},{s}\n" for c, s in pairs))
    return path


def _mentions_exit_codes(text: str) -> None:
    text = flat(text)
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"\b{code}\b\W{{0,5}}{re.escape(meaning)}", text), f"exit code {code} not explained"


def _files_without_key(root: Path, *secrets: str) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        data = p.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"API key found in {p}"
    return len(files)


# -- export ------------------------------------------------------------------------------


async def test_export_writes_data_and_prints_summary(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(20)
    out = tmp_path / "out"
    code, stdout, stderr = await cli(*export_args(sim, _pairs_csv(tmp_path / "p.csv", pairs), out))
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == f"run {RUN_ID}: complete"
    assert flat(lines[1]) == "pairs 20 exported, 0 failed of 20 (20 read, 0 duplicates)"
    assert flat(lines[2]) == "requests 20 (0 retries, 0 x 429)"
    manifest = out / "_bulkexport" / "runs" / RUN_ID / "manifest.json"
    assert f"manifest   {manifest}" in lines
    assert sim.stats.per_pair == dict.fromkeys(pairs, 1)
    check_equal(out, sim, pairs)
    assert orjson.loads(manifest.read_bytes())["summary"]["pairs_done"] == 20
    # The same command again is a no-op that still exits 0.
    code, stdout, _ = await cli(*export_args(sim, tmp_path / "p.csv", out))
    assert code == 0
    assert stdout.splitlines()[0] == f"run {RUN_ID}: already_complete"
    assert sim.stats.requests == 20


async def test_exit_3_when_some_pairs_fail_for_good(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(10)
    bad = pairs[6]
    sim.faults.append(
        FaultRule(kind="status", status=404, message="Not found", times=None, match=lambda c, s: (c, s) == bad)
    )
    out = tmp_path / "out"
    code, stdout, stderr = await cli(*export_args(sim, _pairs_csv(tmp_path / "p.csv", pairs), out))
    assert code == 3, stderr
    assert stdout.splitlines()[0] == f"run {RUN_ID}: partial"
    failures_file = out / "_bulkexport" / "runs" / RUN_ID / "failures.jsonl"
    assert f"failures   {failures_file}" in stdout.splitlines()
    failures = [orjson.loads(line) for line in failures_file.read_bytes().splitlines()]
    assert [(f["campaign_id"], f["send_id"], f["status"], f["message"], f["attempts"]) for f in failures] == [
        (bad[0], bad[1], 404, "Not found", 1)
    ]
    assert sim.stats.per_pair[bad] == 1
    no_traceback(stderr)
    check_equal(out, sim, [p for p in pairs if p != bad])


async def test_exit_4_for_a_wrong_key(sim: Simulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = export_args(sim, _pairs_csv(tmp_path / "p.csv", pairs_for(30)), out)
    code, stdout, stderr = await cli(*args, key=WRONG_KEY)
    assert code == 4
    assert "HTTP 401: Invalid API key" in stderr
    assert "BRAZE_API_KEY" in stderr
    no_traceback(stderr)
    assert 1 <= sim.stats.requests <= 8  # at most the pool, then the run stopped
    assert dict(sim.stats.by_status) == {401: sim.stats.requests}
    for text in (stdout, stderr):
        assert WRONG_KEY not in text
    _files_without_key(out, WRONG_KEY)


async def test_exit_4_for_a_forbidden_key(sim: Simulator, tmp_path: Path) -> None:
    sim.forbidden = True
    out = tmp_path / "out"
    code, _, stderr = await cli(*export_args(sim, _pairs_csv(tmp_path / "p.csv", pairs_for(30)), out))
    assert code == 4
    assert "HTTP 403" in stderr and "sends.data_series" in stderr
    no_traceback(stderr)
    assert 1 <= sim.stats.requests <= 8


async def test_exit_2_for_a_bad_pairs_line(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("campaign_id,send_id\nc1,s1\nc2,s2\nc3,s3,extra\nc4,s4\n")
    code, stdout, stderr = await cli(*export_args(sim, path, tmp_path / "out"))
    assert code == 2
    assert f"{path}:4: expected 2 fields, got 3" in stderr
    no_traceback(stderr)
    assert stdout == ""
    assert sim.stats.requests == 0


@pytest.mark.parametrize(
    "key, says", [(None, "BRAZE_API_KEY"), ("", "BRAZE_API_KEY"), (f'"{API_KEY}"', "wrapped in quotes")]
)
async def test_exit_2_without_a_usable_api_key(sim: Simulator, tmp_path: Path, key: str | None, says: str) -> None:
    args = export_args(sim, _pairs_csv(tmp_path / "p.csv", pairs_for(3)), tmp_path / "o")
    code, stdout, stderr = await cli(*args, key=key)
    assert code == 2
    assert says in stderr
    no_traceback(stderr)
    assert API_KEY not in stdout + stderr
    assert sim.stats.requests == 0


@pytest.mark.parametrize(
    "endpoint, says",
    [
        ("http://rest.iad-01.braze.com", "https"),  # plain http off loopback
        ("http://192.0.2.10:8080", "https"),
        ("https://braze.example.com", "--allow-custom-endpoint"),  # not a Braze host
        ("https://rest.iad-01.braze.com.evil.example", "--allow-custom-endpoint"),
    ],
)
async def test_exit_2_for_an_unsafe_endpoint(tmp_path: Path, endpoint: str, says: str) -> None:
    pairs = _pairs_csv(tmp_path / "p.csv", pairs_for(3))
    code, stdout, stderr = await cli("export", "--pairs", pairs, "--out", tmp_path / "o", "--endpoint", endpoint)
    assert code == 2
    assert says in stderr
    no_traceback(stderr)
    assert stdout == ""
    assert API_KEY not in stderr


# -- help, version, demo -----------------------------------------------------------------


async def test_top_level_help_lists_exit_codes() -> None:
    code, stdout, _ = await cli("--help")
    assert code == 0
    _mentions_exit_codes(stdout)


async def test_export_help_mentions_key_and_exit_codes() -> None:
    code, stdout, _ = await cli("export", "--help")
    assert code == 0
    assert "BRAZE_API_KEY" in stdout
    _mentions_exit_codes(stdout)


async def test_demo_help_mentions_exit_codes() -> None:
    code, stdout, _ = await cli("demo", "--help")
    assert code == 0
    _mentions_exit_codes(stdout)


async def test_version() -> None:
    code, stdout, _ = await cli("--version")
    assert code == 0
    assert stdout.strip() == f"bulkexport {bulkexport.__version__}"


async def test_no_command_is_a_usage_error() -> None:
    code, stdout, _ = await cli()
    assert code == 2
    assert "usage: bulkexport" in stdout


async def test_demo_writes_readable_data(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = await cli("demo", "--pairs", "200", "--out", out, key=None)
    assert code == 0, stderr
    assert stdout.splitlines()[1] == "run demo: complete"
    assert "200 exported, 0 failed of 200" in flat(stdout)
    totals = bulkexport.read_table(out, "send_totals")
    pairs = sorted(set(zip(totals.column("campaign_id").to_pylist(), totals.column("send_id").to_pylist(),
                           strict=True)))  # fmt: skip
    assert len(pairs) == 200  # every generated pair has data in the 15-day window
    # The data equals what the demo's simulator (seed 7, extras, today) serves.
    today = date.today()
    truth_sim = Simulator(seed=7, anchor_date=today, extras=True)
    ending = datetime(today.year, today.month, today.day, 23, 59, 59, tzinfo=UTC)
    want_stats, want_totals = expected(truth_sim, pairs, 15, ending, STATS_KNOWN, TOTALS_KNOWN)
    got_stats = bulkexport.read_table(out, "send_stats").to_pylist()
    assert normalise(got_stats, STATS_KEYS) == normalise(want_stats, STATS_KEYS)
    assert normalise(totals.to_pylist(), TOTALS_KEYS) == normalise(want_totals, TOTALS_KEYS)


# -- the key never leaks -----------------------------------------------------------------


async def test_key_never_in_output_files_or_streams(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(24)
    sim.faults += [
        FaultRule(kind="status", status=503, times=1, match=lambda c, s: s.endswith(("1", "5"))),
        FaultRule(kind="status", status=404, times=None, match=lambda c, s: (c, s) == pairs[3]),
        FaultRule(kind="html", status=502, times=None, match=lambda c, s: (c, s) == pairs[4]),
        FaultRule(kind="not_success", times=None, match=lambda c, s: (c, s) == pairs[7]),
    ]
    out = tmp_path / "out"
    args = export_args(sim, _pairs_csv(tmp_path / "p.csv", pairs), out, "--max-attempts", "2")
    results = [
        await cli(*args, "--log-level", "debug"),
        await cli(*args, "--log-level", "debug", "--log-format", "json", "--retry-failed"),
        await cli(*args, "--log-level", "debug", "--run-id", "wrong-key", key=WRONG_KEY),
    ]
    assert [code for code, _, _ in results] == [3, 3, 4]
    for _, stdout, stderr in results:
        for secret in (API_KEY, WRONG_KEY):
            assert secret not in stdout
            assert secret not in stderr
    assert (out / "_bulkexport" / "runs" / RUN_ID / "state.sqlite").is_file()
    n = _files_without_key(out, API_KEY, WRONG_KEY)
    assert n >= 6  # state, manifest, failures and Parquet files were all scanned


async def test_key_never_in_repr_str_or_logs(sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included
    caplog.set_level(logging.DEBUG, logger="bulkexport")
    key = bulkexport.ApiKey(API_KEY)
    cfg = bulkexport.ExportConfig.build(endpoint=sim.url, api_key=API_KEY)
    texts = [repr(key), str(key), repr(cfg), str(cfg), str(cfg.describe()), f"{cfg}"]

    pairs = pairs_for(12)
    sim.faults += [
        FaultRule(kind="status", status=500, times=1),
        FaultRule(kind="status", status=400, times=None, message="bad send", match=lambda c, s: (c, s) == pairs[2]),
        FaultRule(kind="reset", times=2, match=lambda c, s: (c, s) == pairs[5]),
        FaultRule(kind="malformed", times=None, match=lambda c, s: (c, s) == pairs[8]),
    ]
    summary = await run(sim, pairs, tmp_path / "a", max_attempts=3)
    assert (summary.status, summary.pairs_done, summary.pairs_failed) == ("partial", 10, 2)
    texts += [repr(summary), str(summary), str(summary.to_dict()), "\n".join(summary.lines())]

    with pytest.raises(bulkexport.AuthError) as info:
        await run(sim, pairs, tmp_path / "b", api_key=WRONG_KEY)
    err = info.value
    texts += [repr(err), str(err), err.message, "".join(traceback.format_exception(err))]
    err2 = bulkexport.AuthError(401, "Invalid API key")
    texts += [repr(err2), str(err2)]

    texts.append(caplog.text)
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), repr(record.__dict__)]
    # The runs logged their failures (so the check below saw real messages).
    assert sum("failed for good" in r.getMessage() for r in caplog.records) == 2
    for text in texts:
        assert API_KEY not in text
        assert WRONG_KEY not in text
    _files_without_key(tmp_path, API_KEY, WRONG_KEY)


@pytest.mark.parametrize(("pool", "backend"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_the_command_owns_its_allocator_and_the_library_does_not(pool: str | None, backend: str) -> None:
    """``memory.own_process`` (what the CLI calls) gives Arrow the system allocator unless
    ``$ARROW_DEFAULT_MEMORY_POOL`` says otherwise, and makes ``trim`` call glibc; importing
    the library changes neither. In a child process: the allocator is process-wide."""
    import os
    import subprocess
    import sys

    code = (
        "import pyarrow as pa, bulkexport\n"
        "from bulkexport import memory\n"
        "before = (pa.default_memory_pool().backend_name, memory._trim is None)\n"
        "memory.own_process(); memory.trim()\n"
        "print(*before, pa.default_memory_pool().backend_name, memory._trim is None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    library_pool, untrimmed, command_pool, trim_missing = out.stdout.split()
    assert (library_pool, untrimmed) == (pool or "mimalloc", "True")  # pyarrow's own default
    assert (command_pool, trim_missing) == (backend, "False")


@pytest.mark.parametrize(("import_first", "loaded", "mimalloc_used"), [(False, "False", False), (True, "True", True)])
def test_the_command_chooses_arrows_cxx_allocator_before_pyarrow_loads(
    import_first: bool, loaded: str, mimalloc_used: bool
) -> None:
    """Arrow allocates some buffers from its C++ default pool, fixed when pyarrow loads (the IPC
    writer's lz4, Parquet's encoders): importing the CLI must not load pyarrow, so that
    ``own_process`` can make that pool the system allocator too, and must leave the environment
    as it found it. Had something loaded pyarrow first (the second case), mimalloc serves them:
    which is what the first case is measured against."""
    import os
    import subprocess
    import sys

    code = (
        ("import pyarrow\n" if import_first else "")
        + "import os, sys, bulkexport.cli\n"
        "from bulkexport import memory\n"
        "loaded = 'pyarrow' in sys.modules\n"
        "memory.own_process()\n"
        "import pyarrow as pa, pyarrow.parquet as pq\n"
        "t = pa.table({'n': list(range(100_000)), 's': [str(i) for i in range(100_000)]})\n"
        "with pa.ipc.new_file(pa.BufferOutputStream(), t.schema,\n"
        "                     options=pa.ipc.IpcWriteOptions(compression='lz4')) as w:\n"
        "    w.write_table(t)\n"
        "pq.write_table(t, pa.BufferOutputStream(), compression='zstd')\n"
        "print(loaded, pa.mimalloc_memory_pool().max_memory(), pa.default_memory_pool().backend_name,\n"
        "      os.environ.get('ARROW_DEFAULT_MEMORY_POOL', '-'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    was_loaded, mimalloc_bytes, pool, variable = out.stdout.split()
    assert (was_loaded, pool, variable) == (loaded, "system", "-")
    assert (int(mimalloc_bytes) > 0) is mimalloc_used


def test_importing_the_package_loads_pyarrow_only_when_an_export_or_read_name_is_used() -> None:
    """``import bulkexport`` stays light (the command must choose Arrow's allocator first), and
    its public names still resolve, list and import as before; an unknown one is an
    AttributeError. In a child process: pyarrow is already loaded here."""
    import subprocess
    import sys

    code = (
        "import sys, bulkexport\n"
        "light = 'pyarrow' not in sys.modules\n"
        "listed = {'export', 'export_async', 'make_plan', 'stream_batches', 'read_table'} <= set(dir(bulkexport))\n"
        "try:\n"
        "    bulkexport.no_such_name\n"
        "    missing = 'resolved'\n"
        "except AttributeError as exc:\n"
        "    missing = str(exc)\n"
        "from bulkexport import export, read_table\n"
        "print(light, listed, export.__module__, read_table.__module__, 'pyarrow' in sys.modules, repr(missing))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    missing = "\"module 'bulkexport' has no attribute 'no_such_name'\"\n"
    assert out.stdout.split(maxsplit=5) == ["True", "True", "bulkexport.api", "bulkexport.read", "True", missing]


async def test_the_command_moves_start_up_objects_out_of_the_collectors_way(sim: Simulator, tmp_path: Path) -> None:
    """The command freezes what its imports left (tens of thousands of objects), so a full
    collection walks only the run's objects; the library, in someone else's process, does not
    touch that process's collector."""
    import gc

    pairs = pairs_for(5)
    out = tmp_path / "out"
    code, _, stderr = await cli(*export_args(sim, _pairs_csv(tmp_path / "p.csv", pairs), out, "--log-level", "debug"))
    assert code == 0, stderr
    (line,) = [ln for ln in stderr.splitlines() if "start-up objects moved out of the garbage collector" in ln]
    frozen = int(re.search(r"(\d+) start-up objects", line).group(1))  # type: ignore[union-attr]
    assert frozen > 20_000
    check_equal(out, sim, pairs)
    before = gc.get_freeze_count()
    summary = await run(sim, pairs, tmp_path / "library")
    assert summary.pairs_done == 5
    assert gc.get_freeze_count() == before
