"""Reject reason codes (one byte in a Reject message) and the mapping from
local exceptions to codes (docs/PROTOCOL.md, "Reject codes")."""

from __future__ import annotations

import enum

from rolewire import errors

__all__ = ["AUTHENTICATION_REASONS", "RejectReason", "reason_for", "wire_reason"]


class RejectReason(enum.IntEnum):
    #: A message could not be parsed.
    DECODE_ERROR = 1
    #: A message type not allowed in the current state.
    UNEXPECTED_MESSAGE = 2
    #: The Hello's protocol version is not supported.
    UNSUPPORTED_VERSION = 3
    #: No suite in common.
    NO_COMMON_SUITE = 4
    #: A key share, suite choice or J-PAKE message failed its checks.
    ILLEGAL_PARAMETER = 5
    #: An encrypted handshake message did not authenticate (tampering, replay,
    #: downgrade: the two transcripts differ).
    DECRYPT_ERROR = 6
    #: A role proof did not verify. The same code for key, password and
    #: signature proofs, and it never names the role.
    AUTH_FAILED = 7
    #: A certificate chain did not validate to the role's anchors.
    CERTIFICATE_REJECTED = 8
    #: No role (or not every required role) of the peer was verified.
    NO_SHARED_ROLE = 9
    #: Password attempts from this peer are locked out for a while.
    RATE_LIMITED = 10
    #: The handshake took too long.
    TIMEOUT = 11
    #: Too many handshakes in progress; try again later.
    BUSY = 12
    #: A message exceeded the size bound.
    MESSAGE_TOO_LARGE = 13
    #: Anything else (never carries detail).
    INTERNAL_ERROR = 14


_MAP: list[tuple[type[BaseException], RejectReason]] = [
    (errors.HandshakeMessageTooLarge, RejectReason.MESSAGE_TOO_LARGE),
    (errors.MalformedHandshakeMessage, RejectReason.DECODE_ERROR),
    (errors.UnexpectedHandshakeMessage, RejectReason.UNEXPECTED_MESSAGE),
    (errors.UnsupportedProtocolVersion, RejectReason.UNSUPPORTED_VERSION),
    (errors.NoCommonSuite, RejectReason.NO_COMMON_SUITE),
    (errors.InvalidKeyShare, RejectReason.ILLEGAL_PARAMETER),
    (errors.HandshakeDecryptError, RejectReason.DECRYPT_ERROR),
    (errors.CertificateRejected, RejectReason.CERTIFICATE_REJECTED),
    (errors.RoleProofInvalid, RejectReason.AUTH_FAILED),
    (errors.NoVerifiedRole, RejectReason.NO_SHARED_ROLE),
    (errors.PasswordAttemptsExceeded, RejectReason.RATE_LIMITED),
    (errors.HandshakeTimeout, RejectReason.TIMEOUT),
    (errors.TooManyHandshakes, RejectReason.BUSY),
]


#: Local reasons that all go on the wire as AUTH_FAILED: to a peer that has
#: not authenticated, "no such role", "wrong proof", "foreign CA" and "the
#: password budget refused" must look the same (docs/PROTOCOL.md, "Role
#: privacy"). The local event and log keep the precise one.
AUTHENTICATION_REASONS = frozenset({RejectReason.AUTH_FAILED, RejectReason.CERTIFICATE_REJECTED,
                                    RejectReason.NO_SHARED_ROLE, RejectReason.RATE_LIMITED})


def wire_reason(code: RejectReason) -> RejectReason:
    """The code a Reject carries for the local reason ``code``."""
    return RejectReason.AUTH_FAILED if code in AUTHENTICATION_REASONS else code


def reason_for(exc: BaseException) -> RejectReason:
    """The code sent to the peer when ``exc`` ends our side of a handshake."""
    for cls, reason in _MAP:
        if isinstance(exc, cls):
            return reason
    # J-PAKE failures (JPakeError) are invalid peer messages.
    if type(exc).__name__ == "JPakeError":
        return RejectReason.ILLEGAL_PARAMETER
    return RejectReason.INTERNAL_ERROR
