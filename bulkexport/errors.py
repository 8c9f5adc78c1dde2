"""Exceptions, classified by what the caller does next.

The tree::

    BulkExportError                 base of everything bulkexport raises on purpose
    ├── ConfigError                 bad option, endpoint or run state; fix the call (exit 2)
    │   └── PairsInputError         a bad line in the pairs input, with file and line (exit 2)
    ├── RunStopped                  the run stopped early; ``.summary`` says what is committed
    │   ├── AuthError               Braze answered 401/403: the whole run stops (exit 4)
    │   ├── ExportInterrupted       a signal stopped the run; state is resumable (exit 5)
    │   ├── StorageError            the output cannot be written (disk full, permissions) (exit 6)
    │   └── BrazeUnavailable        Braze did not answer for --max-outage; resumable (exit 8)
    └── RunInProgress               another process holds this run (exit 7)

    AttemptError                    one request failed; never escapes the engine
    ├── RetryableError              worth another attempt after a backoff
    │   ├── RateLimited             429: the whole pool pauses, then retries
    │   ├── ServerError             5xx
    │   ├── TransportError          timeout, reset, refused, truncated transfer
    │   └── BadResponse             200 that is not a successful export of the documented shape
    └── PermanentError              400, 404 and other 4xx: recorded as failed, not retried

Attempt errors carry the HTTP status and Braze's message so that a pair that fails for good
is recorded with the reason a human needs. None of them ever carries the API key: messages
are built from status codes and response bodies, never from request headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .summary import ExportSummary

__all__ = [
    "AttemptError",
    "AuthError",
    "BadResponse",
    "BrazeUnavailable",
    "BulkExportError",
    "ConfigError",
    "ExportInterrupted",
    "PairsInputError",
    "PermanentError",
    "RateLimited",
    "RetryableError",
    "RunInProgress",
    "RunStopped",
    "ServerError",
    "StorageError",
    "TransportError",
]


class BulkExportError(Exception):
    """Base of the errors a caller of the library is expected to handle."""


class ConfigError(BulkExportError):
    """Raised before any request when an option, the endpoint or the run state is unusable."""


class PairsInputError(ConfigError):
    """Raised while reading pairs, before any request is sent, naming file and line."""

    def __init__(self, source: str | Path, line: int, reason: str) -> None:
        self.source = str(source)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.source}:{line}: {reason}")


class RunStopped(BulkExportError):
    """The run stopped before it finished. Everything committed stays committed and the same
    call resumes it; ``summary`` (set by the engine) counts pairs done, failed and pending,
    rows and files so far, so a scheduler need not reach into the engine."""

    summary: ExportSummary | None = None


class RunInProgress(BulkExportError):
    """Raised at once when another process holds the run's lock (same output, same run id).

    Two processes exporting one run would fetch the same pairs and commit them twice; the
    lock is an OS file lock, released by the kernel when its holder dies, so it never goes
    stale. Wait for it with ``wait=True`` (``--wait``).
    """


class BrazeUnavailable(RunStopped):
    """Raised when Braze gave no usable answer (no response, timeouts, 5xx) to any request for
    longer than ``max_outage``: an outage, not a fault of the pairs, which stay pending."""

    def __init__(self, seconds: float, detail: str) -> None:
        self.seconds = seconds
        super().__init__(f"Braze has not answered successfully for {seconds:.0f}s ({detail})")


class AuthError(RunStopped):
    """Raised when Braze rejects the key (401) or its permissions (403).

    Every later request would fail the same way and spend shared budget, so the run stops.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        hint = (
            "check BRAZE_API_KEY and that the endpoint is your workspace's REST endpoint"
            if status == 401
            else "the key needs the sends.data_series permission"
        )
        super().__init__(f"Braze refused the request (HTTP {status}: {message}); {hint}")


class StorageError(RunStopped):
    """Raised when output or state cannot be written. What the run committed is kept; a
    publish it interrupted may have made some of its files visible, which the resume
    replaces (earlier runs' files are never touched)."""


class ExportInterrupted(RunStopped):
    """Raised when SIGINT/SIGTERM stopped the run after committing what was complete."""


class AttemptError(Exception):
    """One request for one pair failed; the engine decides between retry and record."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason if status is None else f"HTTP {status}: {reason}")


class RetryableError(AttemptError):
    """A failure that another attempt may not repeat."""


class RateLimited(RetryableError):
    """HTTP 429; ``pause`` is how long the server asked everyone to wait, if it said."""

    def __init__(self, reason: str, pause: float | None) -> None:
        super().__init__(reason, 429)
        self.pause = pause


class ServerError(RetryableError):
    """HTTP 5xx (or another status that proxies use for transient trouble)."""


class TransportError(RetryableError):
    """No usable HTTP response: timeout, connection reset or refused, truncated transfer."""


class BadResponse(RetryableError):
    """HTTP 200 whose body is not JSON, not the documented shape, or not ``success``."""

    def __init__(self, reason: str, status: int | None = 200) -> None:
        super().__init__(reason, status)


class PermanentError(AttemptError):
    """A status that retrying cannot fix (400, 404, other 4xx)."""
