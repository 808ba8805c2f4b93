"""The protocol above the handshake, sans-IO (the h11 / aioquic model).

- :mod:`rolewire.protocol.wire`: every wire format once (frames, call
  messages; the record header re-exported from the record layer).
- :mod:`rolewire.protocol.connection`: :class:`Connection`, the whole
  protocol of one connection (handshake, session, calls, authorization,
  budgets, timers) driven with bytes and time.
- :mod:`rolewire.protocol.events`: what it reports.
- :mod:`rolewire.protocol.transport_secured`:
  :class:`TransportSecuredConnection`, the same core over a channel its
  transport secures (TLS: the baselines of :mod:`rolewire.baselines`).

Transports (:mod:`rolewire.aio`, :mod:`rolewire.transport.memory`, the
baselines' driver) only move bytes, keep time and run handlers. See
docs/architecture.md.
"""

from __future__ import annotations

from rolewire.protocol.connection import (
    Authorizer,
    Connection,
    ConnectionSettings,
    busy_frame,
    reason_name,
    reject_frame,
)
from rolewire.protocol.events import (
    CallFailed,
    CallReceived,
    CallRefused,
    Closed,
    Closing,
    Event,
    Failed,
    HandshakeDone,
    Notified,
    NotifiedBatch,
    OtherMessage,
    Rehandshaked,
    ReplyReceived,
)
from rolewire.protocol.transport_secured import TransportSecuredConnection
from rolewire.protocol.wire import (
    CallDecoder,
    CallMessage,
    ErrorCode,
    FrameDecoder,
    FrameKind,
    MessageType,
)

__all__ = [
    "Authorizer",
    "CallDecoder",
    "CallFailed",
    "CallMessage",
    "CallReceived",
    "CallRefused",
    "Closed",
    "Closing",
    "Connection",
    "ConnectionSettings",
    "ErrorCode",
    "Event",
    "Failed",
    "FrameDecoder",
    "FrameKind",
    "HandshakeDone",
    "MessageType",
    "Notified",
    "NotifiedBatch",
    "OtherMessage",
    "Rehandshaked",
    "ReplyReceived",
    "TransportSecuredConnection",
    "busy_frame",
    "reason_name",
    "reject_frame",
]
