"""EC J-PAKE (rolewire.roles.jpake): agreement, every receiver check, and
conformance with the wire layout documented in the module docstring.

A second, independent J-PAKE participant is written here from the
documented formulas (scalars as Python ints mod L, points through
libsodium). It builds honest messages and *forged* ones: points outside the
prime-order subgroup, low-order points and non-canonical encodings, each
with a Schnorr proof that verifies under the group law. So a rejection in
those tests comes from the point checks, not from a broken proof.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator

import nacl.bindings as na
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.exceptions import CryptoError

from rolewire import errors
from rolewire.roles import jpake
from rolewire.roles.jpake import (
    MATERIAL_SIZE,
    ROUND1_SIZE,
    ROUND2_SIZE,
    JPake,
    JPakeError,
)

L = 2**252 + 27742317777372353535851937790883648493
A_ID = b"rolewire/1 initiator"
B_ID = b"rolewire/1 responder"
CTX = b"\x11" * 32 + b"role-id"
PW = b"correct horse battery staple"

IDENTITY = b"\x01" + bytes(31)
# Small-order points (libsodium's blocklist, RFC 8032 discussions).
ORDER2 = bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
ORDER4 = bytes(32)  # (x, y) = (+-sqrt(-1), 0)
ORDER8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
ORDER8B = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
ORDER8_NEG = ORDER8[:31] + bytes([ORDER8[31] | 0x80])
LOW_ORDER = {"identity": IDENTITY, "order2": ORDER2, "order4": ORDER4, "order8": ORDER8,
             "order8b": ORDER8B, "order8neg": ORDER8_NEG}
# Non-canonical encodings, with the canonical point each decodes to.
NON_CANONICAL = {
    "y=p+1 (identity)": (bytes.fromhex("ee" + "ff" * 30 + "7f"), IDENTITY),
    "y=p (order 4)": (bytes.fromhex("ed" + "ff" * 30 + "7f"), ORDER4),
    "x=-0, y=1 (identity)": (b"\x01" + bytes(30) + b"\x80", IDENTITY),
    "x=-0, y=-1 (order 2)": (bytes.fromhex("ec" + "ff" * 31), ORDER2),
}
GARBAGE_OFF_CURVE = hashlib.sha256(b"garbage2").digest()
GARBAGE_ON_CURVE = hashlib.sha256(b"garbage").digest()  # on the curve, not in the subgroup


# --- an independent participant, from the documented formulas --------------------


def sc(n: int) -> bytes:
    return (n % L).to_bytes(32, "little")


def sint(b: bytes) -> int:
    return int.from_bytes(b, "little")


def rand_int() -> int:
    return 1 + int.from_bytes(os.urandom(40), "little") % (L - 1)


def pt_add(p: bytes, q: bytes) -> bytes:
    return na.crypto_core_ed25519_add(p, q)


def pt_mul(k: int, p: bytes) -> bytes:
    """k*P for P in the prime-order subgroup (identity if k = 0 mod L)."""
    k %= L
    if k == 0 or p == IDENTITY:
        return IDENTITY
    return na.crypto_scalarmult_ed25519_noclamp(sc(k), p)


BASE = na.crypto_scalarmult_ed25519_base_noclamp(sc(1))


def small_mul(j: int, t: bytes) -> bytes:
    """j*T by repeated addition (works for any curve point, e.g. low order)."""
    acc = IDENTITY
    for _ in range(j):
        acc = pt_add(acc, t)
    return acc


def lp(*fields: bytes) -> bytes:
    return b"".join(len(f).to_bytes(2, "big") + f for f in fields)


def h_scalar(person: bytes, data: bytes) -> int:
    return sint(hashlib.blake2b(data, digest_size=64, person=person).digest()) % L


def password_scalar(pw: bytes) -> int:
    return h_scalar(b"rolewire1jpakes", len(pw).to_bytes(4, "big") + pw)


def challenge(gen: bytes, v: bytes, x: bytes, prover: bytes, ctx: bytes) -> int:
    return h_scalar(b"rolewire1jpakez", lp(gen, v, x, prover, ctx))


def proof_ok(gen: bytes, x_pub: bytes, proof: bytes, prover: bytes, ctx: bytes) -> bool:
    v, r = proof[:32], proof[32:]
    c = challenge(gen, v, x_pub, prover, ctx)
    return sint(r) < L and pt_add(pt_mul(sint(r), gen), pt_mul(c, x_pub)) == v


def forge(gen: bytes, x: int, prover: bytes, ctx: bytes, *, torsion: bytes = IDENTITY,
          encoding: bytes | None = None) -> tuple[bytes, bytes]:
    """``(X, proof)`` with X = x*gen + torsion (``torsion`` of order 1..8),
    sent as ``encoding`` if given. The proof satisfies V == r*gen + c*X under
    the group law (c*torsion = (c mod 8)*torsion), so only a point check can
    refuse it. With the defaults it is an honest proof."""
    x_pt = pt_add(pt_mul(x, gen), torsion)
    x_enc = x_pt if encoding is None else encoding
    for _ in range(200):
        v, j = rand_int(), int.from_bytes(os.urandom(1), "big") % 8
        v_pt = pt_add(pt_mul(v, gen), small_mul(j, torsion))
        c = challenge(gen, v_pt, x_enc, prover, ctx)
        if small_mul(c % 8, torsion) == small_mul(j, torsion):
            return x_enc, v_pt + sc(v - x * c)
    raise AssertionError("could not forge")


class Peer:
    """The documented protocol, run by the test (plays 'bob', id B_ID)."""

    def __init__(self, pw: bytes = PW, my_id: bytes = B_ID, peer_id: bytes = A_ID,
                 ctx: bytes = CTX, x3: int | None = None, x4: int | None = None) -> None:
        self.s = password_scalar(pw)
        self.my_id, self.peer_id, self.ctx = my_id, peer_id, ctx
        self.x3 = rand_int() if x3 is None else x3
        self.x4 = rand_int() if x4 is None else x4
        self.g3, self.g4 = pt_mul(self.x3, BASE), pt_mul(self.x4, BASE)

    def round1(self) -> bytes:
        _, z3 = forge(BASE, self.x3, self.my_id, self.ctx)
        _, z4 = forge(BASE, self.x4, self.my_id, self.ctx)
        self.r1 = self.g3 + self.g4 + z3 + z4
        return self.r1

    def take_round1(self, r1: bytes) -> None:
        self.peer_r1 = r1
        self.g1, self.g2 = r1[:32], r1[32:64]
        assert proof_ok(BASE, self.g1, r1[64:128], self.peer_id, self.ctx)
        assert proof_ok(BASE, self.g2, r1[128:192], self.peer_id, self.ctx)

    @property
    def my_gen(self) -> bytes:  # G1 + G2 + G3 (generator of our round 2)
        return pt_add(pt_add(self.g1, self.g2), self.g3)

    def round2(self) -> bytes:
        b, zb = forge(self.my_gen, self.x4 * self.s, self.my_id, self.ctx)
        self.r2 = b + zb
        return self.r2

    def material(self, a_round2: bytes) -> bytes:
        a = a_round2[:32]
        gen_a = pt_add(pt_add(self.g1, self.g3), self.g4)  # the sender's G1+G3+G4
        assert proof_ok(gen_a, a, a_round2[32:], self.peer_id, self.ctx)
        k = pt_mul(self.x4, na.crypto_core_ed25519_sub(a, pt_mul(self.x4 * self.s, self.g2)))
        ids = sorted([self.my_id, self.peer_id])
        mine_first = ids[0] == self.my_id
        r1s = (self.r1, self.peer_r1) if mine_first else (self.peer_r1, self.r1)
        r2s = (self.r2, a_round2) if mine_first else (a_round2, self.r2)
        return hashlib.blake2b(lp(k, *ids, self.ctx, *r1s, *r2s), digest_size=64,
                               person=b"rolewire1jpakek").digest()


# --- helpers -----------------------------------------------------------------------


def pair(pa: bytes = PW, pb: bytes = PW, ctx_a: bytes = CTX,
         ctx_b: bytes = CTX) -> tuple[JPake, JPake]:
    return (JPake(pa, my_id=A_ID, peer_id=B_ID, context=ctx_a),
            JPake(pb, my_id=B_ID, peer_id=A_ID, context=ctx_b))


def run(a: JPake, b: JPake, order: tuple[str, ...] = ("a1", "b1", "b2", "a2", "af", "bf"),
        ) -> tuple[bytes, bytes]:
    msgs: dict[str, bytes] = {}
    steps: dict[str, Callable[[], bytes]] = {
        "a1": a.round1, "b1": b.round1,
        "a2": lambda: a.round2(msgs["b1"]), "b2": lambda: b.round2(msgs["a1"]),
        "af": lambda: a.finish(msgs["b2"]), "bf": lambda: b.finish(msgs["a2"]),
    }
    for step in order:
        msgs[step] = steps[step]()
    return msgs["af"], msgs["bf"]


def valid_orders() -> Iterator[tuple[str, ...]]:
    for first, second, third in itertools.product(
            itertools.permutations(("a1", "b1")), itertools.permutations(("a2", "b2")),
            itertools.permutations(("af", "bf"))):
        yield first + second + third


def flip(msg: bytes, bit: int) -> bytes:
    out = bytearray(msg)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def replace_v(enc: bytes) -> Callable[[bytes, bytes], bytes]:
    """A proof variant whose V is ``enc``."""
    return lambda v, r: enc + r


PROOF_VARIANTS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "V bit": lambda v, r: flip(v, 7) + r,
    "V top bit": lambda v, r: flip(v, 255) + r,
    "r bit": lambda v, r: v + flip(r, 100),
    "r + L": lambda v, r: v + (sint(r) + L).to_bytes(32, "little"),  # same r mod L
    "r = 0": lambda v, r: v + bytes(32),
    "r all ones": lambda v, r: v + b"\xff" * 32,
    "V torsion": lambda v, r: pt_add(v, ORDER8) + r,
    **{f"V {name}": replace_v(enc)
       for name, enc in {**LOW_ORDER, "garbage off curve": GARBAGE_OFF_CURVE,
                         "garbage on curve": GARBAGE_ON_CURVE,
                         **{k: e for k, (e, _) in NON_CANONICAL.items()}}.items()},
}


@pytest.fixture
def recorded_scalars(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every scalar jpake draws: x1, x2 are the first two of a round 1."""
    drawn: list[int] = []
    original = jpake._random_scalar

    def spy() -> bytes:
        k = original()
        drawn.append(sint(k))
        return k

    monkeypatch.setattr(jpake, "_random_scalar", spy)
    return drawn


