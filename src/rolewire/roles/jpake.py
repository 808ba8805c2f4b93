"""EC J-PAKE (RFC 8236, two-round form) with RFC 8235 Schnorr NIZK proofs,
over the prime-order subgroup of Ed25519.

Every group operation is libsodium's, reached through PyNaCl's
``nacl.bindings`` (``crypto_core_ed25519_*``,
``crypto_scalarmult_ed25519[_base]_noclamp``); hashes are BLAKE2b from
:mod:`hashlib`. There is no field or curve arithmetic in this module.

Notation
--------
``G`` is the Ed25519 base point, ``L`` = 2^252 + 27742317777372353535851937790883648493
the order of the subgroup it generates. Points are the 32-byte Ed25519
encodings; scalars are 32-byte little-endian integers in ``[0, L)``.
``u16<x>`` is ``len(x)`` as a 2-byte big-endian integer followed by ``x``;
``u32<x>`` the same with a 4-byte length. ``H_p(x)`` is
``BLAKE2b-512(x, person=p)`` (64 bytes, no key), read as a little-endian
integer and reduced mod ``L`` (``crypto_core_ed25519_scalar_reduce``);
personalisation strings are ASCII, zero-padded to 16 bytes by BLAKE2b.
``my_id`` / ``peer_id`` are the participant ids (distinct, 1..65535 bytes),
``context`` the shared context (0..65535 bytes; rolewire passes the
initiator random || role_id). Each side's message layout and proofs are the
same; below, "we" hold ``x1, x2`` and the peer ``x3, x4``.

Password scalar
    ``s = H_"rolewire1jpakes"(u32<password>)``; ``s = 0`` is refused. It is
    not a password hash (no work factor): the handshake rate-limits online
    guesses and J-PAKE allows no offline dictionary attack.

Schnorr proof of ``x`` with ``X = x*Gen`` (RFC 8235, section 3, made
non-interactive), 64 bytes::

    ZKP = V (32) || r (32)
    v random in [1, L), V = v*Gen
    c = H_"rolewire1jpakez"(u16<Gen> || u16<V> || u16<X> || u16<prover_id> || u16<context>)
    r = v - x*c mod L

The verifier requires ``r`` canonical (``r < L``), recomputes ``c`` with the
prover id it expects (the *peer's* id, fixed at construction) and accepts iff
``V == r*Gen + c*X`` as encodings. The right-hand side is computed by
libsodium, which always produces the canonical encoding of a point of the
prime-order subgroup, and the identity is refused, so an accepted ``V`` is
necessarily a valid non-identity point: the equality *is* the validity
check of ``V`` (it accepts exactly what ``crypto_core_ed25519_is_valid_point(V)``
plus the equation would accept, one scalar multiplication cheaper).

Round 1 (192 bytes)::

    G1 (32) || G2 (32) || ZKP(x1) (64) || ZKP(x2) (64)
    G1 = x1*G, G2 = x2*G, x1, x2 random in [1, L); both proofs with Gen = G

Round 2 (96 bytes)::

    A (32) || ZKP(x2*s) (64)
    Gen_A = G1 + G3 + G4, A = (x2*s)*Gen_A; the proof uses Gen = Gen_A

(our ``G1, G2``, the peer's round-1 points ``G3, G4``).

Receiver checks (any failure raises :class:`JPakeError`, and the object is
then unusable):

* a round message of any other length is refused, and so is a round 1
  equal to our own (reflected; its proofs would fail anyway, they name our id);
* ``G3``, ``G4`` and the peer's ``A`` (called ``B`` here) must pass
  ``crypto_core_ed25519_is_valid_point`` (canonical encoding, on the curve,
  in the prime-order subgroup, not of small order, hence not the identity);
  the check is made by the scalar multiplication ``c*X`` of the proof's
  verification (libsodium's ``crypto_scalarmult_ed25519_noclamp`` refuses
  exactly those points), or explicitly if ``c`` is 0;
* the round-1 proofs verify with ``Gen = G`` and prover id ``peer_id``;
* ``Gen_A = G1 + G3 + G4`` (the generator of our round 2) and
  ``Gen_B = G1 + G2 + G3`` (the generator of the peer's round 2) are not
  the identity;
* the peer's round-2 proof verifies with ``Gen = Gen_B`` and prover id
  ``peer_id``;
* ``B - (x2*s)*G4`` is not the identity.

Key material (64 bytes)::

    K = x2 * (B - (x2*s)*G4)          (the RFC's Ka; equals Kb on the peer)
    material = BLAKE2b-512(u16<K> || u16<id_lo> || u16<id_hi> || u16<context>
                           || u16<round1_lo> || u16<round1_hi>
                           || u16<round2_lo> || u16<round2_hi>,
                           person="rolewire1jpakek")

``id_lo`` is the smaller of the two ids in bytewise (``bytes`` ``<``) order,
``id_hi`` the larger; ``round1_lo`` / ``round2_lo`` are the round messages
*sent by* the participant ``id_lo``, ``round1_hi`` / ``round2_hi`` those
sent by ``id_hi``. Both sides hence hash identical bytes. J-PAKE has no key
confirmation of its own here: the caller MACs the handshake transcript with
a key derived from ``material``.

Secrets
-------
The password is not kept (only ``s``). Proof nonces live only while their
proof is made; ``x1`` is dropped at the end of :meth:`JPake.round1` (``s``
too, once ``x2*s`` is computed), ``x2`` and ``x2*s`` at the end of :meth:`JPake.finish` or on any
failure. Python ``bytes`` are immutable and cannot be wiped: dropping a
reference only lets the memory be reused; copies made by the interpreter or
by libsodium's wrappers may stay in memory until overwritten. Error messages
never contain the password, a scalar or a point.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from nacl import bindings as _na
from nacl.exceptions import CryptoError as _CryptoError

from rolewire import entropy
from rolewire.errors import ConfigurationError, InvalidKeyShare

__all__ = [
    "MATERIAL_SIZE",
    "MAX_CONTEXT_SIZE",
    "MAX_ID_SIZE",
    "POINT_SIZE",
    "PROOF_SIZE",
    "ROUND1_SIZE",
    "ROUND2_SIZE",
    "SCALAR_SIZE",
    "JPake",
    "JPakeError",
]

POINT_SIZE: Final = 32
SCALAR_SIZE: Final = 32
#: A Schnorr proof: V || r.
PROOF_SIZE: Final = POINT_SIZE + SCALAR_SIZE
#: G1 || G2 || ZKP(x1) || ZKP(x2).
ROUND1_SIZE: Final = 2 * POINT_SIZE + 2 * PROOF_SIZE
#: A || ZKP(x2*s).
ROUND2_SIZE: Final = POINT_SIZE + PROOF_SIZE
#: Bytes returned by :meth:`JPake.finish`.
MATERIAL_SIZE: Final = 64
#: Longest participant id and context (they are u16-length-prefixed).
MAX_ID_SIZE: Final = 0xFFFF
MAX_CONTEXT_SIZE: Final = 0xFFFF

_PERSON_PASSWORD: Final = b"rolewire1jpakes"
_PERSON_ZKP: Final = b"rolewire1jpakez"
_PERSON_KEY: Final = b"rolewire1jpakek"

_IDENTITY: Final = b"\x01" + bytes(31)
_ZERO_SCALAR: Final = bytes(SCALAR_SIZE)
_ONE_SCALAR: Final = b"\x01" + bytes(SCALAR_SIZE - 1)
#: The Ed25519 base point G.
_BASE: Final = _na.crypto_scalarmult_ed25519_base_noclamp(_ONE_SCALAR)

# states
_NEW, _ROUND1, _ROUND2, _DONE, _FAILED = range(5)


class JPakeError(InvalidKeyShare):
    """A J-PAKE message failed its checks (wrong length, invalid point,
    Schnorr proof not verifying, degenerate value), or the J-PAKE object was
    driven out of order. Never contains a password or secret value."""


# --- libsodium helpers (``None`` stands for the identity) --------------------


def _lp16(*fields: bytes) -> bytes:
    """``u16<f1> || u16<f2> || ...``."""
    out = bytearray()
    for f in fields:
        out += len(f).to_bytes(2, "big")
        out += f
    return bytes(out)


def _hash_to_scalar(person: bytes, data: bytes) -> bytes:
    """BLAKE2b-512 with personalisation ``person``, reduced mod L."""
    digest = hashlib.blake2b(data, digest_size=64, person=person).digest()
    return _na.crypto_core_ed25519_scalar_reduce(digest)


def _random_scalar() -> bytes:
    """Uniform in [1, L): 64 random bytes reduced mod L (bias < 2^-259)."""
    while True:
        k = _na.crypto_core_ed25519_scalar_reduce(entropy.random_bytes(64, "jpake scalar"))
        if k != _ZERO_SCALAR:
            return k


def _is_canonical_scalar(k: bytes) -> bool:
    """True iff the 32-byte ``k`` is already reduced (``k < L``)."""
    return _na.crypto_core_ed25519_scalar_reduce(k + _ZERO_SCALAR) == k


def _is_valid_point(p: bytes) -> bool:
    """32 bytes, canonical, on the curve, in the prime-order subgroup, not of
    small order (so not the identity)."""
    return (len(p) == POINT_SIZE and p != _IDENTITY
            and bool(_na.crypto_core_ed25519_is_valid_point(p)))


def _base_mul(k: bytes) -> bytes | None:
    """``k*G`` for a canonical scalar, ``None`` if it is the identity
    (libsodium refuses to return the identity)."""
    if k == _ZERO_SCALAR:
        return None
    try:
        return _na.crypto_scalarmult_ed25519_base_noclamp(k)
    except _CryptoError:
        return None  # k = 0 mod L


def _mul(k: bytes, p: bytes) -> bytes | None:
    """``k*P`` for a canonical scalar and a valid point ``P``; ``None`` if the
    product is the identity. libsodium raises both for an identity result
    and for an invalid ``P``; only the first is mapped to ``None``."""
    if k == _ZERO_SCALAR:
        return None
    try:
        return _na.crypto_scalarmult_ed25519_noclamp(k, p)
    except _CryptoError:
        if not _is_valid_point(p):
            raise JPakeError("invalid J-PAKE point") from None
        return None


class _InvalidPoint(Exception):
    """A peer's point failed the validity check (caught in :class:`JPake`)."""


