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
from rolewire.handshake.messages import Flag, Reject
from rolewire.roles import KeyRole, PasswordRateLimiter, PasswordRole
from rolewire.roles.budget import MemoryBudgetStore, peer_scope
from rolewire.roles.password import PasswordExchange

PUBLIC_KEY = os.urandom(32)
SECRET = "tulip-7"
CANDIDATES = ["rose-1", "lily-2", "iris-3", "aster-4", "daisy-5", "poppy-6", SECRET, "fern-8"]


class GuessCounter:
    """Counts responder-side J-PAKE runs that gave the peer a guess."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs: set[int] = set()
        self.online = 0
        self.offline = 0
        verify, prove = PasswordExchange.verify, PasswordExchange.prove
        counter = self

        def counting_verify(ex, direction, h, proof):  # type: ignore[no-untyped-def]
            if not ex.initiator:
                counter.online += 1
                counter.runs.add(id(ex))
            return verify(ex, direction, h, proof)

        def counting_prove(ex, direction, h):  # type: ignore[no-untyped-def]
            if not ex.initiator:
                counter.offline += 1
                counter.runs.add(id(ex))
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


def verify_only_initiator(password: str, monkeypatch: pytest.MonkeyPatch,
                          peer: object = "srv") -> Initiator:
    """An attacker that holds the low-privilege key role and offers the
    password role with flags VERIFY only."""
    real = machine._my_flags

    def flags(role):  # type: ignore[no-untyped-def]
        return int(Flag.VERIFY) if isinstance(role, PasswordRole) else real(role)

    with monkeypatch.context() as m:
        m.setattr(machine, "_my_flags", flags)
        return Initiator(HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                                PasswordRole("admin", password)]), peer=peer)


# --- VERIFY-only offers ---------------------------------------------------------


def test_verify_only_password_offer_is_illegal_and_gives_no_guess(monkeypatch, guesses):
    # Before the fix: 8 handshakes found the password (the attacker's
    # initiator verified the responder's proof for SECRET) with 0 failures.
    limiter = PasswordRateLimiter(max_failures=5)
    cfg = HandshakeConfig(roles=server_roles(limiter))
    found = []
    for candidate in CANDIDATES:
        init = verify_only_initiator(candidate, monkeypatch)
        out = pump(init, Responder(cfg, peer="10.9.9.9"))
        assert isinstance(out.responder, HandshakeFailed)
        assert out.responder.reason_code == RejectReason.ILLEGAL_PARAMETER
        assert isinstance(out.responder.error, errors.InvalidKeyShare)
        if isinstance(out.initiator, HandshakeComplete) and "admin" in out.initiator.peer_roles:
            found.append(candidate)
    assert found == []
    assert guesses.guesses == 0


def test_responder_password_entry_with_odd_flags_is_a_typed_failure(monkeypatch):
    # Before the fix: the initiator raised a bare ValueError out of
    # next_event() (``_password_proofs_sent.remove``) and never sent a Reject.
    real = machine._my_flags

    def flags(role):  # type: ignore[no-untyped-def]
        return int(Flag.PROVE) if isinstance(role, PasswordRole) else real(role)

    init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", SECRET)]), peer="srv")
    resp = Responder(HandshakeConfig(roles=[PasswordRole("admin", SECRET)]), peer="cli")
    resp.receive_data(init.data_to_send())
    with monkeypatch.context() as m:
        m.setattr(machine, "_my_flags", flags)
        assert resp.next_event() is NEED_DATA
    init.receive_data(resp.data_to_send())
    ev = init.next_event()
    assert isinstance(ev, HandshakeFailed)
    assert ev.reason_code == RejectReason.ILLEGAL_PARAMETER
    assert init.data_to_send() == Reject(RejectReason.ILLEGAL_PARAMETER).encode()


def test_any_unexpected_exception_in_next_event_is_a_typed_failure(monkeypatch):
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


def test_no_responder_password_proof_after_a_failed_initiator_proof(guesses):
    # abort_on_bad_proof=False used to send ResponderAuth with the
    # responder's password proof after the initiator's proof had failed.
    limiter = PasswordRateLimiter(max_failures=5)
    cfg = HandshakeConfig(roles=server_roles(limiter), abort_on_bad_proof=False)
    init = Initiator(HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                            PasswordRole("admin", "wrong")],
                                     abort_on_bad_proof=False))
    out = pump(init, Responder(cfg, peer="10.1.1.1"))
    assert out.ok
    assert out.responder.peer_roles == {"public"}
    assert "admin" not in out.initiator.peer_roles
    assert guesses.offline == 0 and guesses.online == 1
    assert limiter.failures("10.1.1.1", "admin") == 1


# --- the parallel race -----------------------------------------------------------


def park(init: Initiator, resp: Responder) -> tuple[bytes, HandshakeFailed | None]:
    """Runs Hello -> ResponderHello; returns the initiator's held message 3
    (or the responder's failure)."""
    resp.receive_data(init.data_to_send())
    ev = resp.next_event()
    if isinstance(ev, HandshakeFailed):
        return b"", ev
    init.receive_data(resp.data_to_send())
    assert init.next_event() is NEED_DATA
    return init.data_to_send(), None


def test_parallel_handshakes_cannot_outrun_the_budget(guesses):
    # Before the fix: all 251 passed the check at Hello, 250 wrong guesses
    # were counted afterwards, and the right guess (sent last) completed.
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)])
    parked = []
    refused = 0
    for i in range(251):
        password = SECRET if i == 250 else f"wrong-{i}"
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", password)]))
        resp = Responder(cfg, peer="198.51.100.7")
        held, failure = park(init, resp)
        if failure is not None:
            assert failure.reason_code == RejectReason.RATE_LIMITED
            refused += 1
        else:
            parked.append((init, resp, held))
    assert len(parked) == 5 and refused == 246  # in flight is bounded by the budget
    completed = 0
    for init, resp, held in parked:
        resp.receive_data(held)
        if isinstance(resp.next_event(), HandshakeComplete):
            completed += 1
    assert completed == 0
    assert guesses.guesses <= 5 and guesses.offline == 0
    # the right password, sent now, is refused during the lockout
    init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", SECRET)]))
    out = pump(init, Responder(cfg, peer="198.51.100.7"))
    assert out.responder.reason_code == RejectReason.RATE_LIMITED


