"""Failure handling end to end: faults injected by the simulator over loopback HTTP.

Every test asserts exact counts (summary, simulator spies, failures.jsonl, manifest) and that
the Parquet output of the pairs that succeeded still equals the simulator's ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import bulkexport
from bulkexport.simulator import FaultRule, Simulator

from .helpers import ENDING_AT, check_equal, pairs_for, run

RUN_ID = ENDING_AT.date().isoformat()  # the default run id: ending_at's date


def _run_dir(out: Path) -> Path:
    return out / "_bulkexport" / "runs" / RUN_ID


def _failures(out: Path) -> list[dict[str, Any]]:
    text = (_run_dir(out) / "failures.jsonl").read_bytes()
    return [orjson.loads(line) for line in text.splitlines()]


def _manifest(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((_run_dir(out) / "manifest.json").read_bytes())
    return doc


def _only(bad: tuple[str, str]) -> Any:
    return lambda c, s: (c, s) == bad


def _check_clean_manifest(out: Path, summary: bulkexport.ExportSummary, n: int) -> None:
    assert _failures(out) == []
    assert summary.failures_file == str(_run_dir(out) / "failures.jsonl")
    assert summary.manifest == str(_run_dir(out) / "manifest.json")
    m = _manifest(out)
    assert m["status"] == "complete"
    assert m["failures"] == [] and m["failures_total"] == 0
    assert m["summary"]["pairs_done"] == n
    assert m["summary"]["requests"] == summary.requests
    assert m["summary"]["retries"] == summary.retries
    assert "api_key" not in m["parameters"]


# -- transient server errors ---------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_twice_per_pair_recovers(sim: Simulator, tmp_path: Path, status: int) -> None:
    pairs = pairs_for(12)
    sim.faults.append(FaultRule(kind="status", status=status, times=2))
    summary = await run(sim, pairs, tmp_path)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_failed, summary.pairs_total) == (12, 0, 12)
    assert summary.requests == 36
    assert summary.retries == 24
    assert summary.rate_limited == 0
    assert summary.statuses == {status: 24, 200: 12}
    assert sim.stats.per_pair == dict.fromkeys(pairs, 3)
    assert dict(sim.stats.by_status) == {status: 24, 200: 12}
    _check_clean_manifest(tmp_path, summary, 12)
    check_equal(tmp_path, sim, pairs)


async def test_hang_longer_than_timeout_recovers(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(6)
    # The first request of every pair gets its answer only after 1 s; the client gives up at 0.3 s.
    sim.faults.append(FaultRule(kind="hang", delay=1.0, times=1))
    summary = await run(sim, pairs, tmp_path, request_timeout=0.3)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_failed) == (6, 0)
    assert summary.requests == 12
    assert summary.retries == 6
    assert summary.statuses == {200: 6}  # a timeout has no status
    assert sim.stats.per_pair == dict.fromkeys(pairs, 2)
    _check_clean_manifest(tmp_path, summary, 6)
    check_equal(tmp_path, sim, pairs)


# -- bad transfers and bad bodies: transient, then permanent ---------------------------------

# kind -> (rule options, server requests per client attempt that fails, statuses the client
# sees for a failed attempt, reason of the final failure)
_BAD: dict[str, tuple[dict[str, Any], int, int | None, str]] = {
    # aiohttp replays a GET once after a disconnect, so one client attempt costs two resets.
    "reset": ({}, 2, None, "ServerDisconnectedError"),
    "short_body": ({}, 1, None, "truncated transfer"),
    "truncate": ({}, 1, 200, "not valid JSON"),
    "malformed": ({}, 1, 200, "not valid JSON"),
    "bad_shape": ({}, 1, 200, "'data' must be a list, got dict"),
    "not_success": ({}, 1, 200, "Braze reported 'Export failed: internal error' instead of 'success'"),
    "html": ({"status": 502}, 1, 502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
}


@pytest.mark.parametrize("kind", sorted(_BAD))
async def test_bad_transfer_or_body_transient_recovers(sim: Simulator, tmp_path: Path, kind: Any) -> None:
    options, per_attempt, seen, _ = _BAD[kind]
    pairs = pairs_for(8)
    sim.faults.append(FaultRule(kind=kind, times=2 * per_attempt, **options))
    summary = await run(sim, pairs, tmp_path, max_attempts=3)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_failed) == (8, 0)
    assert summary.requests == 3 * 8  # two failed attempts, then the good one
    assert summary.retries == 2 * 8
    assert summary.rate_limited == 0
    want = {200: 8}
    if seen is not None:
        want[seen] = want.get(seen, 0) + 16
    assert summary.statuses == want
    assert sim.stats.per_pair == dict.fromkeys(pairs, 2 * per_attempt + 1)
    _check_clean_manifest(tmp_path, summary, 8)
    check_equal(tmp_path, sim, pairs)


@pytest.mark.parametrize("kind", sorted(_BAD))
async def test_bad_transfer_or_body_permanent_fails_that_pair(sim: Simulator, tmp_path: Path, kind: Any) -> None:
    options, per_attempt, seen, reason = _BAD[kind]
    pairs = pairs_for(9)
    bad = pairs[4]
    good = [p for p in pairs if p != bad]
    sim.faults.append(FaultRule(kind=kind, times=None, match=_only(bad), **options))
    summary = await run(sim, pairs, tmp_path, max_attempts=3)
    assert summary.status == "partial"
    assert (summary.pairs_done, summary.pairs_failed, summary.pairs_total) == (8, 1, 9)
    # When every other pair was answered before the bad pair's first failure, nothing was
    # answered since: before failing it alone, the run asks Braze for a pair it answered (the
    # canary), once. Whether that happens depends on timing; what it costs does not.
    canary = summary.requests - (8 + 3)
    assert canary in (0, 1)
    assert summary.retries == 2
    assert summary.rate_limited == 0
    want = {200: 8 + canary}
    if seen is not None:
        want[seen] = want.get(seen, 0) + 3
    assert summary.statuses == want
    asked = sim.stats.per_pair
    assert asked[bad] == 3 * per_attempt and sorted(asked[p] for p in good) == [1] * (8 - canary) + [2] * canary

    failures = _failures(tmp_path)
    assert len(failures) == 1
    f = failures[0]
    assert (f["campaign_id"], f["send_id"]) == bad
    assert f["attempts"] == 3
    assert reason in f["message"]
    if kind == "html":
        assert f["status"] == 502
        assert f["message"] == reason
    elif seen is None:
        assert f["status"] is None  # no HTTP response at all
    m = _manifest(tmp_path)
    assert m["status"] == "partial"
    assert m["failures_total"] == 1
    assert m["failures"] == failures
    assert m["summary"]["pairs_failed"] == 1
    assert summary.failures_file == str(_run_dir(tmp_path) / "failures.jsonl")
    check_equal(tmp_path, sim, good)


# -- statuses that retrying cannot fix -----------------------------------------------------


@pytest.mark.parametrize(
    "status, message",
    [(400, "send_id is not a send of this campaign"), (404, "Not found")],
)
async def test_400_and_404_are_not_retried(sim: Simulator, tmp_path: Path, status: int, message: str) -> None:
    pairs = pairs_for(7)
    bad = pairs[2]
    good = [p for p in pairs if p != bad]
    sim.faults.append(FaultRule(kind="status", status=status, message=message, times=None, match=_only(bad)))
    summary = await run(sim, pairs, tmp_path, max_attempts=4)
    assert summary.status == "partial"
    assert (summary.pairs_done, summary.pairs_failed) == (6, 1)
    assert summary.requests == 7
    assert summary.retries == 0
    assert summary.statuses == {200: 6, status: 1}
    assert sim.stats.per_pair == {**dict.fromkeys(good, 1), bad: 1}
    failures = _failures(tmp_path)
    assert [(f["campaign_id"], f["send_id"], f["status"], f["message"], f["attempts"]) for f in failures] == [
        (bad[0], bad[1], status, message, 1)
    ]
    assert _manifest(tmp_path)["failures"] == failures
    check_equal(tmp_path, sim, good)


# -- auth: the whole run stops at once -----------------------------------------------------


async def test_401_wrong_key_stops_the_run_and_resume_completes(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(40)
    with pytest.raises(bulkexport.AuthError) as info:
        await run(sim, pairs, tmp_path, api_key="not-the-key-0123456789", concurrency=4)
    assert info.value.status == 401
    assert info.value.message == "Invalid API key"
    assert "HTTP 401: Invalid API key" in str(info.value)
    assert 1 <= sim.stats.requests <= 4
    assert dict(sim.stats.by_status) == {401: sim.stats.requests}
    assert not (tmp_path / "send_stats").exists()  # nothing published
    # Every pair stayed pending: the same run with the right key fetches each exactly once.
    sim.stats.reset()
    summary = await run(sim, pairs, tmp_path, concurrency=4)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_failed, summary.pairs_resumed) == (40, 0, 0)
    assert summary.requests == 40
    assert sim.stats.per_pair == dict.fromkeys(pairs, 1)
    check_equal(tmp_path, sim, pairs)


async def test_401_mid_run_keeps_what_was_finished(sim: Simulator, tmp_path: Path) -> None:
    """The key is revoked while the run is going: pairs answered before stay done, the run
    stops at the first 401, and the resume fetches exactly the rest (one worker: exact)."""
    pairs = pairs_for(30)
    revoked = pairs[20]
    sim.faults.append(FaultRule(kind="status", status=401, message="Invalid API key", match=_only(revoked)))
    with pytest.raises(bulkexport.AuthError) as info:
        await run(sim, pairs, tmp_path, concurrency=1)
    assert info.value.status == 401
    assert sim.stats.requests == 21
    assert dict(sim.stats.by_status) == {200: 20, 401: 1}
    summary = await run(sim, pairs, tmp_path, concurrency=1)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_resumed, summary.requests) == (30, 20, 10)
    assert sim.stats.per_pair == {**dict.fromkeys(pairs, 1), revoked: 2}
    check_equal(tmp_path, sim, pairs)


async def test_403_forbidden_stops_the_run(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(40)
    sim.forbidden = True
    with pytest.raises(bulkexport.AuthError) as info:
        await run(sim, pairs, tmp_path, concurrency=4)
    assert info.value.status == 403
    assert info.value.message == "API key lacks permission sends.data_series"
    assert "sends.data_series permission" in str(info.value)
    assert 1 <= sim.stats.requests <= 4
    assert dict(sim.stats.by_status) == {403: sim.stats.requests}
    sim.forbidden = False
    sim.stats.reset()
    summary = await run(sim, pairs, tmp_path, concurrency=4)
    assert (summary.status, summary.pairs_done, summary.requests) == ("complete", 40, 40)
    check_equal(tmp_path, sim, pairs)


# -- 429 --------------------------------------------------------------------------------


async def test_429_with_retry_after_pauses_the_whole_pool(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(30)
    limited = set(pairs[:3])  # in the first burst of requests
    sim.faults.append(FaultRule(kind="rate_limit", retry_after="1", times=1, match=lambda c, s: (c, s) in limited))
    summary = await run(sim, pairs, tmp_path, concurrency=4)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_failed) == (30, 0)
    assert summary.rate_limited == 3
    assert summary.requests == 33
    assert summary.retries == 3
    assert summary.statuses == {429: 3, 200: 30}
    assert summary.paused_seconds >= 1.0
    assert sim.stats.per_pair == {p: 2 if p in limited else 1 for p in pairs}
    assert dict(sim.stats.by_status) == {429: 3, 200: 30}

    # Timestamps and queries are recorded in the same order: find when the 429s were served.
    served = list(zip(sim.stats.timestamps, sim.stats.last_queries, strict=True))
    first_429: dict[tuple[str, str], float] = {}
    for ts, query in served:
        for p in limited:
            if f"campaign_id={p[0]}&send_id={p[1]}" in query and p not in first_429:
                first_429[p] = ts
    assert len(first_429) == 3
    t_last = max(first_429.values())
    # Requests already on their way when the 429s came back (at most the pool) may land
    # right after them; after that, nothing reaches the server until the pause is over.
    burst = [ts for ts, _ in served if t_last < ts <= t_last + 0.2]
    later = [ts for ts, _ in served if ts > t_last + 0.2]
    assert len(burst) <= 4
    assert later, "the run resumed after the pause"
    assert min(later) >= t_last + 0.95
    check_equal(tmp_path, sim, pairs)


async def test_429s_do_not_use_up_the_attempts(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(5)
    bad = pairs[1]
    sim.faults.append(FaultRule(kind="rate_limit", retry_after="0", times=3, match=_only(bad)))
    summary = await run(sim, pairs, tmp_path, max_attempts=2)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_failed) == (5, 0)
    assert summary.rate_limited == 3
    assert summary.requests == 8
    assert summary.statuses == {429: 3, 200: 5}
    assert sim.stats.per_pair == {**dict.fromkeys(pairs, 1), bad: 4}
    check_equal(tmp_path, sim, pairs)


async def test_clock_window_limit_lower_than_configured(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(100)
    sim.rate_limit = 50
    sim.rate_window = 1.0
    # The exporter believes 100,000/s; the server allows 50 per clock second.
    summary = await run(sim, pairs, tmp_path, rate_limit=100_000, window=1.0, concurrency=8)
    assert summary.status == "complete"
    assert (summary.pairs_done, summary.pairs_failed) == (100, 0)
    assert summary.limit == 50  # learnt from X-RateLimit-Limit
    n429 = sim.stats.by_status[429]
    assert summary.rate_limited == n429
    assert summary.statuses == ({200: 100, 429: n429} if n429 else {200: 100})
    assert summary.requests == sim.stats.requests == 100 + n429
    # Feedback keeps 429s rare (none in practice): the pace follows the learnt limit, not the
    # configured one, which would draw about 50 x 429 here.
    assert n429 <= 5
    check_equal(tmp_path, sim, pairs)
