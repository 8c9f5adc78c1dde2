"""Runs that cannot collide or misread an outage: the run lock, the outage breaker, and
summaries that say what is committed. Real CLI processes against the simulator on loopback;
the breaker's arithmetic also on the virtual clock."""

from __future__ import annotations

import asyncio
import functools
import gc
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

import bulkexport
from bulkexport import BrazeUnavailable, ExportInterrupted, checkpoint, publish
from bulkexport.checkpoint import Checkpointer, Staging
from bulkexport.client import BrazeClient
from bulkexport.config import ExportConfig
from bulkexport.errors import ServerError
from bulkexport.layout import RunLayout
from bulkexport.limiter import RateController
from bulkexport.pairs import Pair
from bulkexport.simulator import HOUR, FaultRule, HourlyBraze, Simulator, run_virtual
from bulkexport.state import DONE, RunState

from .helpers import (
    ANCHOR,
    API_KEY,
    ENDING_AT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_IN_PROGRESS,
    EXIT_UNAVAILABLE,
    Attempt,
    Cli,
    assert_no_traceback,
    check_equal,
    committed_pairs,
    free_port,
    pairs_for,
    request_log,
    run,
    run_dir,
    until,
    write_pairs,
)


async def finish(cli: Cli, proc: asyncio.subprocess.Process, att: Attempt, out_log: Path, err_log: Path) -> Attempt:
    await asyncio.wait_for(proc.wait(), 60)
    att.rc, att.ended_at = proc.returncode, time.time()
    att.stdout, att.stderr = await asyncio.to_thread(lambda: (out_log.read_text(), err_log.read_text()))
    return att


def summary_numbers(stdout: str) -> tuple[int, int, int]:
    """(exported, failed, pending) from the printed summary."""
    line = next(x for x in stdout.splitlines() if x.startswith("pairs "))
    words = line.replace(",", "").split()
    exported, failed = int(words[1]), int(words[3])
    pending = int(words[words.index("pending") - 1]) if "pending" in words else 0
    return exported, failed, pending


# -- one process per run ------------------------------------------------------------------------
async def test_a_second_invocation_of_the_same_run_exits_at_once(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(600)
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), tmp_path / "out", tmp_path / "logs",
              extra=("--max-rate", "100"))  # fmt: skip
    first = await cli.start()
    await until(lambda: len(sim.stats.per_pair) >= 100)  # the first is well under way
    started = time.monotonic()
    second = await cli.run()
    assert second.rc == EXIT_RUN_IN_PROGRESS, second.stderr
    assert time.monotonic() - started < 5  # at once, not after the first
    errors = [x for x in second.stderr.splitlines() if "ERROR" in x]
    assert len(errors) == 1 and "being exported by another process (pid" in errors[0], second.stderr
    assert_no_traceback(second)
    att = await finish(cli, *first)
    assert att.rc == EXIT_OK, att.stderr
    assert sum(sim.stats.per_pair.values()) == len(pairs)  # no pair fetched twice
    check_equal(cli.out, sim, pairs)  # value for value, and no duplicate row


async def test_wait_waits_for_the_holder_then_finds_the_run_complete(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(300)
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), tmp_path / "out", tmp_path / "logs",
              extra=("--max-rate", "100"))  # fmt: skip
    first = await cli.start()
    await until(lambda: sim.stats.requests > 0)
    second = await cli.run("--wait")
    att = await finish(cli, *first)
    assert att.rc == EXIT_OK and second.rc == EXIT_OK, second.stderr
    assert "waiting for it" in second.stderr and "already complete" in second.stderr
    assert second.ended_at >= att.ended_at - 0.5  # it really waited for the first
    assert sum(sim.stats.per_pair.values()) == len(pairs)
    check_equal(cli.out, sim, pairs)


async def test_kill9_leaves_no_stale_lock(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(300)
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), tmp_path / "out", tmp_path / "logs",
              extra=("--max-rate", "150"))  # fmt: skip

    async def halfway() -> bool:
        return len(committed_pairs(cli.out)) >= 60

    killed = await cli.run_until(halfway)
    assert killed.rc == -signal.SIGKILL
    assert (run_dir(cli.out).parent / "2026-11-27.lock").exists()  # the file stays; the lock does not
    again = await cli.run()
    assert again.rc == EXIT_OK, again.stderr
    check_equal(cli.out, sim, pairs)


