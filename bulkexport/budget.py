"""What Braze's ``X-RateLimit-*`` headers say we may spend, and at what pace.

``X-RateLimit-Remaining`` counts every request that reached Braze before the one it answers.
So ``Remaining + (our starts up to that request)`` is the window's budget expressed in our own
start counter (the *anchor*): exact whatever the latency, the number in flight, or the order in
which answers come back. What we may still spend is the anchor minus our starts since, minus
the reserve, minus what other clients will spend until the reset at their observed pace; the
pace spreads it over the time to the reset.

The limit is learnt from ``X-RateLimit-Limit``, the window from the first two consecutive
resets. Until then a reset on the configured window's clock grid (Braze: the top of the
hour) is taken to confirm it; one off the grid means the window is something else, at least
the longest time-to-reset seen, so the pace never falls below what the answers allow.

Pure bookkeeping: no asyncio, no waiting. Times are the caller's wall clock (epoch seconds).
"""

from __future__ import annotations

import email.utils
import logging
import math
from collections.abc import Mapping

__all__ = ["WindowBudget", "header", "number", "pace", "retry_after_seconds"]

log = logging.getLogger("bulkexport")

_MIN_TIME_LEFT = 0.05  # seconds; avoids dividing by ~0 just before a reset
_PROJECT_AFTER = 0.05  # share of the window observed before others' pace is projected
_TRAIL = 0.1  # share of the window over which others' recent pace is measured
_MARKS = 100  # samples of others' spend kept per window (one per 1% of it)
_HOUR = 3600.0  # Braze's rate-limit window
_RESET_SLACK = 900.0  # seconds a reset may lie beyond a window ahead (a clock behind) before it is ignored


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header, whatever its case (HTTP/2 proxies lower-case names; plain dicts in tests)."""
    value = headers.get(name)
    return headers.get(name.lower()) if value is None else value


def number(text: str | None) -> float | None:
    """A finite number from a header value, else None."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def retry_after_seconds(value: str | None, wall: float) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or HTTP date), if usable."""
    if not value:
        return None
    seconds = number(value)
    if seconds is None:
        try:
            seconds = email.utils.parsedate_to_datetime(value.strip()).timestamp() - wall
        except (TypeError, ValueError):
            return None
    return seconds if seconds >= 0 else None


def pace(share: float, limit: float, window: float, max_rate: float | None) -> float:
    """The one pacing formula: ``share x limit / window`` requests a second, capped by
    ``max_rate`` (the configured pace before any answer, and the ceiling after)."""
    rate = share * limit / window
    return rate if max_rate is None else min(rate, max_rate)


