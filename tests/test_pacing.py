"""The pacing controller driven through hours of Braze time, in a virtual-time event loop.

Behaviour that scales with Braze's real hour (a pace set near the end of an hour, a wait for
the reset, a learnt window) cannot show in a compressed two-second window. Here the real
:class:`RateController` paces 64 workers against a model of Braze's clock-hour window
(:mod:`bulkexport.simulator`'s ``HourlyBraze``): 250,000 requests per hour, 200 ms per
request, the default 10% reserve, three hours long, nothing of the controller mocked.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import random
from datetime import UTC, datetime

import pytest

from bulkexport.config import ExportConfig
from bulkexport.limiter import RateController
from bulkexport.simulator import HOUR, HourlyBraze, VirtualRun, drive, run_virtual

EPOCH = 1_790_002_800.0  # the top of an hour (UTC), as an epoch second
LIMIT = 250_000
RESERVE = 0.1
LATENCY = 0.2
NETWORK = 0.01  # from a start to Braze counting it
HOURS = 3


def export_hours(braze: HourlyBraze) -> tuple[VirtualRun, RateController]:
    async def scenario() -> tuple[VirtualRun, RateController]:
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=braze.wall) as ctrl:
            return await drive(ctrl, braze, seconds=HOURS * HOUR, latency=LATENCY, network=NETWORK), ctrl

    return run_virtual(scenario())


def check_gaps(starts: list[float]) -> None:
    """No stretch longer than 2 s without a request start, unless it is a wait for the reset
    that ends within 1 s of it."""
    for a, b in itertools.pairwise(starts):
        if b - a <= 2.0:
            continue
        reset = math.ceil((EPOCH + a) / HOUR) * HOUR - EPOCH  # the first reset after the gap began
        assert reset <= b <= reset + 1.0, (
            f"{b - a:.1f}s without a request, from {a:.1f}s to {b:.1f}s (reset at {reset:.0f}s)"
        )


def spent_per_hour(braze: HourlyBraze) -> dict[int, tuple[int, int]]:
    """(ours, others) of every hour of the run."""
    first = math.floor(EPOCH / HOUR)
    return {w - first: (braze.ours[w], braze.others_in(w)) for w in range(first, first + HOURS)}


def test_alone_every_hour_spends_its_budget_minus_the_reserve() -> None:
    braze = HourlyBraze(EPOCH)
    run, ctrl = export_hours(braze)
    budget = LIMIT * (1 - RESERVE)
    for hour, (ours, _) in spent_per_hour(braze).items():
        assert 0.98 * budget <= ours <= budget + ctrl.stats.max_in_flight, (hour, ours)
    assert braze.over_limit == [] and run.answers[429] == 0
    check_gaps(run.starts)


def test_a_competitor_from_minute_20_is_left_its_share() -> None:
    braze = HourlyBraze(EPOCH, competitor_from=1200.0, competitor_share=0.3)
    run, ctrl = export_hours(braze)
    budget = LIMIT * (1 - RESERVE)
    for hour, (ours, others) in spent_per_hour(braze).items():
        # Together we spend what the window allows, never into the reserve by more than
        # what was in flight: the competitor's spend is its own, we make room for it.
        assert others > 0
        assert 0.98 * budget <= ours + others <= budget + ctrl.stats.max_in_flight, (hour, ours, others)
    assert braze.over_limit == [] and run.answers[429] == 0
    check_gaps(run.starts)


def test_429_storms_with_retry_after_cost_about_a_second_each() -> None:
    rng = random.Random(5)
    # A one-second storm of 429s (Remaining: 0, Retry-After: 1) every five minutes or so.
    storms = [(t, t + 1.0) for t in sorted(rng.uniform(0, HOURS * HOUR) for _ in range(36))]
    braze = HourlyBraze(EPOCH, storms=storms)
    run, ctrl = export_hours(braze)
    budget = LIMIT * (1 - RESERVE)
    assert braze.storm_429 > 0 and ctrl.stats.pauses >= 30
    for hour, (ours, _) in spent_per_hour(braze).items():
        assert 0.98 * budget <= ours <= budget + ctrl.stats.max_in_flight, (hour, ours)
    assert braze.over_limit == []
    check_gaps(run.starts)  # a storm costs about a second, never the rest of the hour


@pytest.mark.parametrize(("latency", "rate"), [(0.3, LIMIT / HOUR), (0.85, LIMIT / HOUR), (1.2, 64 / 1.2)])
def test_a_batch_in_flight_for_most_of_a_second_keeps_the_pace(latency: float, rate: float) -> None:
    """64 workers, a batch of 64 every 0.92 s: answers slower than that leave no worker for
    the next batch, so the default pace holds while a batch is answered within the interval
    and above it the workers cap it (64 / latency), exactly as ten at a time did."""
    braze = HourlyBraze(EPOCH)

    async def scenario() -> VirtualRun:
        async with RateController(limit=LIMIT, window=HOUR, reserve=0.0, wall=braze.wall) as ctrl:
            return await drive(ctrl, braze, seconds=300.0, latency=latency, network=NETWORK)

    run = run_virtual(scenario())
    steady = [t for t in run.starts if 60.0 <= t < 300.0]
    assert len(steady) / 240.0 == pytest.approx(rate, rel=0.01)


def test_a_limit_of_a_few_requests_an_hour_is_spent_one_at_a_time() -> None:
    """``--rate-limit 5`` with no ``--burst`` (accepted since the burst follows the pace): the
    bucket never holds more than a twentieth of a window's worth, so one request at a time,
    each hour's 4 (5 minus the 10 % reserve) and not one refused, hour after hour."""
    cfg = ExportConfig.build(endpoint="https://rest.iad-01.braze.com", api_key="0123456789abcdef0123", rate_limit=5)
    braze = HourlyBraze(EPOCH, limit=5)

    async def scenario() -> VirtualRun:
        async with RateController(limit=cfg.rate_limit, window=cfg.window, share=cfg.share, reserve=cfg.reserve,
                                  burst=cfg.burst, wall=braze.wall) as ctrl:  # fmt: skip
            return await drive(ctrl, braze, seconds=HOURS * HOUR, latency=LATENCY, network=NETWORK)

    run = run_virtual(scenario())
    assert cfg.burst is None
    assert braze.over_limit == [] and run.answers[429] == 0
    assert [ours for ours, _ in spent_per_hour(braze).values()] == [4] * HOURS
    assert max(collections.Counter(run.starts).values()) == 1


