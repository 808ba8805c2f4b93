"""Handshake: every role kind alone and mixed, with every suite; both sides
agree on keys and exactly the roles they share; policy, limits, timeouts."""

from __future__ import annotations

import os

import pytest
from hs_util import FakeClock, cert_role, failed, make_ca, pump

from rolewire import errors, pki
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    HandshakeLimiter,
    HandshakeSuite,
    Initiator,
    RejectReason,
    Responder,
    parse_late_reject,
)
from rolewire.roles import CertificateRole, KeyRole, PasswordRateLimiter, PasswordRole
from rolewire.roles.password import PasswordExchange

SUITES = list(HandshakeSuite)
KEY = os.urandom(32)


@pytest.fixture(scope="module")
def ca():
    return make_ca("ca-main")


def run(init_roles, resp_roles, **kw):
    ikw = {k[2:]: v for k, v in kw.items() if k.startswith("i_")}
    rkw = {k[2:]: v for k, v in kw.items() if k.startswith("r_")}
    common = {k: v for k, v in kw.items() if not k.startswith(("i_", "r_"))}
    init = Initiator(HandshakeConfig(roles=init_roles, **common, **ikw), peer="resp")
    resp = Responder(HandshakeConfig(roles=resp_roles, **common, **rkw), peer="init")
    return pump(init, resp)


def assert_channel(out):
    assert out.ok, (out.initiator, out.responder)
    a, b = out.initiator.session, out.responder.session
    assert out.initiator.transcript_hash == out.responder.transcript_hash
    assert len(out.initiator.transcript_hash) == 64
    assert out.initiator.suite == out.responder.suite
    assert b.open(a.seal(b"ping")) == b"ping"
    assert a.open(b.seal(b"pong")) == b"pong"
    # Direction keys differ: a record cannot be reflected to its sender.
    with pytest.raises(errors.RecordError):
        a.open(a.seal(b"mirror"))


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.wire_name)
@pytest.mark.parametrize("kind", ["key", "certificate", "password", "mixed"])
def test_every_role_kind_with_every_suite(kind, suite, ca):
    if kind == "key":
        roles = [KeyRole("orders", KEY)]
        expect = {"orders"}
    elif kind == "certificate":
        roles = [cert_role("shipping", ca)]
        expect = {"shipping"}
    elif kind == "password":
        roles = [PasswordRole("approval", "correct horse")]
        expect = {"approval"}
    else:
        roles = [KeyRole("orders", KEY), cert_role("shipping", ca),
                 PasswordRole("approval", "correct horse")]
        expect = {"orders", "shipping", "approval"}
    out = run(roles, roles, suites=[suite])
    assert_channel(out)
    assert out.initiator.suite is suite
    assert out.initiator.session.record_suite.value == suite.record_suite_id
    assert out.initiator.peer_roles == expect == out.responder.peer_roles


def test_messages_count_three_without_passwords_five_with(ca):
    out = run([KeyRole("a", KEY), cert_role("c", ca)], [KeyRole("a", KEY), cert_role("c", ca)])
    assert out.ok and len(out.flights) == 3
    pw = [PasswordRole("p", "pw"), KeyRole("a", KEY)]
    out = run(pw, pw)
    assert out.ok and len(out.flights) == 5


def test_only_shared_roles_are_attached_and_names_never_travel(ca):
    k_b, k_c = os.urandom(32), os.urandom(32)
    init_roles = [KeyRole("shared", KEY), KeyRole("secret-init-only", k_b),
                  PasswordRole("pw-init-only", "x")]
    resp_roles = [KeyRole("shared", KEY), KeyRole("secret-resp-only", k_c)]
    out = run(init_roles, resp_roles)
    assert_channel(out)
    assert out.initiator.peer_roles == {"shared"} == out.responder.peer_roles
    wire = b"".join(data for _, data in out.flights)
    for name in (b"shared", b"secret-init-only", b"secret-resp-only", b"pw-init-only"):
        assert name not in wire


def test_same_name_different_kind_is_another_role(ca):
    out = run([KeyRole("payment", KEY)], [PasswordRole("payment", "pw")])
    assert failed(out.initiator) and failed(out.responder)
    assert out.initiator.reason_code == RejectReason.NO_SHARED_ROLE  # local reason
    assert out.responder.remote and out.responder.reason_code == RejectReason.AUTH_FAILED


