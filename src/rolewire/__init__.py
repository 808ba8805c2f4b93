"""rolewire: role-based secure channels for service-to-service calls.

Processes prove *roles* (by password, pre-shared key or X.509 certificate)
over a hybrid post-quantum handshake, then exchange records sealed with
ChaCha20-Poly1305 or AEGIS-256 by a C core. See README.md and
docs/PROTOCOL.md.
"""

from __future__ import annotations

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
from rolewire.record import RecordLayer, RecordLimits, Suite

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
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