def _checked_mul(k: bytes, p: bytes) -> bytes | None:
    """``k*P`` for a canonical scalar and a peer's point ``P`` not checked
    yet; raises :class:`_InvalidPoint` unless ``P`` passes the checks of
    :func:`_is_valid_point` (by libsodium's multiplication itself, or
    explicitly when ``k`` is 0 and nothing is multiplied). ``None`` if
    the product is the identity (only for ``k = 0``: ``P`` has order L)."""
    if len(p) != POINT_SIZE:
        raise _InvalidPoint
    if k == _ZERO_SCALAR:
        if not _is_valid_point(p):
            raise _InvalidPoint
        return None
    try:
        return _na.crypto_scalarmult_ed25519_noclamp(k, p)
    except _CryptoError:
        if not _is_valid_point(p):
            raise _InvalidPoint from None
        return None


def _add(p: bytes | None, q: bytes | None) -> bytes | None:
    """``P + Q`` of subgroup points, with ``None`` as the identity."""
    if p is None:
        return q
    if q is None:
        return p
    r = _na.crypto_core_ed25519_add(p, q)
    return None if r == _IDENTITY else r


# --- Schnorr NIZK (RFC 8235) -------------------------------------------------


def _challenge(gen: bytes, v: bytes, x_pub: bytes, prover_id: bytes, context: bytes) -> bytes:
    return _hash_to_scalar(_PERSON_ZKP, _lp16(gen, v, x_pub, prover_id, context))


