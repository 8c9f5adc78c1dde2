"""Logs: one line per notable event on stderr, text for people or JSON for log shippers,
and never the API key, whatever a message, an exception or a traceback carries."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from .inputs import redact_secret

__all__ = ["LEVELS", "setup_logging"]

class _Redact(logging.Filter):
    """Last line of defence: no log record leaves with the key in it, traceback included.

    Uses the library's one redaction rule (whole occurrences of the key), so a short key that
    is refused still cannot garble the message that refuses it.
    """

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secret:
            return True
        message = record.getMessage()
        clean = redact_secret(message, self._secret)
        if clean is not message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secret(record.exc_text, self._secret)
        if record.stack_info:
            record.stack_info = redact_secret(record.stack_info, self._secret)
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


LEVELS = ("debug", "info", "warning", "error")


class _Stderr(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is at each record: the CLI run in-process (tests, a
    notebook) must not keep writing to a stream its caller has since replaced or closed."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(level: str, fmt: str, key: str) -> logging.Handler:
    """Route the ``bulkexport`` logger to stderr; ``key`` is redacted from every record."""
    if level.lower() not in LEVELS:
        level = "info"  # a bad $BULKEXPORT_LOG_LEVEL is reported by resolve(), with exit 2
    handler = _Stderr(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.addFilter(_Redact(key.strip()))
    root = logging.getLogger("bulkexport")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return handler
