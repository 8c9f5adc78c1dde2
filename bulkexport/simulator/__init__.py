"""A local, deterministic stand-in for Braze's ``GET /sends/data_series``.

Real Braze cannot be asked to fail on cue, to run out of rate budget in two seconds, or to
tell you what it should have returned. This simulator can, so exporters can be tested
end-to-end over real HTTP on loopback. It imports nothing from the rest of ``bulkexport``.

Usage::

    from datetime import UTC, date, datetime
    from bulkexport.simulator import FaultRule, Simulator

    async with Simulator(api_key="test-key", seed=0, anchor_date=date(2026, 11, 27)) as sim:
        sim.url                       # "http://127.0.0.1:<bound port>"
        sim.faults.append(FaultRule(kind="status", status=503, times=2))
        sim.latency = 0.3             # added to every request; mutable at any time
        sim.spend(100)                # another client used 100 requests of this window
        truth = sim.payload("camp", "send", length=14,
                            ending_at=datetime(2026, 11, 27, tzinfo=UTC))
        sim.stats.by_status[200], sim.stats.per_pair["camp", "send"]

``Simulator(api_key="test-key", *, seed=0, anchor_date=None, rate_limit=250_000,
rate_window=3600.0, latency=0.0, extras=False, retry_after=None, forbidden=False,
host="127.0.0.1", port=0, cache_size=4096)``; ``anchor_date`` defaults to today (UTC);
``cache_size`` rendered bodies are kept (benchmarks size it to their pairs). ``api_key``,
``rate_limit``, ``rate_window``, ``latency``, ``extras``, ``retry_after``, ``forbidden`` and
``faults`` are plain attributes that may be changed while serving. Also ``await sim.start()``
/ ``await sim.stop()``, and ``sim.send_date(campaign_id, send_id)``.

Behaviour, checked in this order:

1. Anything but ``GET /sends/data_series`` -> 404 ``{"message": "Not found"}``.
2. ``Authorization: Bearer <api_key>`` exactly, else 401; with ``forbidden`` -> 403.
3. Rate limit in clock-aligned windows of ``rate_window`` seconds (the clock hour, like
   Braze). Every request counts, whatever its outcome. Over ``rate_limit`` -> 429. Every
   response carries ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (epoch seconds).
   Braze documents no ``Retry-After``, so by default none is sent; ``retry_after="auto"``
   sends the whole seconds until the reset, any other string or number is sent verbatim.
4. Validation -> 400 ``{"message": ..., "errors": [...]}``: ``campaign_id``, ``send_id``
   non-empty; ``length`` a decimal integer 1..100; optional ``ending_at`` in a form
   ``datetime.fromisoformat`` accepts, naive meaning UTC. An unencoded ``+`` in the offset
   arrives as a space and is rejected, as a client bug should be.
5. ``faults``: the first :class:`FaultRule` that fires decides (``latency`` rules only add
   delay and let later rules and the normal response follow). Kinds: ``status``, ``html``,
   ``rate_limit``, ``latency``, ``hang``, ``reset``, ``truncate``, ``short_body``,
   ``malformed``, ``bad_shape``, ``not_success``, ``bad_value`` (the normal payload with one
   field replaced, e.g. ``FaultRule(kind="bad_value", field="sent", value=1.5)``; ``at="day"``
   for a day-level field). ``times`` counts per pair and per rule.
   Note that aiohttp's client silently retries a GET once after a ``reset``.
6. 200 with ``orjson.dumps(sim.payload(...))``.

Data: each pair was sent 0..20 days before ``anchor_date``; full daily entries cover the
send day and the 13 days after it (Braze's 14-day retention), never a day after
``anchor_date``. Later days come, per pair, in one of the shapes Braze uses: missing
(30%), ``{"time": ...}`` alone (15%), with ``"messages": {}`` (15%), or ``"messages": {}``
with day-level numbers (40%): zeros, or conversions and revenue arriving after the
messages stopped.
Values come from the seed, the ids and the day alone, so overlapping windows agree and
``sim.payload`` is ground truth. Zero revenue is served as the integer ``0``. With
``extras=True`` about a third of the pairs also carry undocumented data (a ``line``
channel, ``amp_opens`` on email, dynamic iOS click keys, a ``conversions_by_open`` day
field) that clients must keep rather than drop.

``python -m bulkexport.simulator --port 8080`` serves the same thing from a shell.

Hours of Braze time without waiting for them: :class:`HourlyBraze` counts requests the way
Braze does on a virtual clock (clock-hour windows, other clients, 429 storms, a limit that
changes), :func:`drive` runs workers through it with any pacer, and :class:`VirtualTimeLoop`
/ :func:`run_virtual` make ``asyncio.sleep(3600)`` return at once::

    braze = HourlyBraze(epoch=1_790_002_800.0, competitor_from=1200.0, competitor_share=0.3)

    async def three_hours():
        async with RateController(limit=250_000, window=3600, reserve=0.1, wall=braze.wall) as pacer:
            return await drive(pacer, braze, seconds=3 * 3600)

    run = run_virtual(three_hours())   # seconds of CPU; braze.ours[window] is what Braze counted
"""

from ._data import CHANNEL_METRICS, RETENTION_DAYS
from ._server import FaultKind, FaultRule, Simulator, SimulatorStats
from ._virtual import HOUR, HourlyBraze, Pacer, VirtualRun, VirtualTimeLoop, drive, run_virtual

__all__ = [
    "CHANNEL_METRICS",
    "HOUR",
    "RETENTION_DAYS",
    "FaultKind",
    "FaultRule",
    "HourlyBraze",
    "Pacer",
    "Simulator",
    "SimulatorStats",
    "VirtualRun",
    "VirtualTimeLoop",
    "drive",
    "run_virtual",
]
