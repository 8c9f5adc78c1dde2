"""``ExportConfig.build``, the one gate every option passes: each bound, each cross-check,
the defaults and what a manifest may show. A unit layer under the CLI and library tests."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import UTC, date, datetime
from typing import Any

import pytest

from bulkexport import ConfigError, ExportConfig
from bulkexport.budget import pace
from bulkexport.config import _RANGES, DEFAULT_RATE_LIMIT, DEFAULT_WINDOW

KEY = "0f8b2c6e-3d1a-4e5f-9b7c-2a6d8e4f1c03"
BASE: dict[str, Any] = {"endpoint": "https://rest.iad-01.braze.com", "api_key": KEY}


def build(**options: Any) -> ExportConfig:
    return ExportConfig.build(**BASE, **options)


def test_defaults_and_the_one_pacing_formula() -> None:
    cfg = build(ending_at="2026-11-27")
    assert cfg.ending_at == datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)
    assert cfg.run_id == "2026-11-27" and not cfg.ending_at_default
    assert cfg.rate == pace(1.0, DEFAULT_RATE_LIMIT, DEFAULT_WINDOW, None) == DEFAULT_RATE_LIMIT / 3600
    assert build(share=0.5, max_rate=20.0).rate == 20.0  # the cap wins over half of 69.4/s
    now = build()
    assert now.ending_at_default and now.run_id == now.ending_at.date().isoformat()


def test_the_key_never_shows() -> None:
    cfg = build(table_format="iceberg", catalog_uri="https://catalog/api?token=abc123&warehouse=w")
    for text in (repr(cfg), str(cfg), repr(cfg.describe()), str(cfg.api_key), repr(cfg.api_key)):
        assert KEY not in text
    described = cfg.describe()
    assert "api_key" not in described
    assert described["catalog_uri"] == "https://catalog/api?token=***&warehouse=w"
    assert set(described) == {f.name for f in dataclasses.fields(ExportConfig)} - {"api_key"}


def test_unknown_options_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\): colour, speed"):
        build(speed=1, colour="red")


#: Other options a bound needs to pass the cross-checks (file_rows >= row_group_rows, at least
#: one request an hour).
_COMPANIONS: dict[str, dict[str, Any]] = {
    "rate_limit": {"reserve": 0.0},
    "row_group_rows": {"file_rows": 1_000_000_000},
    "file_rows": {"row_group_rows": 1},
}


@pytest.mark.parametrize(("name", "bounds"), sorted(_RANGES.items()))
def test_every_number_is_bounded(name: str, bounds: tuple[type, float, float, bool]) -> None:
    """Both ends of every range are accepted (unless open) and one step beyond is refused
    with the option's name, as are NaN, infinity, booleans and strings."""
    kind, low, high, low_open = bounds
    companions = _COMPANIONS.get(name, {})
    ends = [high] if low_open else [low, high]
    for value in ends:
        assert getattr(build(**companions, **{name: kind(value)}), name) == kind(value)
    beyond_high = int(high) + 1 if kind is int else high * 1.5
    below_low = low if low_open else (int(low) - 1 if kind is int else low - 0.005)
    for bad in (beyond_high, below_low, math.nan, math.inf, True, "1", None):
        with pytest.raises(ConfigError, match=rf"^{re.escape(name)}\b"):
            build(**companions, **{name: bad})


def test_burst_is_the_controllers_own_unless_given_and_then_bounded() -> None:
    """Without a burst the controller uses a second of the pace, so a small limit needs no
    --burst (a fixed default of 10 used to refuse --rate-limit 5); a burst given is bounded
    like every number, and by the limit."""
    assert build().burst is None
    assert build(rate_limit=5, reserve=0.0).rate_limit == 5
    for value in (1, 1_000_000):
        assert build(rate_limit=1_000_000_000, burst=value).burst == value
    for bad in (0, 1_000_001, math.nan, math.inf, True, "1"):
        with pytest.raises(ConfigError, match=r"^burst\b"):
            build(rate_limit=1_000_000_000, burst=bad)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"burst": 11, "rate_limit": 10}, "burst must not exceed the rate limit"),
        ({"row_group_rows": 100, "file_rows": 99}, "file_rows must be at least row_group_rows"),
        ({"rate_limit": 1, "burst": 1, "window": 7200.0}, "below one request an hour"),
        ({"max_rate": 0.0001}, "below one request an hour"),
        ({"rate_limit": 10, "burst": 1, "reserve": 0.95}, "reserve leaves less than one request per window"),
        ({"max_rate": 0.0}, r"^max_rate must be a number greater than 0"),
        ({"overwrite": 1}, "overwrite must be true or false"),
        ({"state_dir": " "}, "state_dir must be a folder path"),
        ({"table_format": "Delta"}, "table_format must be one of parquet, delta, iceberg"),
        ({"catalog_type": "rest"}, "catalog_type is an Iceberg setting"),
        ({"table_format": "iceberg", "catalog_uri": ""}, "catalog_uri must be a non-empty string"),
        ({"run_id": "../etc"}, "run id '../etc' must be 1-128 characters"),
        ({"run_id": 7}, "run id must be a string, not int"),
        ({"allow_custom_endpoint": "yes"}, "allow_custom_endpoint must be true or false"),
    ],
)
def test_cross_checks(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(**options)


def test_ending_at_forms() -> None:
    """A date means its last second (UTC); every accepted form gives the same instant."""
    want = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)
    for given in ("2026-11-27", "20261127", date(2026, 11, 27), "2026-11-27T23:59:59Z", want):
        assert build(ending_at=given).ending_at == want
    with pytest.raises(ConfigError):
        build(ending_at="yesterday")