@pytest.mark.parametrize("latency", [0.03, 0.3])
def test_before_any_answer_starts_go_out_ten_at_a_time(latency: float) -> None:
    """A run started 30 s before the reset of an hour others have all but spent (10 left):
    until an answer tells the budget, a batch is MIN_BURST, not a second's worth, so what
    Braze refuses is what went out before the first answer came back (none at 30 ms, where
    the first ten fit exactly; the next two batches of ten at 300 ms), and the next hour runs
    a second's worth at a time (64 with 64 workers)."""

    class Spent(HourlyBraze):
        def others_in(self, window: int) -> int:
            return super().others_in(window) + (249_990 if window == self.window_of(self.epoch) else 0)

    braze = Spent(EPOCH + HOUR - 30.0)

    async def scenario() -> VirtualRun:
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=braze.wall) as ctrl:
            return await drive(ctrl, braze, seconds=60.0, latency=latency, network=NETWORK)

    run = run_virtual(scenario())
    groups = sorted(collections.Counter(run.starts).items())
    before_answer = [n for t, n in groups if t < latency]
    assert before_answer and all(n == 10 for n in before_answer)
    assert len(braze.over_limit) == (0 if latency < 0.144 else 20)
    assert max(n for t, n in groups if t >= 30.0) == 64


