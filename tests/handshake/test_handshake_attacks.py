"""A man in the middle against the handshake: flipped bytes, dropped,
reordered, replayed and reflected messages, stripped suites, invalid key
shares. Every attack must end in a typed failure and no session."""

from __future__ import annotations

import os

import pytest
from hs_util import FakeClock, cert_role, failed, make_ca, pump
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rolewire import errors
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    HandshakeSuite,
    Initiator,
    RejectReason,
    Responder,
    parse_late_reject,
)
from rolewire.handshake import messages as m
from rolewire.roles import KeyRole, PasswordRole

KEY = os.urandom(32)


@pytest.fixture(scope="module")
def roles():
    ca = make_ca("attack CA")
    return [KeyRole("k", KEY), cert_role("c", ca), PasswordRole("p", "hunter2")]


def fresh(roles, clock=None, **kw):
    """New handshakes; password roles are rebuilt so that the failures one
    attack causes do not lock out the next (the limiter works: see
    test_handshake.py for that)."""
    extra = {"clock": clock} if clock else {}
    roles = [PasswordRole(r.name, "hunter2") if isinstance(r, PasswordRole) else r
             for r in roles]
    return (Initiator(HandshakeConfig(roles=roles, **extra, **kw), peer="R"),
            Responder(HandshakeConfig(roles=roles, **extra, **kw), peer="I"))


def settle(init, resp, tamper, clock):
    """Run the exchange; if it stalls (a dropped message or a length that now
    claims more bytes), let the timeout fire. Returns the outcome."""
    out = pump(init, resp, tamper)
    if not out.ok:
        clock.now += 1000
        for attr, side in (("initiator", init), ("responder", resp)):
            if getattr(out, attr) is None and not side.finished:
                ev = side.next_event()
                setattr(out, attr, ev)
    return out


def assert_no_session(out, init, resp):
    """Neither side may end with a usable session. The side that sends the
    last message (the initiator with 3 messages, the responder with 4)
    completes before the peer judged it; the peer then fails and sends a
    Reject, which the completed side's adapter turns into HandshakeRejected
    (parse_late_reject)."""
    sides = {"initiator": (out.initiator, resp), "responder": (out.responder, init)}
    completed = [name for name, (ev, _) in sides.items() if isinstance(ev, HandshakeComplete)]
    assert len(completed) <= 1, out
    for name, (ev, peer) in sides.items():
        if name in completed:
            other = "responder" if name == "initiator" else "initiator"
            late = peer.data_to_send() or next(
                (d for who, d in reversed(out.flights) if who == other), b"")
            assert isinstance(parse_late_reject(late), errors.HandshakeRejected)
        else:
            assert failed(ev), ev
            assert isinstance(ev.error, errors.HandshakeError)


def positions(length):
    """Every byte of the first 80 (headers, versions, randoms, suites, flags,
    hints) and a stride through the rest."""
    return sorted(set(range(min(80, length))) | set(range(80, length, 53)) | {length - 1})


@pytest.mark.parametrize("flight", [0, 1, 2, 3, 4])
def test_flip_any_byte_of_any_message(flight, roles):
    clock = FakeClock()
    init, resp = fresh(roles, clock)
    length = len(pump(init, resp).flights[flight][1])
    for pos in positions(length):
        clock = FakeClock()
        init, resp = fresh(roles, clock)

        def tamper(i, who, data, pos=pos):
            if i == flight:
                data = bytearray(data)
                pos = min(pos, len(data) - 1)  # ECDSA signatures vary in length
                data[pos] ^= 0x01 << (pos % 8)
                return bytes(data)
            return data

        out = settle(init, resp, tamper, clock)
        assert not out.ok, (flight, pos)
        assert_no_session(out, init, resp)


@pytest.mark.parametrize("flight", [0, 1, 2, 3, 4])
def test_dropped_message_times_out_with_typed_error(flight, roles):
    clock = FakeClock()
    init, resp = fresh(roles, clock)
    out = settle(init, resp, lambda i, w, d: None if i == flight else d, clock)
    assert not out.ok
    timeouts = [ev for ev in (out.initiator, out.responder)
                if isinstance(ev, HandshakeFailed) and ev.reason_code == RejectReason.TIMEOUT]
    assert timeouts


def test_truncated_messages(roles):
    for flight in range(4):
        clock = FakeClock()
        init, resp = fresh(roles, clock)
        out = settle(init, resp, lambda i, w, d, f=flight: d[: len(d) // 2] if i == f else d,
                     clock)
        assert not out.ok


def test_replayed_old_handshake(roles):
    clock = FakeClock()
    init, resp = fresh(roles, clock)
    old = pump(init, resp).flights
    assert len(old) == 5
    # An attacker replays the initiator's old messages to a new responder.
    resp2 = Responder(HandshakeConfig(roles=roles, clock=clock))
    resp2.receive_data(old[0][1])
    assert resp2.next_event() is NEED_DATA
    resp2.data_to_send()
    resp2.receive_data(old[2][1])
    ev = resp2.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.HandshakeDecryptError)
    # ... or the responder's old answer to a new initiator.
    init2 = Initiator(HandshakeConfig(roles=roles, clock=clock))
    init2.data_to_send()
    init2.receive_data(old[1][1])
    ev = init2.next_event()
    assert isinstance(ev, HandshakeFailed)
    assert isinstance(ev.error, (errors.HandshakeDecryptError, errors.InvalidKeyShare))


