"""The transport-secured connection (what the mTLS/JWT baselines drive),
sans-IO: bytes in, bytes out, a fake clock, no sockets."""

from __future__ import annotations

import pytest

from rolewire import errors
from rolewire.protocol import (
    CallFailed,
    CallReceived,
    CallRefused,
    Closed,
    ConnectionSettings,
    ErrorCode,
    Failed,
    HandshakeDone,
    Notified,
    ReplyReceived,
)
from rolewire.protocol.transport_secured import TransportSecuredConnection
from rolewire.protocol.wire import (
    CallMessage,
    FrameDecoder,
    FrameKind,
    MessageType,
    encode,
    encode_frame,
    encode_records,
)
from rolewire.services import Service

GREETING = b"test-greeting/1"


def make_service() -> Service:
    svc = Service("test")
    svc.add("echo", lambda call, body: body, roles=["shop"])
    svc.add("note", lambda call, body: None, roles=["shop"])
    svc.add("admin_op", lambda call, body: b"secret", roles=["admin"])
    return svc


class Pair:
    """Client and server joined by hand on a fake clock; the server runs
    handlers synchronously (``service.invoke``)."""

    def __init__(self, *, server_roles: frozenset[str] = frozenset({"shop"}),
                 client_settings: ConnectionSettings | None = None) -> None:
        self.now = 50.0
        self.service = make_service()
        self.server = TransportSecuredConnection.server(
            self.service, now=self.now, peer_roles=server_roles, peer="client",
            greeting=GREETING)
        self.client = TransportSecuredConnection.client(
            now=self.now, peer_roles=frozenset({"srv"}), peer="server", greeting=GREETING,
            settings=client_settings)
        self.client_events: list = []
        self.server_events: list = []
        self.auto_reply = True

    def pump(self) -> None:
        for _ in range(20):
            moved = False
            data = self.server.data_to_send(self.now)
            if data:
                moved = True
                self.client.receive_data(data, self.now)
            self.client_events += self.client.events()
            data = self.client.data_to_send(self.now)
            if data:
                moved = True
                self.server.receive_data(data, self.now)
            for event in self.server.events():
                self.server_events.append(event)
                if isinstance(event, CallReceived) and self.auto_reply:
                    result = self.service.invoke(event.operation, event.context, event.body)
                    self.server.reply(event.call_id, event.operation.name, result, self.now)
                    moved = True
                elif isinstance(event, Notified):
                    self.service.invoke(event.operation, event.context, event.body)
            if not moved:
                return

    def of(self, kind: type, side: str = "client") -> list:
        events = self.client_events if side == "client" else self.server_events
        return [e for e in events if isinstance(e, kind)]


def test_greeting_opens_the_client_and_roles_come_from_the_transport() -> None:
    p = Pair()
    assert p.server.established and not p.client.established
    with pytest.raises(errors.HandshakeStateError):
        p.client.call("echo", b"x")
    first = p.server.data_to_send(p.now)
    assert first == encode_frame(FrameKind.HANDSHAKE, GREETING)
    p.client.receive_data(first[:3], p.now)
    assert not p.client.established  # any split
    p.client.receive_data(first[3:], p.now)
    [done] = p.client.events()
    assert isinstance(done, HandshakeDone) and done.peer_roles == {"srv"}
    assert p.client.established and p.client.peer_roles == {"srv"}
    assert p.server.peer_roles == {"shop"}


def test_call_and_reply_are_plain_frames() -> None:
    p = Pair()
    p.pump()
    call_id = p.client.call("echo", b"hello")
    wire = p.client.data_to_send(p.now)
    # No record sealing: the frame carries the call message as it is.
    [(kind, payload)] = FrameDecoder().feed(wire)
    assert kind is FrameKind.RECORD
    assert payload == encode(CallMessage(MessageType.REQUEST, call_id, "echo", b"hello"))
    p.server.receive_data(wire, p.now)
    [received] = p.server.events()
    assert isinstance(received, CallReceived)
    assert received.context.peer_roles == {"shop"} and received.body == b"hello"
    p.server.reply(received.call_id, "echo", b"hello", p.now)
    p.client.receive_data(p.server.data_to_send(p.now), p.now)
    [reply] = p.client.events()
    assert reply == ReplyReceived(call_id, b"hello", reply.metadata)
    p.client.notify("note", b"n")
    p.pump()
    assert len(p.of(Notified, "server")) == 1


