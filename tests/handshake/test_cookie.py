"""Issue 11 §4, the stateless cookie round trip (sans-IO): a responder under
load does no public-key work for a peer until it proved it receives what is
sent to its address; the cookie is bound to the address, expires with the
rotating secret, and time is passed in. (On protocol 1 there was no cookie:
every Hello made the responder run X448/X25519 + ML-KEM and J-PAKE.)"""

from __future__ import annotations

import os

import pytest
from hs_util import FakeClock, pump

from rolewire import errors
from rolewire.handshake import (
    NEED_DATA,
    CookieChecker,
    HandshakeConfig,
    HandshakeFailed,
    Initiator,
    Responder,
    machine,
)
from rolewire.handshake import messages as m
from rolewire.roles import KeyRole, PasswordRole
from rolewire.roles.password import PasswordExchange

KEY = os.urandom(32)
ROLES = [KeyRole("payment", KEY), PasswordRole("admin", "hunter2")]


@pytest.fixture
def work(monkeypatch):
    """Counts the responder's public-key and J-PAKE work."""
    counts = {"kex": 0, "jpake": 0}
    kex, r1 = machine.responder_exchange, PasswordExchange.round1

    def counting_kex(*a, **k):
        counts["kex"] += 1
        return kex(*a, **k)

    def counting_r1(self):
        if not self.initiator:
            counts["jpake"] += 1
        return r1(self)

    monkeypatch.setattr(machine, "responder_exchange", counting_kex)
    monkeypatch.setattr(PasswordExchange, "round1", counting_r1)
    return counts


def test_under_load_the_first_hello_gets_only_a_cookie_reply(work):
    clock = FakeClock()
    cookies = CookieChecker()
    cfg = HandshakeConfig(roles=ROLES, clock=clock)
    init = Initiator(HandshakeConfig(roles=ROLES))
    resp = Responder(cfg, peer="198.51.100.1", cookies=cookies, under_load=True)
    resp.receive_data(init.data_to_send())
    assert resp.next_event() is NEED_DATA
    reply = resp.data_to_send()
    assert reply[0] == m.MsgType.COOKIE_REPLY
    assert work == {"kex": 0, "jpake": 0}  # nothing computed for an unproven address
    # the initiator answers with the cookie; the handshake then completes
    init.receive_data(reply)
    assert init.next_event() is NEED_DATA
    out = pump(init, resp)
    assert out.ok and out.initiator.peer_roles == {"payment", "admin"}
    assert work["kex"] == 1


def test_no_cookie_round_trip_when_not_under_load(work):
    out = pump(Initiator(HandshakeConfig(roles=ROLES)),
               Responder(HandshakeConfig(roles=ROLES), peer="p", cookies=CookieChecker(),
                         under_load=False))
    assert out.ok and all(d[0] != m.MsgType.COOKIE_REPLY for _, d in out.flights)


def cookie_hello(peer: str, cookies: CookieChecker, clock: FakeClock) -> bytes:
    """A Hello that carries a valid cookie MAC for ``peer``."""
    init = Initiator(HandshakeConfig(roles=ROLES))
    resp = Responder(HandshakeConfig(roles=ROLES, clock=clock), peer=peer, cookies=cookies,
                     under_load=True)
    resp.receive_data(init.data_to_send())
    resp.next_event()
    init.receive_data(resp.data_to_send())
    init.next_event()
    return init.data_to_send()


def test_a_cookie_is_bound_to_the_address(work):
    clock = FakeClock()
    cookies = CookieChecker()
    hello = cookie_hello("198.51.100.1", cookies, clock)
    # replayed from another address: a new cookie reply, no work
    other = Responder(HandshakeConfig(roles=ROLES, clock=clock), peer="203.0.113.9",
                      cookies=cookies, under_load=True)
    other.receive_data(hello)
    assert other.next_event() is NEED_DATA
    assert other.data_to_send()[0] == m.MsgType.COOKIE_REPLY
    assert work["kex"] == 0
    # from the right address it is accepted
    same = Responder(HandshakeConfig(roles=ROLES, clock=clock), peer="198.51.100.1",
                     cookies=cookies, under_load=True)
    same.receive_data(hello)
    assert same.next_event() is NEED_DATA
    assert same.data_to_send()[0] == m.MsgType.RESPONDER_HELLO
    assert work["kex"] == 1


def test_cookies_expire_with_the_rotating_secret(work):
    clock = FakeClock()
    cookies = CookieChecker(rotation=120)
    hello = cookie_hello("198.51.100.1", cookies, clock)

    def accepted() -> bool:
        r = Responder(HandshakeConfig(roles=ROLES, clock=clock), peer="198.51.100.1",
                      cookies=cookies, under_load=True)
        r.receive_data(hello)
        r.next_event()
        return r.data_to_send()[0] == m.MsgType.RESPONDER_HELLO

    assert accepted()
    clock.now += 130  # one rotation: the previous secret still counts
    assert accepted()
    clock.now += 130  # two: the cookie is gone
    assert not accepted()


def test_cookie_checker_uses_only_the_time_passed_in():
    cookies = CookieChecker(rotation=10)
    a = cookies.cookie("x", 0.0)
    assert cookies.cookie("x", 5.0) == a and cookies.cookie("y", 5.0) != a
    b = cookies.cookie("x", 10.0)
    assert b != a
    mac = m.cookie_mac(a, b"hello")
    assert cookies.valid("x", mac, b"hello", 15.0)  # previous secret
    assert not cookies.valid("x", mac, b"other", 15.0)
    assert not cookies.valid("x", mac, b"hello", 40.0)
    with pytest.raises(errors.ConfigurationError):
        CookieChecker(rotation=0)


def test_a_second_cookie_reply_is_a_typed_failure():
    init = Initiator(HandshakeConfig(roles=ROLES))
    init.data_to_send()
    reply = m.CookieReply(m.PROTOCOL_VERSION, os.urandom(16)).encode()
    init.receive_data(reply)
    assert init.next_event() is NEED_DATA
    assert init.data_to_send()[0] == m.MsgType.HELLO
    init.receive_data(reply)
    ev = init.next_event()
    assert isinstance(ev, HandshakeFailed)
    assert isinstance(ev.error, errors.UnexpectedHandshakeMessage)


def test_a_wrong_cookie_after_a_cookie_reply_fails_the_handshake(work):
    clock = FakeClock()
    resp = Responder(HandshakeConfig(roles=ROLES, clock=clock), peer="198.51.100.1",
                     cookies=CookieChecker(), under_load=True)
    init = Initiator(HandshakeConfig(roles=ROLES))
    resp.receive_data(init.data_to_send())
    resp.next_event()
    resp.data_to_send()
    forged = m.CookieReply(m.PROTOCOL_VERSION, os.urandom(16)).encode()
    init.receive_data(forged)
    init.next_event()
    resp.receive_data(init.data_to_send())
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed) and work["kex"] == 0