async def test_runs_with_other_run_ids_share_an_output(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(200)
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), tmp_path / "out", tmp_path / "logs",
              extra=("--max-rate", "100"))  # fmt: skip
    first = await cli.start("--run-id", "a")
    second = await cli.run("--run-id", "b")
    att = await finish(cli, *first)
    assert att.rc == EXIT_OK and second.rc == EXIT_OK, (att.stderr, second.stderr)
    for rid in ("a", "b"):
        manifest = orjson.loads((cli.out / "_bulkexport" / "runs" / rid / "manifest.json").read_bytes())
        assert manifest["status"] == "complete" and manifest["summary"]["pairs_done"] == len(pairs)


# -- outages --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 300])
async def test_nothing_listening_stops_within_the_budget_then_resumes_exactly(tmp_path: Path, n: int) -> None:
    """Also with one or two pairs, too few to open the breaker: with nothing ever answered
    (no canary to ask) a pair's used-up attempts say nothing about the pair, so it stays
    pending and the run waits out --max-outage (a single pair used to be failed for good)."""
    port = free_port()
    sim = Simulator(api_key=API_KEY, seed=11, anchor_date=ANCHOR, port=port)
    sim._url = f"http://127.0.0.1:{port}"  # the URL the CLI is given, while nothing listens there
    pairs = pairs_for(n)
    # Two attempts: a pair's are used up well within the budget, so the budget is what ends it.
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), tmp_path / "out", tmp_path / "logs",
              extra=("--max-outage", "6", "--max-attempts", "2"))  # fmt: skip
    down = await cli.run(limit=40)
    assert down.rc == EXIT_UNAVAILABLE, down.stderr
    assert down.elapsed < 6 + 8  # the budget, plus start-up and the last probe's answer
    assert "Braze has not answered successfully for" in down.stderr
    assert summary_numbers(down.stdout) == (0, 0, len(pairs))  # done, failed, pending
    manifest = orjson.loads((run_dir(cli.out) / "manifest.json").read_bytes())
    assert manifest["status"] == "unavailable" and manifest["summary"]["pairs_pending"] == len(pairs)
    assert (run_dir(cli.out) / "failures.jsonl").read_bytes() == b""  # no pair blamed for it
    assert_no_traceback(down)
    sim._url = None
    async with sim:
        up = await cli.run()
    assert up.rc == EXIT_OK, up.stderr
    check_equal(cli.out, sim, pairs)


async def test_an_outage_shorter_than_the_budget_is_ridden_out(tmp_path: Path) -> None:
    """Braze goes away for two minutes in the middle of a run (connections refused) and comes
    back: far longer than any pair's own retries last here (0.5 + 1 + 2 + 4 + 5 s), so a run
    that blamed the pairs would fail them all; this one waits with probes, resumes, and the
    dataset is exact, no pair failed."""
    port = free_port()
    pairs = pairs_for(400)
    outage = 120.0
    async with Simulator(api_key=API_KEY, seed=11, anchor_date=ANCHOR, port=port) as sim:
        done = asyncio.Event()

        async def take_it_away() -> None:
            await until(lambda: sim.stats.requests >= 150)
            await sim.stop()
            await asyncio.sleep(outage)
            await sim.start()
            done.set()

        chaos = asyncio.create_task(take_it_away())
        started = time.monotonic()
        summary = await run(sim, pairs, tmp_path, max_rate=100.0, backoff_initial=0.5, backoff_max=5.0)
        await chaos
    assert done.is_set() and time.monotonic() - started >= outage
    assert summary.status == "complete" and summary.pairs_failed == 0, summary
    check_equal(tmp_path, sim, pairs)