def _prove(gen: bytes, x: bytes, x_pub: bytes, prover_id: bytes, context: bytes) -> bytes:
    """Proof of knowledge of ``x`` with ``x_pub = x*gen``: ``V || r``."""
    nonce = _random_scalar()
    v_pt = _base_mul(nonce) if gen == _BASE else _mul(nonce, gen)
    if v_pt is None:  # gen has prime order L and nonce != 0: unreachable
        raise JPakeError("degenerate J-PAKE proof")
    c = _challenge(gen, v_pt, x_pub, prover_id, context)
    r = _na.crypto_core_ed25519_scalar_sub(nonce, _na.crypto_core_ed25519_scalar_mul(x, c))
    return v_pt + r


def _verify(gen: bytes, x_pub: bytes, proof: bytes, prover_id: bytes, context: bytes) -> bool:
    """Checks ``proof = V || r`` for ``x_pub`` and the non-identity subgroup
    point ``gen``: ``r < L`` and ``V == r*gen + c*x_pub``. ``V`` is not
    decoded: equality with the canonical, non-identity right-hand side
    implies it is a valid point.

    ``x_pub`` need not have been checked: it is the point of ``c*x_pub``,
    and libsodium's ``crypto_scalarmult_ed25519_noclamp`` refuses exactly
    the points ``crypto_core_ed25519_is_valid_point`` refuses (canonical,
    on the curve, in the prime-order subgroup, not of small order), so the
    multiplication doubles as the validity check (one scalar
    multiplication by L cheaper than checking first). Raises
    :class:`_InvalidPoint` if ``x_pub`` is not a valid point."""
    v_pt, r = proof[:POINT_SIZE], proof[POINT_SIZE:]
    c = _challenge(gen, v_pt, x_pub, prover_id, context)
    c_x = _checked_mul(c, x_pub)  # first: an invalid x_pub is refused as such
    if len(v_pt) != POINT_SIZE or len(r) != SCALAR_SIZE or not _is_canonical_scalar(r):
        return False
    r_gen = _base_mul(r) if gen == _BASE else _mul(r, gen)
    rhs = _add(r_gen, c_x)
    return rhs is not None and hmac.compare_digest(rhs, v_pt)