def seeded_scalars(monkeypatch: pytest.MonkeyPatch, seed: bytes) -> None:
    counter = itertools.count()

    def det() -> bytes:
        d = hashlib.blake2b(seed + next(counter).to_bytes(8, "big")).digest()
        return sc(sint(d) % (L - 1) + 1)

    monkeypatch.setattr(jpake, "_random_scalar", det)


# --- agreement -------------------------------------------------------------------------


@pytest.mark.parametrize("order", list(valid_orders()), ids="-".join)
def test_same_password_same_material_any_order(order: tuple[str, ...]) -> None:
    ma, mb = run(*pair(), order)
    assert ma == mb
    assert len(ma) == MATERIAL_SIZE == 64


def test_message_sizes() -> None:
    a, b = pair()
    a1, b1 = a.round1(), b.round1()
    assert len(a1) == len(b1) == ROUND1_SIZE == 192
    assert len(a.round2(b1)) == len(b.round2(a1)) == ROUND2_SIZE == 96


def test_different_password_different_material() -> None:
    ma, mb = run(*pair(PW, PW + b"!"))
    assert ma != mb
    ma, mb = run(*pair(b"a", b"b"))
    assert ma != mb


def test_fresh_randomness_each_run() -> None:
    m1, _ = run(*pair())
    m2, _ = run(*pair())
    assert m1 != m2


