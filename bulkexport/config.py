"""Run configuration: frozen values, validated once at the edge, defaults in one place.

Everything below the CLI and the library entry points receives an :class:`ExportConfig` that
is already known to be consistent, so no other module re-checks options.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from .budget import pace
from .errors import ConfigError
from .inputs import MAX_LENGTH, ApiKey, check_endpoint, default_run_id, parse_ending_at, redact_userinfo

__all__ = [
    "DEFAULT_LENGTH",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_OUTAGE",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_ROWS_PER_COMMIT",
    "TABLE_FORMATS",
    "ExportConfig",
]

#: Braze's default limit for /sends/data_series, per workspace and clock hour.
DEFAULT_RATE_LIMIT = 250_000
#: The window that limit is counted over (the clock hour).
DEFAULT_WINDOW = 3600.0
#: Braze keeps send analytics 14 days; one more day absorbs the offset between our UTC
#: ``ending_at`` and the dashboard time zone of the daily buckets. Length costs no extra
#: requests (one request per pair whatever the length), so erring long is free.
DEFAULT_LENGTH = 15
#: Share of each window's budget left untouched for production traffic (see README).
DEFAULT_RESERVE = 0.10
#: How long an outage (nothing but timeouts, refused connections and 5xx, from every pair) is
#: ridden out before the run stops, resumable: long enough for a deploy or a load balancer's
#: failover, short enough that a nightly job does not hold its slot for an hour of nothing.
DEFAULT_MAX_OUTAGE = 300.0
#: Upper bound on requests in flight; the limiter decides how many are really used
#: (rate x latency), this only caps it.
DEFAULT_CONCURRENCY = 64
#: Largest response body read, in bytes. A real response is tens of kilobytes (100 days of
#: every channel stays under a megabyte); the cap only stops a broken or hostile server from
#: costing gigabytes of memory per request in flight.
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
#: Output formats: appended Parquet files, or tables holding the latest value per key.
TABLE_FORMATS = ("parquet", "delta", "iceberg")
#: Rows per commit. A chunk is held in memory while it is planned and applied: merging
#: 2,000,000 send_stats rows date by date peaked at 1.7 GB RSS (Delta) and 1.1 GB (Iceberg)
#: with 500,000 rows a commit, 2.4 GB / 1.3 GB with 1,000,000, and Delta was faster with the
#: smaller chunks (benchmarks/lakehouse_merge.py).
DEFAULT_ROWS_PER_COMMIT = 500_000
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Names the CLI spells differently, for messages a CLI user must recognise.
_CLI_NAMES = {"request_timeout": "request_timeout (--timeout)", "max_body_bytes": "max_body_bytes (--max-body-mb)"}
_HOUR = 3600.0
_DAY = 86_400.0


def _check_number(
    name: str,
    value: object,
    kind: type,
    low: float,
    high: float,
    *,
    low_open: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite ``kind`` within the bounds.

    Every number has an upper bound: an infinite timeout or a billion workers is a mistake,
    and left unchecked it surfaces later as an OverflowError or exhausted memory.
    """
    label = _CLI_NAMES.get(name, name)
    what = "an integer" if kind is int else "a number"
    ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{label} must be {what}, got {value!r}")
    assert isinstance(value, int | float)
    lowest = f"greater than {low:g}" if low_open else f"at least {low:,g}" if kind is float else f"at least {low:,}"
    if math.isnan(value) or (value <= low if low_open else value < low) or value > high:
        bound = f"{high:,}" if kind is int else f"{high:,g}"
        raise ConfigError(f"{label} must be {what} {lowest} and at most {bound}, got {value!r}")


