"""The API key against a hostile server, and the run's files against other users.

A server whose error bodies quote the request's ``Authorization`` header must not get the key
onto disk (state, WAL, staging, manifest, failures, Parquet), into the CLI's streams or into a
repr; the redaction is of whole occurrences, and keys too short to redact safely are refused.
The run state and run documents are owner-only whatever the umask; the dataset is not.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import bulkexport
from bulkexport.cli import main
from bulkexport.inputs import ApiKey, redact_secret
from bulkexport.simulator import FaultRule, Simulator
from bulkexport.state import RunState

from .helpers import ANCHOR, Cli, check_equal, pairs_for, run, run_dir, write_pairs

#: A key shaped like Braze's (a UUID): random enough that 8 characters of it never occur in
#: a file by chance (Parquet's dictionary pages hold runs such as "0123456789").
KEY = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
#: What the simulator's echo faults say, with the header in place of {authorization}.
ECHO = "request refused; received headers: Authorization: {authorization}"
#: Pads the echoed header so that the key straddles the 200-character excerpts that the
#: client (error bodies) and the flattener (``message`` of a 200) keep: redacting after the
#: cut would leave the key's first characters behind.
LONG = "x" * 178 + " {authorization} tail"


def _only(pair: tuple[str, str]) -> Any:
    return lambda c, s: (c, s) == pair


def _pieces(secret: str, size: int = 8) -> set[bytes]:
    """Every ``size``-character piece of ``secret``: a key cut by a truncation still leaks."""
    return {secret[i : i + size].encode() for i in range(len(secret) - size + 1)}


def _scan(root: Path, secret: str) -> list[Path]:
    """Every byte of every file under ``root``: none holds the secret, or 8 characters of it.
    Returns the files read."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        data = p.read_bytes()
        leaked = [piece for piece in _pieces(secret) if piece in data]
        assert not leaked, f"{p} holds {leaked[:3]} of the API key"
    return files


def _clean(text: str, secret: str = KEY) -> None:
    leaked = [piece for piece in _pieces(secret) if piece.decode() in text]
    assert not leaked, f"{leaked[:3]} of the API key in {text[:300]!r}"