def test_refused_call_role_missing() -> None:
    p = Pair()
    p.pump()
    call_id = p.client.call("admin_op")
    p.pump()
    [refused] = p.of(CallRefused, "server")
    assert refused.code is ErrorCode.FORBIDDEN and refused.operation == "admin_op"
    assert not p.of(CallReceived, "server")  # the handler never ran
    [failed] = p.of(CallFailed)
    assert failed.call_id == call_id and isinstance(failed.error, errors.Forbidden)


def test_call_timeout_via_handle_timer() -> None:
    p = Pair()
    p.pump()
    p.auto_reply = False
    call_id = p.client.call("echo", b"slow", timeout=2.0)
    p.pump()
    assert p.client.get_timer() == pytest.approx(p.now + 2.0)
    p.client.handle_timer(p.now + 1.0)
    assert not p.client.events()
    p.now += 2.0
    p.client.handle_timer(p.now)
    [failed] = p.client.events()
    assert failed.call_id == call_id and isinstance(failed.error, errors.CallTimeout)
    assert p.client.established  # the connection stays open; a late reply is dropped
    [received] = p.of(CallReceived, "server")
    p.server.reply(received.call_id, "echo", b"late", p.now)
    p.pump()
    assert not p.of(ReplyReceived)


def test_greeting_timeout_fails_the_client() -> None:
    client = TransportSecuredConnection.client(
        now=0.0, greeting=GREETING, settings=ConnectionSettings(handshake_timeout=3.0))
    assert client.get_timer() == 3.0
    client.handle_timer(3.0)
    [failed] = client.events()
    assert isinstance(failed, Failed) and isinstance(failed.error, errors.HandshakeTimeout)
    assert client.ended and client.data_to_send() == b""  # no rolewire Reject goes out


def test_wrong_greeting_or_early_record_fails_the_client() -> None:
    client = TransportSecuredConnection.client(now=0.0, greeting=GREETING)
    client.receive_data(encode_frame(FrameKind.HANDSHAKE, b"someone else"), 0.0)
    [failed] = client.events()
    assert isinstance(failed, Failed) and isinstance(failed.error, errors.HandshakeError)
    client = TransportSecuredConnection.client(now=0.0, greeting=GREETING)
    client.receive_data(encode_records([encode(CallMessage(MessageType.CLOSE, 0, ""))]), 0.0)
    [failed] = client.events()
    assert isinstance(failed.error, errors.ProtocolViolation)


def test_close_exchange() -> None:
    p = Pair()
    p.pump()
    p.auto_reply = False
    call_id = p.client.call("echo", b"x")
    p.pump()
    p.client.close(p.now)
    p.pump()
    assert not p.client.ended  # our pending request may still be answered
    [received] = p.of(CallReceived, "server")
    p.server.reply(received.call_id, "echo", b"x", p.now)
    p.pump()
    assert [e.call_id for e in p.of(ReplyReceived)] == [call_id]
    [closed] = p.of(Closed)
    assert closed.graceful
    assert p.of(Closed, "server")[0].graceful
    with pytest.raises(errors.ConnectionClosed):
        p.client.call("echo")


def test_close_deadline_ends_the_connection() -> None:
    p = Pair()
    p.pump()
    p.client.close(p.now, timeout=1.0)
    p.client.data_to_send(p.now)  # the CLOSE is lost: the server never answers
    assert p.client.get_timer() == pytest.approx(p.now + 1.0)
    p.client.handle_timer(p.now + 1.0)
    [closed] = p.client.events()
    assert isinstance(closed, Closed) and not closed.graceful


def test_frame_limit_and_no_rehandshake() -> None:
    server = TransportSecuredConnection.server(
        make_service(), now=0.0, peer_roles=frozenset({"shop"}), greeting=GREETING,
        settings=ConnectionSettings(max_frame=100))
    assert isinstance(server.events()[0], HandshakeDone)  # open at once
    server.receive_data((102).to_bytes(4, "big"), 0.0)  # announces 101 payload bytes
    [failed] = server.events()
    assert isinstance(failed, Failed) and isinstance(failed.error, errors.ProtocolViolation)
    p = Pair()
    p.pump()
    with pytest.raises(errors.ConfigurationError):
        p.client.rehandshake()
    p.server.receive_data(encode_records([encode(CallMessage(MessageType.REHANDSHAKE, 0, "",
                                                             b"x"))]), p.now)
    assert isinstance(p.server.events()[-1], Failed)


def test_message_larger_than_the_frame_limit_is_refused_before_queueing() -> None:
    p = Pair(client_settings=ConnectionSettings(max_frame=64))
    p.pump()
    with pytest.raises(errors.RecordTooLarge):
        p.client.call("echo", b"x" * 100)
    assert p.client.data_to_send(p.now) == b""