# --- J-PAKE -------------------------------------------------------------------


def _check_bytes(name: str, value: object, limit: int, *, allow_empty: bool) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ConfigurationError(f"J-PAKE {name} must be bytes")
    out = bytes(value)
    if not allow_empty and not out:
        raise ConfigurationError(f"J-PAKE {name} must not be empty")
    if len(out) > limit:
        raise ConfigurationError(f"J-PAKE {name} is longer than {limit} bytes")
    return out


class JPake:
    """One participant of one EC J-PAKE run (see the module docstring for
    the exact messages and checks).

    ``round1()`` may be called as soon as the object exists; ``round2(peer
    round 1)`` after our ``round1()``; ``finish(peer round 2)`` after our
    ``round2()``. Round 1 does not depend on the password: ``password=None``
    defers it to :meth:`set_password`, which must then be called between
    ``round1()`` and ``round2()`` (a responder that learns which role the
    peer means only after its round 1 was sent). Each method runs once; calling out of order, twice, or
    after a failed check raises :class:`JPakeError`.

    Raises :class:`~rolewire.errors.ConfigurationError` for an empty
    password, equal or empty participant ids, or over-long ids/context.
    """

    __slots__ = (
        "_context",
        "_g1",
        "_g2",
        "_g3",
        "_g4",
        "_g13",
        "_my_id",
        "_my_r1",
        "_my_r2",
        "_peer_id",
        "_peer_r1",
        "_s",
        "_state",
        "_x2",
        "_x2s",
    )

    def __init__(self, password: bytes | None, *, my_id: bytes, peer_id: bytes,
                 context: bytes) -> None:
        self._my_id = _check_bytes("my_id", my_id, MAX_ID_SIZE, allow_empty=False)
        self._peer_id = _check_bytes("peer_id", peer_id, MAX_ID_SIZE, allow_empty=False)
        if self._my_id == self._peer_id:
            raise ConfigurationError("J-PAKE participant ids must differ")
        self._context = _check_bytes("context", context, MAX_CONTEXT_SIZE, allow_empty=True)
        self._s: bytes | None = None if password is None else self._scalar(password)
        self._x2: bytes | None = None
        self._x2s: bytes | None = None
        self._g1 = self._g2 = self._g3 = self._g4 = b""
        self._g13: bytes | None = None
        self._my_r1 = self._peer_r1 = self._my_r2 = b""
        self._state = _NEW

    # -- helpers --

    @staticmethod
    def _scalar(password: bytes) -> bytes:
        if not isinstance(password, (bytes, bytearray, memoryview)):
            raise ConfigurationError("J-PAKE password must be bytes")
        if len(password) == 0:
            raise ConfigurationError("J-PAKE password must not be empty")
        if len(password) > 0xFFFFFFFF:
            raise ConfigurationError("J-PAKE password is too long")
        pw = bytes(password)
        s = _hash_to_scalar(_PERSON_PASSWORD, len(pw).to_bytes(4, "big") + pw)
        del pw
        if s == _ZERO_SCALAR:
            raise JPakeError("J-PAKE password scalar is zero")
        return s

    def set_password(self, password: bytes) -> None:
        """Sets the deferred password (after :meth:`round1`, before
        :meth:`round2`); only for an object built with ``password=None``."""
        self._expect(_ROUND1, "set_password")
        if self._x2s is not None or self._x2 is None:
            raise JPakeError("J-PAKE password already set")
        self._x2s = _na.crypto_core_ed25519_scalar_mul(self._x2, self._scalar(password))

    def _expect(self, state: int, what: str) -> None:
        if self._state != state:
            raise JPakeError(f"J-PAKE {what} called out of order")

    def _fail(self, message: str) -> JPakeError:
        """Drops all secrets, makes the object unusable, returns the error."""
        self._state = _FAILED
        self._s = self._x2 = self._x2s = None
        return JPakeError(message)

    # -- rounds --

    def round1(self) -> bytes:
        """Our round-1 message ``G1 || G2 || ZKP(x1) || ZKP(x2)`` (192 bytes)."""
        self._expect(_NEW, "round1")
        s = self._s
        x1 = _random_scalar()
        x2 = _random_scalar()
        g1 = _base_mul(x1)
        g2 = _base_mul(x2)
        assert g1 is not None and g2 is not None  # x1, x2 in [1, L)
        msg = (g1 + g2 + _prove(_BASE, x1, g1, self._my_id, self._context)
               + _prove(_BASE, x2, g2, self._my_id, self._context))
        self._x2 = x2
        if s is not None:
            self._x2s = _na.crypto_core_ed25519_scalar_mul(x2, s)  # != 0: L is prime
        self._s = None
        del x1, x2, s
        self._g1, self._g2, self._my_r1 = g1, g2, msg
        self._state = _ROUND1
        return msg

    def round2(self, peer_round1: bytes) -> bytes:
        """Checks the peer's round 1; returns our round 2 ``A || ZKP(x2*s)``
        (96 bytes)."""
        self._expect(_ROUND1, "round2")
        if self._x2s is None:
            raise self._fail("J-PAKE password not set")
        peer_round1 = bytes(peer_round1)
        if len(peer_round1) != ROUND1_SIZE:
            raise self._fail("J-PAKE round 1 message has the wrong length")
        if hmac.compare_digest(peer_round1, self._my_r1):
            raise self._fail("J-PAKE round 1 message is our own (reflected)")
        g3 = peer_round1[0:32]
        g4 = peer_round1[32:64]
        zkp3 = peer_round1[64:128]
        zkp4 = peer_round1[128:192]
        # The proofs' checks validate G3 and G4 (see _verify).
        try:
            ok = (_verify(_BASE, g3, zkp3, self._peer_id, self._context)
                  and _verify(_BASE, g4, zkp4, self._peer_id, self._context))
        except _InvalidPoint:
            raise self._fail("invalid point in J-PAKE round 1") from None
        if not ok:
            raise self._fail("J-PAKE round 1 proof did not verify")
        # G1 + G3 is shared by both round-2 generators (one addition fewer).
        g13 = _add(self._g1, g3)
        gen_a = _add(g13, g4)
        if gen_a is None:
            raise self._fail("degenerate J-PAKE round 2 generator")
        x2s = self._x2s
        assert x2s is not None
        a = _mul(x2s, gen_a)
        if a is None:  # gen_a has order L and x2s != 0: unreachable
            raise self._fail("degenerate J-PAKE round 2 value")
        msg = a + _prove(gen_a, x2s, a, self._my_id, self._context)
        self._g3, self._g4, self._peer_r1, self._my_r2 = g3, g4, peer_round1, msg
        self._g13 = g13
        self._state = _ROUND2
        return msg

    def finish(self, peer_round2: bytes) -> bytes:
        """Checks the peer's round 2; returns the 64 bytes of key material."""
        self._expect(_ROUND2, "finish")
        peer_round2 = bytes(peer_round2)
        if len(peer_round2) != ROUND2_SIZE:
            raise self._fail("J-PAKE round 2 message has the wrong length")
        b = peer_round2[:32]
        zkp_b = peer_round2[32:]
        gen_b = _add(self._g13, self._g2)
        if gen_b is None:
            raise self._fail("degenerate J-PAKE round 2 generator")
        # The proof's check validates B (see _verify).
        try:
            ok = _verify(gen_b, b, zkp_b, self._peer_id, self._context)
        except _InvalidPoint:
            raise self._fail("invalid point in J-PAKE round 2") from None
        if not ok:
            raise self._fail("J-PAKE round 2 proof did not verify")
        x2, x2s = self._x2, self._x2s
        assert x2 is not None and x2s is not None
        t = _mul(x2s, self._g4)
        d = b if t is None else _na.crypto_core_ed25519_sub(b, t)
        if d == _IDENTITY:
            raise self._fail("degenerate J-PAKE key")
        k = _mul(x2, d)
        self._x2 = self._x2s = None
        del x2, x2s, t, d
        if k is None:  # d has order L and x2 != 0: unreachable
            raise self._fail("degenerate J-PAKE key")
        if self._my_id < self._peer_id:
            ids = (self._my_id, self._peer_id)
            r1s = (self._my_r1, self._peer_r1)
            r2s = (self._my_r2, peer_round2)
        else:
            ids = (self._peer_id, self._my_id)
            r1s = (self._peer_r1, self._my_r1)
            r2s = (peer_round2, self._my_r2)
        material = hashlib.blake2b(_lp16(k, *ids, self._context, *r1s, *r2s),
                                   digest_size=MATERIAL_SIZE, person=_PERSON_KEY).digest()
        entropy.trace("jpake_key", K=k, m=material)
        del k
        self._state = _DONE
        return material