def test_anchor_only_side_verifies_but_cannot_claim(ca):
    holder = cert_role("shipping", ca)
    verifier = cert_role("shipping", ca, holder=False)
    # responder can only verify; the initiator proves. The responder has a key
    # role too so that the initiator verifies something.
    out = run([holder, KeyRole("k", KEY)], [verifier, KeyRole("k", KEY)])
    assert_channel(out)
    assert out.responder.peer_roles == {"shipping", "k"}
    assert out.initiator.peer_roles == {"k"}
    # and the other way round
    out = run([verifier, KeyRole("k", KEY)], [holder, KeyRole("k", KEY)])
    assert_channel(out)
    assert out.initiator.peer_roles == {"shipping", "k"}
    assert out.responder.peer_roles == {"k"}


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_certificate_key_types(key_type):
    ca = make_ca(f"ca-{key_type}", key_type=key_type)
    role = cert_role("r", ca, key_type=key_type)
    out = run([role], [role])
    assert_channel(out)


def test_hello_retry_when_responder_prefers_another_group():
    x25519 = HandshakeSuite.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305
    x448 = HandshakeSuite.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305
    out = run([KeyRole("a", KEY)], [KeyRole("a", KEY)],
              i_suites=[x25519, x448], r_suites=[x448])
    assert_channel(out)
    assert out.initiator.suite is x448
    assert len(out.flights) == 5  # Hello, HelloRetry, Hello, ResponderHello, InitiatorAuth


def test_responder_prefers_a_suite_needing_no_retry():
    x448_chacha = HandshakeSuite.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305
    x25519_chacha = HandshakeSuite.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305
    out = run([KeyRole("a", KEY)], [KeyRole("a", KEY)],
              i_suites=[x448_chacha, x25519_chacha], r_suites=[x25519_chacha, x448_chacha])
    assert out.ok and out.initiator.suite is x448_chacha and len(out.flights) == 3


def test_no_common_suite_is_rejected_with_reason():
    out = run([KeyRole("a", KEY)], [KeyRole("a", KEY)],
              i_suites=[HandshakeSuite.X448_MLKEM768_BLAKE2B_AEGIS256],
              r_suites=[HandshakeSuite.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305])
    assert out.responder.reason_code == RejectReason.NO_COMMON_SUITE
    assert out.initiator.remote and isinstance(out.initiator.error, errors.HandshakeRejected)
    assert isinstance(out.responder.error, errors.NoCommonSuite)


# --- policy -------------------------------------------------------------------


def test_no_role_in_common_rejected_by_default_like_a_wrong_proof():
    # Protocol 2: the key exchange runs either way, so "no such role" looks
    # like "wrong proof" on the wire (AUTH_FAILED); the local event is precise.
    out = run([KeyRole("a", KEY)], [KeyRole("b", KEY)])
    assert out.initiator.reason_code == RejectReason.NO_SHARED_ROLE
    assert out.initiator.sent_code == RejectReason.AUTH_FAILED
    assert out.responder.remote and out.responder.reason_code == RejectReason.AUTH_FAILED
    assert len(out.flights) == 3  # Hello, ResponderHello, Reject


def test_opportunistic_encryption_is_explicit_opt_in():
    out = run([], [], allow_anonymous=True)
    assert_channel(out)
    assert out.initiator.peer_roles == frozenset() == out.responder.peer_roles
    out = run([], [], i_allow_anonymous=True)
    assert failed(out.responder) and out.responder.reason_code == RejectReason.NO_SHARED_ROLE


def test_required_peer_roles():
    roles = [KeyRole("a", KEY)]
    out = run(roles, roles, r_required_peer_roles={"a"})
    assert out.ok
    out = run(roles, roles, r_required_peer_roles={"a", "b"})
    assert out.responder.reason_code == RejectReason.NO_SHARED_ROLE
    # the initiator already completed (3 messages): the Reject reaches it late
    late = out.flights[-1][1]
    assert isinstance(parse_late_reject(late), errors.HandshakeRejected)


def test_bad_proof_aborts_by_default_or_just_drops_the_role_if_configured(ca):
    from cryptography.hazmat.primitives.asymmetric import ec

    impostor = cert_role("b", ca)
    impostor._key = ec.generate_private_key(ec.SECP256R1())  # signs with another key
    init = [KeyRole("a", KEY), cert_role("b", ca, holder=False)]
    resp = [KeyRole("a", KEY), impostor]
    out = run(init, resp)
    assert out.initiator.reason_code == RejectReason.AUTH_FAILED
    out = run(init, resp, abort_on_bad_proof=False)
    assert out.ok and out.initiator.peer_roles == {"a"} == out.responder.peer_roles


def test_a_key_role_with_another_key_is_another_role():
    # Hints are keyed by the role key: with another key the role is simply
    # not shared (nothing to prove, nothing learned).
    init = [KeyRole("a", KEY), KeyRole("b", os.urandom(32))]
    resp = [KeyRole("a", KEY), KeyRole("b", os.urandom(32))]
    out = run(init, resp)
    assert out.ok and out.initiator.peer_roles == {"a"} == out.responder.peer_roles