def test_reordered_messages(roles):
    clock = FakeClock()
    init, resp = fresh(roles, clock)
    flights = pump(init, resp).flights
    # message 3 before message 1, and message 2 to the responder
    for first in (flights[2][1], flights[1][1], flights[3][1]):
        r = Responder(HandshakeConfig(roles=roles, clock=clock))
        r.receive_data(first)
        ev = r.next_event()
        assert isinstance(ev, HandshakeFailed)
        assert isinstance(ev.error, (errors.UnexpectedHandshakeMessage, errors.HandshakeDecryptError))
    i = Initiator(HandshakeConfig(roles=roles, clock=clock))
    i.data_to_send()
    i.receive_data(flights[3][1])  # ResponderAuth before ResponderHello
    ev = i.next_event()
    assert isinstance(ev, HandshakeFailed) and ev.reason_code == RejectReason.UNEXPECTED_MESSAGE


def test_reflected_messages(roles):
    init, resp = fresh(roles)
    hello = init.data_to_send()
    init.receive_data(hello)  # the initiator's own Hello comes back
    ev = init.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.UnexpectedHandshakeMessage)
    resp.receive_data(fresh(roles)[0].data_to_send())
    assert resp.next_event() is NEED_DATA
    reply = resp.data_to_send()
    resp.receive_data(reply)  # the responder's own ResponderHello comes back
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.UnexpectedHandshakeMessage)


def _rewrite_hello(data, **changes):
    msg_type, length = m.parse_frame_header(data[:4])
    hello = m.parse_message(msg_type, data[4:4 + length])
    fields = {f: getattr(hello, f) for f in ("version", "random", "suites", "group", "share",
                                              "hints", "slots")}
    fields.update(changes)
    return m.Hello(**fields).encode() + data[4 + length:]


def test_stripping_the_strong_suites_is_detected():
    x448 = HandshakeSuite.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305
    x25519 = HandshakeSuite.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305
    roles = [KeyRole("k", KEY)]
    clock = FakeClock()
    init = Initiator(HandshakeConfig(roles=roles, suites=[x448, x25519], clock=clock))
    resp = Responder(HandshakeConfig(roles=roles, suites=[x448, x25519], clock=clock))

    def strip(i, who, data):
        if who == "initiator" and data[0] == m.MsgType.HELLO:
            return _rewrite_hello(data, suites=(int(x25519),))
        return data

    out = settle(init, resp, strip, clock)
    assert not out.ok
    assert_no_session(out, init, resp)


def test_unsupported_version_and_unknown_group():
    roles = [KeyRole("k", KEY)]
    unsupported = m.PROTOCOL_VERSION + 1
    for changes, reason in (({"version": unsupported}, RejectReason.UNSUPPORTED_VERSION),
                            ({"group": 9}, RejectReason.ILLEGAL_PARAMETER)):
        init, resp = fresh(roles)
        resp.receive_data(_rewrite_hello(init.data_to_send(), **changes))
        ev = resp.next_event()
        if ev is NEED_DATA:  # unknown group: a HelloRetry is sent instead
            assert resp.data_to_send()[0] == m.MsgType.HELLO_RETRY
            continue
        assert isinstance(ev, HandshakeFailed) and ev.reason_code == reason


def test_invalid_mlkem_encapsulation_key():
    roles = [KeyRole("k", KEY)]
    init, resp = fresh(roles)
    data = init.data_to_send()
    hello = m.parse_message(1, data[4:])
    ecdh = hello.share[:56]
    bad_ek = b"\xff" * 1152 + hello.share[56 + 1152:]  # coefficients >= q: FIPS 203 7.2 fails
    resp.receive_data(_rewrite_hello(data, share=ecdh + bad_ek))
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.InvalidKeyShare)
    assert ev.reason_code == RejectReason.ILLEGAL_PARAMETER
    init, resp = fresh(roles)
    resp.receive_data(_rewrite_hello(data, share=ecdh + hello.share[56:-1]))  # short
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.InvalidKeyShare)


@pytest.mark.parametrize("point", [bytes(56), b"\x01" + bytes(55)], ids=["zero", "one"])
def test_low_order_x448_share_is_refused(point):
    roles = [KeyRole("k", KEY)]
    init, resp = fresh(roles)
    data = init.data_to_send()
    hello = m.parse_message(1, data[4:])
    resp.receive_data(_rewrite_hello(data, share=point + hello.share[56:]))
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.InvalidKeyShare)


