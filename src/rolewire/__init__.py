"""rolewire: role-based secure channels for service-to-service calls.

Processes prove *roles* (by password, pre-shared key or X.509 certificate)
over a hybrid post-quantum handshake, then exchange records sealed with
ChaCha20-Poly1305 or AEGIS-256 by a C core. See README.md and
docs/PROTOCOL.md.
"""

from __future__ import annotations

import logging

from rolewire.errors import (
    AuthenticationFailed,
    ConcurrentUseError,
    ConfigurationError,
    HandshakeError,
    KeyExhausted,
    MalformedRecord,
    RecordError,
    RecordLayerClosed,
    RecordTooLarge,
    RecordTooOld,
    ReplayDetected,
    RolewireError,
    UnknownEpoch,
)
from rolewire.aio import Channel, Server, ServerStats, connect, serve
from rolewire.errors import (
    CertificateRejected,
    ConnectionClosed,
    Forbidden,
    HandshakeRejected,
    HandshakeTimeout,
    NoVerifiedRole,
    PasswordAttemptsExceeded,
    RemoteCallError,
    RoleProofInvalid,
    ServiceUnavailable,
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
from rolewire.record import RecordLayer, RecordLimits, Suite
from rolewire.roles import CertificateRole, KeyRole, PasswordRateLimiter, PasswordRole
from rolewire.services import ANY_AUTHENTICATED, UNRESTRICTED, CallContext, Service
from rolewire.session import Session

__version__ = "0.1.0.dev0"

# A library never configures logging; applications attach handlers to
# "rolewire" (events: rolewire.handshake, rolewire.password, rolewire.aio,
# rolewire.audit).
logging.getLogger("rolewire").addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "ANY_AUTHENTICATED",
    "Channel",
    "Server",
    "ServerStats",
    "connect",
    "serve",
    "UNRESTRICTED",
    "CallContext",
    "CertificateRejected",
    "CertificateRole",
    "ConnectionClosed",
    "Forbidden",
    "HandshakeComplete",
    "HandshakeConfig",
    "HandshakeFailed",
    "HandshakeLimiter",
    "HandshakeRejected",
    "HandshakeSuite",
    "HandshakeTimeout",
    "Initiator",
    "KeyRole",
    "NoVerifiedRole",
    "PasswordAttemptsExceeded",
    "PasswordRateLimiter",
    "PasswordRole",
    "RemoteCallError",
    "Responder",
    "RoleProofInvalid",
    "Service",
    "ServiceUnavailable",
    "Session",
    "UnknownOperation",
    "AuthenticationFailed",
    "ConcurrentUseError",
    "ConfigurationError",
    "HandshakeError",
    "KeyExhausted",
    "MalformedRecord",
    "RecordError",
    "RecordLayer",
    "RecordLayerClosed",
    "RecordLimits",
    "RecordTooLarge",
    "RecordTooOld",
    "ReplayDetected",
    "RolewireError",
    "Suite",
    "UnknownEpoch",
]
