"""Deterministic ground truth for the simulated ``/sends/data_series`` endpoint.

Everything here is a pure function of ``(seed, anchor_date, campaign_id, send_id, day)``:
tests compare what a client stored against :meth:`DataModel.payload`, so a value must never
depend on the process (no ``hash()``), on call order, or on the requested window. Each day
is drawn from its own RNG, seeded from the pair and the date, so two requests whose windows
overlap agree on every shared day.

Days past the retention come in the shapes Braze uses, one per pair (:data:`QUIET_STYLES`):
missing from ``data``, ``{"time": ...}`` alone, ``{"time": ..., "messages": {}}``, or
``"messages": {}`` with day-level numbers, zeros on some days and, on others, conversions and
revenue that keep arriving after the messages stopped (with ``unique_recipients`` and the
``*_by_send_time`` counts at 0: nothing was sent that day).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import orjson

RETENTION_DAYS = 14
"""Braze keeps send analytics this many days after the send (day 0 .. day 13)."""

MAX_SEND_AGE = 20
"""A pair's send date lies 0..MAX_SEND_AGE days before the anchor date."""

QUIET_STYLES = ("missing", "time_only", "empty_messages", "totals")
"""How a pair's days past the retention are served, with their cumulative probabilities."""
_QUIET_CUTS = (0.3, 0.45, 0.6, 1.0)

_PUSH = (
    "sent", "delivered", "undelivered", "delivery_failed",
    "direct_opens", "total_opens", "bounces", "body_clicks",
)  # fmt: skip
_IN_APP = ("impressions", "clicks", "first_button_clicks", "second_button_clicks")

CHANNEL_METRICS: dict[str, tuple[str, ...]] = {
    "ios_push": _PUSH,
    "android_push": _PUSH,
    "kindle_push": _PUSH,
    "web_push": _PUSH,
    "email": (
        "sent", "opens", "unique_opens", "clicks", "unique_clicks",
        "unsubscribes", "bounces", "delivered", "reported_spam",
    ),
    "sms": (
        "sent", "sent_to_carrier", "delivered", "rejected", "delivery_failed",
        "undelivered", "clicks", "opt_out", "help",
    ),
    "whats_app": ("sent", "delivered", "failed", "read"),
    "webhook": ("sent", "errors"),
    "content_cards": (
        "sent", "total_impressions", "unique_impressions", "total_clicks",
        "unique_clicks", "total_dismissals", "unique_dismissals",
    ),
    "in_app_message": _IN_APP,
    "trigger_in_app_message": _IN_APP,
}  # fmt: skip
"""The documented send metrics of each channel (BRAZE_API.md), in documented order."""

CHANNELS_WITH_API_ID = frozenset({"ios_push", "android_push", "kindle_push", "web_push", "email"})

