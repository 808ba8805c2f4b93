"""Handshake suites: key-exchange group + record protection, one byte each on
the wire (docs/PROTOCOL.md, "Handshake / Suites").

A suite fixes everything that is negotiated: the hybrid key-exchange group
(X448 or X25519, always combined with ML-KEM-768) and the record AEAD. The
handshake's own hash (BLAKE2b-512), KDF (HKDF with HMAC-BLAKE2b) and the
cipher of encrypted handshake messages (ChaCha20-Poly1305) are fixed by the
protocol version and are not negotiable.
"""

from __future__ import annotations

import enum

__all__ = [
    "DEFAULT_SUITES",
    "MLKEM768_CT_SIZE",
    "MLKEM768_EK_SIZE",
    "MLKEM768_SS_SIZE",
    "HandshakeSuite",
    "KexGroup",
]

MLKEM768_EK_SIZE = 1184
MLKEM768_CT_SIZE = 1088
MLKEM768_SS_SIZE = 32


class KexGroup(enum.IntEnum):
    """Hybrid key-exchange groups; the value is the wire id of a key share."""

    X448_MLKEM768 = 1
    X25519_MLKEM768 = 2

    @property
    def ecdh_size(self) -> int:
        """Bytes of an X448 / X25519 public value and shared secret."""
        return 56 if self is KexGroup.X448_MLKEM768 else 32

    @property
    def share_size(self) -> int:
        """Bytes of the initiator's key share (ECDH public + ML-KEM ek)."""
        return self.ecdh_size + MLKEM768_EK_SIZE

    @property
    def reply_size(self) -> int:
        """Bytes of the responder's share (ECDH public + ML-KEM ciphertext)."""
        return self.ecdh_size + MLKEM768_CT_SIZE


class HandshakeSuite(enum.IntEnum):
    """Suites in the default preference order of their wire ids."""

    X448_MLKEM768_BLAKE2B_CHACHA20POLY1305 = 0x01
    X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305 = 0x02
    X448_MLKEM768_BLAKE2B_AEGIS256 = 0x03
    X25519_MLKEM768_BLAKE2B_AEGIS256 = 0x04

    @property
    def group(self) -> KexGroup:
        return _GROUP[self]

    @property
    def record_suite_id(self) -> int:
        """Wire id of the record suite (rolewire.record.Suite): 1 ChaCha20-
        Poly1305, 2 AEGIS-256."""
        return 1 if "CHACHA20" in self.name else 2

    @property
    def record_suite(self):  # type: ignore[no-untyped-def]
        """The :class:`rolewire.record.Suite` the session's records use."""
        from rolewire.record import Suite

        return Suite(self.record_suite_id)

    @property
    def record_iv_size(self) -> int:
        return 12 if self.record_suite_id == 1 else 32

    @property
    def wire_name(self) -> str:
        """E.g. ``"X448-MLKEM768-BLAKE2B-CHACHA20POLY1305"``."""
        return self.name.replace("_", "-")

    @classmethod
    def from_name(cls, name: str) -> HandshakeSuite:
        """Accepts the wire name or the enum member name."""
        try:
            return cls[name.strip().upper().replace("-", "_")]
        except KeyError:
            from rolewire.errors import ConfigurationError

            raise ConfigurationError(f"unknown handshake suite {name!r}") from None


_GROUP = {
    HandshakeSuite.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305: KexGroup.X448_MLKEM768,
    HandshakeSuite.X448_MLKEM768_BLAKE2B_AEGIS256: KexGroup.X448_MLKEM768,
    HandshakeSuite.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305: KexGroup.X25519_MLKEM768,
    HandshakeSuite.X25519_MLKEM768_BLAKE2B_AEGIS256: KexGroup.X25519_MLKEM768,
}

#: The initiator's default proposal, most preferred first: the paper's X448
#: with ChaCha20-Poly1305 records, then the AEGIS-256 record variant (same
#: key shares, so no retry is needed to pick it), then the X25519 suites.
DEFAULT_SUITES: tuple[HandshakeSuite, ...] = (
    HandshakeSuite.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305,
    HandshakeSuite.X448_MLKEM768_BLAKE2B_AEGIS256,
    HandshakeSuite.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305,
    HandshakeSuite.X25519_MLKEM768_BLAKE2B_AEGIS256,
)