async def test_5xx_for_one_pair_only_fails_that_pair(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(120)
    bad = pairs[60]
    sim.faults.append(FaultRule(kind="status", status=503, times=None, match=lambda c, s: (c, s) == bad))
    summary = await run(sim, pairs, tmp_path, max_attempts=4)
    assert summary.status == "partial" and summary.pairs_failed == 1 and summary.pairs_done == 119
    failures = [orjson.loads(x) for x in (run_dir(tmp_path) / "failures.jsonl").read_bytes().splitlines()]
    assert [(f["campaign_id"], f["send_id"], f["status"], f["attempts"]) for f in failures] == [(*bad, 503, 4)]


async def test_a_lone_pair_failing_at_the_end_of_a_run_still_fails(sim: Simulator, tmp_path: Path) -> None:
    """Nothing else is in flight, so nothing else can succeed meanwhile: one failing pair is
    not an outage, and the run ends with it failed (not stopped as 'unavailable')."""
    sim.faults.append(FaultRule(kind="status", status=500, times=None, match=lambda c, s: s == "s00000"))
    summary = await run(sim, pairs_for(1), tmp_path, max_attempts=3, max_outage=30.0)
    assert summary.status == "partial" and summary.pairs_failed == 1


def _failed(out: Path) -> dict[tuple[str, str], tuple[int | None, int]]:
    """The run's failures file: (status, attempts) by pair."""
    lines = (run_dir(out) / "failures.jsonl").read_bytes().splitlines()
    return {(f["campaign_id"], f["send_id"]): (f["status"], f["attempts"]) for f in map(orjson.loads, lines)}


@pytest.mark.parametrize(
    ("case", "backoff"),
    [("two at the end", 0.01), ("twenty at the end", 0.01), ("twenty at the end, slow retries", 0.5)],
)
async def test_pairs_braze_always_fails_are_failed_not_taken_for_an_outage(
    sim: Simulator, tmp_path: Path, case: str, backoff: float
) -> None:
    """Braze answers 500 for some pairs every time, and well for the rest. Once only those
    pairs are left, nothing is answered well any more: an outage, or pairs of their own? The
    run asks a pair Braze answered before (the canary) when a pair's attempts are used up
    (and as the breaker's probe if their failures opened it: see the test below). Each bad
    pair fails after exactly its attempts, every other is exported, and the run ends
    'partial'. (It used to wait for the outage budget and stop 'unavailable', every rerun the
    same.)"""
    pairs = pairs_for(120, prefix="v-")
    bad = set(pairs[-2:] if case == "two at the end" else pairs[-20:])
    sim.faults.append(FaultRule(kind="status", status=500, times=None, match=lambda c, s: (c, s) in bad))
    summary = await run(sim, pairs, tmp_path, max_attempts=4, max_outage=15.0, backoff_initial=backoff,
                        backoff_max=4 * backoff)  # fmt: skip
    assert summary.status == "partial", summary
    assert (summary.pairs_done, summary.pairs_failed) == (len(pairs) - len(bad), len(bad))
    assert _failed(tmp_path) == dict.fromkeys(bad, (500, 4))
    good = [p for p in pairs if p not in bad]
    check_equal(tmp_path, sim, good)
    asked = Counter(p for _, p in request_log(sim))
    assert {asked[p] for p in bad} == {4}
    assert sum(asked[p] for p in good) > len(good)  # the canary: a good pair asked again


async def test_a_rerun_of_failing_pairs_alone_asks_a_pair_done_before(sim: Simulator, tmp_path: Path) -> None:
    """--retry-failed of four pairs Braze always fails: nothing in this session is answered
    well, so the canary comes from the run's state (a pair done in an earlier session). They
    fail again, 'partial', rather than the run stopping as 'unavailable'."""
    pairs = pairs_for(40, prefix="r-")
    bad = set(pairs[::10])
    sim.faults.append(FaultRule(kind="status", status=500, times=None, match=lambda c, s: (c, s) in bad))
    first = await run(sim, pairs, tmp_path, max_attempts=3, max_outage=10.0)
    assert first.status == "partial" and first.pairs_failed == 4
    served = sim.stats.requests
    again = await run(sim, pairs, tmp_path, max_attempts=3, max_outage=10.0, retry_failed=True)
    assert again.status == "partial" and (again.pairs_done, again.pairs_failed) == (36, 4)
    assert _failed(tmp_path) == dict.fromkeys(bad, (500, 3))
    asked = Counter(p for _, p in request_log(sim)[served:])
    assert {asked[p] for p in bad} == {3} and sum(n for p, n in asked.items() if p not in bad) >= 1
    check_equal(tmp_path, sim, [p for p in pairs if p not in bad])


async def test_a_retry_of_one_failed_pair_during_an_outage_leaves_it_pending(sim: Simulator, tmp_path: Path) -> None:
    """--retry-failed of a single pair while Braze answers 503 to everything: the pair fails
    alone, which used to be blame enough (nothing else is failing), so it was failed again,
    'partial'. The canary (a pair done earlier) is asked first; it fails too, so this is an
    outage: the run stops 'unavailable' with the pair pending, and a retry once Braze is
    back exports it."""
    pairs = pairs_for(20, prefix="o-")
    sim.faults.append(FaultRule(kind="status", status=404, times=1, match=lambda c, s: (c, s) == pairs[7]))
    first = await run(sim, pairs, tmp_path)
    assert first.status == "partial" and first.pairs_failed == 1
    sim.faults.append(FaultRule(kind="status", status=503, times=None))
    with pytest.raises(BrazeUnavailable) as stopped:
        await run(sim, pairs, tmp_path, retry_failed=True, max_attempts=3, max_outage=2.0)
    summary = stopped.value.summary
    assert summary is not None and summary.status == "unavailable"
    assert (summary.pairs_done, summary.pairs_failed, summary.pairs_pending) == (19, 0, 1)
    sim.faults.clear()
    again = await run(sim, pairs, tmp_path)
    assert again.status == "complete" and again.pairs_failed == 0
    check_equal(tmp_path, sim, pairs)


async def test_the_breakers_probe_asks_the_canary_before_its_own_pair(sim: Simulator) -> None:
    """Three pairs Braze always fails, over more than the breaker's spell with nothing
    answered meanwhile, open it. The next start, its probe, goes to the canary (the pair
    answered before) first: the 200 closes the breaker, and only then is the probe's own pair
    asked. Without the canary, every probe would be one of those pairs, failing, and the
    pauses would double to the outage budget."""
    good, bad = Pair("z-0", "s0"), [Pair(f"z-{i}", f"s{i}") for i in (1, 2, 3)]
    sim.faults.append(FaultRule(kind="status", status=500, times=None, match=lambda c, s: Pair(c, s) in bad))
    cfg = ExportConfig.build(endpoint=sim.url, api_key=API_KEY, ending_at=ENDING_AT, length=15)
    async with RateController(limit=100_000, window=1.0) as limiter, BrazeClient(cfg, limiter) as client:
        await client.fetch(good)
        assert client.canary == good
        for pair in bad:
            if pair == bad[-1]:
                await asyncio.sleep(2.1)  # the spell
            with pytest.raises(ServerError):
                await client.fetch(pair)
        assert limiter.outage_open
        served = sim.stats.requests
        with pytest.raises(ServerError):
            await client.fetch(bad[0])
        assert [p for _, p in request_log(sim)[served:]] == [good, bad[0]]
        assert not limiter.outage_open and limiter.stats.outages == 1


# -- honest summaries -------------------------------------------------------------------------
async def test_a_stop_reports_what_is_committed(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(600)
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), tmp_path / "out", tmp_path / "logs",
              extra=("--max-rate", "150"))  # fmt: skip

    async def some_committed() -> bool:
        return len(committed_pairs(cli.out)) >= 150

    att = await cli.run_until(some_committed, sig=signal.SIGTERM)
    assert att.rc == EXIT_INTERRUPTED, att.stderr
    done = len(committed_pairs(cli.out))
    assert summary_numbers(att.stdout) == (done, 0, len(pairs) - done) and done >= 150
    manifest = orjson.loads((run_dir(cli.out) / "manifest.json").read_bytes())
    assert manifest["status"] == "interrupted" and not manifest["finished"]
    assert manifest["summary"]["pairs_done"] == done and manifest["summary"]["pairs_pending"] == len(pairs) - done
    stats_rows = sum(1 for _ in _committed_rows(cli.out))
    assert manifest["summary"]["stats_rows"] == stats_rows > 0


