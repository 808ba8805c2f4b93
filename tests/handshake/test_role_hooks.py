"""Role kinds plug into the handshake through their hooks
(:class:`rolewire.roles.base.Role`): a kind defined only here, which
``handshake/machine.py`` has never heard of, completes handshakes (alone,
next to a key role, with credentials in its role entry, and through a
``Connection``), and a wrong secret of it is refused. The machine's source
is checked to hold no role-class dispatch, so the ``isinstance`` branches
cannot creep back."""

from __future__ import annotations

import ast
import enum
import hashlib
import hmac
import inspect
import os
import pathlib

import pytest
from hs_util import FakeClock, failed, pump

from rolewire import errors
from rolewire.handshake import (
    HandshakeConfig,
    HandshakeFailed,
    Initiator,
    RejectReason,
    Responder,
    machine,
    parse_late_reject,
)
from rolewire.protocol import CallReceived, Connection, Failed, HandshakeDone, ReplyReceived
from rolewire.roles import CertificateRole, KeyRole, PasswordRole, base, certificate, key, password
from rolewire.roles.base import Direction, ProofChannel, Role, proof_input
from rolewire.services import Service


class ToyKind(enum.IntEnum):
    """A kind id no built-in kind uses (RoleKind has 1..3)."""

    TOKEN = 0x54  # "T"
    TICKET = 0x55


class TokenRole(Role):
    """A pre-shared token proves the role: a keyed BLAKE2b MAC over
    ``proof_input``. The hint key comes from a separate ``realm`` value,
    so a peer with the right realm but the wrong token is recognised by
    its hint and then refused by :meth:`verify_proof` (the case the
    negative test needs)."""

    kind = ToyKind.TOKEN  # type: ignore[assignment]
    __slots__ = ("_hint_key", "_mac_key", "_verifies", "verify_calls")

    def __init__(self, name: str, token: bytes, *, realm: bytes = b"toy realm",
                 verifies: bool = True) -> None:
        super().__init__(name)
        self._mac_key = hashlib.blake2b(token, person=b"toy-token-mac").digest()
        self._hint_key = hashlib.blake2b(realm, digest_size=32, person=b"toy-token-hint").digest()
        self._verifies = verifies
        self.verify_calls = 0

    @property
    def can_prove(self) -> bool:
        return True

    @property
    def can_verify(self) -> bool:
        return self._verifies

    def hint_keys(self) -> tuple[bytes, ...]:
        return (self._hint_key,)

    def prove(self, direction: Direction, h: bytes) -> bytes:
        return hashlib.blake2b(proof_input(self.kind, direction, self.role_id, h),
                               key=self._mac_key, digest_size=32).digest()

    def verify_proof(self, direction, h, proof, credentials, wall_clock) -> None:
        self.verify_calls += 1
        assert credentials == ()  # no sends_credentials: the machine parses no chain
        if not hmac.compare_digest(self.prove(direction, h), proof):
            raise errors.RoleProofInvalid("toy token proof did not verify")


class TicketRole(TokenRole):
    """A token kind whose proof travels with a credential (a "ticket"),
    like a certificate chain: it rides in the role entry and may be
    withheld until the peer authenticated."""

    kind = ToyKind.TICKET  # type: ignore[assignment]
    sends_credentials = True
    __slots__ = ("seen",)

    def __init__(self, name: str, token: bytes, **kw) -> None:
        super().__init__(name, token, **kw)
        self.seen: list[tuple[bytes, ...]] = []

    def credentials(self) -> tuple[bytes, ...]:
        return (b"ticket:" + self.name.encode(), b"issuer:toy")

    def verify_proof(self, direction, h, proof, credentials, wall_clock) -> None:
        self.seen.append(tuple(credentials))
        if tuple(credentials) != self.credentials():
            raise errors.RoleProofInvalid("toy ticket not recognised")
        if not hmac.compare_digest(self.prove(direction, h), proof):
            raise errors.RoleProofInvalid("toy ticket proof did not verify")


TOKEN = os.urandom(32)


def run(init_roles, resp_roles, *, init_kw=None, **kw):
    clock = FakeClock()
    init = Initiator(HandshakeConfig(roles=init_roles, clock=clock, **kw, **(init_kw or {})),
                     peer="resp")
    resp = Responder(HandshakeConfig(roles=resp_roles, clock=clock, **kw), peer="init")
    return pump(init, resp)


def assert_ok(out):
    assert out.ok, (out.initiator, out.responder)
    a, b = out.initiator.session, out.responder.session
    assert out.initiator.transcript_hash == out.responder.transcript_hash
    assert b.open(a.seal(b"ping")) == b"ping"