def _bad(pairs: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    return {"400": pairs[3], "500": pairs[7], "200": pairs[11], "text": pairs[15], "long": pairs[19]}


def _install(sim: Simulator, bad: dict[str, tuple[str, str]], transient: tuple[str, str]) -> None:
    sim.faults += [
        FaultRule(kind="echo_auth", status=400, times=None, match=_only(bad["400"])),  # permanent
        FaultRule(kind="echo_auth", status=500, times=None, match=_only(bad["500"])),  # retried, fails
        FaultRule(kind="echo_auth", status=200, times=None, match=_only(bad["200"])),  # not success
        FaultRule(kind="echo_auth_text", status=502, message=LONG, times=None, match=_only(bad["text"])),
        FaultRule(kind="echo_auth", status=200, message=LONG, times=None, match=_only(bad["long"])),
        FaultRule(kind="echo_auth", status=503, times=1, match=_only(transient)),  # recovers
    ]


def _expected_failures(bad: dict[str, tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str, int]]:
    said = ECHO.replace("{authorization}", "Bearer ***")
    long_said = LONG.replace("{authorization}", "Bearer ***")
    return {
        bad["400"]: (400, said, 1),
        bad["500"]: (500, said, 2),
        bad["200"]: (200, f"Braze reported {said!r} instead of 'success'", 2),
        bad["text"]: (502, long_said[:200], 2),  # the client keeps 200 characters of a non-JSON body
        bad["long"]: (200, f"Braze reported {long_said!r:.200} instead of 'success'", 2),
    }


@pytest.fixture
async def hostile() -> AsyncIterator[Simulator]:
    async with Simulator(api_key=KEY, seed=3, anchor_date=ANCHOR, rate_limit=100_000, rate_window=1.0) as s:
        yield s


async def test_key_quoted_by_the_server_is_on_no_disk_stream_or_repr(
    hostile: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = hostile
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    pairs = pairs_for(150, prefix="k-")
    bad = _bad(pairs)
    _install(sim, bad, transient=pairs[23])
    sim.latency = 0.03  # the fetch lasts about a second: long enough to be killed in the middle
    out = tmp_path / "out"
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), out, tmp_path / "logs",
              extra=("--max-attempts", "2", "--concurrency", "4", "--log-level", "debug",
                     "--api-key-file", str(key_file)))  # fmt: skip
    wal = run_dir(out) / "state.sqlite-wal"

    async def failures_in_the_wal() -> bool:
        return wal.exists() and b"Bearer ***" in wal.read_bytes()

    # 1. kill -9 once a redacted reason is in SQLite's write-ahead log: the WAL, the shared
    #    memory file and the staged checkpoints are left on disk exactly as they were.
    killed = await cli.run_until(failures_in_the_wal)
    assert killed.rc == -signal.SIGKILL, "the run ended before the WAL held a failure"
    left = _scan(out, KEY)
    assert wal in left and (run_dir(out) / "state.sqlite-shm") in left
    assert any(p.parent.name == "staging" for p in left)

    # 2. resume to the end, then --retry-failed (the server still echoes): exit 3 both times.
    sim.latency = 0.0
    finished = await cli.run()
    retried = await cli.run("--retry-failed", "--log-format", "json")
    assert (finished.rc, retried.rc) == (3, 3), finished.stderr + retried.stderr
    for att in (killed, finished, retried):
        _clean(att.stdout)
        _clean(att.stderr)
        assert "Traceback" not in att.stderr
    assert "Bearer ***" in finished.stderr  # the logs did carry the servers' messages
    files = _scan(out, KEY)
    assert {"state.sqlite", "manifest.json", "failures.jsonl"} <= {p.name for p in files}
    assert any(p.suffix == ".parquet" for p in files)

    lines = (run_dir(out) / "failures.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    got = {(f["campaign_id"], f["send_id"]): (f["status"], f["message"], f["attempts"]) for f in records}
    assert got == _expected_failures(bad)
    manifest = orjson.loads((run_dir(out) / "manifest.json").read_bytes())
    assert manifest["failures_total"] == 5
    check_equal(out, sim, [p for p in pairs if p not in bad.values()])

    # 3. The library: its summary and the exception a quoted 401 becomes.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="bulkexport")
    sim.faults.clear()
    sim.stats.reset()
    _install(sim, bad, transient=pairs[23])
    summary = await run(sim, pairs[:30], tmp_path / "lib", max_attempts=2, api_key=KEY)
    assert (summary.status, summary.pairs_done, summary.pairs_failed) == ("partial", 25, 5)
    texts = [repr(summary), str(summary), str(summary.to_dict()), "\n".join(summary.lines())]
    sim.faults.insert(0, FaultRule(kind="echo_auth", status=401, times=None))
    with pytest.raises(bulkexport.AuthError) as info:
        await run(sim, pairs[30:40], tmp_path / "lib401", api_key=KEY)
    err = info.value
    assert err.message == ECHO.replace("{authorization}", "Bearer ***")
    texts += [repr(err), str(err), err.message, "".join(traceback.format_exception(err))]
    texts += [caplog.text, *(repr(r.__dict__) for r in caplog.records)]
    for text in texts:
        _clean(text)
    _scan(tmp_path / "lib", KEY)
    _scan(tmp_path / "lib401", KEY)


def test_redaction_takes_whole_occurrences_only() -> None:
    key = "5f0c2a9e-1b7d-4c3a-8e6f-9d2b4a7c1e30"
    text = f"Bearer {key}; {key}.; x{key}; {key}x; ({key}); '{key}'"
    assert redact_secret(text, key) == f"Bearer ***; ***.; x{key}; {key}x; (***); '***'"
    assert ApiKey(key).redact(text) == redact_secret(text, key)
    body = f'{{"message": "Authorization: Bearer {key}", "raw": "\\xff"}}'.encode() + b"\xff"
    assert ApiKey(key).redact_bytes(body) == body.replace(key.encode(), b"***")
    clean = b'{"message": "success"}'
    assert ApiKey(key).redact_bytes(clean) is clean
    # A one-letter "key" no longer garbles every word and path that holds the letter.
    assert redact_secret("keys in /tmp/k/x and k", "k") == "keys in /tmp/***/x and ***"


@pytest.mark.parametrize("key", ["k", "short-key", "0123456789abcde"])
def test_short_keys_are_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("BRAZE_API_KEY", key)
    pairs = write_pairs(tmp_path / "pairs.csv", pairs_for(3))
    code = main(["export", "--pairs", str(pairs), "--out", str(tmp_path / "out"),
                 "--endpoint", "http://127.0.0.1:9", "--dry-run"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.endswith(
        f"ERROR   the API key is too short ({len(key)} characters): Braze REST API keys are 36-character "
        "UUIDs, and bulkexport refuses keys shorter than 16 (check BRAZE_API_KEY or the key file)"
    )
    assert not (tmp_path / "out").exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_state_and_run_documents_are_owner_only_whatever_the_umask(sim: Simulator, tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: every mode below is set explicitly
    try:
        out = tmp_path / "out"
        out.mkdir()
        (out / "send_stats").write_text("in the way")  # the publish fails: staged parts stay
        pairs = pairs_for(20)
        sim.faults.append(FaultRule(kind="status", status=404, times=None, match=_only(pairs[2])))
        with pytest.raises(bulkexport.StorageError):
            await run(sim, pairs, out)
        rd = run_dir(out)
        assert (_mode(rd), _mode(rd / "staging")) == (0o700, 0o700)
        staged = list((rd / "staging").iterdir())
        assert staged and {_mode(p) for p in staged} == {0o600}
        assert _mode(rd / "state.sqlite") == 0o600
        state = RunState(rd / "state.sqlite")  # open: SQLite's side files exist now
        try:
            state.put("probe", 1)
            assert (_mode(rd / "state.sqlite-wal"), _mode(rd / "state.sqlite-shm")) == (0o600, 0o600)
        finally:
            state.close()

        (out / "send_stats").unlink()
        (rd / "state.sqlite").chmod(0o644)  # as an earlier version left it
        rd.chmod(0o755)
        summary = await run(sim, pairs, out)
        assert (summary.status, summary.pairs_failed) == ("partial", 1)
        assert _mode(rd) == 0o700
        for name in ("state.sqlite", "manifest.json", "failures.jsonl"):
            assert _mode(rd / name) == 0o600, name
        # The product keeps the default mode: it is meant to be read.
        parquet = list(out.glob("send_*/date=*/*.parquet"))
        assert parquet and {_mode(p) for p in parquet} == {0o666}
        assert {_mode(p.parent) for p in parquet} == {0o777}
    finally:
        os.umask(old)


async def test_a_key_the_server_escapes_in_its_json_is_redacted_too(
    hostile: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON may write any character as ``\\uXXXX``: a body quoting the header that way does
    not hold the key's bytes, but decodes to them. It reached Parquet values (a variation
    name, an unknown field, a channel), the manifest's unknown channels, the library's
    AuthError and its log lines. Now the body is searched again without its escapes."""
    caplog.set_level(logging.DEBUG, logger="bulkexport")
    sim = hostile
    pairs = pairs_for(40, prefix="e-")
    echoed = set(pairs[::4])
    sim.faults.append(FaultRule(kind="echo_auth_escaped", status=200, times=None, match=lambda c, s: (c, s) in echoed))
    summary = await run(sim, pairs, tmp_path / "out", api_key=KEY)
    assert (summary.status, summary.pairs_done) == ("complete", 40)
    assert summary.unknown_channels == ["Bearer ***"]  # the header as a channel name, redacted
    files = _scan(tmp_path / "out", KEY)
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == "manifest.json" for p in files)
    names = set(bulkexport.read_table(tmp_path / "out", "send_stats").column("variation_name").to_pylist())
    assert "Bearer ***" in names
    sim.faults.insert(0, FaultRule(kind="echo_auth_escaped", status=401, times=None))
    with pytest.raises(bulkexport.AuthError) as info:
        await run(sim, pairs_for(5, prefix="f-"), tmp_path / "lib401", api_key=KEY)
    assert info.value.message == "refused: Bearer ***"
    for text in (repr(summary), str(summary.to_dict()), str(info.value), repr(info.value), caplog.text):
        _clean(text)


_ESC = "".join(f"\\u{ord(c):04x}" for c in KEY)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a":"x\\u0041","n":123456789012345678901234567890}', None),  # escapes, no key: the same bytes
        (('{"v":"Bearer ' + _ESC + '","n":1e400,"d":1,"d":2}').encode(), b'{"v":"Bearer ***","n":1e400,"d":1,"d":2}'),
        (b"not json \\\\u0041 " + _ESC.encode() + b" \xff", b"not json \\\\u0041 *** \xff"),
        (b'{"q":"\\\\u0037c9e"}', None),  # an escaped backslash, then text: not an escape
    ],
    ids=["escapes without the key", "escaped key, big and duplicate numbers kept", "not JSON, not UTF-8", "\\\\u"],
)
def test_redacting_escaped_keys_changes_nothing_else(body: bytes, expected: bytes | None) -> None:
    """Every byte but the key's stays: a body is the data that is stored (re-encoding it
    turned big integers into floats and dropped duplicate keys), and a body that is not JSON
    still hides the key behind escapes."""
    out = bulkexport.ApiKey(KEY).redact_bytes(body)
    assert out == (body if expected is None else expected)