def _committed_rows(out: Path) -> list[int]:
    import sqlite3

    con = sqlite3.connect(f"file:{run_dir(out) / 'state.sqlite'}?mode=ro", uri=True)
    try:
        (rows,) = con.execute("SELECT sum(rows) FROM parts WHERE tbl = 'send_stats'").fetchone()
    finally:
        con.close()
    return list(range(rows or 0))


async def test_library_errors_carry_the_summary(sim: Simulator, tmp_path: Path) -> None:
    sim.api_key = "another-key-that-is-long-enough"
    with pytest.raises(bulkexport.AuthError) as refused:
        await run(sim, pairs_for(30), tmp_path)
    assert refused.value.summary is not None and refused.value.summary.status == "auth_refused"
    assert refused.value.summary.pairs_pending == 30
    sim.api_key = API_KEY
    stopped: list[ExportInterrupted] = []

    async def stop_soon() -> None:
        await until(lambda: len(committed_pairs(tmp_path)) >= 40)
        os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.create_task(stop_soon())
    try:
        await run(sim, pairs_for(400), tmp_path, handle_signals=True, max_rate=150.0)
    except ExportInterrupted as exc:
        stopped.append(exc)
    await task
    (exc,) = stopped
    assert exc.summary is not None and exc.summary.status == "interrupted"
    assert exc.summary.pairs_done == len(committed_pairs(tmp_path))
    assert exc.summary.pairs_done + exc.summary.pairs_pending == 400