# How each metric derives from an earlier one: (metric, parent, low, high) means
# metric = parent * uniform(low, high). ``None`` is the channel's daily volume. Listed in
# dependency order, which differs from the documented output order.
_Rule = tuple[str, str | None, float, float]
_PUSH_RULES: tuple[_Rule, ...] = (
    ("sent", None, 1.0, 1.0),
    ("delivered", "sent", 0.85, 0.99),
    ("undelivered", "sent", 0.0, 0.05),
    ("delivery_failed", "sent", 0.0, 0.03),
    ("bounces", "sent", 0.0, 0.02),
    ("direct_opens", "delivered", 0.01, 0.08),
    ("total_opens", "direct_opens", 1.0, 2.5),
    ("body_clicks", "delivered", 0.0, 0.05),
)
_IN_APP_RULES: tuple[_Rule, ...] = (
    ("impressions", None, 1.0, 1.0),
    ("clicks", "impressions", 0.0, 0.2),
    ("first_button_clicks", "clicks", 0.0, 0.6),
    ("second_button_clicks", "clicks", 0.0, 0.3),
)
_RULES: dict[str, tuple[_Rule, ...]] = {
    "ios_push": _PUSH_RULES,
    "android_push": _PUSH_RULES,
    "kindle_push": _PUSH_RULES,
    "web_push": _PUSH_RULES,
    "email": (
        ("sent", None, 1.0, 1.0),
        ("delivered", "sent", 0.9, 0.99),
        ("bounces", "sent", 0.0, 0.03),
        ("opens", "delivered", 0.1, 0.8),
        ("unique_opens", "opens", 0.5, 1.0),
        ("clicks", "unique_opens", 0.02, 0.3),
        ("unique_clicks", "clicks", 0.6, 1.0),
        ("unsubscribes", "delivered", 0.0, 0.004),
        ("reported_spam", "delivered", 0.0, 0.0005),
    ),
    "sms": (
        ("sent", None, 1.0, 1.0),
        ("sent_to_carrier", "sent", 0.97, 1.0),
        ("delivered", "sent_to_carrier", 0.9, 0.99),
        ("rejected", "sent", 0.0, 0.02),
        ("delivery_failed", "sent", 0.0, 0.02),
        ("undelivered", "sent", 0.0, 0.03),
        ("clicks", "delivered", 0.0, 0.1),
        ("opt_out", "delivered", 0.0, 0.01),
        ("help", "delivered", 0.0, 0.002),
    ),
    "whats_app": (
        ("sent", None, 1.0, 1.0),
        ("delivered", "sent", 0.9, 0.99),
        ("failed", "sent", 0.0, 0.05),
        ("read", "delivered", 0.3, 0.9),
    ),
    "webhook": (("sent", None, 1.0, 1.0), ("errors", "sent", 0.0, 0.02)),
    "content_cards": (
        ("sent", None, 1.0, 1.0),
        ("total_impressions", "sent", 0.2, 1.5),
        ("unique_impressions", "total_impressions", 0.5, 1.0),
        ("total_clicks", "unique_impressions", 0.0, 0.2),
        ("unique_clicks", "total_clicks", 0.6, 1.0),
        ("total_dismissals", "unique_impressions", 0.0, 0.3),
        ("unique_dismissals", "total_dismissals", 0.7, 1.0),
    ),
    "in_app_message": _IN_APP_RULES,
    "trigger_in_app_message": _IN_APP_RULES,
}

# The undocumented additions served with ``extras=True``: real Braze adds channels, metrics
# and keys over time, and clients must keep them rather than crash or drop them.
EXTRA_CHANNEL = "line"
EXTRA_CHANNEL_METRICS = ("sent", "delivered", "friend_adds")
EXTRA_EMAIL_METRIC = "amp_opens"
EXTRA_IOS_KEYS = ("carousel_slide_1_Summer Sale_click", "notif_button_2_Buy/Now_click")
EXTRA_DAY_FIELD = "conversions_by_open"


def _rng(seed: int, *parts: str | int) -> random.Random:
    """An RNG derived from stable bytes: ``hash()`` is salted per process, blake2b is not.

    Parts are length-prefixed because ids may contain any ASCII character, separators
    included, and ``("a|b", "c")`` must not collide with ``("a", "b|c")``.
    """
    h = hashlib.blake2b(digest_size=16)
    for part in (seed, *parts):
        raw = str(part).encode()
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return random.Random(int.from_bytes(h.digest(), "big"))


def _revenue(value: float) -> float | int:
    """Braze serves a zero revenue as the integer ``0``; clients must keep a float column."""
    cents = round(value, 2)
    return cents if cents else 0


def _conversion_keys(conversion_events: int) -> list[str]:
    keys = ["conversions", "conversions_by_send_time"]
    for n in range(1, conversion_events + 1):
        keys += [f"conversions{n}", f"conversions{n}_by_send_time"]
    return keys


@dataclass(frozen=True, slots=True)
class _Variation:
    name: str
    api_id: str | None
    share: float


@dataclass(frozen=True, slots=True)
class _Pair:
    """What stays fixed for one (campaign_id, send_id) across all its days."""

    send_date: date
    volume: float
    channels: dict[str, tuple[_Variation, ...]]
    conversion_events: int
    control_group: bool
    quiet: str  # one of QUIET_STYLES
    has_extras: bool


