"""rolewire: role-based secure channels for service-to-service calls.

Processes prove *roles* (by password, pre-shared key or X.509 certificate)
over a hybrid post-quantum handshake, then exchange records sealed with
ChaCha20-Poly1305 or AEGIS-256 by a C core. See README.md and
docs/PROTOCOL.md.
"""

from __future__ import annotations

import logging

from rolewire import logs as _logs
from rolewire.aio import Channel, Server, ServerStats, connect, serve
from rolewire.errors import (
    AuthenticationFailed,
    CertificateRejected,
    ConcurrentUseError,
    ConfigurationError,
    ConnectionClosed,
    Forbidden,
    HandshakeError,
    HandshakeRejected,
    HandshakeTimeout,
    IntegrityLimitExceeded,
    KeyExhausted,
    MalformedRecord,
    NoVerifiedRole,
    PasswordAttemptsExceeded,
    RecordError,
    RecordLayerClosed,
    RecordTooLarge,
    RecordTooOld,
    RemoteCallError,
    ReplayDetected,
    RoleProofInvalid,
    RolewireError,
    ServiceUnavailable,
    UnknownEpoch,
    UnknownOperation,
)
from rolewire.handshake import (
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    HandshakeLimiter,
    HandshakeSuite,
    Initiator,
    Responder,
)
from rolewire.pool import PeerUnavailable, Pool
from rolewire.record import RecordLayer, RecordLimits, Suite
from rolewire.roles import CertificateRole, KeyRole, PasswordRateLimiter, PasswordRole
from rolewire.services import ANY_AUTHENTICATED, UNRESTRICTED, CallContext, Service
from rolewire.session import Session

__version__ = "0.1.0.dev0"

# A library never configures logging; applications attach handlers to
# "rolewire" (events: rolewire.handshake, rolewire.password, rolewire.aio,
# rolewire.audit).
logging.getLogger("rolewire").addHandler(logging.NullHandler())
# ... and one that appends each event's fields to its message, so that a
# plain logging.basicConfig() shows them (rolewire.logs).
_logs.install()

__all__ = [
    "ANY_AUTHENTICATED",
    "UNRESTRICTED",
    "AuthenticationFailed",
    "CallContext",
    "CertificateRejected",
    "CertificateRole",
    "Channel",
    "ConcurrentUseError",
    "ConfigurationError",
    "ConnectionClosed",
    "Forbidden",
    "HandshakeComplete",
    "HandshakeConfig",
    "HandshakeError",
    "HandshakeFailed",
    "HandshakeLimiter",
    "HandshakeRejected",
    "HandshakeSuite",
    "HandshakeTimeout",
    "Initiator",
    "IntegrityLimitExceeded",
    "KeyExhausted",
    "KeyRole",
    "MalformedRecord",
    "NoVerifiedRole",
    "PasswordAttemptsExceeded",
    "PasswordRateLimiter",
    "PasswordRole",
    "PeerUnavailable",
    "Pool",
    "RecordError",
    "RecordLayer",
    "RecordLayerClosed",
    "RecordLimits",
    "RecordTooLarge",
    "RecordTooOld",
    "RemoteCallError",
    "ReplayDetected",
    "Responder",
    "RoleProofInvalid",
    "RolewireError",
    "Server",
    "ServerStats",
    "Service",
    "ServiceUnavailable",
    "Session",
    "Suite",
    "UnknownEpoch",
    "UnknownOperation",
    "__version__",
    "connect",
    "serve",
]