X25519_SUITE = HandshakeSuite.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305
_P25519 = 2**255 - 19
#: X25519 public values of small order (u = 0, 1, -1, the two of order 8),
#: non-canonical ones of them (p, p + 1) and each with the top bit set.
X25519_LOW_ORDER = [
    (u | (top << 255)).to_bytes(32, "little")
    for u in (0, 1, _P25519 - 1, _P25519, _P25519 + 1,
              325606250916557431795983626356110631294008115727848805560023387167927233504,
              39382357235489614581723060781553021112529911719440698176882885853963445705823)
    for top in (0, 1)]


@pytest.mark.parametrize("point", X25519_LOW_ORDER, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_low_order_x25519_share_is_refused(point):
    """X25519 runs on libsodium: a small-order share from either side is
    refused as an invalid key share, as OpenSSL refuses it."""
    roles = [KeyRole("k", KEY)]
    init, resp = fresh(roles, suites=[X25519_SUITE])
    data = init.data_to_send()
    hello = m.parse_message(1, data[4:])
    resp.receive_data(_rewrite_hello(data, share=point + hello.share[32:]))
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.InvalidKeyShare)
    # The responder's share, to the initiator.
    init, resp = fresh(roles, suites=[X25519_SUITE])
    resp.receive_data(init.data_to_send())
    assert resp.next_event() is NEED_DATA
    reply = bytearray(resp.data_to_send())
    start = 4 + 1 + 32 + 1
    reply[start:start + 32] = point
    init.receive_data(bytes(reply))
    ev = init.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.InvalidKeyShare)


def test_x25519_on_libsodium_agrees_with_openssl():
    """The libsodium X25519 of the handshake gives OpenSSL's results, and
    refuses exactly the public values OpenSSL refuses."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    from rolewire.handshake import kex
    from rolewire.handshake.suites import KexGroup

    group = KexGroup.X25519_MLKEM768
    for peer in [*X25519_LOW_ORDER, *(os.urandom(32) for _ in range(8))]:
        mine = kex._X25519()
        ref = x25519.X25519PrivateKey.from_private_bytes(mine._key)
        assert ref.public_key().public_bytes_raw() == mine.public
        try:
            expected = ref.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError:
            expected = None
        try:
            got = kex._ecdh(mine, peer, group)
        except errors.InvalidKeyShare:
            got = None
        assert got == expected


def test_modified_mlkem_ciphertext_gives_no_session():
    # ML-KEM's implicit rejection: a wrong ciphertext yields a different
    # secret, which the encrypted part of the message then exposes.
    roles = [KeyRole("k", KEY)]
    init, resp = fresh(roles)
    resp.receive_data(init.data_to_send())
    resp.next_event()
    reply = bytearray(resp.data_to_send())
    ct_start = 4 + 1 + 32 + 1 + 56
    reply[ct_start + 500] ^= 0x40
    init.receive_data(bytes(reply))
    ev = init.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.HandshakeDecryptError)


def test_oversized_message_header():
    _init, resp = fresh([KeyRole("k", KEY)])
    resp.receive_data(b"\x01\xff\xff\xff" + b"x" * 10)
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.HandshakeMessageTooLarge)
    assert ev.reason_code == RejectReason.MESSAGE_TOO_LARGE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.binary(max_size=3000), side=st.sampled_from(["init", "resp"]))
def test_garbage_gives_typed_failure_never_a_crash(junk, side):
    init, resp = fresh([KeyRole("k", KEY)])
    target = init if side == "init" else resp
    if side == "init":
        init.data_to_send()
    target.receive_data(junk)
    ev = target.next_event()
    assert ev is NEED_DATA or (isinstance(ev, HandshakeFailed)
                               and isinstance(ev.error, errors.HandshakeError))


@settings(max_examples=300, deadline=None)
@given(msg_type=st.sampled_from(list(m.MsgType)), body=st.binary(max_size=2000))
def test_message_parsers_raise_only_typed_errors(msg_type, body):
    try:
        m.parse_message(msg_type, body)
    except errors.MalformedHandshakeMessage:
        pass


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_inner_parsers_raise_only_typed_errors(data):
    for parse in (m.parse_role_entries, m.parse_proofs, m.parse_chain, m.parse_role_data,
                  m.unpad):
        try:
            parse(data)
        except errors.MalformedHandshakeMessage:
            pass


def test_jpake_low_order_point_in_a_hello_slot_is_refused(monkeypatch):
    from rolewire.roles.password import PasswordExchange

    real = PasswordExchange.round1

    def bad_round1(self):  # the initiator's round 1 with the identity as G1
        out = real(self)
        return b"\x01" + bytes(31) + out[32:] if self.initiator else out

    roles = [PasswordRole("p", "pw")]
    with monkeypatch.context() as mp:
        mp.setattr(PasswordExchange, "round1", bad_round1)
        init = Initiator(HandshakeConfig(roles=roles), peer="R")
    out = pump(init, Responder(HandshakeConfig(roles=roles), peer="I"))
    assert isinstance(out.responder, HandshakeFailed)
    assert out.responder.reason_code == RejectReason.ILLEGAL_PARAMETER
    assert out.initiator.remote and out.initiator.reason_code == RejectReason.ILLEGAL_PARAMETER
