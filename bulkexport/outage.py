"""Telling an outage from a bad pair, and how long to ride one out.

A pair fails for good only for a reason about that pair: a 4xx, or its own attempts used up
while other requests were answered. When requests for several pairs fail (timeouts, refused
connections, 5xx) and nothing is answered well for a spell, that is Braze (or the way to it)
being down: the breaker opens, and the rate controller pauses everyone and lets one probe out
at a time, after pauses that grow from one second to thirty, until a probe is answered. An
outage longer than ``max_outage`` stops the run (:class:`BrazeUnavailable`): resumable, the
pairs staying pending.

The two look alike once the only pairs left are ones Braze always fails: nothing else is
asked, so nothing is answered well. The client then asks a pair answered before (its canary:
:meth:`~bulkexport.client.BrazeClient.ask_canary`, and as the breaker's probe), and the
answer comes here like any other: a good one is news that Braze is up, so those pairs'
failures are their own.

Pure bookkeeping on the event loop's clock; the pauses themselves are the controller's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable

from .errors import BrazeUnavailable

__all__ = ["Outage"]

log = logging.getLogger("bulkexport")

_PAIRS = 3  # distinct pairs failing with nothing answered well: an outage, not a pair
_SPELL = 2.0  # seconds without a good answer before the breaker opens
_BACKOFF = (1.0, 30.0)  # first and largest pause between probes while Braze is down
_REMEMBERED = 64  # failing pairs remembered (enough to tell one from several)


class Outage:
    """The breaker: fed every answer's health, it says when to pause and when to give up."""

    __slots__ = (
        "_down_since", "_healthy_at", "_heard", "_max_outage", "_pause", "_sick", "_what", "opened", "verdict",
    )  # fmt: skip

    def __init__(self, max_outage: float) -> None:
        self._max_outage = max_outage  # an outage this long stops the run
        self._healthy_at = -math.inf  # loop time of the latest good answer (2xx, 4xx)
        self._sick: set[Hashable] = set()  # pairs that failed since then
        self._heard = False  # some request got an HTTP answer (even a 5xx)
        self._down_since: float | None = None  # loop time of the first such failure
        self._pause = 0.0  # the breaker's current pause between probes (0: closed)
        self._what = ""  # what the failures were, for the message
        self.opened = 0  # times the breaker opened
        self.verdict: BrazeUnavailable | None = None  # set once the outage outlasted its budget

    @property
    def open(self) -> bool:
        return bool(self._pause)

    def blames(self, key: Hashable, since: float) -> bool:
        """Whether failures of ``key`` since ``since`` are its own: other requests were
        answered well meanwhile, or no other pair is failing while something has answered
        over HTTP at some point. With no HTTP answer ever (connections refused, timeouts),
        one or two pairs failing (too few to open the breaker) are Braze, or the way to it,
        being down: they stay pending, and the outage budget decides. A lone pair answered
        with 5xx from the start is failed: nothing tells that from an outage, and keeping it
        pending would have every rerun wait out the budget for it."""
        if self.answered_since(since):
            return True
        return (self._heard or self._healthy_at > -math.inf) and not (self._sick - {key})

    def answered_since(self, since: float) -> bool:
        return self._healthy_at > since

    def healthy(self, now: float) -> bool:
        """A good answer; True when it ends an outage (the breaker's pause is over)."""
        self._healthy_at = now
        self._sick.clear()
        if self._down_since is None:
            return False
        if self._pause:
            log.warning("Braze answers again after %.0fs; resuming at full pace", now - self._down_since)
        self._down_since, self._pause = None, 0.0
        return True

    def sick(self, key: Hashable, sent: float, status: int | None, probe: bool, now: float) -> float | None:
        """A request sent at ``sent`` got no usable answer (``status`` None: none at all);
        return how long everyone should pause before the next probe, if they should."""
        if sent < self._healthy_at and not probe:
            return None  # sent before the latest good answer: old news
        if self._down_since is None:
            self._down_since = now
        self._heard = self._heard or status is not None
        if len(self._sick) < _REMEMBERED:
            self._sick.add(key)
        self._what = "no answer" if status is None else f"HTTP {status}"
        if probe and self._pause:  # the breaker's probe failed: wait longer
            self._pause = min(2 * self._pause, _BACKOFF[1])
            return self._pause
        if not self._pause and len(self._sick) >= _PAIRS and now - self._down_since >= _SPELL:
            self.opened += 1
            self._pause = _BACKOFF[0]
            log.warning("Braze is not answering (%s from %d pairs, nothing answered for %.0fs): pausing, then one "
                        "probe at a time; the run stops after %gs of this", self._what, len(self._sick),
                        now - self._down_since, self._max_outage)  # fmt: skip
            return self._pause
        return None

    def left(self, now: float) -> float | None:
        """Seconds until the outage budget runs out (None: no outage); raises
        :class:`BrazeUnavailable` (and keeps it as :attr:`verdict`) once it has."""
        if self._down_since is None:
            return None
        left = self._down_since + self._max_outage - now
        if left <= 0:
            if self.verdict is None:
                self.verdict = BrazeUnavailable(now - self._down_since, f"last failure: {self._what}")
            raise self.verdict
        return left
