"""The HTTP side of the simulator: auth, clock-aligned rate limit, validation, faults."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import random
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from ._data import DataModel

PATH = "/sends/data_series"
MAX_TIMESTAMPS = 1_000_000

FaultKind = Literal[
    "status", "html", "rate_limit", "latency", "hang", "reset",
    "truncate", "short_body", "malformed", "bad_shape", "not_success", "bad_value",
    "echo_auth", "echo_auth_text", "echo_auth_escaped", "huge_body", "huge_chunked", "huge_gzip",
]  # fmt: skip
FAULT_KINDS: frozenset[str] = frozenset(FaultKind.__args__)  # type: ignore[attr-defined]

_LENGTH = re.compile(r"[0-9]+")
_JSON = "application/json"
_MALFORMED = b'{"message": "success", "data": [{"time": '


@dataclass
class FaultRule:
    """One injected failure; the first rule in ``Simulator.faults`` that fires wins.

    ``times`` bounds how often the rule fires *per pair* (``None``: no bound), so one rule
    can make every pair fail twice and then succeed, which is what retry tests need. A
    request that loses the ``probability`` roll does not use up one of the ``times``.
    ``delay`` is slept before the rule acts, whatever its kind; a ``hang`` with no delay
    hangs until the simulator stops. ``headers`` are sent with the fault's answer and win over
    the rate-limit ones: ``FaultRule(kind="rate_limit", retry_after="1",
    headers={"X-RateLimit-Remaining": "0"})`` is a 429 storm as Braze may send one.

    ``bad_value`` serves the normal payload with one field set to ``value``: in the first
    send_stats entry of the first day that has one (``at="entry"``), or on the first day
    that carries data (``at="day"``). ``value`` is any JSON value, and more: the body is
    written by the standard ``json`` module, so an int beyond 64 bits is served as its
    digits and ``float("inf")`` as ``Infinity`` (not JSON). A pair with no such entry or
    day is served unchanged.

    Hostile servers, for clients that must not trust what they are told:

    * ``echo_auth``: answers ``status`` with a JSON body whose ``message`` quotes the request's
      ``Authorization`` header verbatim (``message`` is the template; ``{authorization}`` is
      replaced by the header). With ``status=200`` it is a 200 whose ``message`` is not
      ``success``. ``echo_auth_text`` does the same as a ``text/plain`` body.
    * ``echo_auth_escaped``: the header again, every character written as a JSON ``\\uXXXX``
      escape (valid JSON that decodes to the header): with ``status=200``, the normal payload
      with it as the first entry's ``variation_name``, as an unknown field ``echo`` and as the
      name of a channel of its own; with another status, as the ``message``.
    * ``huge_body``, ``huge_chunked``, ``huge_gzip``: a 200 of ``size`` bytes that is valid JSON
      (the normal payload, padded with whitespace before its closing brace), generated while it
      is sent so that the simulator itself stays small: with a ``Content-Length``, chunked
      without one, and chunked with ``Content-Encoding: gzip`` (``size`` is then the
      decompressed size: a compression bomb of a valid body).
    """

    kind: FaultKind
    status: int = 500
    delay: float = 0.0
    times: int | None = 1
    probability: float = 1.0
    match: Callable[[str, str], bool] | None = None
    retry_after: str | None = None
    headers: dict[str, str] | None = None
    message: str | None = None
    field: str | None = None
    value: Any = None
    at: Literal["entry", "day"] = "entry"
    size: int = 64 * 2**20
    fired: collections.Counter[tuple[str, str]] = dataclasses.field(
        default_factory=collections.Counter, init=False, repr=False, compare=False
    )
    """How often the rule has fired, per (campaign_id, send_id)."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")
        if self.kind == "bad_value" and not self.field:
            raise ValueError("a bad_value rule needs the field to replace")
        if self.at not in ("entry", "day"):
            raise ValueError("at must be 'entry' or 'day'")

    def _fires(self, pair: tuple[str, str], rng: random.Random) -> bool:
        if self.times is not None and self.fired[pair] >= self.times:
            return False
        if self.match is not None and not self.match(*pair):
            return False
        if self.probability < 1.0 and rng.random() >= self.probability:
            return False
        self.fired[pair] += 1
        return True


@dataclass
class SimulatorStats:
    """Spies for tests and benchmarks: what the client actually sent, and what it got."""

    requests: int = 0
    by_status: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    resets: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    per_pair: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    timestamps: list[float] = dataclasses.field(default_factory=list)
    last_queries: collections.deque[str] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=1000))

    def reset(self) -> None:
        """Zero the counters; ``in_flight`` is live state, so it survives."""
        self.requests = self.resets = 0
        self.max_in_flight = self.in_flight
        self.by_status.clear()
        self.per_pair.clear()
        self.timestamps.clear()
        self.last_queries.clear()


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


