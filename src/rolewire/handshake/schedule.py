"""Transcript hash and key schedule (Noise-style SymmetricState).

- ``h``: the transcript hash, BLAKE2b-512. ``mix_hash(data)``: ``h = H(h || data)``.
- ``ck``: the chaining key. ``mix_key(ikm)``: ``ck, k = HKDF(ck, ikm)``.
- ``HKDF`` is RFC 5869 extract-then-expand with HMAC-BLAKE2b-512 (the Noise
  HKDF with HASH = BLAKE2b), every output given its own label::

      prk   = HMAC(ck, ikm)
      out_1 = HMAC(prk, label_1 || 0x01)
      out_i = HMAC(prk, out_{i-1} || label_i || i)

- ``encrypt_and_hash`` / ``decrypt_and_hash``: ChaCha20-Poly1305 (RFC 8439,
  libsodium's: see :class:`HandshakeCipher`) under the
  handshake key ``k`` with nonce ``n`` (32 zero bits, then n as 64-bit
  little-endian, as in Noise) and the transcript hash ``h`` as associated
  data, then ``mix_hash(ciphertext)``. ``n`` counts messages in both
  directions (one handshake key, used alternately), so no nonce repeats and a
  message cannot be reflected (its AD, the transcript, differs).
- ``split``: the two record-layer directions, from ``ck`` and the final ``h``.

Every label is listed in docs/PROTOCOL.md, "Key schedule".
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from nacl import _sodium

from rolewire import entropy
from rolewire.errors import HandshakeDecryptError, HandshakeStateError

__all__ = [
    "HASH_SIZE",
    "LABEL_CK",
    "LABEL_HS_KEY",
    "LABEL_I2R_IV",
    "LABEL_I2R_KEY",
    "LABEL_R2I_IV",
    "LABEL_R2I_KEY",
    "LABEL_REHANDSHAKE",
    "PROTOCOL_NAME",
    "HandshakeCipher",
    "SymmetricState",
    "hkdf",
]

PROTOCOL_NAME = b"rolewire/1 handshake"
HASH_SIZE = 64

LABEL_CK = b"rolewire/1 ck"
LABEL_HS_KEY = b"rolewire/1 handshake key"
LABEL_I2R_KEY = b"rolewire/1 i2r key"
LABEL_I2R_IV = b"rolewire/1 i2r iv"
LABEL_R2I_KEY = b"rolewire/1 r2i key"
LABEL_R2I_IV = b"rolewire/1 r2i iv"
LABEL_REHANDSHAKE = b"rolewire/2 rehandshake"

_blake2b = hashlib.blake2b
_hmac_new = hmac.new
#: The known-answer source of this context (None in production): the trace
#: fields are built only under one.
_tracing = entropy.active
_NONCE = struct.Struct("<4xQ")
_H0 = _blake2b(PROTOCOL_NAME).digest()


_ffi = _sodium.ffi
_NULL = _ffi.NULL
_new_bytes = _ffi.new
_buffer = _ffi.buffer
_chacha_encrypt = _sodium.lib.crypto_aead_chacha20poly1305_ietf_encrypt
_chacha_decrypt = _sodium.lib.crypto_aead_chacha20poly1305_ietf_decrypt
_TAG_SIZE = 16
_NONCE_SIZE = 12


def _arguments(nonce: bytes, data: bytes, associated_data: bytes) -> tuple[bytes, bytes, bytes]:
    """The cipher's arguments as ``bytes`` (cffi passes only ``bytes`` as a
    pointer: other bytes-like values are copied), the nonce checked: libsodium
    reads 12 bytes from it."""
    if type(nonce) is not bytes or type(data) is not bytes or type(associated_data) is not bytes:
        nonce, data, associated_data = bytes(nonce), bytes(data), bytes(associated_data)
    if len(nonce) != _NONCE_SIZE:
        raise ValueError("the handshake nonce has 12 bytes")
    return nonce, data, associated_data


class HandshakeCipher:
    """ChaCha20-Poly1305 (RFC 8439, 12-byte nonce) under one 32-byte key:
    the handshake cipher, from PyNaCl's libsodium, called directly rather
    than through ``nacl.bindings`` (whose checks cost three times the
    AEAD at these sizes; the key and nonce sizes are checked here).

    Not ``cryptography``'s (OpenSSL's), although the bytes are the same: on
    a CPU with AVX-512 (measured on AMD Zen 5), one call of OpenSSL's
    leaves the upper vector registers dirty, and the SSE code after it pays
    a transition penalty until a call that clears them (AES-GCM's or
    libsodium's, which restore the speed): ML-KEM key generation in the
    same handshake took 130 us instead of 70, decapsulation 50 instead of
    25. tests/handshake/test_schedule.py checks the bytes against
    ``cryptography``'s.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the handshake key has 32 bytes")
        self._key = bytes(key)

    def encrypt(self, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
        """``ciphertext || tag`` (any bytes-like arguments)."""
        nonce, plaintext, associated_data = _arguments(nonce, plaintext, associated_data)
        size = len(plaintext) + _TAG_SIZE
        out = _new_bytes("unsigned char[]", size)
        _chacha_encrypt(out, _NULL, plaintext, len(plaintext), associated_data,
                        len(associated_data), _NULL, nonce, self._key)
        ciphertext: bytes = _buffer(out, size)[:]
        return ciphertext

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
        """The plaintext; raises :class:`~rolewire.errors.HandshakeDecryptError`
        if ``ciphertext`` does not authenticate (or is shorter than a tag)."""
        nonce, ciphertext, associated_data = _arguments(nonce, ciphertext, associated_data)
        size = len(ciphertext) - _TAG_SIZE
        if size < 0:
            raise HandshakeDecryptError("encrypted handshake message did not authenticate")
        out = _new_bytes("unsigned char[]", size or 1)
        if _chacha_decrypt(out, _NULL, _NULL, ciphertext, len(ciphertext), associated_data,
                           len(associated_data), nonce, self._key) != 0:
            raise HandshakeDecryptError("encrypted handshake message did not authenticate")
        plaintext: bytes = _buffer(out, size)[:]
        return plaintext


def hkdf(ck: bytes, ikm: bytes, labels: tuple[bytes, ...]) -> list[bytes]:
    """HKDF-BLAKE2b with one label per 64-byte output (see module docstring)."""
    # The extract step on the stdlib HMAC over hashlib's BLAKE2b as well:
    # OpenSSL's one-shot HMAC (hmac.digest) sets up a MAC context per call,
    # about 10 us in a handshake against 2 us.
    prk = _hmac_new(ck, ikm, _blake2b).digest()
    # One keyed HMAC state for all outputs, copied per output (the stdlib
    # HMAC object over hashlib's BLAKE2b): the key is padded and absorbed
    # once instead of once per output.
    keyed = _hmac_new(prk, None, _blake2b)
    out: list[bytes] = []
    prev = b""
    last = len(labels)
    for i, label in enumerate(labels, 1):
        mac = keyed.copy() if i < last else keyed  # the last output needs no copy
        mac.update(prev + label + bytes((i,)))
        prev = mac.digest()
        out.append(prev)
    return out


class SymmetricState:
    """``h``, ``ck`` and the handshake cipher of one handshake."""

    __slots__ = ("_aead", "_n", "ck", "h")

    def __init__(self, channel_binding: bytes = b"") -> None:
        self.h = _H0
        self.ck = _H0
        self._aead: HandshakeCipher | None = None
        self._n = 0
        if channel_binding:
            # A re-handshake: bind the new transcript to the session it
            # re-keys (docs/PROTOCOL.md, "Re-handshake").
            self.mix_hash(LABEL_REHANDSHAKE + channel_binding)

    def mix_hash(self, data: bytes) -> None:
        self.h = _blake2b(self.h + data).digest()
        if _tracing() is not None:  # vectors only; skips building the fields
            entropy.trace("mix_hash", data=data, h=self.h)

    def mix_key(self, ikm: bytes) -> None:
        """Mixes ``ikm`` into ``ck`` and derives the handshake key ``k``."""
        self.ck, k = hkdf(self.ck, ikm, (LABEL_CK, LABEL_HS_KEY))
        self._aead = HandshakeCipher(k[:32])
        self._n = 0
        if _tracing() is not None:  # vectors only; skips building the fields
            entropy.trace("mix_key", ikm=ikm, ck=self.ck, k=k[:32])

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._aead is None:
            raise HandshakeStateError("no handshake key yet")
        ct = self._aead.encrypt(_NONCE.pack(self._n), plaintext, self.h)
        if _tracing() is not None:  # vectors only; skips building the fields
            entropy.trace("encrypt_and_hash", n=self._n, plaintext=plaintext, ciphertext=ct)
        self._n += 1
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self._aead is None:
            raise HandshakeStateError("no handshake key yet")
        pt = self._aead.decrypt(_NONCE.pack(self._n), ciphertext, self.h)
        if _tracing() is not None:  # vectors only; skips building the fields
            entropy.trace("decrypt_and_hash", n=self._n, plaintext=pt, ciphertext=ciphertext)
        self._n += 1
        self.mix_hash(ciphertext)
        return pt

    def split(self, iv_size: int) -> tuple[bytes, bytes, bytes, bytes]:
        """``(i2r_key, i2r_iv, r2i_key, r2i_iv)`` for the record layer, derived
        from ``ck`` and the final transcript hash; then forgets ``ck`` and
        ``k`` (``h`` stays for channel binding)."""
        k1, v1, k2, v2 = hkdf(self.ck, self.h,
                              (LABEL_I2R_KEY, LABEL_I2R_IV, LABEL_R2I_KEY, LABEL_R2I_IV))
        if _tracing() is not None:
            entropy.trace("split", ck=self.ck, h=self.h, i2r_key=k1[:32], i2r_iv=v1[:iv_size],
                          r2i_key=k2[:32], r2i_iv=v2[:iv_size])
        self.ck = b""
        self._aead = None
        return k1[:32], v1[:iv_size], k2[:32], v2[:iv_size]