def test_lockout_between_charge_and_proof_is_rechecked(guesses):
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=2, window=60, cooldown=300, clock=clock,
                                  role_max_failures=2)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)])
    held = []
    for peer, password in (("203.0.113.1", SECRET), ("203.0.113.2", "x"),
                           ("203.0.113.3", "y")):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", password)]))
        resp = Responder(cfg, peer=peer)
        msg3, failure = park(init, resp)
        held.append((resp, msg3, failure))
    # the role budget (2) holds in flight: the third was refused at Hello
    assert held[2][2] is not None and held[2][2].reason_code == RejectReason.RATE_LIMITED
    # the second run fails ... and the role stays under budget; the first
    # (right) run then still completes: its charge was taken before.
    resp, msg3, _ = held[1]
    resp.receive_data(msg3)
    assert isinstance(resp.next_event(), HandshakeFailed)
    resp, msg3, _ = held[0]
    resp.receive_data(msg3)
    assert isinstance(resp.next_event(), HandshakeComplete)
    assert guesses.guesses == 2


# --- scope ---------------------------------------------------------------------


def test_guesses_from_50_peers_stay_within_the_role_budget(guesses):
    # Before the fix: every address had its own 5 guesses (250 here).
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock,
                                  role_max_failures=20, role_cooldown=60)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)])
    outcomes = []
    for peer in range(50):
        for attempt in range(5):
            init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", f"g{peer}-{attempt}")]))
            out = pump(init, Responder(cfg, peer=f"192.0.2.{peer + 1}"))
            outcomes.append(out.responder.reason_code)
    assert guesses.guesses <= 20
    assert outcomes.count(RejectReason.AUTH_FAILED) == guesses.guesses
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
    # Before the fix: the whole handshake failed with RATE_LIMITED, also
    # the key role the peer proved.
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
    # Before the fix: an on-path attacker that replaced message 4 by a
    # Reject counted a failure each time and locked the initiator out.
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


def test_initiator_counts_an_authenticated_wrong_responder_proof():
    client_limiter = PasswordRateLimiter(max_failures=5)
    init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", "mine",
                                                         limiter=client_limiter)],
                                     abort_on_bad_proof=False), peer="server")
    # a responder that verifies anything and proves with another password
    resp = Responder(HandshakeConfig(roles=[PasswordRole("admin", "other")],
                                     abort_on_bad_proof=False, allow_anonymous=True),
                     peer="client")
    pump(init, resp)
    # The responder's proof was withheld (ours did not verify): counted once.
    assert client_limiter.failures("server", "admin") == 1


# --- the target ------------------------------------------------------------------


def test_target_guesses_stay_within_the_budget_per_role_and_window(monkeypatch, guesses):
    """250 concurrent handshakes, VERIFY-only offers and guesses spread over
    50 peers, all against one role with a budget of 10 per window."""
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock,
                                  role_max_failures=10, role_cooldown=120)
    cfg = HandshakeConfig(roles=server_roles(limiter))
    # 1. VERIFY-only offers
    for candidate in CANDIDATES:
        pump(verify_only_initiator(candidate, monkeypatch), Responder(cfg, peer="10.7.0.1"))
    # 2. 250 concurrent handshakes from 50 peers (5 each), parked after message 2
    parked = []
    for i in range(250):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", f"c{i}")]))
        resp = Responder(cfg, peer=f"10.8.{i % 50}.1")
        held, failure = park(init, resp)
        if failure is None:
            parked.append((resp, held))
    assert len(parked) <= 10
    for resp, held in parked:
        resp.receive_data(held)
        assert isinstance(resp.next_event(), HandshakeFailed)
    assert guesses.guesses <= 10
    # 3. the same window, sequential guesses from 50 more peers
    for peer in range(50):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", f"s{peer}")]))
        pump(init, Responder(cfg, peer=f"10.9.{peer}.1"))
    assert guesses.guesses <= 10


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
