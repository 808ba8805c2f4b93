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
    "cpu_has_aes",
    "default_suites",
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
        return _RECORD_SUITE_ID[self]

    @property
    def record_suite(self):  # type: ignore[no-untyped-def]
        """The :class:`rolewire.record.Suite` the session's records use."""
        suite = _RECORD_SUITE.get(self)
        if suite is None:  # imported late: the record layer is not needed to negotiate
            from rolewire.record import Suite

            suite = _RECORD_SUITE[self] = Suite(self.record_suite_id)
        return suite

    @property
    def record_iv_size(self) -> int:
        return 12 if _RECORD_SUITE_ID[self] == 1 else 32

    @property
    def wire_name(self) -> str:
        """E.g. ``"X448-MLKEM768-BLAKE2B-CHACHA20POLY1305"``."""
        return _WIRE_NAME[self]

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
# Per-suite constants, computed once (the properties run in every handshake).
_RECORD_SUITE_ID = {s: 1 if "CHACHA20" in s.name else 2 for s in HandshakeSuite}
_WIRE_NAME = {s: s.name.replace("_", "-") for s in HandshakeSuite}
_RECORD_SUITE: dict[HandshakeSuite, object] = {}



def cpu_has_aes() -> bool:
    """True where libsodium finds AES instructions (AES-NI and PCLMUL on
    x86-64, the crypto extensions on ARM), so AEGIS-256 runs in hardware;
    False where it cannot tell."""
    try:
        import nacl.bindings  # noqa: F401  (runs sodium_init: CPU feature detection)
        from nacl._sodium import lib

        return bool(lib.crypto_aead_aes256gcm_is_available())
    except (ImportError, AttributeError):  # pragma: no cover - PyNaCl is a dependency
        return False


def default_suites(has_aes: bool) -> tuple[HandshakeSuite, ...]:
    """The default proposal for a CPU with or without AES instructions.

    X25519+ML-KEM-768 first (the hybrid TLS standardised as X25519MLKEM768:
    ML-KEM-768 carries the post-quantum security, and X25519 costs a fifth
    of X448), with AEGIS-256 records where the CPU has AES instructions and
    ChaCha20-Poly1305 otherwise; then the other record AEAD (same key share,
    so a responder preferring it needs no retry); then the paper's X448
    suites, still offered, so peers that prefer them connect without a
    HelloRetry when they send an X448 share."""
    aegis_first = (HandshakeSuite.X25519_MLKEM768_BLAKE2B_AEGIS256,
                   HandshakeSuite.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305,
                   HandshakeSuite.X448_MLKEM768_BLAKE2B_AEGIS256,
                   HandshakeSuite.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305)
    if has_aes:
        return aegis_first
    return (aegis_first[1], aegis_first[0], aegis_first[3], aegis_first[2])


#: The initiator's default proposal (and the responder's preference), most
#: preferred first: :func:`default_suites` for this CPU.
DEFAULT_SUITES: tuple[HandshakeSuite, ...] = default_suites(cpu_has_aes())