class DataModel:
    """The simulated workspace: a pure function from request parameters to a payload."""

    def __init__(self, seed: int, anchor_date: date, cache_size: int = 4096) -> None:
        self.seed = seed
        self.anchor_date = anchor_date
        # Bound per instance (not a decorated method) so the cache dies with the model and
        # never mixes seeds; benchmarks hammer the same pairs, so rendering once pays off.
        self.body = functools.lru_cache(maxsize=cache_size)(self._render)
        self._pair = functools.lru_cache(maxsize=cache_size)(self._make_pair)

    def _render(self, campaign_id: str, send_id: str, length: int, ending_day: date, extras: bool) -> bytes:
        return orjson.dumps(self.payload(campaign_id, send_id, length, ending_day, extras))

    def send_date(self, campaign_id: str, send_id: str) -> date:
        return self._pair(campaign_id, send_id).send_date

    def payload(
        self, campaign_id: str, send_id: str, length: int, ending_day: date, extras: bool
    ) -> dict[str, Any]:
        """The response body for a validated request; a fresh dict on every call."""
        pair = self._pair(campaign_id, send_id)
        send_ord = pair.send_date.toordinal()
        retained_until = send_ord + RETENTION_DAYS - 1
        # Work on ordinals: a window far in the past or future must not overflow ``date``.
        first = max(ending_day.toordinal() - length + 1, send_ord)
        last = min(ending_day.toordinal(), self.anchor_date.toordinal())
        data: list[dict[str, Any]] = []
        for ordinal in range(first, last + 1):
            day = date.fromordinal(ordinal)
            if ordinal <= retained_until:
                data.append(self._day(campaign_id, send_id, pair, day, extras))
            elif pair.quiet != "missing":
                data.append(self._quiet_day(campaign_id, send_id, pair, day, extras))
        return {"message": "success", "data": data}

    def _quiet_day(self, campaign_id: str, send_id: str, pair: _Pair, day: date, extras: bool) -> dict[str, Any]:
        """A day past the retention: nothing but ``time``, or day totals without messages."""
        result: dict[str, Any] = {"time": day.isoformat()}
        if pair.quiet == "time_only":
            return result
        result["messages"] = {}
        if pair.quiet == "empty_messages":
            return result
        rng = _rng(self.seed, "quiet", campaign_id, send_id, day.toordinal())
        shape = rng.random()
        if shape < 1 / 3:  # the shortest zero day seen: two fields
            result.update(conversions=0, unique_recipients=0)
            return result
        keys = _conversion_keys(pair.conversion_events)
        if shape < 2 / 3:  # every field, all zero
            result.update(dict.fromkeys(keys, 0), unique_recipients=0, revenue=0)
        else:  # late conversions: attributed to this day, to no send of this day
            age = (day - pair.send_date).days
            conversions = rng.randint(1, max(1, int(pair.volume * 0.02 / age)))
            for key in keys:
                if key.endswith("_by_send_time"):
                    result[key] = 0
                else:
                    result[key] = conversions if key == "conversions" else int(conversions * rng.random())
            result["unique_recipients"] = 0
            result["revenue"] = _revenue(conversions * rng.uniform(1.0, 80.0))
        if extras and pair.has_extras:
            extra = _rng(self.seed, "extras", campaign_id, send_id, day.toordinal())
            result[EXTRA_DAY_FIELD] = int(result["conversions"] * extra.uniform(0.0, 0.5))
        return result

    def _make_pair(self, campaign_id: str, send_id: str) -> _Pair:
        campaign = _rng(self.seed, "campaign", campaign_id)
        conversion_events = campaign.randint(0, 3)
        control_group = campaign.random() < 0.5

        rng = _rng(self.seed, "pair", campaign_id, send_id)
        send_date = self.anchor_date - timedelta(days=rng.randint(0, MAX_SEND_AGE))
        # Mostly 100 .. ~3M a day; a few huge sends exceed 2**31 to catch int32 columns.
        exponent = rng.uniform(9.4, 9.8) if rng.random() < 0.02 else rng.uniform(2.0, 6.5)
        names = rng.sample(sorted(CHANNEL_METRICS), rng.randint(1, 3))
        channels: dict[str, tuple[_Variation, ...]] = {}
        for channel in names:
            count = rng.randint(1, 3)
            shares = [rng.uniform(0.5, 1.5) for _ in range(count)]
            variations = []
            for i, share in enumerate(shares, start=1):
                api_id = None
                if channel in CHANNELS_WITH_API_ID:
                    # Variation ids belong to the campaign's message, not to one send.
                    digest = _rng(self.seed, "variation", campaign_id, channel, i)
                    api_id = f"var_{digest.getrandbits(48):012x}"
                variations.append(_Variation(f"Variant {i}", api_id, share / sum(shares)))
            channels[channel] = tuple(variations)
        return _Pair(
            send_date=send_date,
            volume=10**exponent,
            channels=channels,
            conversion_events=conversion_events,
            control_group=control_group,
            quiet=QUIET_STYLES[bisect.bisect(_QUIET_CUTS, rng.random())],
            has_extras=rng.random() < 1 / 3,
        )

    def _day(self, campaign_id: str, send_id: str, pair: _Pair, day: date, extras: bool) -> dict[str, Any]:
        rng = _rng(self.seed, "day", campaign_id, send_id, day.toordinal())
        age = (day - pair.send_date).days
        # Sends land on the send day; later days carry the tail of opens and conversions.
        decay = 1.0 if age == 0 else 0.25 / age
        keys = _conversion_keys(pair.conversion_events)
        totals = dict.fromkeys(["unique_recipients", *keys], 0)
        revenue = 0.0
        messages: dict[str, list[dict[str, Any]]] = {}
        for channel, variations in pair.channels.items():
            entries = []
            for variation in variations:
                volume = pair.volume * variation.share * decay * rng.uniform(0.8, 1.2)
                entry = self._variation(rng, channel, variation, volume, keys)
                for key in totals:
                    totals[key] += entry[key]
                revenue += entry["revenue"]
                entries.append(entry)
            if pair.control_group:
                enrolled = int(pair.volume * decay * rng.uniform(0.05, 0.15))
                control: dict[str, Any] = {
                    "variation_name": "Control Group",
                    "enrolled": enrolled,
                    "unique_recipients": enrolled,
                }
                control.update(_outcomes(rng, enrolled, keys))
                entries.append(control)
            messages[channel] = entries
        result: dict[str, Any] = {"time": day.isoformat(), "messages": messages}
        result.update((key, totals[key]) for key in keys)
        result["unique_recipients"] = totals["unique_recipients"]
        result["revenue"] = _revenue(revenue)
        if extras and pair.has_extras:
            self._add_extras(campaign_id, send_id, day, result)
        return result

    @staticmethod
    def _variation(
        rng: random.Random, channel: str, variation: _Variation, volume: float, keys: list[str]
    ) -> dict[str, Any]:
        values: dict[str, int] = {}
        for metric, parent, low, high in _RULES[channel]:
            base = volume if parent is None else values[parent]
            values[metric] = int(base * rng.uniform(low, high))
        entry: dict[str, Any] = {"variation_name": variation.name}
        if variation.api_id is not None:
            entry["variation_api_id"] = variation.api_id
        entry.update((metric, values[metric]) for metric in CHANNEL_METRICS[channel])
        reach = values.get("delivered", values.get("impressions", values.get("sent", 0)))
        recipients = int(reach * rng.uniform(0.9, 1.0))
        entry["unique_recipients"] = recipients
        entry.update(_outcomes(rng, recipients, keys))
        return entry

    def _add_extras(self, campaign_id: str, send_id: str, day: date, result: dict[str, Any]) -> None:
        # A separate RNG, so switching extras on never changes a documented value.
        rng = _rng(self.seed, "extras", campaign_id, send_id, day.toordinal())
        messages: dict[str, list[dict[str, Any]]] = result["messages"]
        for channel, entries in messages.items():
            for entry in entries:
                if "enrolled" in entry:
                    continue
                if channel == "email":
                    entry[EXTRA_EMAIL_METRIC] = int(entry["opens"] * rng.uniform(0.0, 0.3))
                elif channel == "ios_push":
                    for key in EXTRA_IOS_KEYS:
                        entry[key] = int(entry["body_clicks"] * rng.uniform(0.0, 0.5))
        sent = rng.randint(0, 50_000)
        delivered = int(sent * rng.uniform(0.9, 1.0))
        messages[EXTRA_CHANNEL] = [
            {"variation_name": "Variant 1", "sent": sent, "delivered": delivered,
             "friend_adds": int(delivered * rng.uniform(0.0, 0.05))}
        ]  # fmt: skip
        result[EXTRA_DAY_FIELD] = int(result["conversions"] * rng.uniform(0.0, 0.5))


def _outcomes(rng: random.Random, recipients: int, keys: list[str]) -> dict[str, Any]:
    """Revenue and conversion counts, shared by variations and control groups."""
    conversions = int(recipients * rng.uniform(0.0, 0.05))
    out: dict[str, Any] = {}
    # About 30% zero, served as int 0, so clients meet both JSON number shapes.
    out["revenue"] = 0 if rng.random() < 0.3 else _revenue(conversions * rng.uniform(1.0, 80.0))
    for key in keys:
        if key == "conversions":
            out[key] = conversions
        elif key.endswith("_by_send_time"):
            out[key] = int(out[key.removesuffix("_by_send_time")] * rng.uniform(0.5, 1.0))
        else:
            out[key] = int(conversions * rng.uniform(0.0, 1.0))
    return out
