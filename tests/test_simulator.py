"""The simulator over real HTTP on loopback: it is the oracle for every other test, so it
must itself behave as BRAZE_API.md describes."""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from bulkexport.simulator import CHANNEL_METRICS, FaultRule, Simulator

ANCHOR = date(2026, 11, 27)
END = datetime(2026, 11, 27, 12, tzinfo=UTC)
PATH = "/sends/data_series"
KEY = "test-key"
OK_QUERY = "campaign_id=camp&send_id=send&length=14&ending_at=2026-11-27T12:00:00Z"
PUSH_OR_EMAIL = {"ios_push", "android_push", "kindle_push", "web_push", "email"}
OUTCOMES = {"revenue", "unique_recipients", "conversions", "conversions_by_send_time"}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return orjson.loads(self.body)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_key=KEY, seed=0, anchor_date=ANCHOR) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    sim: Simulator,
    query: str = OK_QUERY,
    *,
    key: str | None = KEY,
    path: str = PATH,
    method: str = "GET",
    limit_s: float = 5.0,
) -> Reply:
    """Send the query string byte for byte: encoding is what some tests are about."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    url = URL(f"{sim.url}{path}?{query}", encoded=True)
    client_timeout = aiohttp.ClientTimeout(total=limit_s)
    async with http.request(method, url, headers=headers, timeout=client_timeout) as resp:
        return Reply(resp.status, dict(resp.headers), await resp.read())


def query(campaign_id: str, send_id: str, length: int = 14, ending: str = "2026-11-27") -> str:
    return f"campaign_id={campaign_id}&send_id={send_id}&length={length}&ending_at={ending}"


# -- routing, auth -------------------------------------------------------------------------


async def test_other_paths_and_methods_are_404(sim: Simulator, http: aiohttp.ClientSession) -> None:
    for reply in (
        await call(http, sim, path="/campaigns/data_series"),
        await call(http, sim, method="POST"),
    ):
        assert reply.status == 404
        assert reply.json() == {"message": "Not found"}
        assert "X-RateLimit-Remaining" in reply.headers


async def test_missing_or_wrong_key_is_401_without_echo(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    for key in (None, "wrong-key", '"test-key"', "TEST-KEY"):
        reply = await call(http, sim, key=key)
        assert reply.status == 401
        assert reply.json() == {"message": "Invalid API key"}
        assert b"wrong-key" not in reply.body
    for header in ("test-key", "Basic test-key", "bearer test-key"):
        url = f"{sim.url}{PATH}?{OK_QUERY}"
        async with http.get(url, headers={"Authorization": header}) as resp:
            assert resp.status == 401
    assert sim.stats.by_status[401] == 7


async def test_forbidden_is_403_and_mutable(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.forbidden = True
    reply = await call(http, sim)
    assert reply.status == 403
    assert "sends.data_series" in reply.json()["message"]
    assert (await call(http, sim, key="wrong")).status == 401  # auth is checked first
    sim.forbidden = False
    assert (await call(http, sim)).status == 200


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "send_id=s&length=3",
        "campaign_id=&send_id=s&length=3",
        "campaign_id=c&length=3",
        "campaign_id=c&send_id=&length=3",
        "campaign_id=c&send_id=s",
        "campaign_id=c&send_id=s&length=",
        "campaign_id=c&send_id=s&length=0",
        "campaign_id=c&send_id=s&length=101",
        "campaign_id=c&send_id=s&length=1.5",
        "campaign_id=c&send_id=s&length=abc",
        "campaign_id=c&send_id=s&length=-1",
        "campaign_id=c&send_id=s&length=3&ending_at=yesterday",
        "campaign_id=c&send_id=s&length=3&ending_at=",
        "campaign_id=c&send_id=s&length=3&ending_at=2026-11-27T10:00:00+05:00",
        "campaign_id=c&send_id=s&length=3&ending_at=2026-13-01T00:00:00Z",
    ],
)
async def test_bad_parameters_are_400(
    sim: Simulator, http: aiohttp.ClientSession, bad: str
) -> None:
    reply = await call(http, sim, bad)
    assert reply.status == 400, bad
    body = reply.json()
    assert body["message"] and body["errors"]
    assert all(isinstance(e, str) for e in body["errors"])


@pytest.mark.parametrize(
    "good",
    [
        "campaign_id=c&send_id=s&length=1",
        "campaign_id=c&send_id=s&length=100",
        "campaign_id=c&send_id=s&length=3&ending_at=2026-11-27T10:00:00%2B05:00",
        "campaign_id=c&send_id=s&length=3&ending_at=2014-12-10T23:59:59-05:00",
        "campaign_id=c&send_id=s&length=3&ending_at=2026-11-27T10:00:00Z",
        "campaign_id=c&send_id=s&length=3&ending_at=2026-11-27T10:00:00",
        "campaign_id=c%20d%2B%26&send_id=s%2Fx&length=3",
    ],
)
async def test_good_parameters_are_200(
    sim: Simulator, http: aiohttp.ClientSession, good: str
) -> None:
    reply = await call(http, sim, good)
    assert reply.status == 200, reply.body
    assert reply.json()["message"] == "success"


async def test_ending_at_offset_moves_the_utc_day(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    # 23:00 at -05:00 is already the next day in UTC.
    send = sim.send_date("camp", "send")
    local = (send + timedelta(days=2)).isoformat() + "T23:00:00-05:00"
    reply = await call(http, sim, query("camp", "send", 1, local))
    assert [d["time"] for d in reply.json()["data"]] == [(send + timedelta(days=3)).isoformat()]


# -- rate limit ----------------------------------------------------------------------------


async def test_rate_headers_on_every_response_with_exact_remaining(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(api_key=KEY, anchor_date=ANCHOR, rate_limit=10) as sim:
        replies = [
            await call(http, sim),
            await call(http, sim, key="nope"),
            await call(http, sim, "length=0"),
            await call(http, sim, path="/nowhere"),
        ]
        sim.spend(3)
        replies.append(await call(http, sim))
    assert [r.status for r in replies] == [200, 401, 400, 404, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in replies] == ["9", "8", "7", "6", "2"]
    for reply in replies:
        assert reply.headers["X-RateLimit-Limit"] == "10"
        reset = reply.headers["X-RateLimit-Reset"]
        assert re.fullmatch(r"\d+", reset) and int(reset) % 3600 == 0
        assert 0 < int(reset) - time.time() <= 3600


async def _fresh_window(window: float) -> None:
    """Start at the beginning of a clock-aligned window so a test never straddles one."""
    left = window - time.time() % window
    if left < window / 2:
        await asyncio.sleep(left + 0.02)


async def test_429_over_limit_then_next_window_recovers(http: aiohttp.ClientSession) -> None:
    async with Simulator(api_key=KEY, anchor_date=ANCHOR, rate_limit=5, rate_window=2.0) as sim:
        await _fresh_window(2.0)
        statuses = [(await call(http, sim)).status for _ in range(5)]
        limited = await call(http, sim)
        assert statuses == [200] * 5
        assert limited.status == 429
        assert limited.json() == {"message": "Rate limit exceeded"}
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert "Retry-After" not in limited.headers  # Braze documents none
        assert (await call(http, sim, key="bad")).status == 401  # still counted, still auth
        reset = float(limited.headers["X-RateLimit-Reset"])
        assert reset % 2.0 == 0
        await asyncio.sleep(reset - time.time() + 0.02)
        recovered = await call(http, sim)
        assert recovered.status == 200
        assert recovered.headers["X-RateLimit-Remaining"] == "4"


async def test_retry_after_modes(http: aiohttp.ClientSession) -> None:
    async with Simulator(api_key=KEY, anchor_date=ANCHOR, rate_limit=0, rate_window=7.5) as sim:
        sim.retry_after = "auto"
        reply = await call(http, sim)
        assert reply.status == 429
        assert 1 <= int(reply.headers["Retry-After"]) <= 8
        assert re.fullmatch(r"\d+(\.\d{1,3})?", reply.headers["X-RateLimit-Reset"])
        sim.retry_after = 86_400_000
        assert (await call(http, sim)).headers["Retry-After"] == "86400000"
        sim.retry_after = "Wed, 21 Oct 2015 07:28:00 GMT"
        assert (await call(http, sim)).headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"


async def test_spend_uses_the_shared_budget(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.spend(100)
    reply = await call(http, sim)
    assert reply.headers["X-RateLimit-Remaining"] == str(250_000 - 101)
    sim.spend(250_000)
    reply = await call(http, sim)
    assert reply.status == 429
    assert reply.headers["X-RateLimit-Remaining"] == "0"


# -- faults --------------------------------------------------------------------------------


async def test_status_fault_counts_times_per_pair(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.append(FaultRule(kind="status", status=503, times=2))
    a = [await call(http, sim, query("a", "1")) for _ in range(3)]
    b = [await call(http, sim, query("b", "1")) for _ in range(3)]
    assert [r.status for r in a] == [503, 503, 200]
    assert [r.status for r in b] == [503, 503, 200]
    assert a[0].json() == {"message": "Service temporarily unavailable", "errors": []}
    assert "X-RateLimit-Remaining" in a[0].headers
    assert sim.stats.per_pair["a", "1"] == 3


async def test_first_matching_rule_wins_and_match_filters(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.faults += [
        FaultRule(kind="status", status=500, times=None, match=lambda c, s: s == "x"),
        FaultRule(kind="status", status=504, times=None, message="upstream slow"),
    ]
    assert (await call(http, sim, query("c", "x"))).status == 500
    other = await call(http, sim, query("c", "y"))
    assert other.status == 504 and other.json()["message"] == "upstream slow"


async def test_probability_is_seeded(http: aiohttp.ClientSession) -> None:
    outcomes = []
    for _ in range(2):
        async with Simulator(api_key=KEY, seed=7, anchor_date=ANCHOR) as sim:
            sim.faults.append(FaultRule(kind="status", times=None, probability=0.5))
            outcomes.append([(await call(http, sim)).status for _ in range(20)])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 500}


async def test_html_fault(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.faults.append(FaultRule(kind="html", status=502))
    reply = await call(http, sim)
    assert reply.status == 502
    assert reply.headers["Content-Type"].startswith("text/html")
    assert reply.body == b"<html><body><h1>502 Bad Gateway</h1></body></html>"


async def test_rate_limit_fault(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.faults.append(FaultRule(kind="rate_limit", retry_after="7"))
    reply = await call(http, sim)
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "7"
    assert reply.headers["X-RateLimit-Remaining"] == str(250_000 - 1)


async def test_latency_fault_and_global_latency_delay_without_failing(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.faults += [
        FaultRule(kind="latency", delay=0.2, times=None),
        FaultRule(kind="status", status=500, match=lambda c, s: c == "later"),
    ]
    started = time.monotonic()
    assert (await call(http, sim)).status == 200
    assert time.monotonic() - started >= 0.2
    assert (await call(http, sim, query("later", "s"))).status == 500  # not exclusive
    sim.faults.clear()
    sim.latency = 0.15
    started = time.monotonic()
    await asyncio.gather(*(call(http, sim) for _ in range(4)))
    assert time.monotonic() - started >= 0.15
    assert sim.stats.max_in_flight >= 4
    assert sim.stats.in_flight == 0


async def test_hang_makes_clients_time_out_and_stop_stays_fast(
    http: aiohttp.ClientSession,
) -> None:
    sim = Simulator(api_key=KEY, anchor_date=ANCHOR)
    await sim.start()
    sim.faults.append(FaultRule(kind="hang", delay=30.0))
    with pytest.raises(TimeoutError):
        await call(http, sim, limit_s=0.3)
    assert (await call(http, sim)).status == 200  # times=1: the next one is served
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 2.0


async def test_reset_aborts_the_connection(sim: Simulator, http: aiohttp.ClientSession) -> None:
    # times=None: aiohttp's client quietly retries a GET once after a disconnect.
    sim.faults.append(FaultRule(kind="reset", times=None))
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, sim)
    assert sim.stats.resets >= 1
    assert sum(sim.stats.by_status.values()) == 0
    sim.faults.clear()
    assert (await call(http, sim)).status == 200


async def test_truncate_serves_half_a_body_with_matching_length(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    full = orjson.dumps(sim.payload("camp", "send", 14, END))
    sim.faults.append(FaultRule(kind="truncate"))
    reply = await call(http, sim)
    assert reply.status == 200
    assert reply.body == full[: len(full) // 2]
    assert reply.headers["Content-Length"] == str(len(full) // 2)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.body)


async def test_short_body_is_a_payload_error(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.faults.append(FaultRule(kind="short_body"))
    with pytest.raises(aiohttp.ClientPayloadError):
        await call(http, sim)
    assert (await call(http, sim)).status == 200


@pytest.mark.parametrize("kind", ["malformed", "bad_shape", "not_success"])
async def test_bad_200_bodies(sim: Simulator, http: aiohttp.ClientSession, kind: Any) -> None:
    sim.faults.append(FaultRule(kind=kind))
    reply = await call(http, sim)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    if kind == "malformed":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(reply.body)
    elif kind == "bad_shape":
        assert reply.json()["message"] == "success"
        assert not isinstance(reply.json()["data"], list)
    else:
        assert reply.json() == {"message": "Export failed: internal error", "data": []}


async def test_bad_value_replaces_one_field(sim: Simulator, http: aiohttp.ClientSession) -> None:
    truth = sim.payload("camp", "send", 14, END)
    first = next(i for i, d in enumerate(truth["data"]) if d.get("messages"))
    channel = next(iter(truth["data"][first]["messages"]))
    sim.faults.append(FaultRule(kind="bad_value", field="sent", value=2**64))
    sim.faults.append(FaultRule(kind="bad_value", field="revenue", value=float("inf"), at="day"))
    reply = await call(http, sim)
    assert b'"sent":18446744073709551616' in reply.body  # served as digits, beyond orjson's range
    want = copy.deepcopy(truth)
    want["data"][first]["messages"][channel][0]["sent"] = 2**64
    assert json.loads(reply.body) == want  # one field changed, nothing else
    reply = await call(http, sim)
    assert b'"revenue":Infinity' in reply.body
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.body)
    assert json.loads(reply.body)["data"][first]["revenue"] == float("inf")
    assert (await call(http, sim)).json() == truth
    with pytest.raises(ValueError, match="needs the field"):
        FaultRule(kind="bad_value")
    with pytest.raises(ValueError, match="at must be"):
        FaultRule(kind="bad_value", field="sent", at="channel")  # type: ignore[arg-type]


def test_unknown_fault_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultRule(kind="explode")  # type: ignore[arg-type]


# -- stats ---------------------------------------------------------------------------------


async def test_stats_record_raw_queries_and_reset(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    raw = "campaign_id=c&send_id=s&length=3&ending_at=2026-11-27T10:00:00%2B05:00"
    await call(http, sim, raw)
    await call(http, sim, key="bad")
    stats = sim.stats
    assert stats.requests == 2
    assert stats.last_queries[0] == raw
    assert stats.by_status == {200: 1, 401: 1}
    assert stats.per_pair == {("c", "s"): 1, ("camp", "send"): 1}
    assert len(stats.timestamps) == 2 and stats.timestamps[0] <= stats.timestamps[1]
    stats.reset()
    assert (stats.requests, stats.resets, stats.max_in_flight) == (0, 0, 0)
    assert not (stats.by_status or stats.per_pair or stats.timestamps or stats.last_queries)


# -- data ----------------------------------------------------------------------------------


def _pairs(n: int) -> list[tuple[str, str]]:
    return [(f"campaign-{i % 60}", f"send-{i}") for i in range(n)]


async def test_served_body_is_the_payload(sim: Simulator, http: aiohttp.ClientSession) -> None:
    for extras in (False, True):
        sim.extras = extras
        for campaign_id, send_id in _pairs(20):
            reply = await call(http, sim, query(campaign_id, send_id, 30, "2026-11-27T12:00:00Z"))
            truth = sim.payload(campaign_id, send_id, 30, END)
            assert reply.body == orjson.dumps(truth)


async def test_payload_is_deterministic_across_instances() -> None:
    a = Simulator(seed=3, anchor_date=ANCHOR)
    b = Simulator(seed=3, anchor_date=ANCHOR)
    c = Simulator(seed=4, anchor_date=ANCHOR)
    for campaign_id, send_id in _pairs(30):
        assert a.payload(campaign_id, send_id, 30, END) == b.payload(campaign_id, send_id, 30, END)
    differs = [
        a.payload(cid, sid, 30, END) != c.payload(cid, sid, 30, END) for cid, sid in _pairs(30)
    ]
    assert any(differs)


def test_overlapping_windows_agree_on_shared_days() -> None:
    sim = Simulator(seed=0, anchor_date=ANCHOR)
    for campaign_id, send_id in _pairs(40):
        short = sim.payload(campaign_id, send_id, 5, END - timedelta(days=6))
        long = sim.payload(campaign_id, send_id, 60, END + timedelta(days=3))
        by_day = {d["time"]: d for d in long["data"]}
        for day in short["data"]:
            assert by_day[day["time"]] == day


def _quiet_shape(day: dict[str, Any], conversion_keys: set[str]) -> str:
    """Which of the shapes Braze uses past the retention this day has (asserting it is one)."""
    rest = {k: v for k, v in day.items() if k != "time"}
    if not rest:
        return "time_only"
    assert rest.pop("messages") == {}
    if not rest:
        return "empty_messages"
    if rest == {"conversions": 0, "unique_recipients": 0}:
        return "zeros"
    assert set(rest) == conversion_keys | {"unique_recipients", "revenue"}
    if not any(rest.values()):
        return "zeros"
    # Late conversions: nothing was sent that day, so no recipient and nothing by send time.
    assert rest["conversions"] >= 1 and type(rest["revenue"]) is float and rest["revenue"] >= 1.0
    assert rest["unique_recipients"] == 0
    assert all(v == 0 for k, v in rest.items() if k.endswith("_by_send_time"))
    assert all(type(v) is int and 0 <= v <= rest["conversions"] for k, v in rest.items() if k != "revenue")
    return "late"


def test_retention_and_anchor_bound_the_series() -> None:
    sim = Simulator(seed=0, anchor_date=ANCHOR)
    styles: collections.Counter[str] = collections.Counter()
    shapes: collections.Counter[str] = collections.Counter()
    for campaign_id, send_id in _pairs(200):
        data = sim.payload(campaign_id, send_id, 100, END + timedelta(days=30))["data"]
        send = sim.send_date(campaign_id, send_id)
        assert ANCHOR - timedelta(days=20) <= send <= ANCHOR
        days = [date.fromisoformat(d["time"]) for d in data]
        assert days == sorted(days) and len(set(days)) == len(days)
        full = [day for day, d in zip(days, data, strict=True) if d.get("messages")]
        quiet = [d for d in data if not d.get("messages")]
        assert full == [
            send + timedelta(days=k) for k in range(14) if send + timedelta(days=k) <= ANCHOR
        ]
        assert all(day <= ANCHOR for day in days)
        conversion_keys = {k for k in data[0] if k.startswith("conversions")}
        pair_shapes = set()
        for d in quiet:
            assert date.fromisoformat(d["time"]) >= send + timedelta(days=14)
            pair_shapes.add(_quiet_shape(d, conversion_keys))
        shapes.update(pair_shapes)
        if send + timedelta(days=14) <= ANCHOR:
            # One style per pair: days with totals mix zeros and late conversions.
            if not pair_shapes:
                styles["missing"] += 1
            elif pair_shapes <= {"zeros", "late"}:
                styles["totals"] += 1
            else:
                (style,) = pair_shapes
                styles[style] += 1
    assert set(styles) == {"missing", "time_only", "empty_messages", "totals"}
    assert set(shapes) == {"time_only", "empty_messages", "zeros", "late"}


def test_every_channel_appears_with_its_documented_metrics() -> None:
    sim = Simulator(seed=0, anchor_date=ANCHOR)
    seen: set[str] = set()
    controls = campaigns_with_control = 0
    for campaign_id, send_id in _pairs(300):
        data = sim.payload(campaign_id, send_id, 100, END)["data"]
        conversion_keys = {k for k in data[0] if k.startswith("conversions")}
        assert {"conversions", "conversions_by_send_time"} <= conversion_keys
        assert len(conversion_keys) in (2, 4, 6, 8)
        has_control = False
        for day in data:
            for channel, entries in day.get("messages", {}).items():
                seen.add(channel)
                assert 1 <= len([e for e in entries if "enrolled" not in e]) <= 3
                for entry in entries:
                    if "enrolled" in entry:
                        has_control = True
                        controls += 1
                        assert entry["variation_name"] == "Control Group"
                        assert "sent" not in entry and "variation_api_id" not in entry
                        expected = {"variation_name", "enrolled"} | OUTCOMES | conversion_keys
                        assert set(entry) == expected
                        continue
                    expected = {"variation_name", *CHANNEL_METRICS[channel]}
                    expected |= OUTCOMES | conversion_keys
                    if channel in PUSH_OR_EMAIL:
                        assert re.fullmatch(r"var_[0-9a-f]{12}", entry["variation_api_id"])
                        expected.add("variation_api_id")
                    assert set(entry) == expected
                    assert re.fullmatch(r"Variant \d", entry["variation_name"])
                    assert all(
                        isinstance(v, int) and v >= 0
                        for k, v in entry.items()
                        if k not in {"variation_name", "variation_api_id", "revenue"}
                    )
        campaigns_with_control += has_control
    assert seen == set(CHANNEL_METRICS)
    assert controls and 0.25 < campaigns_with_control / 300 < 0.75


async def test_zero_revenue_is_served_as_int(sim: Simulator, http: aiohttp.ClientSession) -> None:
    revenues: list[Any] = []
    raw = b""
    for campaign_id, send_id in _pairs(30):
        reply = await call(http, sim, query(campaign_id, send_id, 30))
        raw += reply.body
        for day in reply.json()["data"]:
            revenues += [e["revenue"] for es in day.get("messages", {}).values() for e in es]
    assert re.search(rb'"revenue":0[,}]', raw)
    assert b'"revenue":0.0' not in raw
    zeros = [r for r in revenues if r == 0]
    assert all(type(r) is int for r in zeros)
    assert all(type(r) is float and round(r, 2) == r for r in revenues if r != 0)
    assert 0.15 < len(zeros) / len(revenues) < 0.6


def _extras_in(payload: dict[str, Any]) -> set[str]:
    found = set()
    for day in payload["data"]:
        if "conversions_by_open" in day:
            found.add("conversions_by_open")
        messages = day.get("messages", {})
        if "line" in messages:
            assert set(messages["line"][0]) == {"variation_name", "sent", "delivered",
                                                "friend_adds"}  # fmt: skip
            found.add("line")
        for entry in messages.get("email", []):
            if "amp_opens" in entry:
                found.add("amp_opens")
        for entry in messages.get("ios_push", []):
            found.update(k for k in entry if k.startswith(("carousel_slide_", "notif_button_")))
    return found


def test_extras_only_when_enabled_and_documented_values_unchanged() -> None:
    sim = Simulator(seed=0, anchor_date=ANCHOR)
    plain_found: set[str] = set()
    extra_found: set[str] = set()
    pairs_with_extras = 0
    for campaign_id, send_id in _pairs(300):
        plain = sim.payload(campaign_id, send_id, 100, END)
        extra = sim.payload(campaign_id, send_id, 100, END, extras=True)
        plain_found |= _extras_in(plain)
        found = _extras_in(extra)
        extra_found |= found
        pairs_with_extras += bool(found)
        if found:
            _strip_extras(extra)
        assert extra == plain
    assert plain_found == set()
    assert extra_found == {
        "conversions_by_open", "line", "amp_opens",
        "carousel_slide_1_Summer Sale_click", "notif_button_2_Buy/Now_click",
    }  # fmt: skip
    assert 0.2 < pairs_with_extras / 300 < 0.5


def _strip_extras(payload: dict[str, Any]) -> None:
    for day in payload["data"]:
        day.pop("conversions_by_open", None)
        day.get("messages", {}).pop("line", None)
        for entries in day.get("messages", {}).values():
            for entry in entries:
                for key in [k for k in entry if k == "amp_opens" or k.startswith(
                    ("carousel_slide_", "notif_button_"))]:  # fmt: skip
                    del entry[key]


def test_payload_window_far_from_the_send_is_empty() -> None:
    sim = Simulator(seed=0, anchor_date=ANCHOR)
    assert sim.payload("c", "s", 100, datetime(1990, 1, 1, tzinfo=UTC))["data"] == []
    assert sim.payload("c", "s", 1, datetime(2030, 1, 1))["data"] == []


# -- CLI -----------------------------------------------------------------------------------


async def test_cli_serves_and_exits_cleanly_on_sigterm(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bulkexport.simulator", "--port", "0", "--rate-limit", "50",
        "--anchor-date", "2026-11-27", "--cache-size", "16",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        url = line.decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        headers = {"Authorization": "Bearer demo-key"}
        async with http.get(f"{url}{PATH}?{OK_QUERY}", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["X-RateLimit-Remaining"] == "49"
            assert (await resp.json())["message"] == "success"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert b"Traceback" not in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cache_size_bounds_the_rendered_bodies_kept(http: aiohttp.ClientSession) -> None:
    """Three pairs through a cache of two: the third evicts the first, which is rendered
    again (a miss) when asked for after it; the bodies are the same either way."""
    async with Simulator(seed=0, anchor_date=ANCHOR, cache_size=2) as sim:
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        bodies = []
        for send in ("s1", "s2", "s3", "s1"):
            async with http.get(f"{sim.url}{PATH}?campaign_id=c&send_id={send}&length=5", headers=headers) as resp:
                bodies.append(await resp.read())
        info = sim._model.body.cache_info()
        assert (info.maxsize, info.currsize, info.hits, info.misses) == (2, 2, 0, 4)
        assert bodies[0] == bodies[3]


def test_ids_with_separators_do_not_collide() -> None:
    sim = Simulator(seed=0, anchor_date=ANCHOR)
    assert sim.payload("a|b", "c", 30, END) != sim.payload("a", "b|c", 30, END)
