"""The rate controller's two small mechanisms, kept apart so its dispatcher reads as policy.

:class:`Pauses`: after a 429, a used-up budget or an outage, *everyone* is held until a
moment, then exactly one request (the probe) goes out, and the others follow only once it is
answered well. Holding the whole pool rather than the worker that saw the 429 is what keeps
a burst of 429s from costing a burst of requests; one probe rather than everyone at the
reset is what keeps a wrong reset header from costing a second burst.

:class:`Alarm`: the dispatcher's only way to wait. A wait ends at its timeout, when a given
future completes, or when news arrives (:meth:`Alarm.poke`: a learnt window, a probe's
answer, a new waiter), so no decision is ever made on a state older than the latest news.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Alarm", "Pauses", "Ticket"]


class Ticket(NamedTuple):
    """One granted start; hand it back to :meth:`RateController.finish`."""

    seq: int  # our starts before this one
    at: float  # loop time of the grant
    probe: bool  # the single request let through after a pause
    key: Hashable  # what the request is for (a pair): outages are told from bad pairs by it


@dataclass(slots=True)
class Pauses:
    """Who may start: nobody before ``until``, then the probe alone, then everyone."""

    until: float = 0.0  # loop time before which nobody starts
    started: float = -math.inf  # loop time the latest pause began
    probe_next: bool = False  # the next start is a probe
    probe: Ticket | None = None  # the probe in flight: nobody else starts
    escalation: int = 0  # 429s on consecutive probes

    def holding(self, now: float) -> bool:
        return self.until > now or self.probe is not None

    def hold(self, now: float, seconds: float, *, jitter: float, probe: bool) -> bool:
        """Nobody starts for ``seconds`` plus up to ``jitter`` (then a probe, if ``probe``);
        True if this begins a pause rather than extending one."""
        until = now + seconds + random.uniform(0, jitter)
        began = False
        if until > self.until:
            began = self.until <= now
            if began:
                self.started = now
            self.until = until
        self.probe_next = self.probe_next or probe
        return began

    def is_probe(self, ticket: Ticket) -> bool:
        """Whether ``ticket`` is the probe still awaited."""
        return ticket.probe and self.probe is not None and ticket.seq == self.probe.seq

    def same_episode(self, ticket: Ticket) -> bool:
        """A 429 for a request sent before the current pause began (or while a probe is out)
        belongs to the pause already under way."""
        return ticket.at < self.started or self.probe is not None

    def granted(self, ticket: Ticket) -> None:
        if ticket.probe:
            self.probe, self.probe_next = ticket, False

    def probe_again(self) -> None:
        """The probe got no verdict (cancelled, abandoned): the next start probes again."""
        self.probe, self.probe_next = None, True


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Alarm:
    """A sleep that news can cut short."""

    __slots__ = ("_wake",)

    def __init__(self) -> None:
        self._wake: asyncio.Future[None] | None = None  # what the sleeper waits on

    def poke(self) -> None:
        """End the current sleep, if any, now."""
        if self._wake is not None:
            _resolve(self._wake)

    async def sleep(self, seconds: float | None, until: asyncio.Future[None] | None = None) -> None:
        """Until ``seconds`` pass (None: no limit), ``until`` is done, or :meth:`poke`."""
        loop = asyncio.get_running_loop()
        fut = self._wake = loop.create_future()
        handle = None if seconds is None else loop.call_later(seconds, _resolve, fut)
        if until is not None:
            until.add_done_callback(lambda _: _resolve(fut))
        try:
            await fut
        finally:
            self._wake = None
            if handle is not None:
                handle.cancel()
