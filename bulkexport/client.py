"""HTTP to Braze: one session, one request per attempt, statuses mapped to our errors.

This is the only module that imports aiohttp. Its exceptions are translated here, at one
boundary, into :mod:`bulkexport.errors`, so the engine reasons about "retry, record or stop"
and never about aiohttp classes. No pyarrow here: bodies leave as bytes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from ._version import __version__
from .config import ExportConfig
from .errors import (
    AuthError,
    BadResponse,
    PermanentError,
    RateLimited,
    ServerError,
    TransportError,
)
from .limiter import RateController, Ticket, retry_after_seconds
from .pairs import Pair

__all__ = ["BrazeClient", "format_ending_at"]

_PATH = "/sends/data_series"
_RETRYABLE_4XX = frozenset({408, 425})


def format_ending_at(value: datetime) -> str:
    """ISO-8601 with an explicit offset (``Z`` for UTC), as Braze's examples show."""
    text = value.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _braze_message(body: bytes) -> str:
    """Braze's ``message`` from an error body, or a short excerpt when it is not JSON."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])[:500]
    text = body[:200].decode("utf-8", "replace")
    return " ".join(text.split()) or "(empty body)"


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """The body, or ``None`` when it is larger than ``cap`` bytes.

    A declared ``Content-Length`` over the cap is refused before a byte is read; otherwise
    the body is read chunk by chunk and abandoned as soon as it passes the cap, so a huge or
    endless body never costs more than the cap (plus one chunk) in memory. The connection is
    then closed rather than drained.
    """
    length = resp.content_length
    if length is not None and length > cap:
        resp.close()
        return None
    if length is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()  # the common case: a declared, uncompressed size within the cap
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > cap:
            resp.close()
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class BrazeClient:
    """Fetches one pair per call; pacing is the limiter's job, retrying is the caller's."""

    __slots__ = ("_cfg", "_limiter", "_prefix", "_session", "canary", "requests", "statuses")

    def __init__(self, cfg: ExportConfig, limiter: RateController) -> None:
        self._cfg = cfg  # endpoint, key, timeouts
        self._limiter = limiter  # shared pacing
        self._session: aiohttp.ClientSession | None = None  # opened by __aenter__
        # The fixed part of every query, encoded once.
        self._prefix = (
            f"{cfg.endpoint}{_PATH}?length={cfg.length}"
            f"&ending_at={quote(format_ending_at(cfg.ending_at), safe='')}"
        )
        self.requests = 0  # attempts sent
        self.statuses: dict[int, int] = {}  # HTTP status -> count
        #: A pair Braze answered with a 200 in this run: asked again when failures are
        #: ambiguous (see :meth:`ask_canary`). The caller may seed it from earlier sessions.
        self.canary: Pair | None = None

    @property
    def limiter(self) -> RateController:
        return self._limiter

    async def __aenter__(self) -> BrazeClient:
        cfg = self._cfg
        connector = aiohttp.TCPConnector(
            limit=cfg.concurrency, limit_per_host=cfg.concurrency, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=cfg.request_timeout, connect=cfg.connect_timeout),
            headers={
                "Authorization": f"Bearer {cfg.api_key.reveal()}",
                "Accept": "application/json",
                "User-Agent": f"bulkexport/{__version__}",
            },
            raise_for_status=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # Braze sets no cookie we need: skip the jar per request
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ask_canary(self, pair: Pair) -> bool:
        """Ask Braze for the canary (a pair it answered before), under the pace, when the
        failures of ``pair`` are ambiguous: its attempts are used up and nothing was answered
        well since its first failure. The answer reaches the limiter like any other: a 200
        says Braze is up, so ``pair``'s failures are its own. False when there is no canary
        to ask. The body is not kept; a 401/403 stops the run as anywhere."""
        canary = self.canary
        if canary is None or canary == pair:
            return False
        await self._ask(await self._limiter.acquire(canary), canary)
        return True

    async def _ask(self, ticket: Ticket, canary: Pair) -> None:
        """Send the canary's request under ``ticket``: only its answer matters (to the
        limiter); a transport failure is not the asking pair's attempt."""
        try:
            status, _, body = await self._send(ticket._replace(key=canary), canary)
        except TransportError:
            return
        if status in (401, 403):
            raise AuthError(status, _braze_message(body or b""))

    async def _send(self, ticket: Ticket, pair: Pair) -> tuple[int, Mapping[str, str], bytes | None]:
        """Send the request for ``pair`` under ``ticket``: status, headers and the body (None
        past the cap). Every ending reaches the limiter, then transport failures raise."""
        session = self._session
        assert session is not None, "use 'async with BrazeClient(...)'"
        status: int | None = None
        headers = None
        failed = True  # no answer: a timeout, reset or refusal (not a cancellation, see below)
        try:
            self.requests += 1
            try:
                async with session.get(self.url(pair), allow_redirects=False) as resp:
                    body = await _read_capped(resp, self._cfg.max_body_bytes)
                    status, headers = resp.status, resp.headers
            except TimeoutError:
                raise TransportError(f"no complete response within {self._cfg.request_timeout:g}s") from None
            except aiohttp.ClientPayloadError:
                raise TransportError("truncated transfer: connection closed before the whole body") from None
            except aiohttp.ClientError as exc:
                raise TransportError(self._cfg.api_key.redact(f"{type(exc).__name__}: {exc}")) from None
            except BaseException:
                failed = False  # cancelled: says nothing about Braze
                raise
        finally:
            # Every ending reaches the limiter (a probe without an answer must not hold the pool).
            self._limiter.finish(ticket, status, headers, failed=failed and status is None)
        assert status is not None and headers is not None
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status, headers, body

    def url(self, pair: Pair) -> URL:
        """The request URL; ids are percent-encoded whatever characters they hold."""
        return URL(
            f"{self._prefix}&campaign_id={quote(pair.campaign_id, safe='')}"
            f"&send_id={quote(pair.send_id, safe='')}",
            encoded=True,
        )

    async def fetch(self, pair: Pair) -> bytes:
        """One attempt: wait for the limiter, send, classify. Returns a 200's body.

        A start granted as the outage breaker's probe goes to the canary first when there is
        one: the probe then asks whether Braze answers at all, not whether this pair does (a
        few pairs Braze always fails must not read as an outage forever)."""
        limiter = self._limiter
        ticket = await limiter.acquire(pair)
        while ticket.probe and limiter.outage_open and self.canary is not None and self.canary != pair:
            await self._ask(ticket, self.canary)
            ticket = await limiter.acquire(pair)
        status, headers, body = await self._send(ticket, pair)
        if body is None:
            too_big = f"response body larger than {self._cfg.max_body_bytes:,} bytes (max_body_bytes); not read"
            if status == 200:
                raise BadResponse(too_big)
            body = too_big.encode()  # the status still decides: retried, recorded or fatal
        # Whatever the server echoed (a quoted Authorization header), the key goes no further:
        # not into a message, a failure reason, a log line or a Parquet value.
        body = self._cfg.api_key.redact_bytes(body)
        if status == 200:
            self.canary = pair
            return body
        message = _braze_message(body)
        if status == 429:
            raise RateLimited(message, retry_after_seconds(headers.get("Retry-After"), time.time()))
        if status in (401, 403):
            raise AuthError(status, message)
        if status >= 500 or status in _RETRYABLE_4XX:
            raise ServerError(message, status)
        if 300 <= status < 400:
            raise PermanentError("unexpected redirect; check the endpoint", status)
        raise PermanentError(message, status)