# -- the breaker on the virtual clock --------------------------------------------------------
def _down_between(start: float, end: float) -> HourlyBraze:
    class Down(HourlyBraze):
        def arrive(self, started: float) -> tuple[int, dict[str, str]]:
            assert self._loop is not None
            if start <= self._loop.time() < end:
                return 503, {}
            return super().arrive(started)

    return Down(1_790_002_800.0)


def test_the_breaker_backs_off_with_probes_and_resumes_at_once() -> None:
    braze = _down_between(600.0, 720.0)  # a two-minute outage ten minutes in

    async def scenario() -> tuple[list[float], RateController]:
        from bulkexport.simulator import drive

        async with RateController(limit=250_000, window=HOUR, reserve=0.1, wall=braze.wall) as ctrl:
            run_ = await drive(ctrl, braze, seconds=900.0)
            return run_.starts, ctrl

    starts, ctrl = run_virtual(scenario())
    # Open on the first failure answered 2 s after the first one: by 604.4 s (the first
    # failure is answered within a batch (1 s) and the latency (0.2 s) of 600 s, the one that
    # opens it within as much of 602.2 s); until then, full pace. Then one probe at a time,
    # growing pauses: at most a probe a second, far fewer than the 69 a second of full pace.
    assert ctrl.stats.outages == 1
    into = [t for t in starts if 600.0 <= t < 604.5]
    assert len(into) <= 4.5 * 250_000 / HOUR + 64, len(into)  # the pace, and one batch early
    during = [t for t in starts if 604.5 <= t < 720.0]
    assert 3 <= len(during) <= 15, len(during)
    after = [t for t in starts if t >= 720.0]
    assert after and after[0] - 720.0 <= 31.0  # the next probe (pauses are capped at 30 s)
    resumed = after[0]
    assert sum(1 for t in starts if resumed <= t < resumed + 10) >= 0.9 * 10 * 250_000 / HOUR  # full pace


def test_an_outage_longer_than_the_budget_stops_the_run() -> None:
    braze = _down_between(60.0, math.inf)

    async def scenario() -> tuple[Exception | None, float | None, BrazeUnavailable]:
        from bulkexport.simulator import drive

        async with RateController(limit=250_000, window=HOUR, reserve=0.1, max_outage=300.0,
                                  wall=braze.wall) as ctrl:  # fmt: skip
            run_ = await drive(ctrl, braze, seconds=HOUR)
            return run_.stopped, run_.stopped_at, await ctrl.failure()

    raised, at, verdict = run_virtual(scenario())
    assert isinstance(raised, BrazeUnavailable) and raised is verdict
    assert at is not None and 360.0 <= at <= 361.0 and 300.0 <= verdict.seconds <= 301.0


