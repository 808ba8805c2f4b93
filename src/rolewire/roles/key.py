"""Key roles: a pre-shared high-entropy key proves the role.

Proof: ``BLAKE2b-256(key=mac_key, data=proof_input(KEY, direction, role_id, h),
person="rolewire1keyprf")`` where ``mac_key = BLAKE2b-512(role_key,
person="rolewire1keymac")`` and ``h`` is the transcript hash at the proof.
Both sides compute it; the verifier compares in constant time. The direction
byte stops reflection, ``h`` stops replay into another handshake, and the
role id stops a proof for one role standing in for another.

Keys must have at least 256 bits; they are assumed to be random (use
:meth:`KeyRole.generate_key`). Low-entropy secrets belong in a
:class:`~rolewire.roles.password.PasswordRole`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from rolewire.errors import ConfigurationError, RoleProofInvalid
from rolewire.roles.base import Direction, Role, RoleKind, proof_input

__all__ = ["KEY_PROOF_SIZE", "MIN_KEY_SIZE", "KeyRole"]

MIN_KEY_SIZE = 32
KEY_PROOF_SIZE = 32
_ENCODINGS = ("base64", "hex", "raw")


def _decode(data: bytes, encoding: str, where: str) -> bytes:
    if encoding == "raw":
        return data
    text = data.strip()
    try:
        if encoding == "base64":
            return base64.b64decode(text, validate=True)
        if encoding == "hex":
            return binascii.unhexlify(text)
    except (ValueError, binascii.Error):
        raise ConfigurationError(f"{where}: not valid {encoding}") from None
    raise ConfigurationError(f"unknown key encoding {encoding!r} (use one of {_ENCODINGS})")


class KeyRole(Role):
    """A role proven with a pre-shared key of at least 32 bytes."""

    kind = RoleKind.KEY
    __slots__ = ("_hint_key", "_mac_key", "_prf")

    def __init__(self, name: str, key: bytes) -> None:
        super().__init__(name)
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise ConfigurationError("a role key must be bytes")
        if len(key) < MIN_KEY_SIZE:
            raise ConfigurationError(f"a role key needs at least {MIN_KEY_SIZE} bytes")
        self._mac_key = hashlib.blake2b(bytes(key), person=b"rolewire1keymac").digest()
        # Hints are keyed by the role key (a separate derivation), so without
        # the key nobody learns anything about the role from a hint.
        self._hint_key = hashlib.blake2b(bytes(key), digest_size=32,
                                         person=b"rolewire2keyhint").digest()
        # Per direction, the keyed MAC state after the part of proof_input
        # that does not change (label, kind, direction, role id): a proof
        # copies it and adds the transcript hash (the same BLAKE2b bytes as
        # hashing the whole proof_input at once).
        self._prf = {
            direction: hashlib.blake2b(proof_input(self.kind, direction, self.role_id, b""),
                                       key=self._mac_key, digest_size=KEY_PROOF_SIZE,
                                       person=b"rolewire1keyprf")
            for direction in Direction}

    @property
    def can_prove(self) -> bool:
        return True

    @property
    def can_verify(self) -> bool:
        return True

    def hint_keys(self) -> tuple[bytes, ...]:
        return (self._hint_key,)

    @staticmethod
    def generate_key() -> bytes:
        """32 fresh random bytes."""
        return os.urandom(MIN_KEY_SIZE)

    @classmethod
    def from_file(cls, name: str, path: str | os.PathLike[str], *,
                  encoding: str = "base64") -> KeyRole:
        """Reads the key from a file: base64 text (default), hex text or raw bytes."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read key file {os.fspath(path)!r}: "
                                     f"{exc.strerror}") from None
        return cls(name, _decode(data, encoding, f"key file {os.fspath(path)!r}"))

    @classmethod
    def from_env(cls, name: str, variable: str, *, encoding: str = "base64") -> KeyRole:
        """Reads the key from an environment variable (base64 or hex text)."""
        value = os.environ.get(variable)
        if not value:
            raise ConfigurationError(f"environment variable {variable} is not set")
        return cls(name, _decode(value.encode(), encoding, f"${variable}"))

    def prove(self, direction: Direction, h: bytes) -> bytes:
        mac = self._prf[direction].copy()
        mac.update(h)
        return mac.digest()

    def verify(self, direction: Direction, h: bytes, proof: bytes) -> None:
        if not hmac.compare_digest(self.prove(direction, h), proof):
            raise RoleProofInvalid("key role proof did not verify")

    def verify_proof(self, direction: Direction, h: bytes, proof: bytes,
                     credentials: Sequence[bytes],
                     wall_clock: Callable[[], datetime.datetime]) -> None:
        """Handshake hook: the MAC check of :meth:`verify` (a key role
        sends no credentials and needs no time)."""
        self.verify(direction, h, proof)
