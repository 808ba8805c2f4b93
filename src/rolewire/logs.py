"""Log lines readable without configuration, and a JSON formatter.

Every rolewire log event carries structured fields in ``extra`` (``event``,
``peer``, ``reason``, ``peer_roles``, ...). So that a plain
``logging.basicConfig()`` shows them, the package's ``rolewire`` logger has
one handler, installed when rolewire is imported, that appends the fields
to the message of each record passing through it, before the application's
handlers (on the root logger) format it::

    handshake failed (event=handshake_failed peer=127.0.0.1:50312 side=responder reason=TIMEOUT)

For log shippers, :class:`JsonFormatter` writes one JSON object per line
with the original message and every field as its own key::

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("rolewire").addHandler(handler)

What goes into the fields is what the code logs: addresses, role names,
reasons, counters. Never keys, passwords, bodies or whole transcript hashes
(tests/test_observability.py searches the log output of real handshakes and
calls for the key material).
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["JsonFormatter", "event_fields"]

# Attributes every LogRecord has; anything else came in through ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", (), None))) | {
    "message", "asctime", "taskName", "rolewire_text", "rolewire_fields"}


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (those passed in ``extra``)."""
    fields = getattr(record, "rolewire_fields", None)
    if fields is not None:
        return dict(fields)
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _text(value: Any) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value)
    return str(value)


class _EventFields(logging.Handler):
    """Appends a record's fields to its message (once), so that the
    application's handlers show them whatever their format."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)

    def handle(self, record: logging.LogRecord) -> bool:  # no lock needed
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "rolewire_text"):
            return
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        text = record.getMessage()
        record.rolewire_text = text
        record.rolewire_fields = fields
        shown = " ".join(f"{k}={_text(v)}" for k, v in fields.items()
                         if v is not None and v != "" and v != [])
        if shown:
            record.msg = f"{text} ({shown})"
            record.args = ()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message`` (without the appended fields), every structured
    field, and ``exception`` if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        text = getattr(record, "rolewire_text", None)
        if text is None:
            text = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": text,
        }
        for key, value in event_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def install() -> None:
    """Install the field-appending handler on the ``rolewire`` logger
    (idempotent; done when rolewire is imported)."""
    logger = logging.getLogger("rolewire")
    if not any(isinstance(h, _EventFields) for h in logger.handlers):
        logger.handlers.insert(0, _EventFields())