def test_a_kind_defined_outside_the_machine_completes_a_handshake():
    mine, theirs = TokenRole("toy", TOKEN), TokenRole("toy", TOKEN)
    out = run([mine], [theirs])
    assert_ok(out)
    assert out.initiator.peer_roles == {"toy"} and out.responder.peer_roles == {"toy"}
    assert out.responder.peer_role_kinds == {(ToyKind.TOKEN, "toy")}
    assert out.responder.session.peer_role_kinds == {(ToyKind.TOKEN, "toy")}
    # Each side verified the other's proof through the kind's own hook.
    assert mine.verify_calls == 1 and theirs.verify_calls == 1
    assert len(out.flights) == 3  # a hint kind: Hello, ResponderHello, InitiatorAuth


def test_the_toy_kind_next_to_a_key_and_a_password_role():
    key = os.urandom(32)
    shared = [KeyRole("svc", key), PasswordRole("pw", "correct horse")]
    out = run([TokenRole("toy", TOKEN), *shared],
              [TokenRole("toy", TOKEN), KeyRole("svc", key),
               PasswordRole("pw", "correct horse")])
    assert_ok(out)
    assert out.responder.peer_roles == {"toy", "svc", "pw"}
    assert (ToyKind.TOKEN, "toy") in out.initiator.peer_role_kinds


def test_a_wrong_toy_token_is_refused_by_the_responder():
    # The initiator only proves (it checks no proof of the responder, and
    # accepts an anonymous one), so the responder's verify_proof hook is
    # the one that refuses.
    theirs = TokenRole("toy", TOKEN)
    out = run([TokenRole("toy", os.urandom(32), verifies=False)], [theirs],
              init_kw={"allow_anonymous": True})
    assert failed(out.responder)
    assert theirs.verify_calls == 1  # recognised by its hint, refused by its proof
    assert isinstance(out.responder.error, errors.RoleProofInvalid)
    assert out.responder.sent_code == RejectReason.AUTH_FAILED
    # Message 3 was the initiator's last: the Reject comes after it
    # completed, for its adapter to raise.
    side, reject = out.flights[-1]
    assert side == "responder"
    assert parse_late_reject(reject).reason_code == RejectReason.AUTH_FAILED


def test_a_wrong_toy_token_is_refused_by_the_initiator():
    mine = TokenRole("toy", os.urandom(32))
    out = run([mine], [TokenRole("toy", TOKEN)])
    assert mine.verify_calls == 1  # the responder's proof of message 2
    assert isinstance(out.initiator.error, errors.RoleProofInvalid)
    assert out.responder.remote and out.responder.reason_code == RejectReason.AUTH_FAILED


def test_a_wrong_toy_token_without_abort_only_leaves_the_role_out():
    key = os.urandom(32)
    out = run([TokenRole("toy", os.urandom(32)), KeyRole("svc", key)],
              [TokenRole("toy", TOKEN), KeyRole("svc", key)], abort_on_bad_proof=False)
    assert_ok(out)
    # Each side checks the other's proof with its own token: both refuse.
    assert out.responder.peer_roles == {"svc"} and out.initiator.peer_roles == {"svc"}


@pytest.mark.parametrize("withhold", [False, True])
def test_credentials_of_a_toy_kind_travel_in_the_role_entry(withhold):
    key = os.urandom(32)
    mine, theirs = TicketRole("tix", TOKEN), TicketRole("tix", TOKEN)
    out = run([mine, KeyRole("svc", key)], [theirs, KeyRole("svc", key)],
              withhold_certificates=withhold)
    assert_ok(out)
    assert out.responder.peer_roles == {"tix", "svc"}
    assert mine.seen == [mine.credentials()] and theirs.seen == [theirs.credentials()]
    # Withheld: the responder's ticket goes in message 4, after the
    # initiator authenticated (with its key role) in message 3.
    assert len(out.flights) == (4 if withhold else 3)


def test_a_toy_ticket_alone_waits_for_the_peer_like_a_certificate():
    # By default the responder's ticket goes in message 2, so the
    # initiator (the responder proved) sends its own in message 3.
    out = run([TicketRole("tix", TOKEN)], [TicketRole("tix", TOKEN)])
    assert_ok(out)
    assert len(out.flights) == 3
    # Withheld and deferred on both sides, as for certificates: neither
    # goes first, nothing is verified, the policy refuses.
    out = run([TicketRole("tix", TOKEN)], [TicketRole("tix", TOKEN)],
              withhold_certificates=True)
    assert failed(out.initiator) and failed(out.responder)
    assert isinstance(out.initiator.error, errors.NoVerifiedRole)


def test_a_wrong_toy_ticket_is_refused():
    class Forged(TicketRole):
        def credentials(self) -> tuple[bytes, ...]:
            return (b"ticket:forged",)

    theirs = TicketRole("tix", TOKEN)
    out = run([Forged("tix", TOKEN, verifies=False)], [theirs],
              init_kw={"allow_anonymous": True})
    assert failed(out.responder) and isinstance(out.responder.error, errors.RoleProofInvalid)
    assert theirs.seen == [(b"ticket:forged",)]  # the parsed chain reached the hook


