"""The rolewire handshake: roles proven by key, password or certificate over a
hybrid post-quantum key exchange (docs/PROTOCOL.md, "Handshake").

Sans-IO (h11 style)::

    init = Initiator(HandshakeConfig(roles=[KeyRole("payment", key)]))
    resp = Responder(HandshakeConfig(roles=[KeyRole("payment", key)]))
    resp.receive_data(init.data_to_send())
    ...  # shuttle bytes until next_event() returns HandshakeComplete

``HandshakeComplete.session`` is the :class:`~rolewire.session.Session`.
"""

from __future__ import annotations

from rolewire.handshake.config import HandshakeConfig
from rolewire.handshake.cookie import CookieChecker
from rolewire.handshake.events import (
    NEED_DATA,
    Event,
    HandshakeComplete,
    HandshakeFailed,
    NeedData,
)
from rolewire.handshake.limiter import HandshakeLimiter, HandshakeSlot, busy_reject
from rolewire.handshake.machine import Handshake, Initiator, Responder, parse_late_reject
from rolewire.handshake.messages import MAX_MESSAGE_SIZE, PROTOCOL_VERSION
from rolewire.handshake.reasons import RejectReason
from rolewire.handshake.suites import DEFAULT_SUITES, HandshakeSuite, KexGroup

__all__ = [
    "DEFAULT_SUITES",
    "MAX_MESSAGE_SIZE",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "CookieChecker",
    "Event",
    "Handshake",
    "HandshakeComplete",
    "HandshakeConfig",
    "HandshakeFailed",
    "HandshakeLimiter",
    "HandshakeSlot",
    "HandshakeSuite",
    "Initiator",
    "KexGroup",
    "NeedData",
    "RejectReason",
    "Responder",
    "busy_reject",
    "parse_late_reject",
]
