"""Issue 11 §1: the password guessing budget holds whatever the attacker does
(sans-IO). Each test reproduces one attack of the issue; on the code before
the fix it fails (the comment says how).

A *guess* is a J-PAKE run of the responder's role in which either the
responder checked the peer's proof (online guess) or the responder sent its
own proof (an offline-checkable guess). ``guesses`` counts distinct
responder-side runs that did either.
"""

from __future__ import annotations

import os

import pytest
from hs_util import FakeClock, pump
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rolewire import errors
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    Initiator,
    RejectReason,
    Responder,
    machine,
)
from rolewire.handshake.messages import Reject
from rolewire.roles import KeyRole, PasswordRateLimiter, PasswordRole
from rolewire.roles.budget import MemoryBudgetStore, peer_scope
from rolewire.roles.password import PasswordExchange

PUBLIC_KEY = os.urandom(32)
SECRET = "tulip-7"
CANDIDATES = ["rose-1", "lily-2", "iris-3", "aster-4", "daisy-5", "poppy-6", SECRET, "fern-8"]


class GuessCounter:
    """Counts responder-side J-PAKE runs with the role's password that gave
    the peer a guess (the responder checked a proof, or sent one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs: dict[int, object] = {}
        self.online = 0
        self.offline = 0
        self.initiator_proofs = 0
        verify, prove = PasswordExchange.verify, PasswordExchange.prove
        counter = self

        def counting_verify(ex, direction, h, proof):  # type: ignore[no-untyped-def]
            if not ex.initiator and ex.role is not None:
                counter.online += 1
                counter.runs[id(ex)] = ex  # kept: ids are reused after GC
            return verify(ex, direction, h, proof)

        def counting_prove(ex, direction, h):  # type: ignore[no-untyped-def]
            if ex.initiator:
                counter.initiator_proofs += 1
            elif ex.role is not None:
                counter.offline += 1
                counter.runs[id(ex)] = ex  # kept: ids are reused after GC
            return prove(ex, direction, h)

        monkeypatch.setattr(PasswordExchange, "verify", counting_verify)
        monkeypatch.setattr(PasswordExchange, "prove", counting_prove)

    @property
    def guesses(self) -> int:
        return len(self.runs)


@pytest.fixture
def guesses(monkeypatch: pytest.MonkeyPatch) -> GuessCounter:
    return GuessCounter(monkeypatch)


def server_roles(limiter: PasswordRateLimiter) -> list[object]:
    return [KeyRole("public", PUBLIC_KEY), PasswordRole("admin", SECRET, limiter=limiter)]


def attacker(password: str) -> Initiator:
    """Holds the low-privilege key role and guesses the password role."""
    return Initiator(HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                            PasswordRole("admin", password)]), peer="srv")


def to_message4(init: Initiator, resp: Responder) -> tuple[bytes, HandshakeFailed | None]:
    """Runs messages 1 to 3 and returns the responder's message 4, held (the
    attacker can check its guess offline with it and never answer)."""
    resp.receive_data(init.data_to_send())
    ev = resp.next_event()
    if isinstance(ev, HandshakeFailed):
        return b"", ev
    init.receive_data(resp.data_to_send())
    assert init.next_event() is NEED_DATA
    resp.receive_data(init.data_to_send())
    ev = resp.next_event()
    if isinstance(ev, HandshakeFailed):
        return b"", ev
    return resp.data_to_send(), None


def found_password(init: Initiator, msg4: bytes) -> bool:
    """The attacker's offline check: does the responder's proof verify?"""
    init.receive_data(msg4)
    ev = init.next_event()
    return isinstance(ev, HandshakeComplete) and "admin" in ev.peer_roles


# --- an initiator that never proves (protocol 1: VERIFY-only offers) --------------


def test_initiator_that_never_proves_gets_only_counted_guesses(guesses):
    # Protocol 1: a VERIFY-only password offer made the responder send its
    # proof without ever checking one: 8 handshakes found an 8-candidate
    # password with 0 failures counted. Protocol 2 has no password flags (J-PAKE
    # slots are mutual); the responder proves first, but every run is charged
    # before J-PAKE goes on and stays charged unless the initiator's proof
    # verifies, so an initiator that never proves spends the budget.
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, clock=clock)
    cfg = HandshakeConfig(roles=server_roles(limiter), clock=clock, timeout=5)
    found = []
    for candidate in CANDIDATES:
        init = attacker(candidate)
        resp = Responder(cfg, peer="10.9.9.9")
        msg4, _failure = to_message4(init, resp)
        if found_password(init, msg4):
            found.append(candidate)
        clock.now += 6  # the attacker never answers: the responder times out
        resp.check_timeout()
    assert found == []  # SECRET is the 7th candidate: the budget ran out at 5
    assert guesses.guesses <= 5
    assert limiter.failures("10.9.9.9", "admin") == guesses.guesses


def test_any_unexpected_exception_in_next_event_is_a_typed_failure(monkeypatch):
    # Protocol 1: ``_password_proofs_sent.remove`` raised a bare ValueError out
    # of next_event() on odd flags and left the machine stuck without a Reject.
    init = Initiator(HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY)]))
    resp = Responder(HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY)]))
    resp.receive_data(init.data_to_send())

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise ValueError("bug")

    monkeypatch.setattr(machine, "responder_exchange", boom)
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed)
    assert isinstance(ev.error, errors.HandshakeInternalError)
    assert ev.reason_code == RejectReason.INTERNAL_ERROR
    assert resp.data_to_send() == Reject(RejectReason.INTERNAL_ERROR).encode()
    assert resp.finished


def test_initiator_never_proves_to_a_responder_whose_proof_failed(guesses):
    # Protocol 1 (also with abort_on_bad_proof=False) handed a proof to a peer
    # that had not proven the password. Protocol 2: the initiator proves only
    # after the responder's proof verified.
    for abort in (True, False):
        cfg = HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                     PasswordRole("admin", "other")],
                              abort_on_bad_proof=abort)
        init = Initiator(HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                                PasswordRole("admin", SECRET)],
                                         abort_on_bad_proof=abort))
        out = pump(init, Responder(cfg, peer="10.1.1.1"))
        assert out.ok and out.responder.peer_roles == {"public"} == out.initiator.peer_roles
    assert guesses.initiator_proofs == 0


# --- the parallel race -----------------------------------------------------------


def test_parallel_handshakes_cannot_outrun_the_budget(guesses):
    # Protocol 1: all 251 passed the check at Hello, 250 wrong guesses were
    # counted afterwards, and the right guess (sent last) completed.
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)])
    parked = []
    for i in range(251):
        password = SECRET if i == 250 else f"wrong-{i}"
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", password)]))
        resp = Responder(cfg, peer="198.51.100.7")
        msg4, failure = to_message4(init, resp)
        assert failure is None
        parked.append((init, resp, msg4))
    # in flight is bounded by the budget: 5 runs charged, the rest dummies
    assert guesses.guesses == 5 and limiter.failures("198.51.100.7", "admin") == 0
    found = [found_password(init, msg4) for init, _, msg4 in parked]
    assert not any(found)
    for init, resp, _ in parked:
        resp.receive_data(init.data_to_send())
        assert not isinstance(resp.next_event(), HandshakeComplete)
    assert guesses.guesses == 5
    assert limiter.failures("198.51.100.7", "admin") == 5
    # the right password, sent now, is refused during the lockout
    init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", SECRET)]))
    out = pump(init, Responder(cfg, peer="198.51.100.7"))
    assert not out.ok and out.responder.dropped_roles == {("admin", "rate_limited")}


def test_lockout_between_charge_and_proof_is_rechecked(guesses):
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock,
                                  role_max_failures=2)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)])
    held = []
    for peer, password in (("203.0.113.1", SECRET), ("203.0.113.2", "x"),
                           ("203.0.113.3", "y")):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", password)]))
        resp = Responder(cfg, peer=peer)
        msg4, _failure = to_message4(init, resp)
        held.append((init, resp, msg4))
    # the role budget (2) holds in flight: the third run is a dummy
    assert guesses.guesses == 2
    # the second run fails (the role is now at its limit: locked out) ...
    init, resp, msg4 = held[1]
    init.receive_data(msg4)
    init.next_event()
    resp.receive_data(init.data_to_send())
    assert isinstance(resp.next_event(), HandshakeFailed)
    # Another worker sharing the store counts a failure: the role is locked.
    limiter.record_failure("203.0.113.9", "admin")
    # ... so the first (right) one is refused at the re-check before its proof
    init, resp, msg4 = held[0]
    init.receive_data(msg4)
    assert isinstance(init.next_event(), HandshakeComplete)
    resp.receive_data(init.data_to_send())
    ev = resp.next_event()
    assert isinstance(ev, HandshakeFailed) and ("admin", "rate_limited") in ev.dropped_roles


# --- scope ---------------------------------------------------------------------


def test_guesses_from_50_peers_stay_within_the_role_budget(guesses):
    # Protocol 1: every address had its own 5 guesses (250 here).
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock,
                                  role_max_failures=20, role_cooldown=60)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)])
    for peer in range(50):
        for attempt in range(5):
            init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", f"g{peer}-{attempt}")]))
            out = pump(init, Responder(cfg, peer=f"192.0.2.{peer + 1}"))
            assert not out.ok
    assert guesses.guesses <= 20
    assert limiter.locked_for("192.0.2.200", "admin") > 0  # the role itself is locked


def test_role_lockouts_back_off_exponentially():
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=100, window=10, cooldown=1, clock=clock,
                                  role_max_failures=2, role_cooldown=60,
                                  role_max_cooldown=1000)
    lengths = []
    for _ in range(5):
        for i in range(2):
            limiter.begin(f"10.0.{len(lengths)}.{i}", "admin").failed()
        lengths.append(limiter.locked_for("anyone", "admin"))
        clock.now += lengths[-1] + 11  # lockout over and the window passed
    assert lengths == [60, 120, 240, 480, 960]


def test_an_ipv6_slash_64_is_one_peer(guesses):
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock,
                                  role_max_failures=1000)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)])
    for host in range(1, 41):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", f"w{host}")]))
        pump(init, Responder(cfg, peer=f"2001:db8:1:2::{host:x}"))
    assert guesses.guesses == 5
    # another /64 is another peer
    init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", SECRET)]))
    assert pump(init, Responder(cfg, peer="2001:db8:1:3::1")).ok


def test_peer_scope():
    assert peer_scope("2001:db8::1") == peer_scope("2001:db8::ffff:1") == "2001:db8::/64"
    assert peer_scope("[2001:db8::5]:443") == "2001:db8::/64"
    assert peer_scope("::ffff:192.0.2.1") == "192.0.2.1"
    assert peer_scope("192.0.2.1:5000") == "192.0.2.1"
    assert peer_scope("192.0.2.1") != peer_scope("192.0.2.2")
    assert peer_scope("srv") == "srv" and peer_scope(None) is None


def test_locked_password_offer_is_dropped_and_other_roles_proceed():
    # Protocol 1: the whole handshake failed with RATE_LIMITED, also the key
    # role the peer proved.
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=1, window=60, cooldown=300, clock=clock)
    cfg = HandshakeConfig(roles=server_roles(limiter))
    limiter.begin("10.2.2.2", "admin").failed()
    init = Initiator(HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                            PasswordRole("admin", SECRET)]))
    out = pump(init, Responder(cfg, peer="10.2.2.2"))
    assert out.ok
    assert out.responder.peer_roles == {"public"}
    assert out.responder.dropped_roles == {("admin", "rate_limited")}
    assert out.initiator.peer_roles == {"public"}


def test_injected_reject_does_not_count_against_the_initiator():
    # Protocol 1: an on-path attacker that replaced the last responder message
    # by a Reject counted a failure each time and locked the initiator out.
    client_limiter = PasswordRateLimiter(max_failures=2)
    server_cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET)])
    for _ in range(5):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", SECRET,
                                                             limiter=client_limiter)]),
                         peer="server")

        def inject(index, sender, data):  # type: ignore[no-untyped-def]
            return Reject(RejectReason.AUTH_FAILED).encode() if index == 3 else data

        out = pump(init, Responder(server_cfg, peer="client"), inject)
        assert isinstance(out.initiator, HandshakeFailed) and out.initiator.remote
    assert client_limiter.failures("server", "admin") == 0
    assert client_limiter.locked_for("server", "admin") == 0


# --- the target ------------------------------------------------------------------


def test_target_guesses_stay_within_the_budget_per_role_and_window(guesses):
    """Initiators that never prove, 250 concurrent handshakes, and guesses
    spread over 50 peers, all against one role with a budget of 10 per
    window: at most 10 guesses can be checked, online or offline."""
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock,
                                  role_max_failures=10, role_cooldown=120)
    cfg = HandshakeConfig(roles=server_roles(limiter))
    found = []
    # 1. initiators that never prove (they keep message 4 and go away)
    for candidate in CANDIDATES[:4]:
        init = attacker(candidate)
        resp = Responder(cfg, peer="10.7.0.1")
        msg4, _ = to_message4(init, resp)
        found.append(found_password(init, msg4))
        resp.receive_data(Reject(RejectReason.TIMEOUT).encode())  # the attacker leaves
        resp.next_event()
    # 2. 250 concurrent handshakes from 50 peers (5 each), parked at message 4
    parked = []
    for i in range(250):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", f"c{i}")]))
        resp = Responder(cfg, peer=f"10.8.{i % 50}.1")
        msg4, _failure = to_message4(init, resp)
        parked.append((init, resp, msg4))
    for init, resp, msg4 in parked:
        found.append(found_password(init, msg4))
        resp.receive_data(init.data_to_send())
        resp.next_event()
    # 3. the same window, sequential guesses from 50 more peers
    for peer in range(50):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", f"s{peer}")]))
        found.append(pump(init, Responder(cfg, peer=f"10.9.{peer}.1")).ok)
    assert not any(found)
    assert guesses.guesses <= 10
    assert limiter.role_failures("admin") <= 10


# --- limiter invariants (hypothesis) ------------------------------------------------

PEERS = ["10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2", "2001:db8:0:1::1"]
ops = st.lists(st.tuples(st.sampled_from(["begin", "fail", "succeed", "abandon", "tick"]),
                         st.integers(0, len(PEERS) - 1), st.floats(0, 40)),
               max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(1, 4), st.integers(1, 8))
def test_limiter_invariants(sequence, peer_limit, role_limit):
    clock = FakeClock()
    window = 60.0
    limiter = PasswordRateLimiter(max_failures=peer_limit, window=window, cooldown=30,
                                  clock=clock, role_max_failures=role_limit,
                                  role_cooldown=10, role_max_cooldown=100,
                                  store=MemoryBudgetStore(16))
    open_attempts = []
    kept: list[tuple[float, str]] = []  # (charge time, peer scope) of charges not refunded
    live: dict[int, tuple[float, str]] = {}
    for op, peer_index, dt in sequence:
        peer = PEERS[peer_index]
        if op == "tick":
            clock.now += dt
            continue
        if op == "begin":
            try:
                attempt = limiter.begin(peer, "r")
            except errors.PasswordAttemptsExceeded:
                continue
            open_attempts.append(attempt)
            live[id(attempt)] = (clock.now, str(peer_scope(peer)))
            continue
        if not open_attempts:
            continue
        attempt = open_attempts.pop(peer_index % len(open_attempts))
        info = live.pop(id(attempt))
        if op == "fail":
            attempt.failed()
            kept.append(info)
        else:
            getattr(attempt, "succeeded" if op == "succeed" else "abandoned")()
        attempt.failed()  # settling twice does nothing
        # Invariant: in any window, charges not refunded (failed or in
        # flight) stay within the role's and each peer scope's limit.
        charges = kept + list(live.values())
        for t0, _ in charges:
            in_window = [c for c in charges if t0 <= c[0] < t0 + window]
            assert len(in_window) <= role_limit
            for scope in {s for _, s in in_window}:
                assert sum(1 for _, s in in_window if s == scope) <= peer_limit
    # a refunded run never locks anyone: only failures do
    if not kept:
        assert all(limiter.locked_for(p, "r") == 0 for p in PEERS)
