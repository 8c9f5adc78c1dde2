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
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "DEFAULT_LENGTH",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_OUTAGE",
    "DEFAULT_RATE_LIMIT",
    "MIN_KEY_LENGTH",
    "RETENTION_DAYS",
    "ApiKey",
    "ExportConfig",
    "check_endpoint",
    "default_run_id",
    "parse_ending_at",
    "redact_secret",
    "retention_warning",
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
#: Shortest key accepted. Braze REST API keys are 36-character UUIDs; a key much shorter than
#: that is a typo or a placeholder, and a short key could not be told apart from ordinary text
#: when it is redacted from messages.
MIN_KEY_LENGTH = 16
#: Days Braze keeps send analytics after the send.
RETENTION_DAYS = 14

_BRAZE_HOST = re.compile(r"^rest\.[a-z0-9-]+\.braze\.(com|eu)$")
_DNS_NAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Characters that may continue a key: an occurrence of the key inside a longer run of them
#: is not the key (see :func:`redact_secret`).
_KEY_CHARS = "A-Za-z0-9_-"


def redact_secret(text: str, secret: str) -> str:
    """Return ``text`` with every whole occurrence of ``secret`` replaced by ``***``.

    The one redaction rule of bulkexport, used for every text taken from a response (messages,
    failure reasons, bodies) and by the CLI's log filter. "Whole" means not preceded or followed
    by another key character (letters, digits, ``_``, ``-``): masking bare substrings turned
    every ``k`` of a one-letter key into ``***``, which garbled paths and, by the pattern of
    stars, revealed the key.
    """
    if not secret or secret not in text:  # the common case, at the cost of one substring search
        return text
    pattern = rf"(?<![{_KEY_CHARS}]){re.escape(secret)}(?![{_KEY_CHARS}])"
    return re.sub(pattern, "***", text)


