"""Every error rolewire raises derives from :class:`RolewireError`.

The hierarchy follows h11 and pyca/cryptography: one root, specific
subclasses, and messages that never contain key material, plaintext or
passwords. Catch :class:`RecordError` around ``open`` to drop a bad record
and keep the session; catch :class:`HandshakeError` around a handshake.
"""

from __future__ import annotations

__all__ = [
    "RolewireError",
    "ConfigurationError",
    "RecordError",
    "MalformedRecord",
    "RecordTooLarge",
    "AuthenticationFailed",
    "ReplayDetected",
    "RecordTooOld",
    "UnknownEpoch",
    "KeyExhausted",
    "RecordLayerClosed",
    "ConcurrentUseError",
    "HandshakeError",
]


class RolewireError(Exception):
    """Root of every exception raised by rolewire."""


class ConfigurationError(RolewireError, ValueError):
    """A parameter or configuration value is invalid (wrong key length, bad limit...)."""


# --- record layer -----------------------------------------------------------


class RecordError(RolewireError):
    """A record could not be sealed or opened. The session itself stays usable
    unless the subclass says otherwise."""


class MalformedRecord(RecordError):
    """The record is truncated, has an unknown version or suite, or a counter
    outside the permitted range. Nothing was decrypted."""


class RecordTooLarge(MalformedRecord):
    """The record or plaintext exceeds the maximum record size."""


class AuthenticationFailed(RecordError):
    """The AEAD tag did not verify: the record was forged, corrupted, or sealed
    under another key. The replay window was not changed."""


class ReplayDetected(RecordError):
    """A record with this counter was already accepted in this epoch."""


class RecordTooOld(ReplayDetected):
    """The record's counter lies below the replay window: it can no longer be
    told apart from a replay, so it is refused."""


class UnknownEpoch(RecordError):
    """The record names a key epoch this receiver does not hold (never
    installed, or already retired and wiped)."""


class KeyExhausted(RecordError):
    """The sending key reached its hard limit (messages or bytes). Nothing was
    sealed; the session must rekey before sending more."""


class RecordLayerClosed(RecordError):
    """The record layer was closed and its keys wiped."""


class ConcurrentUseError(RolewireError, RuntimeError):
    """One direction of a record layer was used from two threads at once.

    Sealing (or opening) is serialised per direction; instead of racing on
    the counter, key or replay window, the second caller gets this error.
    Sealing in one thread while opening in another is fine."""


# --- handshake --------------------------------------------------------------


class HandshakeError(RolewireError):
    """The handshake failed. Subclasses (defined with the handshake) say why."""