class WindowBudget:
    """The current window's budget and the ceiling pace, learnt from answers."""

    __slots__ = (
        "_anchor", "_first_anchor", "_first_wall", "_marks", "_max_rate", "_max_time_left", "_reserve", "_reset",
        "_seen_reset", "_seen_wall", "_sent_time_left", "_share", "_warned", "_window", "learnt_window", "limit",
    )  # fmt: skip

    def __init__(self, *, limit: int, window: float, share: float, reserve: float, max_rate: float | None) -> None:
        self.limit = limit  # requests per window, as configured or learnt
        self._window = window  # window length assumed until headers teach otherwise
        self.learnt_window: float | None = None  # from two consecutive resets
        self._share = share  # fraction of the limit to pace at, at most
        self._reserve = reserve  # fraction of each window's budget never spent
        self._max_rate = max_rate  # optional hard cap, requests per second
        self._max_time_left = 0.0  # longest time-to-reset seen: the window is at least this
        self._sent_time_left = 0.0  # the same, counted from when requests went out (a guess)
        self._seen_reset: float | None = None  # latest distinct reset seen, to learn the window
        self._seen_wall = 0.0  # when an answer last carried it
        # The current window's budget (None: not known)
        self._reset: float | None = None  # epoch seconds of its reset
        self._anchor = 0.0  # min over answers of Remaining + our starts up to that request
        self._first_anchor = 0.0  # the anchor at the window's first answer
        self._first_wall = 0.0  # when that answer came
        self._marks: list[tuple[float, float]] = []  # (wall, others' spend so far) samples
        self._warned = False  # an implausible reset was logged

    @property
    def reset(self) -> float | None:
        """Epoch seconds of the known window's reset, if any."""
        return self._reset

    def ceiling(self) -> float:
        """The pace with budget to spare, for the limit and window as learnt so far."""
        return pace(self._share, self.limit, self.window_estimate(), self._max_rate)

    def observe(self, seq: int, sent: float, wall: float, status: int | None, headers: Mapping[str, str]) -> bool:
        """Learn from the answer to our start number ``seq``, sent at ``sent`` and answered at
        ``wall``; True when the limit, the window or a new window's budget became known (the
        pace may rise)."""
        news = False
        limit = number(header(headers, "X-RateLimit-Limit"))
        reset = number(header(headers, "X-RateLimit-Reset"))
        if limit is not None and limit >= 1 and int(limit) != self.limit:
            log.info("Braze reports a limit of %d requests per window (assumed %d); pacing to it", int(limit),
                     self.limit)  # fmt: skip
            self.limit = int(limit)
            self._reset = None  # Remaining jumps with the limit, nobody spent it: measure afresh
            news = True
        reset = self._plausible(reset, wall)
        if reset is None:
            return news
        # An answer that comes after its window's reset still tells how long that window had
        # left when the request went out.
        self._sent_time_left = max(self._sent_time_left, reset - sent)
        news = self._learn_window(reset, wall) or news
        # A 429's Remaining says nothing reliable about the budget (Braze may send 0 with a
        # Retry-After of a second): the 429 path decides what to do.
        remaining = None if status == 429 else number(header(headers, "X-RateLimit-Remaining"))
        if remaining is None or reset <= wall:
            return news
        anchor = remaining + seq + 1
        if self._reset is None or reset > self._reset + 0.5:  # the first answer of a window
            self._reset, self._anchor, self._first_anchor, self._first_wall = reset, anchor, anchor, wall
            self._marks = [(wall, 0.0)]
            news = True
        elif reset >= self._reset - 0.5 and anchor < self._anchor:
            self._anchor = anchor
            if wall - self._marks[-1][0] >= self.window_estimate() / _MARKS:
                self._marks.append((wall, self._first_anchor - anchor))
        return news

    def _plausible(self, reset: float | None, wall: float) -> float | None:
        """``reset`` unless it lies further ahead than any window could end (one sent in
        milliseconds, a clock years off): taken at its word, the budget would stay spent
        until then, a stall of an hour at a time for as long as the run lasts. Such a reset
        is ignored, as if absent: Braze's 429s still pace the run. Braze's windows are an hour;
        a longer one can be configured."""
        if reset is None or reset - wall <= max(self._window, _HOUR) + _RESET_SLACK:
            return reset
        if not self._warned:
            self._warned = True
            log.warning("ignoring X-RateLimit-Reset %r: %.0fs ahead, more than a window (%gs)", reset,
                        reset - wall, max(self._window, _HOUR))  # fmt: skip
        return None

    def _learn_window(self, reset: float, wall: float) -> bool:
        """True when a reset not seen before arrives (a new window, or the first)."""
        self._max_time_left = max(self._max_time_left, reset - wall)
        seen = self._seen_reset
        if seen is not None and reset <= seen + 0.5:
            if reset >= seen - 0.5:
                self._seen_wall = wall
            return False
        if seen is not None:
            step = reset - seen
            # A window nobody saw in between (a pause, an idle spell) would make the step a
            # multiple of the window. It cannot have happened if the step is under twice a
            # time-to-reset already seen (the window is at least that), nor if the answers on
            # either side of the reset came less than half the step apart (skipping a window
            # puts a whole window between them). Even so, keep the least step ever seen.
            consecutive = step < 2 * self._max_time_left or wall - self._seen_wall < step / 2
            if consecutive and (self.learnt_window is None or step < self.learnt_window * 0.99):
                self.learnt_window = step
                log.info("rate-limit window learnt from Braze's resets: %gs", step)
        self._seen_reset, self._seen_wall = reset, wall
        return True

    def window_estimate(self) -> float:
        if self.learnt_window is not None:
            return self.learnt_window
        seen, window = self._seen_reset, self._window
        time_left = self._max_time_left or self._sent_time_left
        if seen is not None and time_left > 0:
            off_grid = abs(seen / window - round(seen / window)) * window > 1.0
            if off_grid or time_left > window:
                return time_left
        return window

    def _others_rate(self, wall: float, noise: float) -> float:
        """Requests per second other clients spend from this window's budget.

        The anchor only falls when somebody else spends (our own starts are counted apart), so
        its fall is their spend, give or take our requests that overtook one another on the
        way: a request can only be overtaken by requests started while it was in flight, so up
        to ``noise`` (the most ever in flight) of the fall is ours; connection set-up at the
        start of a run scrambles a few dozen. Projected only after a short observation, from
        the larger of the window's average and the recent pace, so a client that starts
        mid-window is seen quickly.
        """
        window = self.window_estimate()
        elapsed = wall - self._first_wall
        spent = self._first_anchor - self._anchor
        if spent <= noise or elapsed < _PROJECT_AFTER * window:
            return 0.0
        rate = (spent - noise) / elapsed
        horizon = wall - _TRAIL * window
        for at, before in self._marks:
            if at >= horizon:
                span = wall - at
                if span >= _PROJECT_AFTER * window:
                    rate = max(rate, (spent - before - noise) / span)
                break
        return max(rate, 0.0)

    def after_429(
        self, headers: Mapping[str, str], wall: float, probe: bool, escalation: int, max_pause: float
    ) -> tuple[float, str, bool]:
        """How long everyone waits after a 429 (new, or on the probe): (seconds, why, whether
        the wait ends at a reset). ``Retry-After`` is the server's instruction for that answer;
        a 429 without it, or a second one on the probe, waits for ``X-RateLimit-Reset``:
        the window's budget is spent. Unless that 429 itself says the window still has some
        (``X-RateLimit-Remaining`` above 0): then it is not the hour's limit, and waiting
        for the reset would cost up to an hour for nothing; the probe's ``Retry-After`` is
        doubled for each probe refused in a row instead (up to the reset)."""
        retry_after = retry_after_seconds(header(headers, "Retry-After"), wall)
        reset = self._plausible(number(header(headers, "X-RateLimit-Reset")), wall) or self._reset
        remaining = number(header(headers, "X-RateLimit-Remaining"))
        backoff = min(1.0, self.window_estimate() / 10)  # the least a refused probe waits
        # A refused probe while the window has budget left: Retry-After doubled per refusal,
        # from at least the back-off (a Retry-After of 0 doubled is still 0: a flood of probes).
        doubled = None if retry_after is None else max(retry_after, backoff) * 2**escalation
        budget_left = remaining is not None and remaining > 0
        to_reset = False
        if retry_after is not None and not probe:
            wait, why = retry_after, "Retry-After"
        elif doubled is not None and budget_left and (reset is None or wall + doubled < reset):
            wait, why = doubled, "Retry-After, doubled: the window has budget left"
        elif reset is not None and reset > wall:
            wait, why, to_reset = reset - wall, "the rate-limit reset", True
        else:  # nothing to go by: back off, doubling while probes keep failing
            wait, why = backoff * 2**escalation, "a back-off"
        if wait > max_pause:
            wait, why = max_pause, f"{why}, capped"
        return wait, why, to_reset

    def allowed(self, wall: float, starts: int, noise: float) -> float | None:
        """Requests per second the window's budget allows until its reset, ``starts`` being
        our starts so far: ``None`` when no budget is known (the pace is the ceiling), ``0``
        when it is used up."""
        if self._reset is None:
            return None
        time_left = self._reset - wall
        if time_left <= 0:
            return None  # that window is over; the next one's budget is fresh
        others = self._others_rate(wall, noise) * time_left
        usable = self._anchor - starts - self._reserve * self.limit - others
        if usable < 1:
            return 0.0
        return usable / max(time_left, _MIN_TIME_LEFT)