def test_a_limit_lowered_mid_hour_is_learnt_and_kept() -> None:
    drop = 1.5 * HOUR
    braze = HourlyBraze(EPOCH, limit_changes=[(drop, 100_000)])
    run, ctrl = export_hours(braze)
    hours = spent_per_hour(braze)
    in_flight = ctrl.stats.max_in_flight
    assert 0.98 * LIMIT * (1 - RESERVE) <= hours[0][0] <= LIMIT * (1 - RESERVE) + in_flight
    assert 0.98 * 90_000 <= hours[2][0] <= 90_000 + in_flight, hours  # the new limit, minus 10%
    # Only requests already under way when the limit dropped, or sent before the first
    # answer after it arrived, may be refused (at most a batch and what was in flight); then
    # the controller waits for the reset.
    first_after = min(t for t in run.starts if t + NETWORK >= drop)  # reached Braze after the drop
    learnt = first_after + LATENCY  # its answer, the first to tell
    assert braze.over_limit and all(drop - LATENCY <= t <= learnt for t in braze.over_limit)
    assert len(braze.over_limit) <= in_flight
    assert run.answers[429] == len(braze.over_limit) and ctrl.stats.probes == 1  # one pause for them
    check_gaps(run.starts)


@pytest.mark.parametrize("phase", [0.7, 1.9])
@pytest.mark.parametrize("latency_ms", [0, 30, 300])
def test_unknown_window_is_learnt_without_stalling(latency_ms: int, phase: float) -> None:
    """The window is not configured (3600 s assumed) while Braze counts 300 per 2 s, and the
    run starts mid-window (or 0.1 s before a reset, so that the first answers come after it),
    off the hour grid: the first answers already say how much may be spent before the reset,
    and the pace never falls below that, nor stalls while the window is learnt."""
    braze = HourlyBraze(1_790_000_000 + phase, limit=300, window=2.0)

    async def scenario() -> VirtualRun:
        async with RateController(limit=LIMIT, window=HOUR, reserve=0.0, wall=braze.wall) as ctrl:
            return await drive(ctrl, braze, seconds=30.0, latency=max(latency_ms / 1000, 0.002), network=0.001)

    run = run_virtual(scenario())
    steady = [braze.ours[k] for k in sorted(braze.ours)[1:-1]]
    assert run.answers[429] == 0
    assert all(0.95 * 300 <= n <= 300 for n in steady), steady
    assert max(b - a for a, b in itertools.pairwise(run.starts)) < 2.0


# -- the controller alone, on the virtual clock ---------------------------------------------------
def _headers(remaining: int, reset: float, limit: int = LIMIT, **more: str) -> dict[str, str]:
    return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": repr(reset), **more}  # fmt: skip


def test_answers_out_of_order_are_not_read_as_another_client() -> None:
    """90 slow requests of ours, counted by Braze but answered in reverse order: the budget
    is measured in our own start counter, so nothing of it looks like someone else's spend."""

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        wall = lambda: EPOCH + 1.0 + loop.time()  # noqa: E731
        reset = EPOCH + HOUR
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=wall) as ctrl:
            tickets = [await ctrl.acquire() for _ in range(90)]
            await asyncio.sleep(200.0)  # past the observation guard (5% of the hour)
            for t in reversed(tickets):
                ctrl.finish(t, 200, _headers(LIMIT - t.seq - 1, reset))
            return ctrl.target_rate, reset - wall()

    rate, left = run_virtual(scenario())
    assert rate == pytest.approx((LIMIT - 90 - LIMIT * RESERVE) / left, rel=1e-9)


def test_a_429_without_retry_after_waits_for_the_reset_then_probes() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        wall = lambda: EPOCH + 3000.0 + loop.time()  # noqa: E731  (600 s before the reset)
        starts: list[float] = []
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=wall) as ctrl:
            first = await ctrl.acquire()
            ctrl.finish(first, 429, _headers(0, EPOCH + HOUR))
            for _ in range(3):
                t = await ctrl.acquire()
                starts.append(loop.time())
                assert t.probe == (len(starts) == 1)  # the first start after the pause probes
                if t.probe:
                    assert ctrl.target_rate == 0.0  # nobody else starts while it is out
                    await asyncio.sleep(0.2)
                ctrl.finish(t, 200, _headers(LIMIT - 10, EPOCH + 2 * HOUR))
        return starts

    starts = run_virtual(scenario())
    assert 600.0 <= starts[0] <= 600.25  # at the reset, within the reset jitter
    assert starts[1] >= starts[0] + 0.2  # the pool resumes once the probe is answered