async def test_the_fetch_ending_as_its_last_pair_wakes_the_checkpoint_loop_does_not_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last worker's pair fills the buffer, so it wakes the checkpoint loop, and the
    worker ends; the fetch, seeing its last worker end, cancels the loop in the same turn of
    the event loop. On Python 3.11, ``asyncio.wait_for`` returns the finished wake instead of
    raising that cancel: the loop went on waiting for the next wake (an hour here, forever in
    effect), and the fetch with it, waiting for the loop to end."""
    monkeypatch.setattr(checkpoint, "_BUILD_EVERY", 1)  # every pair is built as it arrives
    day = {"time": "2026-11-27", "messages": {"email": [{"variation_name": "A", "sent": 5}]}}
    body = orjson.dumps({"message": "success", "data": [day]})  # 2 rows: one per table
    cfg = ExportConfig.build(endpoint="https://rest.iad-01.braze.com", api_key="k" * 36,
                             checkpoint_interval=3600, checkpoint_rows=2)  # fmt: skip
    state = RunState(tmp_path / "run" / "state.sqlite")
    state.ingest([Pair("c1", "s1")])
    ((pid, pair),) = state.pending()
    staging = Staging(RunLayout("r", tmp_path / "run"))
    staging.prepare()
    ckpt = Checkpointer(cfg, state, staging)
    loop_task = asyncio.create_task(ckpt.run())
    try:
        await asyncio.sleep(0.05)  # the loop waits to be woken

        async def last_worker() -> None:
            ckpt.add(pid, pair, body)
            await ckpt.after_pair()  # 2 rows: wakes the loop, too few to hold the worker back

        worker = asyncio.create_task(last_worker())
        await asyncio.wait({worker})  # as the fetch's supervisor waits for its workers
        loop_task.cancel()  # the fetch is over
        done, _ = await asyncio.wait({loop_task}, timeout=5)
        assert done == {loop_task} and loop_task.cancelled()
        await ckpt.close()
        assert state.count(DONE) == 1
    finally:
        loop_task.cancel()  # a loop that swallowed the first cancel must not outlive the test
        await asyncio.gather(loop_task, return_exceptions=True)
        state.close()


async def test_an_export_of_640_pairs_with_every_default_finishes(sim: Simulator, tmp_path: Path) -> None:
    """The race above with nothing tuned: 64 workers, a build every 128 responses, checkpoints
    of 32,768 rows or 5 s. These 640 pairs pass 32,768 rows only with the build at the 640th
    response (27,474 rows at the 512th, 34,768 at the 640th): the last worker wakes the
    checkpoint loop and ends. Before the fix this export hung forever, 3 times out of 3."""
    wanted = pairs_for(640)
    async with asyncio.timeout(60):
        summary = await bulkexport.export_async(
            wanted, tmp_path, endpoint=sim.url, api_key=API_KEY, ending_at=ENDING_AT, length=15, reserve=0.0
        )
    assert (summary.pairs_done, summary.pairs_failed) == (640, 0)
    check_equal(tmp_path, sim, wanted)


@pytest.mark.parametrize(
    ("pairs", "concurrency", "checkpoint_rows", "interval", "build_every", "latency"),
    [
        (1, 16, 20, 3600, 1, 0.0),
        (2, 1, 40, 3600, 2, 0.03),
        (3, 3, 100, 0.05, 1, 0.0),
        (5, 3, 100, 3600, 1, 0.03),
        (8, 1, 300, 0.05, 2, 0.003),
        (8, 8, 300, 0.05, 1, 0.0),
    ],
)
async def test_exports_whose_last_pair_wakes_the_checkpoint_loop_finish(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pairs: int, concurrency: int,
    checkpoint_rows: int, interval: float, build_every: int, latency: float,
) -> None:
    """The same race through the whole pipeline: small exports where the last pairs fill the
    buffer just as the fetch ends. Before the fix every one of these hung (6 runs of each,
    found by randomised runs of small exports: 10 of 150 hung); each takes well under a
    second now."""
    monkeypatch.setattr(checkpoint, "_BUILD_EVERY", build_every)
    sim.latency = latency
    wanted = pairs_for(pairs)
    async with asyncio.timeout(60):
        summary = await run(sim, wanted, tmp_path, concurrency=concurrency, checkpoint_rows=checkpoint_rows,
                            checkpoint_interval=interval)  # fmt: skip
    assert (summary.pairs_done, summary.pairs_failed) == (pairs, 0)
    check_equal(tmp_path, sim, wanted)


#: Transient faults for the randomised exports: each rule fires at most twice a pair, so every
#: pair ends exported within six attempts. No 429s: after one, every start is a lone probe
#: until one is answered without a 5xx or a failure, and with every pair failing its first
#: attempts (probability 1) the probes keep failing: the run crawls (noted on issue 13;
#: test_rate.py covers 429s).
_TRANSIENT: list[dict[str, Any]] = [
    {"kind": "status", "status": 500}, {"kind": "status", "status": 503}, {"kind": "html", "status": 502},
    {"kind": "reset"},
    {"kind": "truncate"}, {"kind": "short_body"}, {"kind": "malformed"}, {"kind": "not_success"},
    {"kind": "latency", "delay": 0.05},
]  # fmt: skip


async def test_randomised_small_exports_end_and_match_the_truth(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small exports under random sizes, concurrency, checkpoint rows and intervals, build
    granularity, latency and transient faults: each must end, with every pair exported and the
    rows equal to the simulator's. Races live in the combinations nobody designed for: 10 of
    150 such runs without faults hung before ``e5f2b94``, and with this seed its fourth trial
    did (seeds 1 to 8: six of them hung within their 30 trials). The seed is fixed; a failure
    names its trial."""
    rnd = random.Random(1)
    for trial in range(30):
        case = {
            "pairs": rnd.choice([1, 2, 3, 5, 8, 13, 40, 129]),
            "concurrency": rnd.choice([1, 2, 3, 8, 16, 64]),
            "checkpoint_rows": rnd.choice([1, 20, 100, 300, 32_768]),
            "checkpoint_interval": rnd.choice([0.01, 0.05, 0.2, 5.0, 3600.0]),
            "build_every": rnd.choice([1, 2, 7, 128]),
            "latency": rnd.choice([0.0, 0.003, 0.03]),
            "faults": [
                {"times": rnd.choice([1, 2]), "probability": rnd.choice([0.1, 0.3, 1.0]), **rnd.choice(_TRANSIENT)}
                for _ in range(rnd.choice([0, 1, 2]))
            ],
        }  # fmt: skip
        monkeypatch.setattr(checkpoint, "_BUILD_EVERY", case["build_every"])
        sim.latency = case["latency"]
        sim.faults[:] = [FaultRule(**f) for f in case["faults"]]
        wanted = pairs_for(case["pairs"], prefix=f"r{trial}-")
        out = tmp_path / str(trial)
        try:
            async with asyncio.timeout(60):
                summary = await run(sim, wanted, out, concurrency=case["concurrency"], max_attempts=6,
                                    checkpoint_rows=case["checkpoint_rows"],
                                    checkpoint_interval=case["checkpoint_interval"])  # fmt: skip
        except TimeoutError:
            pytest.fail(f"trial {trial} did not end within 60 s: {case}")
        assert (summary.pairs_done, summary.pairs_failed) == (case["pairs"], 0), (trial, case)
        check_equal(out, sim, wanted)