# --- wrong secrets ----------------------------------------------------------------


def test_wrong_key():
    out = run([KeyRole("a", KEY)], [KeyRole("a", os.urandom(32))])
    assert isinstance(out.initiator.error, errors.NoVerifiedRole)
    assert out.initiator.sent_code == RejectReason.AUTH_FAILED
    assert out.responder.remote and not isinstance(out.responder, HandshakeComplete)


def test_wrong_password_the_initiator_never_proves():
    out = run([PasswordRole("p", "right")], [PasswordRole("p", "wrong")])
    # The responder proved first (its run was charged); the initiator saw the
    # proof fail and sent no proof of its own, just a Reject.
    assert isinstance(out.initiator.error, errors.NoVerifiedRole)
    assert out.responder.remote and out.responder.reason_code == RejectReason.AUTH_FAILED
    assert len(out.flights) == 5  # Hello, ResponderHello, InitiatorAuth, ResponderAuth, Reject


def foreign_holder(name, anchor_ca, issuing_ca):
    """Claims ``name`` with the anchors of ``anchor_ca`` (so its hints are
    recognised) but a certificate issued by ``issuing_ca``."""
    leaf = pki.issue(issuing_ca.issued, f"{name}-foreign")
    return CertificateRole(name, anchors=[anchor_ca.cert], chain=[leaf.certificate],
                           private_key=leaf.private_key)


def test_untrusted_certificate(ca):
    other = make_ca("other CA")
    out = run([cert_role("ship", ca)], [foreign_holder("ship", ca, other)])
    assert isinstance(out.initiator.error, errors.CertificateRejected)
    assert out.initiator.reason_code == RejectReason.CERTIFICATE_REJECTED  # local
    assert out.initiator.sent_code == RejectReason.AUTH_FAILED  # on the wire


def test_certificate_of_another_anchor_is_another_role(ca):
    other = make_ca("other CA")
    out = run([cert_role("ship", other, anchors=[other.cert])], [cert_role("ship", ca)])
    assert isinstance(out.initiator.error, errors.NoVerifiedRole)


def test_certificate_chained_to_another_roles_anchor(ca):
    ca2 = make_ca("ca for payment")
    # The initiator claims "ship" with a certificate from the payment CA.
    claim = foreign_holder("ship", ca, ca2)
    verifier = cert_role("ship", ca, holder=False)
    out = run([claim, KeyRole("k", KEY)], [verifier, KeyRole("k", KEY)])
    assert isinstance(out.responder.error, errors.CertificateRejected)


@pytest.mark.parametrize("days", [2 * 365, -1], ids=["expired", "not-yet-valid"])
def test_certificate_validity_dates(days, ca):
    from hs_util import shifted_clock

    role = cert_role("ship", ca)
    out = run([role], [role], r_wall_clock=shifted_clock(days), i_wall_clock=shifted_clock(days))
    assert isinstance(out.initiator.error, errors.CertificateRejected)


def test_signature_from_a_key_not_matching_the_certificate(ca):
    from cryptography.hazmat.primitives.asymmetric import ec

    role = cert_role("ship", ca)
    impostor = cert_role("ship", ca)
    impostor._key = ec.generate_private_key(ec.SECP256R1())
    out = run([impostor], [role])
    assert isinstance(out.responder.error, errors.RoleProofInvalid)
    assert out.responder.reason_code == RejectReason.AUTH_FAILED


# --- rate limiting of password guesses ---------------------------------------------


def test_sixth_wrong_password_refused_without_running_jpake(monkeypatch):
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock)
    server_role = PasswordRole("p", "right", limiter=limiter)
    runs = []
    original = PasswordExchange.assign

    def counting(self, role):
        if role is server_role:
            runs.append(1)
        return original(self, role)

    monkeypatch.setattr(PasswordExchange, "assign", counting)

    def attempt(password):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("p", password)]), peer="srv")
        resp = Responder(HandshakeConfig(roles=[server_role]), peer="10.0.0.9")
        return pump(init, resp)

    for i in range(5):
        out = attempt(f"guess{i}")
        assert out.responder.reason_code == RejectReason.AUTH_FAILED
    assert len(runs) == 5
    out = attempt("guess5")
    # on the wire it looks like a wrong password; the event says why
    assert out.responder.reason_code == RejectReason.AUTH_FAILED
    assert out.responder.dropped_roles == {("p", "rate_limited")}
    assert len(runs) == 5  # J-PAKE was not run with the role's password
    # even the right password is refused during the cool-down ...
    assert not attempt("right").ok
    # ... other peers are not affected, and after the cool-down it works again
    init = Initiator(HandshakeConfig(roles=[PasswordRole("p", "right")]))
    assert pump(init, Responder(HandshakeConfig(roles=[server_role]), peer="10.0.0.10")).ok
    clock.now += 301
    assert attempt("right").ok


