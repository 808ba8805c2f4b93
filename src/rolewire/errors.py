"""Every error rolewire raises derives from :class:`RolewireError`.

The hierarchy follows h11 and pyca/cryptography: one root, specific
subclasses, and messages that never contain key material, plaintext or
passwords. Catch :class:`RecordError` around ``open`` to drop a bad record
and keep the session; catch :class:`HandshakeError` around a handshake.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "CallTimeout",
    "CertificateRejected",
    "ConcurrentUseError",
    "ConfigurationError",
    "ConnectionClosed",
    "Forbidden",
    "HandshakeDecryptError",
    "HandshakeError",
    "HandshakeInternalError",
    "HandshakeMessageTooLarge",
    "HandshakeProtocolError",
    "HandshakeRejected",
    "HandshakeStateError",
    "HandshakeTimeout",
    "IntegrityLimitExceeded",
    "InvalidKeyShare",
    "KeyExhausted",
    "MalformedHandshakeMessage",
    "MalformedRecord",
    "NoCommonSuite",
    "NoVerifiedRole",
    "PasswordAttemptsExceeded",
    "PeerUnresponsive",
    "ProtocolViolation",
    "RecordError",
    "RecordLayerClosed",
    "RecordTooLarge",
    "RecordTooOld",
    "RemoteCallError",
    "ReplayDetected",
    "RoleProofInvalid",
    "RolewireError",
    "ServiceUnavailable",
    "TooManyHandshakes",
    "UnexpectedHandshakeMessage",
    "UnknownEpoch",
    "UnknownOperation",
    "UnsupportedProtocolVersion",
    "WorkerFailed",
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


class IntegrityLimitExceeded(RecordLayerClosed):
    """More records failed to authenticate than the session's integrity
    limit allows: the session closed itself and wiped its keys (the idea of
    RFC 9001's integrity limit; every forged record is a forgery attempt)."""


class ConcurrentUseError(RolewireError, RuntimeError):
    """One direction of a record layer was used from two threads at once.

    Sealing (or opening) is serialised per direction; instead of racing on
    the counter, key or replay window, the second caller gets this error.
    Sealing in one thread while opening in another is fine."""


# --- services ---------------------------------------------------------------


class WorkerFailed(RolewireError):
    """A worker process of :func:`rolewire.aio.serve_workers` did not start
    (its error, or its exit code, is in the message) or did not stop."""


class ProtocolViolation(RolewireError):
    """The peer sent a frame or call message that breaks the protocol."""


class ConnectionClosed(RolewireError, ConnectionError):
    """The connection closed (or was closed) before the operation finished."""


class PeerUnresponsive(ConnectionClosed):
    """The peer stopped answering: a liveness probe got no reply in time
    (the path is dead or the peer hangs). The connection is closed."""


class CallTimeout(RolewireError, TimeoutError):
    """No reply to a request within its timeout (the connection stays
    open; a late reply is dropped). Also a :class:`TimeoutError`."""


class RemoteCallError(RolewireError):
    """The callee answered a request with an error. ``code`` is the
    :class:`rolewire.rpc.ErrorCode`; ``operation`` the operation called."""

    default_code = 3

    def __init__(self, message: str, *, operation: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.code = self.default_code if code is None else code


class Forbidden(RemoteCallError):
    """The callee refused the call: the caller holds none of the roles the
    operation requires, or (unless the service opted into distinct errors)
    there is no such operation. The text names no role; the callee's audit
    log has the detail."""

    default_code = 1


class UnknownOperation(RemoteCallError):
    """The callee has no such operation."""

    default_code = 2


class ServiceUnavailable(RemoteCallError):
    """The callee is shutting down or over its limits."""

    default_code = 5


# --- handshake --------------------------------------------------------------


class HandshakeError(RolewireError):
    """The handshake failed. Subclasses (defined with the handshake) say why."""


# --- handshake failures (rolewire.handshake) ----------------------------------
# Each maps to one reject reason code sent to the peer (docs/PROTOCOL.md,
# "Handshake / Reject"); the mapping lives in rolewire.handshake.reasons.


class HandshakeStateError(HandshakeError, RuntimeError):
    """Local misuse: a handshake object was driven in a way its state does not
    allow (data fed after it finished or failed, ...). A bug in the caller,
    never caused by the peer."""


class HandshakeProtocolError(HandshakeError):
    """The peer broke the handshake protocol (remote error)."""


class MalformedHandshakeMessage(HandshakeProtocolError):
    """A handshake message could not be parsed: truncated, trailing bytes, a
    length or count out of range, an unknown kind or flag."""


class HandshakeMessageTooLarge(MalformedHandshakeMessage):
    """A handshake message is larger than the configured bound (64 KiB by
    default), or carries more certificates or roles than allowed."""


class UnexpectedHandshakeMessage(HandshakeProtocolError):
    """A message of a type that is not allowed in the current state (reordered,
    replayed, or reflected message)."""


class UnsupportedProtocolVersion(HandshakeProtocolError):
    """The peer speaks a protocol version this implementation does not."""


class NoCommonSuite(HandshakeError):
    """The two sides enable no suite in common."""


class InvalidKeyShare(HandshakeProtocolError):
    """A key share failed its checks: bad ML-KEM encapsulation key or
    ciphertext, an X448/X25519 point giving an all-zero secret, a share for
    the wrong group, an illegal suite choice or an invalid J-PAKE message."""


class HandshakeDecryptError(HandshakeError):
    """An encrypted handshake message did not authenticate: it was modified,
    or the two sides do not hold the same transcript (tampering, downgrade,
    replay of an old message)."""


class RoleProofInvalid(HandshakeError):
    """A role proof (key MAC, password confirmation MAC or certificate
    signature) did not verify."""


class CertificateRejected(RoleProofInvalid):
    """A certificate chain did not validate to the role's trust anchors
    (untrusted, expired, not yet valid, wrong key usage, bad CA constraints),
    or its key type is not accepted."""


class NoVerifiedRole(HandshakeError):
    """The handshake verified no role of the peer (or not the required ones),
    and the policy does not allow an anonymous session."""


class PasswordAttemptsExceeded(HandshakeError):
    """Too many failed password attempts from this peer in the window: password
    roles are refused until the cool-down ends (J-PAKE is not run)."""


class HandshakeTimeout(HandshakeError):
    """The handshake did not finish within its time limit."""


class TooManyHandshakes(HandshakeError):
    """The bound on concurrent half-open handshakes is reached."""


class HandshakeInternalError(HandshakeError):
    """Processing a handshake message raised something unexpected (a bug):
    the handshake fails with INTERNAL_ERROR instead of leaving the state
    machine stuck; the cause is logged locally, never sent."""


class HandshakeRejected(HandshakeError):
    """The peer aborted the handshake with a Reject message. ``reason_code``
    holds the code it sent (see rolewire.handshake.RejectReason)."""

    def __init__(self, message: str, reason_code: int) -> None:
        super().__init__(message)
        self.reason_code = reason_code