def test_429s_on_the_probe_while_the_window_has_budget_double_retry_after_not_wait_for_the_reset() -> None:
    """A server refusing now and then with ``Retry-After`` while its own headers say the
    window has budget left (a burst limit, not the hour's): a probe refused that way waits
    ``Retry-After`` doubled per refusal in a row (4 s, then 8 s), not the 600 s to the reset;
    once a probe is answered, the next refusal starts from ``Retry-After`` again."""

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        wall = lambda: EPOCH + 3000.0 + loop.time()  # noqa: E731  (600 s before the reset)
        left = _headers(LIMIT // 2, EPOCH + HOUR, **{"Retry-After": "2"})
        starts: list[float] = []
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=wall) as ctrl:
            t = await ctrl.acquire()
            for status in (429, 429, 429, 200, 429, 200):
                ctrl.finish(t, status, left if status == 429 else _headers(LIMIT // 2, EPOCH + HOUR))
                t = await ctrl.acquire()
                starts.append(loop.time())
        return starts

    starts = run_virtual(scenario())
    gaps = [b - a for a, b in zip([0.0, *starts], starts, strict=False)]
    assert 2.0 <= gaps[0] <= 2.2  # Retry-After, plus at most a tenth of it
    assert 4.0 <= gaps[1] <= 4.4 and 8.0 <= gaps[2] <= 8.8  # doubled per probe refused in a row
    assert gaps[3] < 0.01  # answered: the pool resumes at once
    assert 2.0 <= gaps[4] <= 2.2  # a new refusal starts from Retry-After again


def test_429s_with_retry_after_0_on_the_probe_back_off_rather_than_flood() -> None:
    """``Retry-After: 0`` on refused probes, budget left: doubling 0 is still 0, so the
    probes would follow one another at once (a tester saw 969 429s in 5 s). They wait at
    least the back-off (a second on Braze's hour), doubled per refusal: 2, 4, 8 s."""

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        wall = lambda: EPOCH + 3000.0 + loop.time()  # noqa: E731
        refused = _headers(LIMIT // 2, EPOCH + HOUR, **{"Retry-After": "0"})
        starts: list[float] = []
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=wall) as ctrl:
            t = await ctrl.acquire()
            for _ in range(4):
                ctrl.finish(t, 429, refused)
                t = await ctrl.acquire()
                starts.append(loop.time())
        return starts

    starts = run_virtual(scenario())
    gaps = [b - a for a, b in zip([0.0, *starts], starts, strict=False)]
    assert gaps[0] < 0.01  # the first 429's own Retry-After: 0
    assert 2.0 <= gaps[1] <= 2.2 and 4.0 <= gaps[2] <= 4.4 and 8.0 <= gaps[3] <= 8.8


def test_a_429_on_the_probe_escalates_to_the_reset() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        wall = lambda: EPOCH + 3000.0 + loop.time()  # noqa: E731
        starts: list[float] = []
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=wall) as ctrl:
            t = await ctrl.acquire()
            ctrl.finish(t, 429, _headers(0, EPOCH + HOUR, **{"Retry-After": "2"}))
            t = await ctrl.acquire()  # the probe, after Retry-After
            starts.append(loop.time())
            ctrl.finish(t, 429, _headers(0, EPOCH + HOUR, **{"Retry-After": "2"}))
            t = await ctrl.acquire()  # the next probe waits for the reset, not 2 s more
            starts.append(loop.time())
            ctrl.finish(t, 200, _headers(LIMIT - 1, EPOCH + 2 * HOUR))
            return starts

    starts = run_virtual(scenario())
    assert 2.0 <= starts[0] <= 2.2  # Retry-After plus at most a tenth of it
    assert 600.0 <= starts[1] <= 600.25


def test_a_429_of_a_request_sent_before_the_pause_is_the_same_storm() -> None:
    async def scenario() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        wall = lambda: EPOCH + loop.time()  # noqa: E731
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=wall) as ctrl:
            early = [await ctrl.acquire() for _ in range(5)]
            ra = {"Retry-After": "1"}
            for t in early:  # five answers of one storm: one pause of about a second
                ctrl.finish(t, 429, _headers(0, EPOCH + HOUR, **ra))
            t = await ctrl.acquire()
            return ctrl.stats.pauses, loop.time()

    pauses, resumed = run_virtual(scenario())
    assert pauses == 1 and 1.0 <= resumed <= 1.1


