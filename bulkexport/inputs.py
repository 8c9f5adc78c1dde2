"""What a user gives, checked at the edge: the API key, the endpoint, the series' end.

Each check turns a mistake into a :class:`ConfigError` with a one-line message before any
request is sent, and the key is wrapped so that no repr, str, log record or file shows it.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

__all__ = [
    "MAX_LENGTH",
    "MIN_KEY_LENGTH",
    "RETENTION_DAYS",
    "ApiKey",
    "check_endpoint",
    "default_run_id",
    "parse_ending_at",
    "redact_secret",
    "retention_warning",
]

#: Shortest key accepted. Braze REST API keys are 36-character UUIDs; a key much shorter than
#: that is a typo or a placeholder, and a short key could not be told apart from ordinary text
#: when it is redacted from messages.
MIN_KEY_LENGTH = 16
#: Days Braze keeps send analytics after the send.
RETENTION_DAYS = 14
#: Braze's limit on ``length``: the longest series one request may ask for.
MAX_LENGTH = 100

_BRAZE_HOST = re.compile(r"^rest\.[a-z0-9-]+\.braze\.(com|eu)$")
_DNS_NAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?$")
#: Characters that may continue a key: an occurrence of the key inside a longer run of them
#: is not the key (see :func:`redact_secret`).
_KEY_CHARS = "A-Za-z0-9_-"


_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def _unescape_one(m: re.Match[bytes]) -> bytes:
    code = None if m.group(1) is None else int(m.group(1), 16)
    if code is None or code < 0x20 or code in (0x22, 0x5C) or 0xD800 <= code <= 0xDFFF:
        return m.group(0)  # another escape (a backslash pair is taken whole), or one JSON needs
    return chr(code).encode()


def _unescaped(data: bytes) -> bytes:
    """``data`` with each ``\\uXXXX`` escape of a character JSON lets stand as itself
    written as that character (UTF-8): the same JSON value, every other byte as it was
    (numbers, key order, duplicate keys), so nothing a reader stores changes."""
    return _ESCAPE.sub(_unescape_one, data)


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


_SECRET_PARAM = re.compile(r"(?i)([?&;][^=&;#]*(?:pass|secret|token|key|credential|signature)[^=&;#]*=)[^&;#]*")


def redact_userinfo(uri: str) -> str:
    """``uri`` without the secrets it may carry, for manifests and logs: the password of
    its user info and the values of query parameters named like a secret. A catalog URI
    (``postgresql://user:pw@host/db``) is the one setting a user may write a password into."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if parts.password is not None:
        user = netloc.rpartition("@")[0].partition(":")[0]
        netloc = f"{user}:***@{netloc.rpartition('@')[2]}"
    query = _SECRET_PARAM.sub(r"\1***", "?" + parts.query)[1:] if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return uri  # nothing to hide (and urlunsplit would drop the empty host of sqlite:////x)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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
        is absent, which a substring search tells at memory speed.

        JSON may spell any character as an escape (``\\u002d`` for ``-``), so a body with a
        backslash that does not hold the key as it is may still decode to it: it is searched
        again with its ``\\uXXXX`` escapes written as the characters (:func:`_unescaped`:
        the same JSON, every other byte kept, valid JSON or not); if the key is there, that
        spelling is redacted and returned. Bodies without a backslash, the common case, cost
        the one search."""
        if self._raw not in data:
            if b"\\" not in data:
                return data
            plain = _unescaped(data)
            if self._raw not in plain:
                return data
            data = plain
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
        parsed.astimezone(UTC) - timedelta(days=MAX_LENGTH)
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