@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_cancel_during_the_last_checkpoint_waits_for_its_commit(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, cancels: int
) -> None:
    """A library caller cancels the export while its last checkpoint is being written: the
    commit ends before the run state closes, so its pairs count as done, and no error is left
    for the garbage collector to report. A second cancel stops the wait (a hung disk must not
    make the export uncancellable); the commit then fails on the closed state, and says so."""
    entered, gate = threading.Event(), threading.Event()
    write = Staging.write

    def slow(self: Staging, seq: int, tables: dict[str, Any]) -> Any:
        entered.set()
        gate.wait(30)
        return write(self, seq, tables)

    monkeypatch.setattr(Staging, "write", slow)
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    pairs = pairs_for(40)
    # A checkpoint a minute: the only one is the last, written when the fetch ends.
    task = asyncio.create_task(run(sim, pairs, tmp_path, checkpoint_interval=60))
    try:
        await until(entered.is_set)
        task.cancel()
        await asyncio.sleep(0.2)
        assert not task.done()  # waiting for the commit, the state still open
        if cancels == 2:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task  # at once, the commit still blocked
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        failed = "the last checkpoint failed after the export was cancelled"
        if cancels == 1:
            assert committed_pairs(tmp_path) == set(pairs)
        else:
            await until(lambda: failed in caplog.text)
            assert committed_pairs(tmp_path) == set()  # fetched again next time
        gc.collect()
        await asyncio.sleep(0.05)
        assert unretrieved == []
        assert (failed in caplog.text) == (cancels == 2)
    finally:
        gate.set()
        loop.set_exception_handler(None)