def _number(value: float) -> str:
    """Integral values as integers, others with at most three decimals."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _parse(query: dict[str, str]) -> tuple[str, str, int, datetime | None, list[str]]:
    errors: list[str] = []
    campaign_id = query.get("campaign_id", "")
    send_id = query.get("send_id", "")
    if not campaign_id:
        errors.append("campaign_id is required")
    if not send_id:
        errors.append("send_id is required")
    length = 0
    raw_length = query.get("length")
    if raw_length is None or raw_length == "":
        errors.append("length is required")
    elif not _LENGTH.fullmatch(raw_length) or not 1 <= int(raw_length) <= 100:
        errors.append(f"length must be an integer between 1 and 100, got {raw_length!r}")
    else:
        length = int(raw_length)
    ending_at = None
    raw_ending = query.get("ending_at")
    if raw_ending is not None:
        try:
            # Whitespace is never valid here; it is what an unencoded '+' decodes to.
            if any(c.isspace() for c in raw_ending):
                raise ValueError
            ending_at = datetime.fromisoformat(raw_ending)
            if ending_at.tzinfo is None:
                ending_at = ending_at.replace(tzinfo=UTC)
            ending_at = ending_at.astimezone(UTC)
        except (ValueError, OverflowError):
            errors.append(
                f"ending_at must be an ISO-8601 datetime (URL-encode '+' as %2B), got {raw_ending!r}"
            )
    return campaign_id, send_id, length, ending_at, errors


class Simulator:
    """A local stand-in for Braze's ``GET /sends/data_series``; see the package docstring."""

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        seed: int = 0,
        anchor_date: date | None = None,
        rate_limit: int = 250_000,
        rate_window: float = 3600.0,
        latency: float = 0.0,
        extras: bool = False,
        retry_after: float | str | None = None,
        forbidden: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        cache_size: int = 4096,
    ) -> None:
        if rate_window <= 0:
            raise ValueError("rate_window must be positive")
        self.api_key = api_key
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.latency = latency
        self.extras = extras
        self.retry_after = retry_after
        self.forbidden = forbidden
        self.faults: list[FaultRule] = []
        #: Braze restating its numbers: applied to every payload served (and to
        #: :meth:`payload`, the ground truth), ``restate(campaign_id, send_id, payload)``
        #: returns the payload as it now is (a copy: the model's is cached)
        self.restate: Callable[[str, str, dict[str, Any]], dict[str, Any]] | None = None
        self.stats = SimulatorStats()
        self._host = host
        self._port = port
        # Rendered bodies kept (LRU): a benchmark whose pairs all fit measures its client,
        # not the simulator's rendering (~0.5 ms of its CPU a body).
        self._model = DataModel(seed, anchor_date or datetime.now(UTC).date(), cache_size)
        self._fault_rng = random.Random(seed)
        self._window = -1
        self._count = 0
        self._runner: web.ServerRunner | None = None
        self._url: str | None = None
        self._stopping = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return self._model.seed

    @property
    def anchor_date(self) -> date:
        return self._model.anchor_date

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("simulator is not running; use 'async with' or start()")
        return self._url

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._stopping = asyncio.Event()
        server = web.Server(self._handle, access_log=None)
        # Short grace period: hanging handlers are woken by ``_stopping`` anyway.
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._stopping.set()
        runner, self._runner, self._url = self._runner, None, None
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- ground truth and rate budget ------------------------------------------------------

    def payload(
        self,
        campaign_id: str,
        send_id: str,
        length: int,
        ending_at: datetime | None = None,
        *,
        extras: bool | None = None,
    ) -> dict[str, Any]:
        """What a successful request for these parameters returns (``extras`` defaults to
        the simulator's current setting); naive datetimes are taken as UTC."""
        ending = ending_at or datetime.now(UTC)
        if ending.tzinfo is None:
            ending = ending.replace(tzinfo=UTC)
        day = ending.astimezone(UTC).date()
        doc = self._model.payload(campaign_id, send_id, length, day, self.extras if extras is None else extras)
        return doc if self.restate is None else self.restate(campaign_id, send_id, doc)

    def send_date(self, campaign_id: str, send_id: str) -> date:
        """The pair's send day: full entries cover it and the 13 days after it."""
        return self._model.send_date(campaign_id, send_id)

    def spend(self, n: int) -> None:
        """Use up ``n`` requests of the current window, as other workspace traffic would."""
        self._take(time.time(), n)

    def _take(self, now: float, n: int) -> tuple[int, float]:
        window = math.floor(now / self.rate_window)
        if window != self._window:
            self._window, self._count = window, 0
        self._count += n
        return self._count, (window + 1) * self.rate_window

    # -- request handling ------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        now = time.time()
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if len(stats.timestamps) < MAX_TIMESTAMPS:
            stats.timestamps.append(now)
        raw_query = request.raw_path.partition("?")[2]
        stats.last_queries.append(raw_query)
        count, reset_at = self._take(now, 1)
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - count)),
            "X-RateLimit-Reset": _number(reset_at),
        }
        try:
            if self.latency > 0:
                await self._sleep(self.latency)
            response = await self._respond(request, raw_query, count, reset_at - now, headers)
            if response is None:
                stats.resets += 1
                return web.Response()  # aiohttp wants one; it goes nowhere
            if not response.prepared:
                for name, value in headers.items():  # a fault's own headers win
                    response.headers.setdefault(name, value)
            stats.by_status[response.status] += 1
            return response
        finally:
            stats.in_flight -= 1

    async def _respond(
        self,
        request: web.BaseRequest,
        raw_query: str,
        count: int,
        until_reset: float,
        headers: dict[str, str],
    ) -> web.StreamResponse | None:
        """The response in the documented order of checks; ``None`` once the connection
        has been aborted."""
        if request.method != "GET" or request.path != PATH:
            return _json(404, {"message": "Not found"})
        # Braze (Rails) keeps the last of repeated parameters.
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        campaign_id, send_id = query.get("campaign_id", ""), query.get("send_id", "")
        if campaign_id and send_id:
            self.stats.per_pair[campaign_id, send_id] += 1
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _json(401, {"message": "Invalid API key"})
        if self.forbidden:
            return _json(403, {"message": "API key lacks permission sends.data_series"})
        if count > self.rate_limit:
            return self._rate_limited(until_reset)
        campaign_id, send_id, length, ending_at, errors = _parse(query)
        if errors:
            return _json(400, {"message": "; ".join(errors), "errors": errors})
        day = (ending_at or datetime.now(UTC)).date()
        if self.restate is None:
            body = self._model.body(campaign_id, send_id, length, day, self.extras)
        else:
            doc = self._model.payload(campaign_id, send_id, length, day, self.extras)
            body = orjson.dumps(self.restate(campaign_id, send_id, doc))
        for rule in self.faults:
            if rule._fires((campaign_id, send_id), self._fault_rng):
                if rule.delay > 0 or rule.kind == "hang":
                    await self._sleep(rule.delay if rule.delay > 0 else math.inf)
                if rule.kind == "latency":
                    continue
                if rule.kind == "hang":
                    break
                response = await _fault(rule, request, body, headers)
                if response is not None and rule.headers and not response.prepared:
                    response.headers.update(rule.headers)
                return response
        return web.Response(body=body, content_type=_JSON)

    def _rate_limited(self, until_reset: float) -> web.Response:
        response = _json(429, {"message": "Rate limit exceeded"})
        value = self.retry_after
        if value == "auto":
            response.headers["Retry-After"] = str(max(1, math.ceil(until_reset)))
        elif isinstance(value, str):
            response.headers["Retry-After"] = value
        elif value is not None:
            response.headers["Retry-After"] = _number(value)
        return response

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early when the simulator stops, so shutdown never waits."""
        timeout = None if math.isinf(seconds) else seconds
        # asyncio.timeout rather than wait_for, which on 3.11 can swallow a cancel (a client
        # that hangs up) arriving as the simulator stops.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._stopping.wait()


async def _fault(
    rule: FaultRule, request: web.BaseRequest, body: bytes, headers: dict[str, str]
) -> web.StreamResponse | None:
    """The response of a rule that replaces the normal one (not ``latency``/``hang``);
    ``None`` when there is deliberately no response at all."""
    kind = rule.kind
    if kind == "status":
        message = rule.message or _default_message(rule.status)
        return _json(rule.status, {"message": message, "errors": []})
    if kind == "html":
        phrase = _phrase(rule.status)
        html = f"<html><body><h1>{rule.status} {phrase}</h1></body></html>"
        return web.Response(status=rule.status, text=html, content_type="text/html")
    if kind == "rate_limit":
        response = _json(429, {"message": "Rate limit exceeded"})
        if rule.retry_after is not None:
            response.headers["Retry-After"] = rule.retry_after
        return response
    if kind == "reset":
        assert request.transport is not None
        request.transport.abort()
        return None
    if kind == "truncate":
        return web.Response(body=body[: len(body) // 2], content_type=_JSON)
    if kind == "short_body":
        return await _short_body(request, body, headers)
    if kind == "malformed":
        return web.Response(body=_MALFORMED, content_type=_JSON)
    if kind == "bad_shape":
        return _json(200, {"message": "success", "data": {"oops": 1}})
    if kind == "bad_value":
        return web.Response(body=_bad_value(rule, body), content_type=_JSON)
    if kind in ("echo_auth", "echo_auth_text"):
        template = rule.message or "request refused; received headers: Authorization: {authorization}"
        message = template.replace("{authorization}", request.headers.get("Authorization", ""))
        if kind == "echo_auth_text":
            return web.Response(status=rule.status, text=message, content_type="text/plain")
        if rule.status == 200:
            return _json(200, {"message": message, "data": []})
        return _json(rule.status, {"message": message, "errors": [message]})
    if kind == "echo_auth_escaped":
        return _echo_escaped(rule, body, request.headers.get("Authorization", ""))
    if kind in ("huge_body", "huge_chunked", "huge_gzip"):
        return await _huge_body(rule, request, body, headers)
    # "not_success": a 200 whose export failed, which only ``message`` reveals.
    message = rule.message or "Export failed: internal error"
    return _json(200, {"message": message, "data": []})


def _echo_escaped(rule: FaultRule, body: bytes, authorization: str) -> web.Response:
    """See ``echo_auth_escaped``: a placeholder is written where the header goes, then
    replaced by the header's escaped spelling, which no JSON writer would produce itself."""
    mark = "@@authorization@@"
    if rule.status == 200:
        payload = orjson.loads(body)
        for day in payload["data"]:
            entries = [e for es in day.get("messages", {}).values() for e in es]
            if entries:
                entries[0]["variation_name"] = mark
                entries[0]["echo"] = f"Authorization: {mark}"
                day["messages"][mark] = [{"sent": 1}]
                break
        out = orjson.dumps(payload)
    else:
        out = orjson.dumps({"message": f"refused: {mark}", "errors": []})
    escaped = "".join(f"\\u{ord(c):04x}" for c in authorization).encode()
    return web.Response(status=rule.status, body=out.replace(mark.encode(), escaped), content_type=_JSON)