class ApiKey:
    """The REST API key, wrapped so that no repr, str, log record or traceback shows it."""

    __slots__ = ("_raw", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"the API key must be a string, not {type(value).__name__}")
        value = value.strip()
        if not value:
            raise ConfigError("the API key is empty (set BRAZE_API_KEY)")
        if value[0] in "\"'" or value[-1] in "\"'":
            # Braze answers 401 for a key wrapped in quotes; say so before spending a request.
            raise ConfigError("the API key is wrapped in quotes; remove them")
        if any(ord(c) < 33 or ord(c) > 126 for c in value):
            raise ConfigError("the API key contains characters that cannot be sent in a header")
        if len(value) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"the API key is too short ({len(value)} characters): Braze REST API keys are 36-character "
                f"UUIDs, and bulkexport refuses keys shorter than {MIN_KEY_LENGTH} (check BRAZE_API_KEY "
                "or the key file)"
            )
        self._value = value
        self._raw = value.encode()  # for the search in every response body

    def reveal(self) -> str:
        """Return the key itself; only the HTTP layer calls this, to build one header."""
        return self._value

    def redact(self, text: str) -> str:
        """``text`` without the key (see :func:`redact_secret`): for anything a response said."""
        return redact_secret(text, self._value)

    def redact_bytes(self, data: bytes) -> bytes:
        """``data`` without the key, for response bodies; unchanged (same object) when the key
        is absent, which a substring search tells at memory speed."""
        if self._raw not in data:
            return data
        # surrogateescape round-trips any byte, so a body that is not UTF-8 keeps its bytes.
        return self.redact(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_endpoint(url: str, *, allow_custom: bool = False) -> str:
    """Return the normalised REST endpoint (``scheme://host[:port]``), or raise :class:`ConfigError`.

    The key travels in a header to this host, so we refuse plain HTTP except on loopback
    (the simulator, a local proxy) and hosts that are not Braze clusters unless the user
    said ``allow_custom`` explicitly. Anything but the bare root is refused too: a path, a
    query or a fragment would make every request a 404 that still spends budget.
    """
    if not isinstance(url, str):
        raise ConfigError(f"endpoint must be a URL string, not {type(url).__name__}")
    text = url.strip()
    example = "such as https://rest.iad-01.braze.com"
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ConfigError(f"endpoint {text!r} contains spaces or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        reason = "its port must be a number from 1 to 65535" if "port" in str(exc).lower() else str(exc)
        raise ConfigError(f"endpoint {text!r} is not a valid URL: {reason}") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"endpoint must be an http(s) URL {example}, got {text!r}")
    if port == 0:
        raise ConfigError(f"endpoint {text!r} is not a valid URL: its port must be a number from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("endpoint must not carry credentials (the key comes from BRAZE_API_KEY)")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ConfigError(f"endpoint must not carry a query or a fragment; give the bare REST endpoint, {example}")
    if parts.path not in ("", "/"):
        raise ConfigError(
            f"endpoint must be the bare REST endpoint, {example}, without a path (got {parts.path!r}): "
            "bulkexport adds /sends/data_series itself"
        )
    if not _is_ip(host) and not _DNS_NAME.match(host):
        raise ConfigError(f"endpoint host {host!r} is not a valid host name (write an IDN host in its xn-- form)")
    loopback = _is_loopback(host)
    if parts.scheme == "http" and not loopback:
        raise ConfigError("endpoint must use https:// (plain http is allowed only on loopback)")
    if not loopback and not _BRAZE_HOST.match(host) and not allow_custom:
        raise ConfigError(
            f"{host} is not a Braze REST host (rest.<cluster>.braze.com|eu); "
            "pass allow_custom_endpoint / --allow-custom-endpoint if it is a proxy you trust"
        )
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}{'' if port is None else f':{port}'}"


def default_run_id(ending_at: datetime) -> str:
    """Nightly jobs rerun on the same day resume the same run: the id is ``ending_at``'s
    date, in the offset it was given in (the day Braze's series ends on)."""
    return ending_at.date().isoformat()


def _end_of_day(day: date) -> datetime:
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


def parse_ending_at(value: datetime | date | str | None) -> datetime:
    """The end of the series as an aware datetime, by one rule for every spelling.

    A date-only value -- a :class:`date`, or any date-only form ``date.fromisoformat``
    accepts (``20250301``, ``2025-03-01``, ``2025-W09-6``) -- means that day's last second,
    23:59:59 UTC (a date has no offset). A datetime keeps its own time and offset; without an
    offset it is UTC. ``None`` means now.
    """
    if value is None:
        return datetime.now(UTC).replace(microsecond=0)
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = _end_of_day(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            parsed = _end_of_day(date.fromisoformat(text))
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise ConfigError(
                    f"ending_at {value!r} is not an ISO-8601 date or datetime "
                    "(e.g. 2026-11-27, or 2026-11-27T06:00:00Z)"
                ) from None
    else:
        raise ConfigError(f"ending_at must be a date, a datetime or an ISO-8601 string, not {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:  # the series start and the UTC instant must exist (year 1 and 9999 are edges)
        parsed.astimezone(UTC) - timedelta(days=_MAX_LENGTH)
        parsed.astimezone(UTC) + timedelta(days=1)
    except OverflowError:
        raise ConfigError(f"ending_at {value!s} is out of range") from None
    return parsed


def retention_warning(ending_at: datetime, length: int, now: datetime | None = None) -> str | None:
    """A sentence when the requested series lies wholly outside what Braze can hold (it ends
    more than 14 days ago, or starts after now): every request would come back empty."""
    now = now or datetime.now(UTC)
    if ending_at < now - timedelta(days=RETENTION_DAYS):
        return (
            f"the series ends {ending_at.date().isoformat()}, more than {RETENTION_DAYS} days ago: Braze keeps "
            f"send analytics {RETENTION_DAYS} days, so the requests will most likely return no data"
        )
    start = ending_at - timedelta(days=length)
    if start >= now:
        return (
            f"the series starts {(start + timedelta(seconds=1)).date().isoformat()}, after now: "
            "the requests will return no data"
        )
    return None


_MAX_LENGTH = 100  # Braze's limit on length
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
    "length": (int, 1, _MAX_LENGTH, False),
    "rate_limit": (int, 1, 1_000_000_000, False),
    "window": (float, 0.0, _DAY, True),
    "share": (float, 0.0, 1.0, True),
    "reserve": (float, 0.0, 0.999, False),
    "burst": (int, 1, 1_000_000, False),
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
    burst: int = DEFAULT_BURST
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
        for name in ("overwrite", "ending_at_default"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.state_dir is not None and (
            not isinstance(self.state_dir, str) or not self.state_dir.strip() or "\0" in self.state_dir
        ):
            raise ConfigError(f"state_dir must be a folder path, got {self.state_dir!r}")
        if self.burst > self.rate_limit:
            raise ConfigError("burst must not exceed the rate limit")
        if self.file_rows < self.row_group_rows:
            raise ConfigError("file_rows must be at least row_group_rows")
        if self.rate < 1 / _HOUR:
            raise ConfigError(
                f"the pace (share x rate_limit / window, capped by max_rate) is {self.rate:.3g} requests/s, "
                "below one request an hour: the run would never end"
            )
        if (1 - self.reserve) * self.rate_limit < 1:
            raise ConfigError("reserve leaves less than one request per window: the run would never end")