def test_context_changes_material(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the same (seeded) randomness, only the context differs."""
    def material(ctx: bytes) -> bytes:
        seeded_scalars(monkeypatch, b"seed")
        ma, mb = run(*pair(ctx_a=ctx, ctx_b=ctx))
        assert ma == mb
        return ma

    assert material(CTX) == material(CTX)  # determinism: the seed works
    assert material(CTX) != material(CTX + b"x")
    assert material(b"") != material(b"\x00")


def test_context_mismatch_fails() -> None:
    a, b = pair(ctx_a=CTX, ctx_b=CTX + b"x")
    a1, b1 = a.round1(), b.round1()
    with pytest.raises(JPakeError):
        a.round2(b1)
    with pytest.raises(JPakeError):
        b.round2(a1)


@given(pa=st.binary(min_size=1, max_size=40), pb=st.binary(min_size=1, max_size=40),
       same=st.booleans())
def test_property_material_equal_iff_passwords_equal(pa: bytes, pb: bytes, same: bool) -> None:
    if same:
        pb = pa
    ma, mb = run(*pair(pa, pb))
    assert (ma == mb) == (pa == pb)


# --- conformance with the documented wire format ---------------------------------------


@pytest.mark.parametrize("ids", [(A_ID, B_ID), (B_ID, A_ID), (b"z", b"a"), (b"a", b"ab")])
def test_matches_documented_protocol(ids: tuple[bytes, bytes]) -> None:
    """Our object against the test's independent implementation: proofs,
    A and the key-material hash must follow the module docstring."""
    alice_id, bob_id = ids
    alice = JPake(PW, my_id=alice_id, peer_id=bob_id, context=CTX)
    bob = Peer(my_id=bob_id, peer_id=alice_id)
    a1 = alice.round1()
    bob.take_round1(a1)  # asserts the documented round-1 proofs
    a2 = alice.round2(bob.round1())
    b2 = bob.round2()
    # A = (x2*s)*(G1+G3+G4): checked through the shared key below.
    assert alice.finish(b2) == bob.material(a2)


def test_password_scalar_zero_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jpake, "_hash_to_scalar", lambda person, data: bytes(32))
    with pytest.raises(JPakeError):
        JPake(PW, my_id=A_ID, peer_id=B_ID, context=CTX)


# --- the test data itself ----------------------------------------------------------------


@pytest.mark.parametrize("name", LOW_ORDER)
def test_low_order_points_are_low_order_and_invalid(name: str) -> None:
    t = LOW_ORDER[name]
    assert small_mul(8, t) == IDENTITY
    assert not na.crypto_core_ed25519_is_valid_point(t)


def test_torsion_component_is_rejected_by_is_valid_point() -> None:
    good = pt_mul(rand_int(), BASE)
    assert na.crypto_core_ed25519_is_valid_point(good)
    for t in (ORDER2, ORDER4, ORDER8, ORDER8B):
        mixed = pt_add(good, t)  # on the curve, not in the prime-order subgroup
        assert mixed != good
        assert small_mul(8, mixed) == pt_mul(8, good)
        assert not na.crypto_core_ed25519_is_valid_point(mixed)


def test_garbage_and_non_canonical_are_invalid() -> None:
    with pytest.raises(CryptoError):
        pt_add(GARBAGE_OFF_CURVE, BASE)
    pt_add(GARBAGE_ON_CURVE, BASE)  # decodes
    for enc, _ in NON_CANONICAL.values():
        assert not na.crypto_core_ed25519_is_valid_point(enc)
    assert not na.crypto_core_ed25519_is_valid_point(GARBAGE_OFF_CURVE)
    assert not na.crypto_core_ed25519_is_valid_point(GARBAGE_ON_CURVE)


# --- round 1 checks -----------------------------------------------------------------------


TORSIONED = {"torsion2": ORDER2, "torsion4": ORDER4, "torsion8": ORDER8}
BAD_POINTS = [*LOW_ORDER, *TORSIONED, *NON_CANONICAL, "garbage off curve", "garbage on curve"]


def bad_point(name: str, gen: bytes, prover: bytes = B_ID,
              ctx: bytes = CTX) -> tuple[bytes, bytes | None]:
    """(encoding, proof or None): a bad value for a point proven over ``gen``.
    The proof is forged to verify under the group law where that is possible
    (not for encodings that do not decode)."""
    if name in LOW_ORDER:
        return forge(gen, 0, prover, ctx, torsion=LOW_ORDER[name])
    if name in TORSIONED:
        return forge(gen, rand_int(), prover, ctx, torsion=TORSIONED[name])
    if name in NON_CANONICAL:
        enc, decoded = NON_CANONICAL[name]
        return forge(gen, 0, prover, ctx, torsion=decoded, encoding=enc)
    garbage = {"garbage off curve": GARBAGE_OFF_CURVE, "garbage on curve": GARBAGE_ON_CURVE}
    return garbage[name], None


@pytest.mark.parametrize("length", [0, 1, 96, ROUND1_SIZE - 1, ROUND1_SIZE + 1, 2 * ROUND1_SIZE])
def test_round1_wrong_length(length: int) -> None:
    a, b = pair()
    a.round1()
    good = b.round1()
    msg = (good * 3)[:length]
    with pytest.raises(JPakeError):
        a.round2(msg)


def test_forged_proofs_would_verify_under_the_group_law() -> None:
    """Sanity of the forgery helper: honest proofs verify, and forged ones
    satisfy V == r*G + c*X with c*X = (c*x)*G + (c mod 8)*T."""
    x_pub, proof = forge(BASE, 12345, B_ID, CTX)
    assert proof_ok(BASE, x_pub, proof, B_ID, CTX)
    for x, t in ((0, ORDER8), (777, ORDER8), (0, ORDER2), (5, ORDER4), (0, IDENTITY)):
        x_pub, proof = forge(BASE, x, B_ID, CTX, torsion=t)
        assert x_pub == pt_add(pt_mul(x, BASE), t)
        v, r = proof[:32], proof[32:]
        c = challenge(BASE, v, x_pub, B_ID, CTX)
        assert sint(r) < L
        assert pt_add(pt_add(pt_mul(sint(r), BASE), pt_mul(c * x, BASE)),
                      small_mul(c % 8, t)) == v
    a, _ = pair()
    a.round1()
    peer = Peer()
    a.round2(peer.round1())  # an honest test peer is accepted


def test_checked_mul_refuses_what_is_valid_point_refuses() -> None:
    """The proofs' c*X multiplication is the validity check of a peer's point
    (no separate is_valid_point call): it must refuse every bad point, for
    any scalar including 0 (where nothing is multiplied), and accept good
    ones with the same product as the plain multiplication."""
    zero = bytes(32)
    scalars = [zero, jpake._random_scalar(), jpake._random_scalar()]
    for name in BAD_POINTS:
        enc, _ = bad_point(name, BASE)
        assert not jpake._is_valid_point(enc), name
        for k in scalars:
            with pytest.raises(jpake._InvalidPoint):
                jpake._checked_mul(k, enc)
    for _ in range(3):
        good = pt_mul(rand_int(), BASE)
        assert jpake._checked_mul(zero, good) is None
        k = scalars[1]
        assert jpake._checked_mul(k, good) == na.crypto_scalarmult_ed25519_noclamp(k, good)
    with pytest.raises(jpake._InvalidPoint):
        jpake._checked_mul(scalars[1], BASE[:31])


@pytest.mark.parametrize("slot", [0, 1], ids=["G3", "G4"])
def test_round1_bad_points_refused(slot: int) -> None:
    peer = Peer()
    honest = peer.round1()
    for name in BAD_POINTS:
        enc, proof = bad_point(name, BASE)
        if proof is None:
            proof = honest[64 + 64 * slot:128 + 64 * slot]
        parts = [honest[0:32], honest[32:64], honest[64:128], honest[128:192]]
        parts[slot], parts[2 + slot] = enc, proof
        a, _ = pair()
        a.round1()
        with pytest.raises(JPakeError):
            a.round2(b"".join(parts))
        assert a._state == jpake._FAILED, name


@pytest.mark.parametrize("variant", [*PROOF_VARIANTS, "other proof"])
@pytest.mark.parametrize("slot", [0, 1], ids=["ZKP(x3)", "ZKP(x4)"])
def test_round1_bad_proof_refused(slot: int, variant: str) -> None:
    honest = Peer().round1()
    off = 64 + 64 * slot
    if variant == "other proof":
        proof = honest[64 + 64 * (1 - slot):128 + 64 * (1 - slot)]
    else:
        proof = PROOF_VARIANTS[variant](honest[off:off + 32], honest[off + 32:off + 64])
    msg = honest[:off] + proof + honest[off + 64:]
    assert len(msg) == ROUND1_SIZE
    a, _ = pair()
    a.round1()
    with pytest.raises(JPakeError):
        a.round2(msg)
    assert a._state == jpake._FAILED


def test_round1_proof_for_other_prover_id_refused() -> None:
    for prover in (b"mallory", A_ID, B_ID + b"\x00", b""):  # A_ID: our own id
        peer = Peer(my_id=prover or b"x")
        if prover == b"":
            # empty prover id (hashes as u16<>): craft by hand
            _, z3 = forge(BASE, peer.x3, b"", CTX)
            _, z4 = forge(BASE, peer.x4, b"", CTX)
            msg = peer.g3 + peer.g4 + z3 + z4
        else:
            msg = peer.round1()
        a, _ = pair()
        a.round1()
        with pytest.raises(JPakeError):
            a.round2(msg)


def test_round1_proof_with_other_context_refused() -> None:
    for ctx in (CTX + b"\x00", CTX[:-1], b""):
        a, _ = pair()
        a.round1()
        with pytest.raises(JPakeError):
            a.round2(Peer(ctx=ctx).round1())


def test_round1_reflected_refused() -> None:
    a, _ = pair()
    a1 = a.round1()
    with pytest.raises(JPakeError):
        a.round2(a1)


def test_round1_made_with_our_id_refused_even_if_not_identical() -> None:
    """A second participant using *our* id (a reflection through a fresh
    object): its proofs name the wrong prover."""
    a, _ = pair()
    a.round1()
    twin = JPake(PW, my_id=A_ID, peer_id=B_ID, context=CTX)
    with pytest.raises(JPakeError):
        a.round2(twin.round1())


def test_round1_swapped_proofs_refused() -> None:
    peer = Peer()
    h = peer.round1()
    a, _ = pair()
    a.round1()
    with pytest.raises(JPakeError):
        a.round2(h[:64] + h[128:192] + h[64:128])


def test_every_round1_bit_flip_is_refused() -> None:
    _, b = pair()
    good = b.round1()
    for bit in range(ROUND1_SIZE * 8):
        a = JPake(PW, my_id=A_ID, peer_id=B_ID, context=CTX)
        a.round1()
        with pytest.raises(JPakeError):
            a.round2(flip(good, bit))


def test_round2_generator_identity_refused(recorded_scalars: list[int]) -> None:
    """G1 + G3 + G4 = identity: the peer picks x3 = -(x1 + x4) (it would need
    to know x1; the test does)."""
    a, _ = pair()
    a.round1()
    x1 = recorded_scalars[0]
    x4 = rand_int()
    peer = Peer(x3=(-(x1 + x4)) % L, x4=x4)
    with pytest.raises(JPakeError):
        a.round2(peer.round1())


# --- round 2 checks ------------------------------------------------------------------------


def started(peer: Peer | None = None) -> tuple[JPake, Peer, bytes]:
    """Alice after round 2 against a test peer; returns (alice, peer, alice's round 2)."""
    a, _ = pair()
    peer = peer or Peer()
    peer.take_round1(a.round1())
    a2 = a.round2(peer.round1())
    return a, peer, a2


@pytest.mark.parametrize("length", [0, 32, ROUND2_SIZE - 1, ROUND2_SIZE + 1, ROUND1_SIZE])
def test_round2_wrong_length(length: int) -> None:
    a, peer, _ = started()
    msg = (peer.round2() * 3)[:length]
    with pytest.raises(JPakeError):
        a.finish(msg)


def test_round2_honest_peer_accepted() -> None:
    a, peer, a2 = started()
    assert a.finish(peer.round2()) == peer.material(a2)


def test_round2_bad_point_refused() -> None:
    for name in BAD_POINTS:
        a, peer, _ = started()
        enc, proof = bad_point(name, peer.my_gen, peer.my_id, peer.ctx)
        if proof is None:
            proof = peer.round2()[32:]
        with pytest.raises(JPakeError):
            a.finish(enc + proof)
        assert a._state == jpake._FAILED, name


@pytest.mark.parametrize("variant", PROOF_VARIANTS)
def test_round2_bad_proof_refused(variant: str) -> None:
    a, peer, _ = started()
    b2 = peer.round2()
    with pytest.raises(JPakeError):
        a.finish(b2[:32] + PROOF_VARIANTS[variant](b2[32:64], b2[64:96]))
    assert a._state == jpake._FAILED


def test_round2_proof_for_other_prover_or_context_refused() -> None:
    for prover, ctx in ((b"mallory", CTX), (A_ID, CTX), (B_ID, CTX + b"x"), (B_ID, b"")):
        a, peer, _ = started()
        b_pt, proof = forge(peer.my_gen, peer.x4 * peer.s, prover, ctx)
        with pytest.raises(JPakeError):
            a.finish(b_pt + proof)


def test_round2_proof_with_wrong_generator_refused() -> None:
    """A proof over G (or over the sender's view G1+G3+G4) is not accepted."""
    for which in ("base", "peer view"):
        a, peer, _ = started()
        gen = BASE if which == "base" else pt_add(pt_add(peer.g1, peer.g3), peer.g4)
        b_pt, proof = forge(gen, peer.x4 * peer.s, peer.my_id, peer.ctx)
        with pytest.raises(JPakeError):
            a.finish(b_pt + proof)


def test_round2_reflected_refused() -> None:
    a, _peer, a2 = started()
    with pytest.raises(JPakeError):
        a.finish(a2)


def test_degenerate_key_refused(recorded_scalars: list[int]) -> None:
    """B = (x2*s)*G4 makes B - (x2*s)*G4 the identity; with a valid proof."""
    a, _ = pair()
    peer = Peer()
    peer.take_round1(a.round1())
    x1, x2 = recorded_scalars[0], recorded_scalars[1]
    a.round2(peer.round1())
    w = (x2 * peer.s * peer.x4 * pow(x1 + x2 + peer.x3, -1, L)) % L
    b_pt, proof = forge(peer.my_gen, w, peer.my_id, peer.ctx)
    assert b_pt == pt_mul(x2 * peer.s, peer.g4)
    with pytest.raises(JPakeError):
        a.finish(b_pt + proof)


def test_round2_generator_of_peer_identity_refused(recorded_scalars: list[int]) -> None:
    """G1 + G2 + G3 = identity (x3 = -(x1 + x2)): finish refuses."""
    a, _ = pair()
    a1 = a.round1()
    x1, x2 = recorded_scalars[0], recorded_scalars[1]
    peer = Peer(x3=(-(x1 + x2)) % L)
    peer.take_round1(a1)
    a.round2(peer.round1())
    assert peer.my_gen == IDENTITY
    _, proof = forge(BASE, 1, peer.my_id, peer.ctx)
    with pytest.raises(JPakeError):
        a.finish(BASE + proof)


def test_every_round2_bit_flip_is_refused() -> None:
    """Every bit of A and of its proof is covered: the receiving call raises
    (so the materials can never silently differ)."""
    a, b = pair()
    a1, b1 = a.round1(), b.round1()
    a2, b2 = a.round2(b1), b.round2(a1)
    for bit in range(ROUND2_SIZE * 8):
        bob = copy.copy(b)  # b after its round 2, not yet finished
        with pytest.raises(JPakeError):
            bob.finish(flip(a2, bit))
    assert b.finish(a2) == a.finish(b2)  # the template is intact


# --- construction, call order, secrets ----------------------------------------------------


def test_error_class() -> None:
    assert issubclass(JPakeError, errors.InvalidKeyShare)
    assert issubclass(JPakeError, errors.HandshakeError)


@pytest.mark.parametrize("kwargs", [
    {"password": b""},
    {"password": "text"},  # str is not accepted: the caller encodes
    {"my_id": B_ID},  # equal ids
    {"my_id": b""},
    {"peer_id": b""},
    {"my_id": b"x" * 65536},
    {"context": b"x" * 65536},
    {"context": "text"},
])
def test_construction_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"password": PW, "my_id": A_ID, "peer_id": B_ID, "context": CTX}
    args.update(kwargs)
    with pytest.raises(errors.ConfigurationError):
        JPake(args.pop("password"), **args)  # type: ignore[arg-type]


def test_construction_limits_accepted() -> None:
    JPake(b"x", my_id=b"a" * 65535, peer_id=b"b", context=b"c" * 65535).round1()
    JPake(bytearray(b"pw"), my_id=b"a", peer_id=b"b", context=b"").round1()


def test_round2_before_round1() -> None:
    a, b = pair()
    with pytest.raises(JPakeError):
        a.round2(b.round1())


def test_finish_before_round2() -> None:
    a, b = pair()
    with pytest.raises(JPakeError):
        a.finish(bytes(ROUND2_SIZE))  # nothing done yet
    a1, b1 = a.round1(), b.round1()
    b2 = b.round2(a1)
    with pytest.raises(JPakeError):
        a.finish(b2)  # our own round 2 is missing
    # the misuse did not consume the object: it still completes
    a2 = a.round2(b1)
    assert a.finish(b2) == b.finish(a2)


@pytest.mark.parametrize("twice", ["round1", "round2", "finish"])
def test_each_call_once(twice: str) -> None:
    a, b = pair()
    a1, b1 = a.round1(), b.round1()
    if twice == "round1":
        with pytest.raises(JPakeError):
            a.round1()
        return
    a2, b2 = a.round2(b1), b.round2(a1)
    if twice == "round2":
        with pytest.raises(JPakeError):
            a.round2(b1)
        return
    a.finish(b2)
    with pytest.raises(JPakeError):
        a.finish(b2)
    b.finish(a2)


def test_failure_is_final() -> None:
    a, b = pair()
    a.round1()
    b1 = b.round1()
    with pytest.raises(JPakeError):
        a.round2(flip(b1, 0))
    with pytest.raises(JPakeError):
        a.round2(b1)  # the honest message no longer helps
    assert a._x2 is None and a._x2s is None


def test_secrets_dropped() -> None:
    a, b = pair()
    assert a._s is not None
    a1, b1 = a.round1(), b.round1()
    assert a._s is None  # only x2*s is needed from here on
    assert a._x2 is not None and a._x2s is not None
    a2, b2 = a.round2(b1), b.round2(a1)
    a.finish(b2)
    b.finish(a2)
    for side in (a, b):
        assert side._s is None and side._x2 is None and side._x2s is None


def test_messages_never_contain_secrets(recorded_scalars: list[int]) -> None:
    pw = b"hunter2-secret"
    texts: list[str] = []
    for bad in (lambda m: m[:10], lambda m: flip(m, 5), lambda m: flip(m, 1000)):
        a = JPake(pw, my_id=A_ID, peer_id=B_ID, context=CTX)
        b = JPake(pw, my_id=B_ID, peer_id=A_ID, context=CTX)
        a.round1()
        with pytest.raises(JPakeError) as exc:
            a.round2(bad(b.round1()))
        texts.append(str(exc.value) + repr(exc.value))
    a, b = pair(pw, pw)
    a1, b1 = a.round1(), b.round1()
    a.round2(b1)
    with pytest.raises(JPakeError) as exc:
        a.finish(flip(b.round2(a1), 9))
    texts.append(str(exc.value) + repr(exc.value))
    secrets = [pw.decode(), pw.hex()] + [sc(k).hex() for k in recorded_scalars]
    for text in texts:
        assert text.startswith("J-PAKE") or "J-PAKE" in text
        for secret in secrets:
            assert secret not in text