#: name: (kind, lowest, highest, lowest excluded)
_RANGES: dict[str, tuple[type, float, float, bool]] = {
    "length": (int, 1, MAX_LENGTH, False),
    "rate_limit": (int, 1, 1_000_000_000, False),
    "window": (float, 0.0, _DAY, True),
    "share": (float, 0.0, 1.0, True),
    "reserve": (float, 0.0, 0.999, False),
    "concurrency": (int, 1, 1024, False),
    "max_pause": (float, 0.0, _DAY, True),
    "max_outage": (float, 0.0, _DAY, True),
    "request_timeout": (float, 0.0, _HOUR, True),
    "connect_timeout": (float, 0.0, _HOUR, True),
    "max_attempts": (int, 1, 100, False),
    "max_rate_limited": (int, 1, 100_000, False),
    "max_body_bytes": (int, 1024, 2**30, False),
    "backoff_initial": (float, 0.0, _HOUR, False),
    "backoff_max": (float, 0.0, _HOUR, False),
    "checkpoint_interval": (float, 0.01, _HOUR, False),
    "checkpoint_rows": (int, 1, 100_000_000, False),
    "row_group_rows": (int, 1, 100_000_000, False),
    "file_rows": (int, 1, 1_000_000_000, False),
    "rows_per_commit": (int, 1, 100_000_000, False),
}


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """Every knob of one export run; construct through :meth:`build` to get validation."""

    endpoint: str
    api_key: ApiKey = field(repr=False)
    length: int = DEFAULT_LENGTH
    ending_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    #: True when ending_at was not given: a resumed run then keeps the end it started with
    ending_at_default: bool = False
    run_id: str = ""
    # --- pacing (see limiter.py) ---
    rate_limit: int = DEFAULT_RATE_LIMIT
    window: float = DEFAULT_WINDOW
    share: float = 1.0
    reserve: float = DEFAULT_RESERVE
    #: most requests started at once; None: the controller's own (a second of the pace, 69 at
    #: Braze's default; ten until the first answer; see limiter.RateController._capacity_for)
    burst: int | None = None
    max_rate: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    max_pause: float = DEFAULT_WINDOW + 60.0
    #: Braze answering nothing usable for this long stops the run (resumable, exit 8)
    max_outage: float = DEFAULT_MAX_OUTAGE
    # --- requests and retries ---
    request_timeout: float = 60.0
    connect_timeout: float = 10.0
    max_attempts: int = 6
    max_rate_limited: int = 50
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    #: largest response body read; a larger one is a bad response (retried, then failed)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # --- output ---
    checkpoint_interval: float = 5.0
    checkpoint_rows: int = 32_768
    row_group_rows: int = 65_536
    #: A Parquet writer holds each row group's metadata until its file closes (~55 KB a group
    #: for our 48 columns, and the heap it pins): publishing 2,137 staged checkpoints (~1M
    #: pairs) peaked at 118 MB with files of 64 groups, 113 with 32 (~10 MB files of the
    #: simulator's data). A large run's day is hundreds of MB either way: only more files.
    file_rows: int = 2_097_152
    overwrite: bool = False
    #: local folder for run state when the output is an object store (default ~/.cache/bulkexport)
    state_dir: str | None = None
    #: ``parquet`` (appended Hive-partitioned files), or a lakehouse table format holding the
    #: latest value per key (``delta``, ``iceberg``: see :mod:`bulkexport.lakehouse`)
    table_format: str = "parquet"
    #: Iceberg catalog (REST, Glue, Hive, SQL URI); default: an embedded SQLite catalog
    catalog_uri: str | None = None
    #: pyiceberg catalog type, when it cannot tell from ``catalog_uri``
    catalog_type: str | None = None
    #: lakehouse formats: rows merged per commit (a chunk is held in memory while merged)
    rows_per_commit: int = DEFAULT_ROWS_PER_COMMIT

    @property
    def rate(self) -> float:
        """Steady pace in requests per second before any server feedback."""
        return pace(self.share, self.rate_limit, self.window, self.max_rate)

    def describe(self) -> dict[str, object]:
        """Parameters for manifests and logs: everything but the key."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            if f.name == "api_key":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        if self.catalog_uri:
            out["catalog_uri"] = redact_userinfo(self.catalog_uri)
        return out

    @classmethod
    def build(
        cls,
        *,
        endpoint: str,
        api_key: str | ApiKey,
        allow_custom_endpoint: bool = False,
        ending_at: datetime | date | str | None = None,
        run_id: str | None = None,
        **options: object,
    ) -> ExportConfig:
        """Validate user-facing values and return a config; raises :class:`ConfigError`."""
        given = {"endpoint", "api_key", "ending_at", "run_id", "ending_at_default"}
        known = {f.name for f in dataclasses.fields(cls)} - given
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
        key = api_key if isinstance(api_key, ApiKey) else ApiKey(api_key)
        end = parse_ending_at(ending_at)
        if run_id is not None and not isinstance(run_id, str):
            raise ConfigError(f"run id must be a string, not {type(run_id).__name__}")
        rid = run_id if run_id is not None else default_run_id(end)
        if not _RUN_ID.match(rid):
            raise ConfigError(
                f"run id {rid!r} must be 1-128 characters of letters, digits, '.', '_', '-' "
                "and start with a letter or digit"
            )
        if not isinstance(allow_custom_endpoint, bool):
            raise ConfigError(f"allow_custom_endpoint must be true or false, got {allow_custom_endpoint!r}")
        cfg = cls(
            endpoint=check_endpoint(endpoint, allow_custom=allow_custom_endpoint),
            api_key=key,
            ending_at=end,
            ending_at_default=ending_at is None,
            run_id=rid,
            **options,  # type: ignore[arg-type]
        )
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        for name, (kind, low, high, low_open) in _RANGES.items():
            _check_number(name, getattr(self, name), kind, low, high, low_open=low_open)
        if self.max_rate is not None:
            _check_number("max_rate", self.max_rate, float, 0.0, 1_000_000.0, low_open=True)
        if self.burst is not None:
            _check_number("burst", self.burst, int, 1, 1_000_000)
            if self.burst > self.rate_limit:
                raise ConfigError("burst must not exceed the rate limit")
        for name in ("overwrite", "ending_at_default"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.state_dir is not None and (
            not isinstance(self.state_dir, str) or not self.state_dir.strip() or "\0" in self.state_dir
        ):
            raise ConfigError(f"state_dir must be a folder path, got {self.state_dir!r}")
        if self.table_format not in TABLE_FORMATS:
            raise ConfigError(f"table_format must be one of {', '.join(TABLE_FORMATS)}, got {self.table_format!r}")
        for name in ("catalog_uri", "catalog_type"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip() or "\0" in value):
                raise ConfigError(f"{name} must be a non-empty string, got {type(value).__name__}")
            if value is not None and self.table_format != "iceberg":
                raise ConfigError(f"{name} is an Iceberg setting; it needs table_format iceberg")
        if self.file_rows < self.row_group_rows:
            raise ConfigError("file_rows must be at least row_group_rows")
        if self.rate < 1 / _HOUR:
            raise ConfigError(
                f"the pace (share x rate_limit / window, capped by max_rate) is {self.rate:.3g} requests/s, "
                "below one request an hour: the run would never end"
            )
        if (1 - self.reserve) * self.rate_limit < 1:
            raise ConfigError("reserve leaves less than one request per window: the run would never end")