def _bad_value(rule: FaultRule, body: bytes) -> bytes:
    """The normal body with ``rule.field`` set to ``rule.value`` at the rule's place."""
    payload = orjson.loads(body)
    for day in payload["data"]:
        if rule.at == "entry":
            entries = [e for es in day.get("messages", {}).values() for e in es]
            if entries:
                entries[0][rule.field] = rule.value
                break
        elif day.get("messages") or set(day) - {"time", "messages"}:
            day[rule.field] = rule.value
            break
    return json.dumps(payload, separators=(",", ":")).encode()


_BLOCK = 1 << 20


async def _huge_body(
    rule: FaultRule, request: web.BaseRequest, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """``rule.size`` bytes of valid JSON, produced block by block while they are written."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = _JSON
    gzip = zlib.compressobj(wbits=31) if rule.kind == "huge_gzip" else None
    if rule.kind == "huge_body":
        response.content_length = max(rule.size, len(body))
    else:
        response.enable_chunked_encoding()
    if gzip is not None:
        response.headers["Content-Encoding"] = "gzip"
    pad = max(rule.size - len(body), 0)
    spaces = b" " * _BLOCK
    try:
        await response.prepare(request)

        async def send(data: bytes) -> None:
            await response.write(gzip.compress(data) if gzip is not None else data)

        await send(body[:-1])
        while pad:
            block = spaces if pad >= _BLOCK else spaces[:pad]
            pad -= len(block)
            await send(block)
        await send(body[-1:])
        if gzip is not None:
            await response.write(gzip.flush())
        await response.write_eof()
    except ConnectionError:
        pass  # the client stopped reading (it has a cap): the connection is gone, so are we
    return response


async def _short_body(request: web.BaseRequest, body: bytes, headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = _JSON
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    assert request.transport is not None
    request.transport.close()  # close, not abort: flush the half already written
    return response


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_DEFAULT_MESSAGES = {
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


def _default_message(status: int) -> str:
    return _DEFAULT_MESSAGES.get(status, _phrase(status))