def test_the_window_is_learnt_from_two_resets_and_a_lower_limit_from_the_header() -> None:
    async def scenario() -> tuple[float, float, int | None]:
        loop = asyncio.get_running_loop()
        wall = lambda: 1_790_000_000.5 + loop.time()  # noqa: E731  (mid-window, off the hour grid)
        async with RateController(limit=LIMIT, window=HOUR, wall=wall) as ctrl:
            t = await ctrl.acquire()
            ctrl.finish(t, 200, _headers(95, 1_790_000_010.0, limit=100))
            during = ctrl.base_rate  # window unknown: at least the 9.5 s to the reset seen
            await asyncio.sleep(10.0)
            t = await ctrl.acquire()
            ctrl.finish(t, 200, _headers(99, 1_790_000_020.0, limit=100))
            return during, ctrl.base_rate, ctrl.stats.limit

    during, learnt, limit = run_virtual(scenario())
    assert during == pytest.approx(100 / 9.5)
    assert learnt == pytest.approx(100 / 10.0)
    assert limit == 100


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1", 1.0), (" 2.5 ", 2.5), ("0", 0.0), ("-1", None), ("soon", None), ("", None), (None, None),
     ("nan", None), ("inf", None), ("Sat, 28 Nov 2026 12:00:10 GMT", 10.0)],
)  # fmt: skip
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    from bulkexport.limiter import retry_after_seconds

    wall = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()
    assert retry_after_seconds(value, wall) == seconds


def test_a_window_nobody_saw_is_not_taken_for_the_window_length() -> None:
    """Answers on either side of an idle spell may skip a whole window: a step of two windows
    must not halve the pace; the next two consecutive resets teach the real length."""

    async def scenario() -> list[float | None]:
        loop = asyncio.get_running_loop()
        wall = lambda: 1_790_001_000.5 + loop.time()  # noqa: E731
        learnt: list[float | None] = []
        async with RateController(limit=LIMIT, window=HOUR, wall=wall) as ctrl:
            for at, reset in ((0.0, 1_790_001_010.0), (20.5, 1_790_001_030.0), (30.5, 1_790_001_040.0)):
                await asyncio.sleep(at - loop.time())
                t = await ctrl.acquire()
                ctrl.finish(t, 200, _headers(99, reset, limit=100))
                learnt.append(ctrl.stats.window)
        return learnt

    assert run_virtual(scenario()) == [None, None, 10.0]


def test_a_limit_lowered_with_budget_left_is_not_read_as_another_client() -> None:
    """Braze lowers the limit to 100,000 while 56,000 of the hour are spent: Remaining falls
    by 150,000 at once, and nobody spent them. The run goes on with the hour's new budget."""
    braze = HourlyBraze(EPOCH, limit_changes=[(900.0, 100_000)])

    async def scenario() -> tuple[VirtualRun, RateController]:
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=braze.wall) as ctrl:
            return await drive(ctrl, braze, seconds=HOUR, latency=LATENCY), ctrl

    run, ctrl = run_virtual(scenario())
    spent = braze.ours[math.floor(EPOCH / HOUR)]
    assert 0.98 * 90_000 <= spent <= 90_000 + ctrl.stats.max_in_flight
    assert braze.over_limit == [] and ctrl.stats.rate_limited == 0
    # No wait but the hour's last: its budget spent a batch (a second of the pace) before the
    # reset, the wait ending within a quarter second of it.
    assert ctrl.stats.pauses <= 1 and ctrl.stats.paused_seconds <= 1.0 + 0.25
    check_gaps(run.starts)


