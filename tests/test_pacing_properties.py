"""Pacing properties over random workspaces, in virtual time.

The hand-written pacing tests each take one kind of trouble at a time, at the sizes their
author had in mind. Here hypothesis draws the workspace: a window from 2 s to Braze's hour,
its limit, whether the controller is told it or starts from the default 250,000/h and must
learn it, a reserve, latency from 0 to 300 ms, 8 or 64 workers, the phase of the start within
a window, another client spending from some moment, a limit changed mid-run, storms of 429s.
Whatever it draws, three things must hold:

* **No stall.** The virtual loop raises when every task waits with nothing scheduled, and no
  stretch without a start lasts longer than a batch, a storm's pause and a probe, unless it
  ends at a reset (a window whose budget is spent).
* **No overspend.** Braze refuses a request as over the limit only when nothing could have
  told the controller in time: before the first answer, or within a latency of the limit
  falling or of the other client starting. Then at most what was in flight.
* **The budget is spent.** Every window in the steady part (after the first two, away from a
  limit change, a storm or the other client's start) holds at least 90 % of what is allowed
  (the limit minus the reserve, together with the other client; or what the workers can send
  at that latency), and never more than that plus what was in flight (twice that with the
  other client, whose spend is read through our own requests overtaking one another).

Checked against two broken controllers: one that ignores the reserve, one whose waiting
workers never hear of a pace change (the virtual loop reports the stall).
"""

from __future__ import annotations

import collections
import itertools
import math
import os
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bulkexport.config import DEFAULT_RATE_LIMIT
from bulkexport.limiter import MIN_BURST, RateController
from bulkexport.simulator import HOUR, HourlyBraze, VirtualRun, drive, run_virtual

EPOCH = 1_790_002_800.0  # the top of an hour (UTC)
WINDOWS = 7  # windows simulated per example


@dataclass(frozen=True)
class Workspace:
    window: float
    limit: int  # per window
    told: bool  # the controller is given the limit and window (else: the defaults, learnt)
    reserve: float
    latency: float
    concurrency: int
    phase: float  # of a window, where the run starts
    competitor: tuple[float, float] | None  # (start as a share of the run, share of the limit)
    change: tuple[float, float] | None  # (when as a share of the run, new limit / old)
    storms: tuple[float, ...]  # starts of one-second storms, as shares of the run

    @property
    def seconds(self) -> float:
        return WINDOWS * self.window


@st.composite
def workspaces(draw: st.DrawFn) -> Workspace:
    window = draw(st.sampled_from([2.0, 10.0, 60.0, HOUR]))
    # Few enough requests in all to keep an example around a second of CPU: from 60 an hour
    # (a start a minute) to 200 a second.
    limit = draw(st.integers(min_value=60, max_value=400))
    return Workspace(
        window=window,
        limit=limit,
        told=draw(st.booleans()),
        reserve=draw(st.sampled_from([0.0, 0.1, 0.3])),
        latency=draw(st.sampled_from([0.002, 0.03, 0.3])),
        concurrency=draw(st.sampled_from([8, 64])),
        phase=draw(st.floats(min_value=0.0, max_value=0.99)),
        competitor=draw(st.none() | st.tuples(st.floats(0.1, 0.6), st.floats(0.05, 0.5))),
        change=draw(st.none() | st.tuples(st.floats(0.3, 0.6), st.sampled_from([0.4, 0.7, 1.5]))),
        storms=tuple(draw(st.lists(st.floats(0.05, 0.95), max_size=3))),
    )


def simulate(ws: Workspace) -> tuple[VirtualRun, HourlyBraze, RateController]:
    run_s = ws.seconds
    braze = HourlyBraze(
        EPOCH + ws.phase * ws.window,
        limit=ws.limit,
        window=ws.window,
        competitor_from=None if ws.competitor is None else ws.competitor[0] * run_s,
        competitor_share=0.0 if ws.competitor is None else ws.competitor[1],
        storms=[(s * run_s, s * run_s + 1.0) for s in ws.storms],
        limit_changes=[] if ws.change is None else [(ws.change[0] * run_s, max(1, int(ws.limit * ws.change[1])))],
    )
    limit, window = (ws.limit, ws.window) if ws.told else (DEFAULT_RATE_LIMIT, HOUR)

    async def scenario() -> tuple[VirtualRun, RateController]:
        async with RateController(limit=limit, window=window, reserve=ws.reserve, wall=braze.wall) as ctrl:
            run = await drive(ctrl, braze, seconds=run_s, concurrency=ws.concurrency, latency=ws.latency,
                              network=min(0.01, ws.latency / 2))  # fmt: skip
            return run, ctrl

    run, ctrl = run_virtual(scenario())
    return run, braze, ctrl


def loop_time_of_window(braze: HourlyBraze, index: int) -> tuple[float, float]:
    return index * braze.window - braze.epoch, (index + 1) * braze.window - braze.epoch


