"""Run configuration: frozen values, validated once at the edge, defaults in one place.

Everything below the CLI and the library entry points receives an :class:`ExportConfig` that
is already known to be consistent, so no other module re-checks options.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "DEFAULT_LENGTH",
    "DEFAULT_RATE_LIMIT",
    "ApiKey",
    "ExportConfig",
    "check_endpoint",
    "default_run_id",
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
#: Requests allowed at once above the steady pace: small, so a start or a resume after a
#: pause does not spend seconds of budget in one instant.
DEFAULT_BURST = 10
#: Upper bound on requests in flight; the limiter decides how many are really used
#: (rate x latency), this only caps it.
DEFAULT_CONCURRENCY = 64

_BRAZE_HOST = re.compile(r"^rest\.[a-z0-9-]+\.braze\.(com|eu)$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ApiKey:
    """The REST API key, wrapped so that no repr, str, log record or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise ConfigError("the API key is empty (set BRAZE_API_KEY)")
        if value[0] in "\"'" or value[-1] in "\"'":
            # Braze answers 401 for a key wrapped in quotes; say so before spending a request.
            raise ConfigError("the API key is wrapped in quotes; remove them")
        if any(ord(c) < 33 or ord(c) > 126 for c in value):
            raise ConfigError("the API key contains characters that cannot be sent in a header")
        self._value = value

    def reveal(self) -> str:
        """Return the key itself; only the HTTP layer calls this, to build one header."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("ApiKey cannot be pickled")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, *, allow_custom: bool = False) -> str:
    """Return the normalised REST endpoint, or raise :class:`ConfigError`.

    The key travels in a header to this host, so we refuse plain HTTP except on loopback
    (the simulator, a local proxy) and hosts that are not Braze clusters unless the user
    said ``allow_custom`` explicitly.
    """
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"endpoint must be an http(s) URL such as https://rest.iad-01.braze.com, got {url!r}"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("endpoint must not carry a query, fragment or credentials")
    loopback = _is_loopback(host)
    if parts.scheme == "http" and not loopback:
        raise ConfigError("endpoint must use https:// (plain http is allowed only on loopback)")
    if not loopback and not _BRAZE_HOST.match(host) and not allow_custom:
        raise ConfigError(
            f"{host} is not a Braze REST host (rest.<cluster>.braze.com|eu); "
            "pass allow_custom_endpoint / --allow-custom-endpoint if it is a proxy you trust"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def default_run_id(ending_at: datetime) -> str:
    """Nightly jobs rerun on the same day resume the same run: the id is ``ending_at``'s
    date, in the offset it was given in (the day Braze's series ends on)."""
    return ending_at.date().isoformat()


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if (
        not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ConfigError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")


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
    burst: int = DEFAULT_BURST
    max_rate: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    max_pause: float = DEFAULT_WINDOW + 60.0
    # --- requests and retries ---
    request_timeout: float = 60.0
    connect_timeout: float = 10.0
    max_attempts: int = 6
    max_rate_limited: int = 50
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    # --- output ---
    checkpoint_interval: float = 5.0
    checkpoint_rows: int = 32_768
    row_group_rows: int = 65_536
    file_rows: int = 4_194_304
    overwrite: bool = False
    #: local folder for run state when the output is an object store (default ~/.cache/bulkexport)
    state_dir: str | None = None

    @property
    def rate(self) -> float:
        """Steady pace in requests per second before any server feedback."""
        rate = self.share * self.rate_limit / self.window
        return rate if self.max_rate is None else min(rate, self.max_rate)

    def describe(self) -> dict[str, object]:
        """Parameters for manifests and logs: everything but the key."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            if f.name == "api_key":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out

    @classmethod
    def build(
        cls,
        *,
        endpoint: str,
        api_key: str | ApiKey,
        allow_custom_endpoint: bool = False,
        ending_at: datetime | str | None = None,
        run_id: str | None = None,
        **options: object,
    ) -> ExportConfig:
        """Validate user-facing values and return a config; raises :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
        key = api_key if isinstance(api_key, ApiKey) else ApiKey(api_key)
        end = _parse_ending_at(ending_at)
        rid = run_id or default_run_id(end)
        if not _RUN_ID.match(rid):
            raise ConfigError(
                f"run id {rid!r} must be 1-128 characters of letters, digits, '.', '_', '-' "
                "and start with a letter or digit"
            )
        try:
            cfg = cls(
                endpoint=check_endpoint(endpoint, allow_custom=allow_custom_endpoint),
                api_key=key,
                ending_at=end,
                ending_at_default=ending_at is None,
                run_id=rid,
                **options,  # type: ignore[arg-type]
            )
        except TypeError as exc:  # a wrongly typed keyword
            raise ConfigError(str(exc)) from None
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        if not isinstance(self.length, int) or not 1 <= self.length <= 100:
            raise ConfigError(f"length must be an integer from 1 to 100 (Braze's limit), got {self.length!r}")
        for name in (
            "rate_limit",
            "window",
            "burst",
            "concurrency",
            "request_timeout",
            "connect_timeout",
            "max_attempts",
            "max_rate_limited",
            "checkpoint_interval",
            "checkpoint_rows",
            "row_group_rows",
            "file_rows",
            "max_pause",
        ):
            _positive(name, getattr(self, name))
        for name in ("backoff_initial", "backoff_max"):
            _positive(name, getattr(self, name), allow_zero=True)
        if not 0 < self.share <= 1:
            raise ConfigError(f"share must be in (0, 1], got {self.share!r}")
        if not 0 <= self.reserve < 1:
            raise ConfigError(f"reserve must be in [0, 1), got {self.reserve!r}")
        if self.max_rate is not None:
            _positive("max_rate", self.max_rate)
        if self.burst > self.rate_limit:
            raise ConfigError("burst must not exceed the rate limit")
        if self.file_rows < self.row_group_rows:
            raise ConfigError("file_rows must be at least row_group_rows")


def _parse_ending_at(value: datetime | str | None) -> datetime:
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(
                f"ending_at {value!r} is not an ISO-8601 date or datetime (e.g. 2026-11-27T00:00:00Z)"
            ) from None
        if len(text) == 10:  # a bare date means the end of that day
            parsed = parsed + timedelta(days=1) - timedelta(seconds=1)
        value = parsed
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value