def _bucket_excess(groups: list[tuple[float, int]], rate: float) -> float:
    """The most starts any interval [t_i, t_j] held beyond ``rate x (t_j - t_i)``: what a
    token bucket of that rate lets through at once. One pass: the excess ending at group j is
    cum_j - rate t_j plus the best (rate t_i - cum_(i-1)) seen so far."""
    best, cum, excess = -math.inf, 0, 0.0
    for t, n in groups:
        best = max(best, rate * t - cum)
        cum += n
        excess = max(excess, cum - rate * t + best)
    return excess


@pytest.mark.parametrize(("burst", "batch"), [(None, 69), (10, 10)])
def test_at_the_default_pace_starts_go_out_a_batch_at_a_time_and_a_probe_alone(burst: int | None, batch: int) -> None:
    """Braze's hour at the default pace (69.4/s, no reserve) for ten minutes, with 429 storms:
    starts are granted a second's worth at once (69), or ``--burst`` at once when given, not
    one every 14 ms, so the process wakes far less often for the same pace
    (``benchmarks/README.md``, paced). The bucket still holds: no interval has more than a
    batch beyond the pace; the pace is the pace; after each storm's pause the probe goes out
    alone and its answer comes first."""
    storms = [(200.0, 201.0), (400.0, 401.0)]
    braze = HourlyBraze(EPOCH, storms=storms)
    latency = 0.05

    async def scenario() -> tuple[VirtualRun, RateController]:
        async with RateController(limit=LIMIT, window=HOUR, reserve=0.0, burst=burst, wall=braze.wall) as ctrl:
            # More workers than a batch: the batch, not the pool, sets the size of a group.
            return await drive(ctrl, braze, seconds=600.0, concurrency=100, latency=latency), ctrl

    run, ctrl = run_virtual(scenario())
    rate = LIMIT / HOUR
    groups = sorted(collections.Counter(run.starts).items())  # starts granted at one instant
    sizes = collections.Counter(n for _, n in groups)
    assert max(sizes) == batch
    assert sizes[batch] * batch >= 0.97 * len(run.starts), sizes
    assert _bucket_excess(groups, rate) <= batch + 1e-6
    paused = ctrl.stats.paused_seconds
    assert len(run.starts) == pytest.approx(rate * (600.0 - paused), rel=0.01)
    assert ctrl.stats.pauses == 2 and ctrl.stats.probes == 2 and braze.storm_429 > 0
    for _, end in storms:
        after = [(t, n) for t, n in groups if t >= end]
        (probe_at, probe_n), (next_at, _) = after[0], after[1]
        assert probe_n == 1
        assert next_at >= probe_at + latency  # nobody else started before its answer


@pytest.mark.parametrize(
    ("status", "reset"),
    [(200, EPOCH + 10 * 365 * 86400.0), (200, (EPOCH + HOUR) * 1000), (429, EPOCH + 10 * 365 * 86400.0)],
    ids=["200, reset in 10 years", "200, reset in milliseconds", "429, reset in 10 years"],
)
def test_a_reset_further_ahead_than_any_window_is_ignored_not_waited_for(status: int, reset: float) -> None:
    """``X-RateLimit-Remaining: 0`` with a reset years ahead (or sent in milliseconds): taken
    at its word, the pool waited an hour (the longest pause) and then another, for ever, since
    nothing went out to bring a better header. It is ignored, as if absent: the next starts go
    out at the pace (after a 429, its Retry-After and one probe), and later plausible headers
    pace the run as usual."""

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        wall = lambda: EPOCH + 3000.0 + loop.time()  # noqa: E731  (600 s before the reset)
        starts: list[float] = []
        async with RateController(limit=LIMIT, window=HOUR, reserve=RESERVE, wall=wall) as ctrl:
            t = await ctrl.acquire()
            ctrl.finish(t, status, _headers(0, reset, **({"Retry-After": "1"} if status == 429 else {})))
            for _ in range(20):
                t = await ctrl.acquire()
                starts.append(loop.time())
                ctrl.finish(t, 200, _headers(0, reset))
        return starts

    # An hour of Braze time at most (the old controller never got there: pauses of an hour each).
    starts = run_virtual(asyncio.wait_for(scenario(), timeout=HOUR))
    assert starts[-1] < 2.5, starts  # twenty starts within a couple of seconds, not hours