# The same 40 workspaces every run (about 15 s), so that CI is reproducible; PACING_EXAMPLES=400
# PACING_SEED=n explores further (1,600 other workspaces passed when this test was written).
_SEED = os.environ.get("PACING_SEED")


# In CI a failure is reported as drawn, not shrunk (shrinking one took four minutes).
_PHASES = [Phase.explicit, Phase.generate] if _SEED is None else list(Phase)


@settings(max_examples=int(os.environ.get("PACING_EXAMPLES", "40")), deadline=None, derandomize=_SEED is None,
          database=None, phases=_PHASES, suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@seed(int(_SEED or 0))
@given(workspaces())
def test_whatever_the_workspace_no_stall_no_overspend_and_the_budget_spent(ws: Workspace) -> None:
    run, braze, ctrl = simulate(ws)
    assert run.stopped is None, run.stopped
    in_flight = ctrl.stats.max_in_flight
    run_s = ws.seconds
    change_at = None if ws.change is None else ws.change[0] * run_s
    rival_at = None if ws.competitor is None else ws.competitor[0] * run_s
    storms = [(s * run_s, s * run_s + 1.0) for s in ws.storms]

    # -- no overspend: refusals only where nothing could have told the controller in time
    # What went out before an answer could tell: the first starts of the run, those in flight
    # when the limit fell and the batch that reached Braze first after it (its answers are
    # the news), those around the other client's start.
    slack = ws.latency + 1.0  # an answer's way back, and a batch granted before it
    told_at = None
    if change_at is not None:
        net = min(0.01, ws.latency / 2)
        # A storm's 429 tells no budget: the news is the first answer outside one.
        after = [t for t in run.starts if t + net >= change_at and not any(a <= t + net < b for a, b in storms)]
        told_at = (after[0] if after else change_at) + ws.latency

    def excused(t: float) -> bool:
        if t < slack:
            return True
        if told_at is not None and change_at is not None and change_at - ws.latency <= t <= told_at + 1e-9:
            return True
        return rival_at is not None and rival_at - ws.latency <= t <= rival_at + slack

    unexcused = [t for t in braze.over_limit if not excused(t)]
    if ws.competitor is not None and ws.reserve < 0.1:
        # With no reserve to absorb it, the other client's spend is known only as fast as
        # answers tell it, give or take what we had in flight: a window may end that much
        # over, never more.
        per_window = collections.Counter(braze.window_of(braze.epoch + t) for t in unexcused)
        assert max(per_window.values(), default=0) <= in_flight, per_window
    else:
        assert unexcused == [], f"{len(unexcused)} refused as over the limit, first at {unexcused[0]:.3f}s"
        assert len(braze.over_limit) <= 3 * max(in_flight, 1)

    # -- no stall
    def disturbed(a: float, b: float) -> bool:
        return any(s - ws.latency <= b and a <= e + 2 * max(1.0, ws.latency) for s, e in storms)

    # A slow pace spaces starts by itself: a batch (at most MIN_BURST before the window is
    # known, fewer after) spread over its share of what the window allows.
    lowest = ws.limit * min(1.0, 1.0 if ws.change is None else ws.change[1])
    rival = 0.0 if ws.competitor is None else ws.competitor[1]
    spacing = ws.window / max(1.0, lowest * (1 - ws.reserve) * (1 - rival))
    for a, b in itertools.pairwise(run.starts):
        if b - a <= 2.0 + 2 * ws.latency + 2 * MIN_BURST * spacing or disturbed(a, b):
            continue
        reset = math.ceil((braze.epoch + a) / ws.window) * ws.window - braze.epoch  # first reset after a
        assert reset - 1e-6 <= b <= reset + 1.0 + ws.latency, (
            f"{b - a:.2f}s without a request, {a:.2f}s to {b:.2f}s; the next reset at {reset:.2f}s"
        )

    # -- the budget spent, window by window, in the steady part
    first = braze.window_of(braze.epoch)
    for index in range(first + 2, braze.window_of(braze.epoch + run_s)):
        start, end = loop_time_of_window(braze, index)
        if end > run_s or any(at is not None and start - ws.window <= at < end for at in (change_at, rival_at)):
            continue
        if any(start - 2.0 <= s < end for s, _ in storms):
            continue
        limit = braze.limit if change_at is not None and start >= change_at else ws.limit
        allowed = limit * (1 - ws.reserve)
        # The model prices the other client's spend at its current limit: set the window's.
        final, braze.limit = braze.limit, limit
        others = braze.others_in(index)
        braze.limit = final
        spent = braze.ours[index] + others
        # ... or what the workers can send: each busy for a latency per request.
        most = others + ws.concurrency * ws.window / ws.latency
        # Over by at most what was in flight; with another client, by as much again: its spend
        # is read from Remaining, which our own requests overtaking one another blur by up to
        # what was in flight, and that is left out of its estimate.
        over = in_flight * (1 if ws.competitor is None else 2)
        assert 0.9 * min(allowed, most) <= spent <= allowed + over, (index - first, spent, allowed, most)
