"""Every random input of a handshake, in one place, with an explicit
test-only hook for known-answer vectors (docs/PROTOCOL.md, "Test vectors").

Production code draws from the operating system (``os.urandom`` and the
key generators of ``cryptography``). :func:`known_answer_randomness` replaces
that, *for the current context only* (a :mod:`contextvars` variable), by a
deterministic stream derived from a seed, and records every value drawn and
every step of the key schedule (a trace) so that vectors can list them.

It cannot be selected by accident: no configuration option, environment
variable or argument of the handshake reaches it; a test has to call
:func:`known_answer_randomness` with ``insecure=True``, which also logs a
warning. Never use it outside tests: every key it produces is public.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x448, x25519
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey

from rolewire.errors import ConfigurationError

__all__ = [
    "KnownAnswerRandomness",
    "active",
    "ecdh_private",
    "known_answer_randomness",
    "mlkem_encapsulate",
    "mlkem_private",
    "random_bytes",
    "trace",
    "use_known_answer_randomness",
    "x25519_private",
]

log = logging.getLogger("rolewire.entropy")

#: ``encapsulate(ek, m) -> (shared_secret, ciphertext)``: ML-KEM-768
#: encapsulation with the 32-byte randomness ``m`` (FIPS 203
#: ML-KEM.Encaps_internal). ``cryptography`` has no deterministic
#: encapsulation, so the test supplies one.
Encapsulate = Callable[[bytes, bytes], tuple[bytes, bytes]]


class KnownAnswerRandomness:
    """A deterministic source: value ``i`` drawn under ``label`` is
    ``BLAKE2b-512(seed || label || u32(i), person="rolewire2kat")``
    (repeated blocks for longer values). ``drawn`` lists ``(label, value)``
    in order; ``steps`` is the trace (dicts)."""

    def __init__(self, seed: bytes, encapsulate: Encapsulate) -> None:
        self.seed = bytes(seed)
        self.encapsulate = encapsulate
        self.drawn: list[tuple[str, bytes]] = []
        self.steps: list[dict[str, Any]] = []
        self._count = 0

    def take(self, label: str, size: int) -> bytes:
        out = b""
        block = 0
        while len(out) < size:
            data = (self.seed + label.encode() + self._count.to_bytes(4, "big")
                    + block.to_bytes(4, "big"))
            out += hashlib.blake2b(data, person=b"rolewire2kat").digest()
            block += 1
        self._count += 1
        value = out[:size]
        self.drawn.append((label, value))
        return value


_source: contextvars.ContextVar[KnownAnswerRandomness | None] = contextvars.ContextVar(
    "rolewire_known_answer_randomness", default=None)


@contextlib.contextmanager
def known_answer_randomness(seed: bytes, encapsulate: Encapsulate, *,
                            insecure: bool = False) -> Iterator[KnownAnswerRandomness]:
    """Test only: deterministic randomness (and a trace) for the handshakes
    run in this context. Requires ``insecure=True``."""
    if insecure is not True:
        raise ConfigurationError("known-answer randomness is for tests only (insecure=True)")
    log.warning("known-answer randomness enabled: every key of this context is public")
    source = KnownAnswerRandomness(seed, encapsulate)
    token = _source.set(source)
    try:
        yield source
    finally:
        _source.reset(token)


def use_known_answer_randomness(source: KnownAnswerRandomness, *,
                                insecure: bool = False) -> None:
    """Test only: install ``source`` for the rest of the *current* context
    (run it inside ``contextvars.copy_context().run``). Requires
    ``insecure=True``."""
    if insecure is not True or not isinstance(source, KnownAnswerRandomness):
        raise ConfigurationError("known-answer randomness is for tests only (insecure=True)")
    log.warning("known-answer randomness enabled: every key of this context is public")
    _source.set(source)


def active() -> KnownAnswerRandomness | None:
    """The test source of this context, or None (production)."""
    return _source.get()


def random_bytes(size: int, label: str) -> bytes:
    """``size`` random bytes (``label`` names the value in vectors)."""
    source = _source.get()
    return os.urandom(size) if source is None else source.take(label, size)


def ecdh_private(curve: str) -> Any:
    """A fresh X448 (``"x448"``) or X25519 private key."""
    source = _source.get()
    kind = x448.X448PrivateKey if curve == "x448" else x25519.X25519PrivateKey
    if source is None:
        return kind.generate()
    return kind.from_private_bytes(source.take(f"{curve} private", 56 if curve == "x448" else 32))


def x25519_private() -> bytes:
    """A fresh X25519 private key as its 32 raw bytes (RFC 7748: clamped
    where it is used), for libsodium's ``crypto_scalarmult``; the same
    draw (label ``"x25519 private"``) as :func:`ecdh_private` for vectors."""
    source = _source.get()
    if source is None:
        return os.urandom(32)
    return source.take("x25519 private", 32)


def mlkem_private() -> MLKEM768PrivateKey:
    """A fresh ML-KEM-768 decapsulation key (from a 64-byte seed d || z)."""
    source = _source.get()
    if source is None:
        return MLKEM768PrivateKey.generate()
    return MLKEM768PrivateKey.from_seed_bytes(source.take("mlkem seed", 64))


def mlkem_encapsulate(ek: MLKEM768PublicKey, ek_bytes: bytes) -> tuple[bytes, bytes]:
    """``(shared_secret, ciphertext)`` for the (already checked) key ``ek``."""
    source = _source.get()
    if source is None:
        return ek.encapsulate()
    return source.encapsulate(ek_bytes, source.take("mlkem encaps m", 32))


def trace(step: str, **values: Any) -> None:
    """Record one step of the handshake for vectors (no-op in production)."""
    source = _source.get()
    if source is not None:
        source.steps.append({"step": step, **values})


def deterministic_signatures() -> bool:
    """True under known-answer randomness: ECDSA signs per RFC 6979 (the
    verifier cannot tell; the proof bytes become reproducible)."""
    return _source.get() is not None