def _pump_connections(client, server, svc, now=100.0):
    """Moves bytes both ways until nothing moves; the server answers calls."""
    client_events: list = []
    server_events: list = []
    for _ in range(10):
        data = client.data_to_send(now)
        if data:
            server.receive_data(data, now)
        for ev in server.events():
            server_events.append(ev)
            if isinstance(ev, CallReceived):
                server.reply(ev.call_id, ev.operation.name,
                             svc.invoke(ev.operation, ev.context, ev.body))
        back = server.data_to_send(now)
        if back:
            client.receive_data(back, now)
        client_events.extend(client.events())
        if not data and not back:
            break
    return client_events, server_events


def _toy_service() -> Service:
    svc = Service("toy")
    svc.add("echo", lambda call, body: body, roles=["toy"])
    return svc


def test_the_toy_kind_through_a_connection():
    svc = _toy_service()
    client = Connection.client(HandshakeConfig(roles=[TokenRole("toy", TOKEN)]), now=100.0,
                               peer="server")
    server = Connection.server(HandshakeConfig(roles=[TokenRole("toy", TOKEN)]), svc,
                               now=100.0, peer="client")
    _, server_events = _pump_connections(client, server, svc)
    (done,) = [e for e in server_events if isinstance(e, HandshakeDone)]
    assert done.peer_roles == {"toy"}
    client.call("echo", b"hi")
    client_events, _ = _pump_connections(client, server, svc)
    (reply,) = [e for e in client_events if isinstance(e, ReplyReceived)]
    assert reply.body == b"hi"


def test_a_wrong_toy_token_through_a_connection_fails_the_handshake():
    svc = _toy_service()
    client = Connection.client(HandshakeConfig(roles=[TokenRole("toy", os.urandom(32))]),
                               now=100.0, peer="server")
    server = Connection.server(HandshakeConfig(roles=[TokenRole("toy", TOKEN)]), svc,
                               now=100.0, peer="client")
    client_events, server_events = _pump_connections(client, server, svc)
    assert not client.established and not server.established
    assert any(isinstance(e, Failed) for e in server_events)
    assert any(isinstance(e, Failed) for e in client_events)
    assert not any(isinstance(e, HandshakeDone) for e in server_events + client_events)


# -- the machine dispatches through hooks only ------------------------------------------

def _role_classes() -> set[str]:
    """Names of every role class the roles package defines."""
    names = set()
    for module in (base, key, password, certificate):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Role):
                names.add(name)
    return names


MACHINE_TREE = ast.parse(pathlib.Path(machine.__file__).read_text(encoding="utf-8"))


def test_the_machine_has_no_isinstance_on_a_role_kind():
    role_classes = _role_classes()
    assert {"Role", "KeyRole", "PasswordRole", "CertificateRole"} <= role_classes
    offences = []
    for node in ast.walk(MACHINE_TREE):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("isinstance", "issubclass",
                                                                    "type"):
            named = {n.id for arg in node.args[1:] or node.args for n in ast.walk(arg)
                     if isinstance(n, ast.Name)}
            named |= {n.attr for arg in node.args for n in ast.walk(arg)
                      if isinstance(n, ast.Attribute)}
            if named & role_classes:
                offences.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert offences == []


def test_the_machine_names_no_concrete_kind():
    """Neither the kind classes nor the built-in kind ids: a comparison
    like ``role.kind == RoleKind.PASSWORD`` would be the same branch."""
    concrete = _role_classes() - {"Role"}
    offences = []
    for node in ast.walk(MACHINE_TREE):
        if isinstance(node, ast.ImportFrom):
            offences += [f"imports {a.name}" for a in node.names if a.name in concrete]
        elif isinstance(node, ast.Name) and node.id in concrete:
            offences.append(f"line {node.lineno}: {node.id}")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "RoleKind"):
            offences.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert offences == []


def test_the_hook_defaults_are_those_of_a_plain_hint_kind():
    assert Role.proof_channel is ProofChannel.HINT and not Role.sends_credentials
    assert PasswordRole.proof_channel is ProofChannel.PASSWORD_SLOT
    assert CertificateRole.sends_credentials
    toy = TokenRole("toy", TOKEN)
    assert toy.credentials() == () and toy.password_locked_for("peer") == 0.0
    with pytest.raises(errors.ConfigurationError):
        toy.charge("peer")
    with pytest.raises(errors.ConfigurationError):
        toy.exchange(initiator=True, context=b"")


def test_a_handshake_failed_event_for_the_toy_kind_names_no_secret():
    out = run([TokenRole("toy", os.urandom(32))], [TokenRole("toy", TOKEN)])
    assert isinstance(out.responder, HandshakeFailed)
    assert TOKEN.hex() not in repr(out.responder) and TOKEN.hex() not in str(out.responder.error)