async def test_a_cancel_during_the_publish_waits_for_the_partitions_being_written(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel during the publish: the partitions being written finish, those not started are
    skipped, and only then do the state close and the run's lock go; the next run publishes
    everything."""
    entered, gate = threading.Event(), threading.Event()
    close = publish._PartitionWriter.close

    def slow(self: publish._PartitionWriter) -> None:  # a partition's rows are read, its file not done
        entered.set()
        gate.wait(30)
        close(self)

    monkeypatch.setattr(publish._PartitionWriter, "close", slow)
    pairs = pairs_for(40)
    task = asyncio.create_task(run(sim, pairs, tmp_path))
    try:
        await until(entered.is_set)
        task.cancel()
        await asyncio.sleep(0.2)
        assert not task.done()  # the publishing threads are still writing
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not [t for t in threading.enumerate() if t.name.startswith("bulkexport-publish")]
        assert 1 <= len(_partitions_written(tmp_path)) <= publish._THREADS  # of 30: the rest skipped
    finally:
        gate.set()
    monkeypatch.undo()
    await run(sim, pairs, tmp_path)
    check_equal(tmp_path, sim, pairs)


def _partitions_written(out: Path) -> set[Path]:
    return {f.parent for f in out.glob("send_*/date=*/*.parquet")}


def _handles_sigterm(pid: int) -> bool:
    """Whether the process has a handler of its own for SIGTERM (Linux: /proc's SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


async def test_a_signal_at_any_moment_of_start_up_or_reading_the_pairs_exits_5(sim: Simulator, tmp_path: Path) -> None:
    """SIGINT or SIGTERM while the command starts (imports) or reads a large pairs file:
    exit 5, no traceback. SIGTERM used to kill the process (143) before the run's handlers
    were installed, SIGINT to end in a bare KeyboardInterrupt, and a stop while the pairs
    were being read closed the run state under the thread reading them (a segmentation
    fault, 4 runs in 12 for an independent tester). Delays count from the moment the
    command's code runs (its SIGTERM handler is up): the interpreter's own start is Python's."""
    sim.latency = 0.05
    pairs = write_pairs(tmp_path / "pairs.csv", pairs_for(250_000, prefix="big-"))
    cli = Cli(sim, pairs, tmp_path / "out", tmp_path / "logs")
    for i, delay in enumerate([0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 1.3]):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        proc, att, _, err_log = await cli.start()
        try:
            up = functools.partial(lambda p: _handles_sigterm(p.pid) or p.returncode is not None, proc)
            await until(up, limit=30, every=0.001)
            await asyncio.sleep(delay)
            proc.send_signal(sig)
            att.rc = await asyncio.wait_for(proc.wait(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        att.stderr = err_log.read_text()
        assert att.rc == EXIT_INTERRUPTED, (delay, sig, att.rc, att.stderr[-2000:])
        assert "Fatal Python error" not in att.stderr
        assert_no_traceback(att)
    done = await cli.run("--dry-run")  # the state holds together: the plan still reads it
    assert done.rc == EXIT_OK, done.stderr


_CANCEL_WHILE_READING = """
import asyncio, sys
import bulkexport

async def main(pairs, out, url, key, delays):
    for delay in delays:
        task = asyncio.ensure_future(bulkexport.export_async(
            pairs, out, endpoint=url, api_key=key, ending_at="2026-11-27T23:59:59Z", allow_custom_endpoint=True))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    print("cancelled cleanly", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], [float(d) for d in sys.argv[5:]]))
"""


async def test_cancelling_the_library_while_it_reads_the_pairs_waits_for_the_reader(
    sim: Simulator, tmp_path: Path
) -> None:
    """``export_async`` cancelled while a thread reads a large pairs file into the run state:
    the cancel waits for the reader, which stops and rolls back, before the state is closed
    and the lock released. Closing the SQLite connection under the reader crashed the
    process (SIGSEGV, 2 of 5 for an independent tester). In a child process, so that a crash
    fails this test rather than the suite."""
    pairs = write_pairs(tmp_path / "pairs.csv", pairs_for(250_000, prefix="big-"))
    delays = ["0.05", "0.1", "0.2", "0.3", "0.4", "0.5", "0.7", "0.9"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CANCEL_WHILE_READING, str(pairs), str(tmp_path / "out"), sim.url, API_KEY, *delays,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0 and out.decode().strip() == "cancelled cleanly", (proc.returncode, err[-3000:])
    assert b"Fatal Python error" not in err and b"Traceback" not in err, err[-3000:]
    # Nothing of the cancelled reads was committed: the run holds no pair yet.
    assert RunState(run_dir(tmp_path / "out") / "state.sqlite").count() == 0
