"""The hybrid key exchange: X448 or X25519 together with ML-KEM-768.

The initiator sends an ephemeral ECDH public value and an ML-KEM-768
encapsulation key; the responder answers with its own ephemeral ECDH public
value and an ML-KEM ciphertext. Both shared secrets go into the key schedule
(ML-KEM first, as in X25519MLKEM768), bound to every public value through the
transcript hash (see :mod:`rolewire.handshake.schedule`).

Checks (docs/PROTOCOL.md, "Key exchange checks"):

- the ML-KEM encapsulation key passes the FIPS 203 §7.2 type and modulus
  checks (``cryptography``/OpenSSL run them when the key is loaded and raise
  ``ValueError``; tests/handshake/test_kex.py proves it for a key with an
  out-of-range coefficient);
- the ML-KEM ciphertext has exactly 1088 bytes (checked by the parser and
  again by ``decapsulate``);
- an X448/X25519 shared secret of all zeros (a low-order or zero public value)
  is refused: OpenSSL (X448) and libsodium (X25519) already refuse it, and we
  check again ourselves.

X25519 runs on libsodium (``crypto_scalarmult[_base]`` through PyNaCl):
the same RFC 7748 function as OpenSSL's, byte for byte, and its key
generation (a fixed-base multiplication) costs half of ``cryptography``'s.
X448 stays on ``cryptography`` (libsodium has no X448).
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.asymmetric import x448
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from nacl import bindings as _na

from rolewire import entropy
from rolewire.errors import InvalidKeyShare
from rolewire.handshake.suites import MLKEM768_CT_SIZE, MLKEM768_EK_SIZE, KexGroup

__all__ = ["LABEL_HYBRID", "InitiatorShare", "hybrid_ikm", "responder_exchange"]

#: The last input of the hybrid combiner (docs/PROTOCOL.md, "Transcript
#: hash and key schedule", step 3).
LABEL_HYBRID = b"rolewire/2 hybrid"


def hybrid_ikm(ss_mlkem: bytes, ss_ecdh: bytes, ecdh_public_r: bytes,
               ecdh_public_i: bytes) -> bytes:
    """The input keying material of MixKey, X-Wing style: both shared
    secrets, then the ECDH public values (the responder's, then the
    initiator's), then a label. ML-KEM binds its own key and ciphertext
    (its shared secret depends on both); ECDH does not, so its public values
    go into the KDF input itself rather than only into the transcript."""
    return ss_mlkem + ss_ecdh + ecdh_public_r + ecdh_public_i + LABEL_HYBRID

_ZERO56 = bytes(56)
_ZERO32 = bytes(32)


class _X448:
    """An X448 private key (``cryptography``/OpenSSL)."""

    __slots__ = ("_key", "public")

    def __init__(self) -> None:
        self._key = entropy.ecdh_private("x448")
        self.public: bytes = self._key.public_key().public_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        try:
            secret: bytes = self._key.exchange(x448.X448PublicKey.from_public_bytes(peer_public))
        except ValueError:
            raise InvalidKeyShare("ECDH public value gives no valid shared secret") from None
        return secret


class _X25519:
    """An X25519 private key (libsodium)."""

    __slots__ = ("_key", "public")

    def __init__(self) -> None:
        self._key = entropy.x25519_private()
        self.public: bytes = _na.crypto_scalarmult_base(self._key)

    def exchange(self, peer_public: bytes) -> bytes:
        try:
            secret: bytes = _na.crypto_scalarmult(self._key, peer_public)
        except (RuntimeError, ValueError, TypeError):
            # libsodium refuses a low-order public value (all-zero result).
            raise InvalidKeyShare("ECDH public value gives no valid shared secret") from None
        return secret


def _ecdh_private(group: KexGroup) -> _X448 | _X25519:
    return _X448() if group is KexGroup.X448_MLKEM768 else _X25519()


def _ecdh(private: _X448 | _X25519, peer_public: bytes, group: KexGroup) -> bytes:
    if len(peer_public) != group.ecdh_size:
        raise InvalidKeyShare("ECDH public value has the wrong length")
    secret = private.exchange(peer_public)
    zero = _ZERO56 if group is KexGroup.X448_MLKEM768 else _ZERO32
    if hmac.compare_digest(secret, zero):  # pragma: no cover - the libraries refuse it first
        raise InvalidKeyShare("ECDH shared secret is all zeros")
    return secret


class InitiatorShare:
    """The initiator's ephemeral keys for one group (used once)."""

    __slots__ = ("_ecdh", "_kem", "ecdh_public", "group", "mlkem_ek")

    def __init__(self, group: KexGroup) -> None:
        self.group = group
        self._ecdh: _X448 | _X25519 | None = _ecdh_private(group)
        self._kem: MLKEM768PrivateKey | None = entropy.mlkem_private()
        self.ecdh_public: bytes = self._ecdh.public
        self.mlkem_ek: bytes = self._kem.public_key().public_bytes_raw()

    def finish(self, peer_ecdh: bytes, mlkem_ct: bytes) -> tuple[bytes, bytes]:
        """Returns ``(ss_mlkem, ss_ecdh)`` and forgets the private keys."""
        if self._kem is None or self._ecdh is None:
            raise InvalidKeyShare("key share already used")
        if len(mlkem_ct) != MLKEM768_CT_SIZE:
            raise InvalidKeyShare("ML-KEM ciphertext has the wrong length")
        try:
            ss_m = self._kem.decapsulate(mlkem_ct)
        except ValueError:
            raise InvalidKeyShare("invalid ML-KEM ciphertext") from None
        ss_x = _ecdh(self._ecdh, peer_ecdh, self.group)
        # used once, then dropped
        self._kem = None
        self._ecdh = None
        return ss_m, ss_x


def responder_exchange(group: KexGroup, peer_ecdh: bytes, peer_ek: bytes
                       ) -> tuple[bytes, bytes, bytes, bytes]:
    """Checks the initiator's share and answers it.

    Returns ``(ecdh_public, mlkem_ct, ss_mlkem, ss_ecdh)``.
    """
    if len(peer_ek) != MLKEM768_EK_SIZE:
        raise InvalidKeyShare("ML-KEM encapsulation key has the wrong length")
    try:
        ek = MLKEM768PublicKey.from_public_bytes(peer_ek)  # FIPS 203 §7.2 checks
    except ValueError:
        raise InvalidKeyShare("invalid ML-KEM encapsulation key") from None
    mine = _ecdh_private(group)
    ss_x = _ecdh(mine, peer_ecdh, group)
    ss_m, ct = entropy.mlkem_encapsulate(ek, peer_ek)
    return mine.public, ct, ss_m, ss_x