def test_failures_outside_the_window_do_not_lock():
    clock = FakeClock()
    limiter = PasswordRateLimiter(max_failures=5, window=60, cooldown=300, clock=clock)
    role = PasswordRole("p", "right", limiter=limiter)
    for i in range(8):
        init = Initiator(HandshakeConfig(roles=[PasswordRole("p", f"w{i}")]))
        out = pump(init, Responder(HandshakeConfig(roles=[role]), peer="x"))
        assert out.responder.reason_code == RejectReason.AUTH_FAILED
        clock.now += 20  # 3 failures per minute at most
    assert limiter.locked_for("x") == 0


def test_password_failures_are_logged_as_structured_events(caplog):
    role = PasswordRole("p", "right")
    with caplog.at_level("WARNING", logger="rolewire.password"):
        pump(Initiator(HandshakeConfig(roles=[PasswordRole("p", "wrong")])),
             Responder(HandshakeConfig(roles=[role]), peer="1.2.3.4"))
    events = [r for r in caplog.records if getattr(r, "event", None) == "password_failure"]
    assert events and events[0].peer == "1.2.3.4" and events[0].role == "p"
    assert "right" not in caplog.text and "wrong" not in caplog.text


# --- limits and timeouts ------------------------------------------------------------


def test_handshake_timeout():
    clock = FakeClock()
    init = Initiator(HandshakeConfig(roles=[KeyRole("a", KEY)], clock=clock, timeout=5))
    init.data_to_send()
    assert init.next_event() is NEED_DATA
    clock.now += 6
    ev = init.next_event()
    assert isinstance(ev, HandshakeFailed) and isinstance(ev.error, errors.HandshakeTimeout)
    assert ev.reason_code == RejectReason.TIMEOUT
    assert init.data_to_send()  # a Reject for the peer


def test_half_open_handshake_bound():
    limiter = HandshakeLimiter(max_pending=2, max_per_peer=2)
    cfg = HandshakeConfig(roles=[KeyRole("a", KEY)])
    r1 = Responder(cfg, peer="p1", limiter=limiter)
    Responder(cfg, peer="p2", limiter=limiter)
    r3 = Responder(cfg, peer="p3", limiter=limiter)
    ev = r3.next_event()
    assert isinstance(ev, HandshakeFailed) and ev.reason_code == RejectReason.BUSY
    assert r3.data_to_send()  # BUSY Reject
    # finishing a handshake frees its slot
    out = pump(Initiator(cfg), r1)
    assert out.ok and limiter.pending == 1
    assert not Responder(cfg, peer="p4", limiter=limiter).finished


def test_data_after_completion_is_refused():
    roles = [KeyRole("a", KEY)]
    init, resp = Initiator(HandshakeConfig(roles=roles)), Responder(HandshakeConfig(roles=roles))
    assert pump(init, resp).ok
    with pytest.raises(errors.HandshakeStateError):
        resp.receive_data(b"\x01\x00\x00\x00")
    with pytest.raises(errors.HandshakeStateError):
        resp.next_event()


def test_config_validation():
    with pytest.raises(errors.ConfigurationError):
        HandshakeConfig(suites=[])
    with pytest.raises(errors.ConfigurationError):
        HandshakeConfig(suites=["NOPE"])
    with pytest.raises(errors.ConfigurationError):
        HandshakeConfig(roles=[KeyRole("a", KEY), KeyRole("a", KEY)])
    with pytest.raises(errors.ConfigurationError):
        KeyRole("a", b"short")
    assert "KEY" not in repr(KeyRole("a", KEY)) and KEY.hex() not in repr(KeyRole("a", KEY))


def test_pending_handshake_memory():
    import gc
    import tracemalloc

    cfg = HandshakeConfig(roles=[KeyRole("a", KEY), PasswordRole("p", "pw")])
    hellos = [Initiator(cfg).data_to_send() for _ in range(50)]
    gc.collect()
    tracemalloc.start()
    try:
        pending = []
        for hello in hellos:
            resp = Responder(cfg)
            resp.receive_data(hello)
            assert resp.next_event() is NEED_DATA
            resp.data_to_send()
            pending.append(resp)
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current / len(pending) < 16 * 1024
