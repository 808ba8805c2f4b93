"""Issue 11 §2: what each attacker learns about role names, one test per cell
of the identity-hiding table in docs/PROTOCOL.md ("Role privacy"). The test
names carry the cell: ``test_<row>__<column>``.

Rows: key / password / certificate role, of the initiator (``i``) or of the
responder (``r``). Columns: ``passive`` (records traffic), ``active`` (on
the path: may also change, drop, inject), ``unauth`` (talks to us directly
and holds none of our roles), ``other`` (authenticated with other roles).

On protocol 1 these fail: a 20-word dictionary recovered every name from
one Hello (hints keyed by the name), the J-PAKE context named the role,
kinds, flags and counts were in clear, a prober saw which roles the server
held and got its chains and proofs, and the Reject code told "no such role"
from "wrong proof".
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hs_util import make_ca, pump

from rolewire import errors, pki
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    Initiator,
    RejectReason,
    Responder,
)
from rolewire.handshake import messages as m
from rolewire.roles import CertificateRole, KeyRole, PasswordRateLimiter, PasswordRole
from rolewire.roles import jpake as jp
from rolewire.roles.base import RoleKind, password_hint, role_id

DICTIONARY = ["admin", "billing", "payment", "shipping", "orders", "audit", "ops", "root",
              "backup", "deploy", "metrics", "search", "shop", "support", "hr", "finance",
              "ledger", "inventory", "reports", "gateway"]
KEY_PAYMENT = os.urandom(32)
KEY_BILLING = os.urandom(32)


@pytest.fixture(scope="module")
def ca():
    return make_ca("privacy CA")


def holder(name: str, ca) -> CertificateRole:  # type: ignore[no-untyped-def]
    leaf = pki.issue(ca.issued, f"{name}-holder")
    return CertificateRole(name, anchors=[ca.cert], chain=[leaf.certificate],
                           private_key=leaf.private_key)


def hello_of(flights: list[tuple[str, bytes]]) -> m.Hello:
    data = flights[0][1]
    msg = m.parse_message(data[0], data[4:])
    assert isinstance(msg, m.Hello)
    return msg


def dictionary_hits(hello: m.Hello) -> list[str]:
    """Every test a name-only attacker can make on a Hello: protocol-1 hints
    (keyed by the role id), any hint keyed by the name alone, and the J-PAKE
    round-1 proof context (protocol 1 bound it to the role id)."""
    hits = []
    for name in DICTIONARY:
        for kind in RoleKind:
            rid = role_id(kind, name)
            v1 = hashlib.blake2b(hello.random, key=rid, digest_size=16,
                                 person=b"rolewire1hint").digest()
            named = {v1}
            for flags in (1, 2, 3):
                named.add(hashlib.blake2b(hello.random + bytes((kind, flags)) + rid, key=rid,
                                          digest_size=16, person=b"rolewire2hint").digest())
            if named & set(hello.hints):
                hits.append(name)
            for slot in hello.slots:
                g1, zkp1 = slot[:32], slot[64:128]
                if jp._verify(jp._BASE, g1, zkp1, b"rolewire/1 initiator", hello.random + rid):
                    hits.append(name)
    return hits


# --- passive observer ---------------------------------------------------------------


def test_key_i__passive_and_key_r__passive(ca):
    roles = [KeyRole("payment", KEY_PAYMENT), KeyRole("billing", KEY_BILLING)]
    out = pump(Initiator(HandshakeConfig(roles=roles)), Responder(HandshakeConfig(roles=roles)))
    assert out.ok
    wire = b"".join(d for _, d in out.flights)
    # (only the long names: 2-byte words like "hr" occur in random bytes)
    assert not any(n.encode() in wire for n in DICTIONARY if len(n) >= 6)
    assert dictionary_hits(hello_of(out.flights)) == []


def test_password_i__passive_and_password_r__passive():
    roles = [PasswordRole("admin", "hunter2"), KeyRole("payment", KEY_PAYMENT)]
    out = pump(Initiator(HandshakeConfig(roles=roles)), Responder(HandshakeConfig(roles=roles)))
    assert out.ok and len(out.flights) == 5
    hello = hello_of(out.flights)
    assert dictionary_hits(hello) == []
    # the J-PAKE slot is anonymous: its proofs verify with the slot context only
    slot = hello.slots[0]
    assert jp._verify(jp._BASE, slot[:32], slot[64:128], b"rolewire/1 initiator",
                      hello.random + b"\x00")


def test_certificate_i__passive_and_certificate_r__passive(ca):
    roles = [holder("shipping", ca)]
    out = pump(Initiator(HandshakeConfig(roles=roles)), Responder(HandshakeConfig(roles=roles)))
    assert out.ok
    assert dictionary_hits(hello_of(out.flights)) == []
    wire = b"".join(d for _, d in out.flights)
    leaf = roles[0].chain_der[0]
    assert leaf not in wire  # chains travel encrypted


def test_counts_and_kinds_leak_no_more_than_the_bucket(ca):
    sizes = {}
    for label, roles in {
        "1 key": [KeyRole("a", KEY_PAYMENT)],
        "2 keys": [KeyRole("a", KEY_PAYMENT), KeyRole("b", KEY_BILLING)],
        "key+cert": [KeyRole("a", KEY_PAYMENT), holder("c", ca)],
        "4 mixed": [KeyRole("a", KEY_PAYMENT), KeyRole("b", KEY_BILLING), holder("c", ca),
                    CertificateRole("d", anchors=[ca.cert])],
    }.items():
        hello = Initiator(HandshakeConfig(roles=roles)).data_to_send()
        sizes[label] = len(hello)
    assert len(set(sizes.values())) == 1  # all in the bucket of 4 hints
    five = [KeyRole(f"k{i}", os.urandom(32)) for i in range(5)]
    eight = [KeyRole(f"k{i}", os.urandom(32)) for i in range(8)]
    assert (len(Initiator(HandshakeConfig(roles=five)).data_to_send())
            == len(Initiator(HandshakeConfig(roles=eight)).data_to_send()))
    # The responder's encrypted fields are padded too: one shared role or
    # none gives the same ResponderHello length.
    lengths = set()
    for server in ([KeyRole("a", KEY_PAYMENT)], [KeyRole("a", os.urandom(32))]):
        init = Initiator(HandshakeConfig(roles=[KeyRole("a", KEY_PAYMENT)]))
        resp = Responder(HandshakeConfig(roles=server))
        resp.receive_data(init.data_to_send())
        resp.next_event()
        lengths.add(len(resp.data_to_send()))
    assert len(lengths) == 1


# --- active network attacker ---------------------------------------------------------


def test_key_i__active_and_key_r__active():
    # On the path, without the key, the attacker can only relay, alter or
    # answer itself. Answering itself (as either side) it knows no hint key:
    roles = [KeyRole("payment", KEY_PAYMENT)]
    init = Initiator(HandshakeConfig(roles=roles))
    fake = Responder(HandshakeConfig(roles=[KeyRole("payment", os.urandom(32))]),
                     peer="mitm")
    out = pump(init, fake)
    assert not out.ok and fake._matches == []  # the Hello named nothing it knows
    # and altering a hint only breaks the handshake (transcript): see
    # test_handshake_attacks.py::test_flip_any_byte_of_any_message.
    mitm = Initiator(HandshakeConfig(roles=[KeyRole("payment", os.urandom(32))],
                                     allow_anonymous=True))
    resp = Responder(HandshakeConfig(roles=roles))
    resp.receive_data(mitm.data_to_send())
    resp.next_event()
    mitm.receive_data(resp.data_to_send())
    mitm.next_event()
    assert mitm._matches == []  # the real responder answered with no entry


def test_password_i__active_fake_responder_tests_names_but_gets_no_proof():
    # The documented limit (Noise-style "sent to an unauthenticated
    # responder"): a fake responder that did the key exchange sees the name
    # hints of message 3 and can test a dictionary against them; it gets no
    # proof and no offline password guess (the initiator proves only after
    # the responder's proof verified).
    init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", "hunter2")]))
    fake = Responder(HandshakeConfig(roles=[PasswordRole("admin", "guess")]), peer="mitm")
    fake.receive_data(init.data_to_send())
    fake.next_event()
    init.receive_data(fake.data_to_send())
    init.next_event()
    h = fake._ss.h
    msg3 = init.data_to_send()
    fake.receive_data(msg3)
    fake.next_event()
    # it recognised "admin" (password_hint(role_id, h, slot) with h known to it) ...
    assert fake._slots[0].exchange.role is not None
    assert password_hint(role_id(RoleKind.PASSWORD, "admin"), h, 0) not in msg3  # encrypted
    init.receive_data(fake.data_to_send())
    ev = init.next_event()
    assert isinstance(ev, HandshakeFailed)  # ... but its proof did not verify
    assert isinstance(ev.error, errors.NoVerifiedRole)


def test_password_r__active_and_unauth_probe_learns_nothing_about_the_name():
    limiter = PasswordRateLimiter(max_failures=5)
    server = HandshakeConfig(roles=[PasswordRole("admin", "hunter2", limiter=limiter)])
    shapes = []
    for name in ("admin", "nosuchrole"):
        probe = Initiator(HandshakeConfig(roles=[PasswordRole(name, "guess")]))
        resp = Responder(server, peer="10.6.6.6")
        out = pump(probe, resp)
        assert isinstance(out.responder, HandshakeFailed)
        assert out.responder.reason_code == RejectReason.AUTH_FAILED and out.responder.remote
        shapes.append([(who, len(d)) for who, d in out.flights])
    # the same messages, of the same sizes, whether the name exists or not
    assert shapes[0] == shapes[1]
    # the probe of the existing name was counted; the other had nothing to count
    assert limiter.failures("10.6.6.6", "admin") == 1


def test_certificate_i__active_chain_and_signature_only_to_an_authenticated_responder(
        ca, monkeypatch):
    # Protocol 1: an initiator that offered a password role sent its chain
    # and signature in message 3 to a responder that had proven nothing.
    seen = []
    real = CertificateRole.verify

    def spy(self, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(CertificateRole, "verify", spy)
    mine = [holder("shipping", ca), PasswordRole("admin", "hunter2")]
    fake = Responder(HandshakeConfig(roles=[CertificateRole("shipping", anchors=[ca.cert]),
                                            PasswordRole("admin", "guess")],
                                     allow_anonymous=True), peer="mitm")
    out = pump(Initiator(HandshakeConfig(roles=mine)), fake)
    assert not out.ok and seen == []  # the fake responder never got a chain
    # with the real responder (it proves the password in message 4) the
    # chain and signature follow in message 5
    real_resp = Responder(HandshakeConfig(roles=[CertificateRole("shipping", anchors=[ca.cert]),
                                                 PasswordRole("admin", "hunter2")]))
    out = pump(Initiator(HandshakeConfig(roles=mine)), real_resp)
    assert out.ok and out.responder.peer_roles == {"shipping", "admin"}
    assert seen == ["shipping"] and len(out.flights) == 5


def test_certificate_r__active_without_the_anchor_learns_nothing(ca):
    other = make_ca("attacker CA")
    probe = Initiator(HandshakeConfig(roles=[CertificateRole("shipping", anchors=[other.cert])],
                                      allow_anonymous=True))
    resp = Responder(HandshakeConfig(roles=[holder("shipping", ca)]))
    resp.receive_data(probe.data_to_send())
    resp.next_event()
    probe.receive_data(resp.data_to_send())
    probe.next_event()
    assert probe._matches == []  # no entry, no chain, no proof


# --- unauthenticated peer --------------------------------------------------------------


def test_key_r__unauth_sixty_guessed_offers_learn_nothing():
    # Protocol 1: 60 guessed offers told the prober exactly which roles the
    # server held, and it got the key-role proofs.
    server = HandshakeConfig(roles=[KeyRole("payment", KEY_PAYMENT),
                                    KeyRole("billing", KEY_BILLING)])
    guesses = [KeyRole(f"{DICTIONARY[i % 20]}{i // 20 or ''}", os.urandom(32))
               for i in range(60)]
    probe = Initiator(HandshakeConfig(roles=guesses, allow_anonymous=True))
    resp = Responder(server)
    resp.receive_data(probe.data_to_send())
    assert resp.next_event() is NEED_DATA
    probe.receive_data(resp.data_to_send())
    probe.next_event()
    assert probe._matches == [] and probe._verified == set()


def test_key_i__unauth_fake_responder_cannot_recognise_the_hint():
    init = Initiator(HandshakeConfig(roles=[KeyRole("payment", KEY_PAYMENT)]))
    hello = m.parse_message(1, init.data_to_send()[4:])
    assert isinstance(hello, m.Hello)
    table = HandshakeConfig(roles=[KeyRole(n, os.urandom(32)) for n in DICTIONARY]).roles
    assert not set(table.hints(hello.random)) & set(hello.hints)
    assert dictionary_hits(hello) == []


def test_password_r__unauth_every_probe_of_a_held_name_is_charged():
    limiter = PasswordRateLimiter(max_failures=50, role_max_failures=50)
    server = HandshakeConfig(roles=[PasswordRole("admin", "hunter2", limiter=limiter),
                                    PasswordRole("ops", "s3cret", limiter=limiter)])
    # one probe naming 8 roles (8 slots): 2 exist, each run is charged
    names = ["admin", "ops", *DICTIONARY[8:14]]
    probe = Initiator(HandshakeConfig(roles=[PasswordRole(n, "guess") for n in names]))
    out = pump(probe, Responder(server, peer="10.5.5.5"))
    assert not out.ok
    assert limiter.failures("10.5.5.5", "admin") == 1
    assert limiter.failures("10.5.5.5", "ops") == 1


def test_unauth_no_such_role_and_wrong_proof_look_the_same(ca, caplog):
    # Protocol 1: NO_SHARED_ROLE (before any key exchange) vs AUTH_FAILED vs
    # CERTIFICATE_REJECTED told the prober which case it hit.
    other = make_ca("foreign CA")
    # The server proves "depot" first, so the probe sends its own chains in
    # message 3 (they go only to a responder that authenticated).
    server = HandshakeConfig(roles=[CertificateRole("shipping", anchors=[ca.cert]),
                                    KeyRole("payment", KEY_PAYMENT), holder("depot", ca)])
    depot = CertificateRole("depot", anchors=[ca.cert])
    leaf = pki.issue(other.issued, "foreign")
    probes = {
        "no such role": [depot, KeyRole("payment", os.urandom(32))],
        "foreign CA": [depot, CertificateRole("shipping", anchors=[ca.cert],
                                              chain=[leaf.certificate],
                                              private_key=leaf.private_key)],
    }
    bad_sig = holder("shipping", ca)
    bad_sig._key = pki.issue(ca.issued, "x").private_key  # signs with another key
    probes["wrong signature"] = [depot, bad_sig]
    wires, local = {}, {}
    with caplog.at_level("INFO", logger="rolewire.handshake"):
        for label, roles in probes.items():
            probe = Initiator(HandshakeConfig(roles=roles, allow_anonymous=True))
            resp = Responder(server, peer=label)
            out = pump(probe, resp)
            wires[label] = (len(out.flights), out.flights[-1][1])
            local[label] = type(out.responder.error)
    assert len(set(wires.values())) == 1  # same message count, same Reject bytes
    assert wires["no such role"][1] == m.Reject(RejectReason.AUTH_FAILED).encode()
    assert local == {"no such role": errors.NoVerifiedRole,
                     "foreign CA": errors.CertificateRejected,
                     "wrong signature": errors.RoleProofInvalid}
    reasons = {r.peer: r.reason for r in caplog.records if getattr(r, "event", "") ==
               "handshake_failed" and r.side == "responder"}
    assert reasons == {"no such role": "NO_SHARED_ROLE", "foreign CA": "CERTIFICATE_REJECTED",
                       "wrong signature": "AUTH_FAILED"}


def test_certificate_r__unauth_withheld_chain_goes_only_to_an_authenticated_initiator(ca):
    # With withhold_certificates the responder's chain and signature wait for
    # message 4 and go only to an initiator that authenticated in message 3.
    server_roles = [holder("shipping", ca), KeyRole("payment", KEY_PAYMENT)]
    server = HandshakeConfig(roles=server_roles, withhold_certificates=True)
    verifier = CertificateRole("shipping", anchors=[ca.cert])
    # an initiator that holds the anchor but no other role: no chain at all
    probe = Initiator(HandshakeConfig(roles=[verifier], allow_anonymous=True))
    out = pump(probe, Responder(server))
    assert "shipping" not in getattr(out.initiator, "peer_roles", set())
    assert not any(server_roles[0].chain_der[0] in d for _, d in out.flights)
    assert all(not m_.peer_data for m_ in probe._matches)
    # an initiator that authenticates with the key role gets it in message 4
    good = Initiator(HandshakeConfig(roles=[verifier, KeyRole("payment", KEY_PAYMENT)]))
    out = pump(good, Responder(server))
    assert out.ok and out.initiator.peer_roles == {"shipping", "payment"}
    assert len(out.flights) == 4
    # default: in message 2 (encrypted against passive observers)
    probe = Initiator(HandshakeConfig(roles=[verifier], allow_anonymous=True))
    out = pump(probe, Responder(HandshakeConfig(roles=server_roles)))
    assert isinstance(out.initiator, HandshakeComplete)
    assert out.initiator.peer_roles == {"shipping"}
    assert probe._matches[0].peer_data  # the chain came in message 2


def test_certificate_i__unauth_fake_responder_without_anchor_learns_nothing(ca):
    init = Initiator(HandshakeConfig(roles=[holder("shipping", ca)]))
    other = make_ca("fake CA")
    fake = Responder(HandshakeConfig(roles=[CertificateRole("shipping", anchors=[other.cert])]))
    pump(init, fake)
    assert fake._matches == []


def test_password_i__unauth_fake_responder_gets_no_initiator_proof(monkeypatch):
    from rolewire.roles.password import PasswordExchange

    proofs = []
    real = PasswordExchange.prove

    def spy(self, *a):  # type: ignore[no-untyped-def]
        if self.initiator:
            proofs.append(1)
        return real(self, *a)

    monkeypatch.setattr(PasswordExchange, "prove", spy)
    for guess in DICTIONARY[:5]:
        init = Initiator(HandshakeConfig(roles=[PasswordRole("admin", "hunter2")]))
        pump(init, Responder(HandshakeConfig(roles=[PasswordRole("admin", guess)])))
    assert proofs == []


# --- authenticated peer holding other roles ------------------------------------------


def test_all_rows__other_learns_only_shared_roles(ca):
    limiter = PasswordRateLimiter(max_failures=5)
    server = HandshakeConfig(roles=[KeyRole("payment", KEY_PAYMENT),
                                    KeyRole("billing", KEY_BILLING),
                                    holder("shipping", ca),
                                    PasswordRole("admin", "hunter2", limiter=limiter)])
    other = make_ca("peer's own CA")
    client_roles = [KeyRole("payment", KEY_PAYMENT),                # shared
                    KeyRole("billing", os.urandom(32)),             # name known, key not
                    CertificateRole("shipping", anchors=[other.cert]),  # anchor not
                    PasswordRole("admin", "guess")]                 # password not
    client = Initiator(HandshakeConfig(roles=client_roles))
    out = pump(client, Responder(server, peer="10.4.4.4"))
    assert out.ok
    assert out.initiator.peer_roles == {"payment"} == out.responder.peer_roles
    assert [mt.role.name for mt in client._matches] == ["payment"]
    assert limiter.failures("10.4.4.4", "admin") == 1  # the password probe counted
    # and the server learned nothing about the client's unshared roles
    assert out.responder.peer_roles == {"payment"}
