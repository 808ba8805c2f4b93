"""The sans-IO connection core, driven with bytes and a fake clock only (no
sockets, no event loop): every event, every timer, every budget."""

from __future__ import annotations

import math
import os

import pytest

from rolewire import errors
from rolewire.handshake import HandshakeConfig, RejectReason
from rolewire.protocol import (
    CallFailed,
    CallReceived,
    CallRefused,
    Closed,
    Closing,
    Connection,
    ConnectionSettings,
    ErrorCode,
    Failed,
    HandshakeDone,
    Notified,
    OtherMessage,
    ReplyReceived,
)
from rolewire.protocol.wire import (
    PING_OPERATION,
    CallMessage,
    FrameDecoder,
    FrameKind,
    MessageType,
    call_header,
    encode,
    encode_frame,
    encode_records,
    parse_error,
)
from rolewire.record import RecordLimits
from rolewire.roles.key import KeyRole
from rolewire.services import Service

SHOP_KEY = os.urandom(32)
ADMIN_KEY = os.urandom(32)
SERVER_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY), KeyRole("admin", ADMIN_KEY)])
CLIENT_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)])


def make_service() -> Service:
    svc = Service("test")
    svc.add("echo", lambda call, body: body, roles=["shop"])
    svc.add("sink", lambda call, body: None, roles=["shop"])
    svc.add("admin_op", lambda call, body: b"secret", roles=["admin"])

    def broken(call, body):
        raise RuntimeError("boom")

    svc.add("broken", broken, roles=["shop"])
    return svc


class Pair:
    """A client and a server connection joined by hand; ``now`` is the fake
    clock both are given."""

    def __init__(self, *, client_settings: ConnectionSettings | None = None,
                 server_settings: ConnectionSettings | None = None,
                 client_cfg: HandshakeConfig = CLIENT_CFG, server_cfg: HandshakeConfig = SERVER_CFG,
                 framing: str = "stream") -> None:
        self.now = 100.0
        self.service = make_service()
        self.client = Connection.client(client_cfg, now=self.now, peer="server",
                                        settings=client_settings, framing=framing)
        self.server = Connection.server(server_cfg, self.service, now=self.now, peer="client",
                                        settings=server_settings, framing=framing)
        self.framing = framing
        self.client_events: list = []
        self.server_events: list = []
        self.auto_reply = True

    def _move(self, src: Connection, dst: Connection, drop: bool = False) -> bool:
        if self.framing == "stream":
            data = src.data_to_send(self.now)
            if data and not drop:
                dst.receive_data(data, self.now)
            return bool(data)
        messages = src.messages_to_send(self.now)
        if not drop:
            for message in messages:
                dst.receive_message(message, self.now)
        return bool(messages)

    def _drain(self) -> None:
        for ev in self.server.events():
            self.server_events.append(ev)
            if isinstance(ev, CallReceived) and self.auto_reply:
                result = self.service.invoke(ev.operation, ev.context, ev.body)
                self.server.reply(ev.call_id, ev.operation.name, result)
            elif isinstance(ev, Notified):
                self.service.invoke(ev.operation, ev.context, ev.body)
        self.client_events.extend(self.client.events())

    def pump(self, rounds: int = 10, *, drop_to_server: bool = False,
             drop_to_client: bool = False) -> None:
        for _ in range(rounds):
            moved = self._move(self.client, self.server, drop_to_server)
            self._drain()
            moved |= self._move(self.server, self.client, drop_to_client)
            self._drain()
            if not moved:
                break

    def advance(self, seconds: float) -> None:
        """Move the fake clock and fire both connections' due timers."""
        self.now += seconds
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
        self._drain()


def of(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def established(**kwargs) -> Pair:
    pair = Pair(**kwargs)
    pair.pump()
    assert of(pair.client_events, HandshakeDone) and of(pair.server_events, HandshakeDone)
    return pair


# -- handshake --------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["stream", "message"])
def test_handshake_done_on_both_sides(framing):
    pair = established(framing=framing)
    (c,) = of(pair.client_events, HandshakeDone)
    (s,) = of(pair.server_events, HandshakeDone)
    assert c.peer_roles == {"shop"} and s.peer_roles == {"shop"}
    assert c.transcript_hash == s.transcript_hash and c.session is pair.client.session
    assert pair.client.established and pair.server.established


def test_handshake_timeout_on_the_fake_clock_sends_a_timeout_reject():
    pair = Pair(server_settings=ConnectionSettings(handshake_timeout=3.0))
    pair.client.data_to_send()  # the Hello is lost
    assert pair.server.get_timer() == pytest.approx(103.0)
    pair.advance(2.9)
    assert not pair.server_events
    pair.advance(0.2)
    (failed,) = of(pair.server_events, Failed)
    assert isinstance(failed.error, errors.HandshakeTimeout) and failed.reason == "TIMEOUT"
    frames = FrameDecoder().feed(pair.server.data_to_send())
    assert frames and frames[-1][0] is FrameKind.HANDSHAKE
    pair.client.receive_data(encode_frame(*frames[-1]), pair.now)
    (remote,) = of(pair.client.events(), Failed)
    assert remote.remote and remote.reason == "TIMEOUT"
    assert isinstance(remote.error, errors.HandshakeRejected)


def test_the_config_timeout_runs_on_the_connections_clock():
    """The handshake reads the time the connection was given, not the wall
    clock: its own config timeout (2 s) fires on the fake clock."""
    cfg = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)], timeout=2.0)
    pair = Pair(server_cfg=cfg)
    pair.client.data_to_send()
    pair.advance(2.5)
    (failed,) = of(pair.server_events, Failed)
    assert isinstance(failed.error, errors.HandshakeTimeout)


def test_record_before_the_handshake_is_a_protocol_violation():
    pair = Pair()
    pair.server.receive_data(encode_records([b"\x01" * 40]), pair.now)
    (failed,) = of(pair.server.events(), Failed)
    assert isinstance(failed.error, errors.ProtocolViolation)


def test_garbage_frame_fails_the_connection():
    pair = Pair()
    pair.server.receive_data(b"\xff\xff\xff\xff\x01", pair.now)
    (failed,) = of(pair.server.events(), Failed)
    assert isinstance(failed.error, errors.ProtocolViolation)


def test_wrong_key_handshake_failure_is_reported_with_the_reject():
    pair = Pair(client_cfg=HandshakeConfig(roles=[KeyRole("shop", os.urandom(32))]))
    pair.pump()
    assert of(pair.server_events, Failed) and of(pair.client_events, Failed)
    assert not pair.client.established


def test_handshake_frame_after_completion_server_side():
    pair = established()
    pair.server.receive_data(encode_frame(FrameKind.HANDSHAKE, b"\x01\x00\x00\x00"), pair.now)
    (failed,) = of(pair.server.events(), Failed)
    assert isinstance(failed.error, errors.ProtocolViolation)


# -- calls ---------------------------------------------------------------------------------


def test_call_reply_notify_and_refusals():
    pair = established()
    client = pair.client
    ok = client.call("echo", b"hello")
    client.notify("sink", b"n1")
    forbidden = client.call("admin_op")
    unknown = client.call("no_such_op")
    failing = client.call("broken")
    client.notify("admin_op", b"refused notification")
    pair.pump()
    replies = {e.call_id: e for e in of(pair.client_events, ReplyReceived)}
    failures = {e.call_id: e.error for e in of(pair.client_events, CallFailed)}
    assert replies[ok].body == b"hello"
    assert isinstance(failures[forbidden], errors.Forbidden)
    assert isinstance(failures[unknown], errors.Forbidden)  # same reply: no enumeration
    assert isinstance(failures[failing], errors.RemoteCallError)
    assert failures[failing].code == ErrorCode.HANDLER_FAILED
    (notified,) = of(pair.server_events, Notified)
    assert notified.body == b"n1" and notified.context.peer_roles == {"shop"}
    refused = of(pair.server_events, CallRefused)
    assert [(r.operation, r.notification) for r in refused] == [
        ("admin_op", False), ("no_such_op", False), ("admin_op", True)]
    assert all(r.code == ErrorCode.FORBIDDEN for r in refused)
    assert pair.server.guard.refused == 3
    assert pair.client.pending_calls == 0 and pair.server.inflight == 0


def test_metadata_reaches_the_handler_context():
    pair = established()
    pair.auto_reply = False
    pair.client.call("echo", b"x", metadata={"trace": b"abc"})
    pair.pump()
    (received,) = of(pair.server_events, CallReceived)
    assert dict(received.context.metadata) == {"trace": b"abc"}


def small_records_pair() -> Pair:
    """An established pair whose records hold at most 1 KiB of plaintext."""
    def small() -> HandshakeConfig:
        return HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)],
                               record_limits=RecordLimits(max_plaintext=1024))
    return established(client_cfg=small(), server_cfg=small())


def test_record_too_large_is_refused_before_queueing():
    pair = small_records_pair()
    with pytest.raises(errors.RecordTooLarge):
        pair.client.call("echo", b"x" * 2000)
    with pytest.raises(errors.RecordTooLarge):
        pair.client.notify_many("sink", [b"ok", b"x" * 2000])
    assert pair.client.pending_calls == 0 and not pair.client.has_output


def test_reply_too_large_becomes_handler_failed():
    small = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)],
                            record_limits=RecordLimits(max_plaintext=1024))
    pair = established(server_cfg=small)
    pair.auto_reply = False
    call_id = pair.client.call("echo", b"x")
    pair.pump()
    (received,) = of(pair.server_events, CallReceived)
    pair.server.reply(received.call_id, "echo", b"y" * 5000)
    pair.pump()
    (failed,) = of(pair.client_events, CallFailed)
    assert failed.call_id == call_id and failed.error.code == ErrorCode.HANDLER_FAILED


def test_request_with_call_id_zero_gets_bad_request():
    pair = established()
    pair.client._queue(call_header(MessageType.REQUEST, 0, "echo") + b"x")
    pair.client._next_id = 2  # so the reply to id 0 is not a protocol violation
    pair.pump()
    (refused,) = of(pair.server_events, CallRefused)
    assert refused.code == ErrorCode.BAD_REQUEST


def test_unknown_message_type_fails_and_signed_batch_passes_through():
    pair = established()
    pair.client._queue(encode(CallMessage(MessageType.SIGNED_BATCH, 0, "", b"head")))
    pair.pump()
    (other,) = of(pair.server_events, OtherMessage)
    assert other.message.body == b"head"
    pair.client._queue(b"\x07" + bytes(9))
    pair.pump()
    (failed,) = of(pair.server_events, Failed)
    assert isinstance(failed.error, errors.ProtocolViolation)


def test_reply_from_a_peer_that_issued_no_request_is_a_violation():
    pair = established()
    pair.client._queue(call_header(MessageType.RESPONSE, 5, "echo"))
    pair.pump()
    (failed,) = of(pair.server_events, Failed)
    assert isinstance(failed.error, errors.ProtocolViolation)


def test_server_request_to_a_client_gets_unknown_operation():
    pair = established()
    pair.server._queue(call_header(MessageType.REQUEST, 9, "callback"))
    pair.server._next_id = 10
    pair.pump()
    (refused,) = of(pair.client_events, CallRefused)
    assert refused.code == ErrorCode.UNKNOWN_OPERATION


def test_max_inflight_pauses_reading():
    pair = established(server_settings=ConnectionSettings(max_inflight=2))
    pair.auto_reply = False
    for _ in range(3):
        pair.client.call("echo", b"x")
    pair.pump()
    received = of(pair.server_events, CallReceived)
    assert pair.server.inflight == 3 and pair.server.reading_paused
    for event in received:
        pair.server.reply(event.call_id, "echo", b"ok")
    assert not pair.server.reading_paused


def test_refused_call_budget_closes_the_connection():
    pair = established(server_settings=ConnectionSettings(
        call_guard={"max_refusals": 5, "refusals_per_second": 0.001}))
    for _ in range(7):
        pair.client.call("admin_op")
    pair.pump()
    refused = of(pair.server_events, CallRefused)
    assert any(r.limit_reached for r in refused)
    assert [c.reason for c in of(pair.server_events, Closing)] == ["refused_calls"]
    assert of(pair.client_events, Closed) and of(pair.server_events, Closed)


# -- liveness and call timers ------------------------------------------------------------


def test_ping_is_answered_without_the_service():
    pair = established()
    pair.client.notify("sink", b"first")  # the first send is followed by a probe
    assert pair.client._pings
    pair.pump()
    assert not pair.client._pings and not of(pair.server_events, CallRefused)
    assert pair.server.guard.refused == 0


def test_call_timeout_then_late_reply_is_dropped():
    pair = established()
    pair.auto_reply = False
    call_id = pair.client.call("echo", b"slow", timeout=2.0)
    pair.pump()
    assert pair.client.get_timer() == pytest.approx(pair.now + 2.0)
    pair.advance(2.5)
    (failed,) = of(pair.client_events, CallFailed)
    assert failed.call_id == call_id and isinstance(failed.error, errors.CallTimeout)
    assert isinstance(failed.error, TimeoutError)
    (received,) = of(pair.server_events, CallReceived)
    pair.server.reply(received.call_id, "echo", b"late")
    pair.pump()
    assert not of(pair.client_events, ReplyReceived) and pair.client.established


def test_default_call_timeout_and_infinite_timeout():
    pair = established(client_settings=ConnectionSettings(call_timeout=5.0,
                                                          keepalive_interval=None))
    pair.auto_reply = False
    bounded = pair.client.call("echo")
    unbounded = pair.client.call("echo", timeout=math.inf)
    pair.pump()
    pair.advance(6.0)
    failed = of(pair.client_events, CallFailed)
    assert [f.call_id for f in failed] == [bounded]
    assert pair.client.pending_calls == 1 and unbounded in pair.client._pending


def test_swallowed_last_handshake_message_ends_in_a_typed_error():
    """The proxy case of issue 17: the client's InitiatorAuth never reaches
    the server, so the client believes the handshake is done. Its first
    call is followed by a probe; with no answer it fails with
    HandshakeTimeout instead of hanging."""
    pair = Pair(client_settings=ConnectionSettings(handshake_timeout=4.0))
    # Hello -> ResponderHello: delivered; InitiatorAuth: swallowed.
    pair.server.receive_data(pair.client.data_to_send(), pair.now)
    pair.client.receive_data(pair.server.data_to_send(), pair.now)
    assert of(pair.client.events(), HandshakeDone)
    pair.client.data_to_send()  # InitiatorAuth lost
    call_id = pair.client.call("echo", b"x")
    pair.client.notify("sink", b"y")
    pair.client.data_to_send()  # into the void
    assert pair.client.get_timer() == pytest.approx(pair.now + 4.0)
    pair.now += 4.5
    pair.client.handle_timer(pair.now)
    events = pair.client.events()
    (failed_call,) = of(events, CallFailed)
    assert failed_call.call_id == call_id
    assert isinstance(failed_call.error, errors.HandshakeTimeout)
    (failed,) = of(events, Failed)
    assert isinstance(failed.error, errors.HandshakeTimeout)
    with pytest.raises(errors.HandshakeTimeout):
        pair.client.notify("sink", b"z")


def test_keepalive_probe_and_peer_unresponsive():
    pair = established(client_settings=ConnectionSettings(keepalive_interval=10.0,
                                                          liveness_timeout=5.0))
    pair.client.notify("sink", b"confirm")
    pair.pump()  # confirmed
    assert pair.client.get_timer() is None  # nothing expected: no probes
    pair.auto_reply = False
    pair.client.call("echo", b"held", timeout=math.inf)
    pair.pump()
    assert pair.client.get_timer() == pytest.approx(pair.now + 10.0)
    pair.now += 10.0
    pair.client.handle_timer(pair.now)
    assert pair.client._pings  # a probe is queued
    # the path dies: nothing reaches the server any more
    pair.client.data_to_send()
    assert pair.client.get_timer() == pytest.approx(pair.now + 5.0)
    pair.now += 5.0
    pair.client.handle_timer(pair.now)
    events = pair.client.events()
    assert isinstance(of(events, CallFailed)[0].error, errors.PeerUnresponsive)
    (failed,) = of(events, Failed)
    assert isinstance(failed.error, errors.PeerUnresponsive)
    assert isinstance(failed.error, errors.ConnectionClosed)


def test_keepalive_answered_keeps_the_connection():
    pair = established(client_settings=ConnectionSettings(keepalive_interval=10.0,
                                                          liveness_timeout=5.0))
    pair.auto_reply = False
    pair.client.call("echo", b"slow handler", timeout=math.inf)
    pair.pump()
    for _ in range(5):
        pair.advance(10.0)
        pair.pump()
    assert pair.client.established and pair.client.pending_calls == 1


# -- closing ------------------------------------------------------------------------------


def test_graceful_close_from_the_client():
    pair = established()
    pair.client.call("echo", b"last")
    pair.client.close()
    with pytest.raises(errors.ConnectionClosed):
        pair.client.call("echo")
    pair.pump()
    assert of(pair.client_events, ReplyReceived)
    (closed,) = of(pair.client_events, Closed)
    assert closed.graceful and closed.reason == "closed"
    (server_closed,) = of(pair.server_events, Closed)
    assert server_closed.graceful and server_closed.reason == "closed_by_peer"
    assert pair.client.session.closed and pair.server.session.closed


def test_server_closing_answers_running_calls_then_refuses_new_ones():
    pair = established()
    pair.auto_reply = False
    first = pair.client.call("echo", b"running")
    pair.pump()
    pair.server.begin_close("shutdown", pair.now)
    pair.client.call("echo", b"too late")
    pair.pump()
    (refused,) = of(pair.server_events, CallRefused)
    assert refused.code == ErrorCode.UNAVAILABLE
    (received,) = of(pair.server_events, CallReceived)
    pair.server.reply(received.call_id, "echo", b"done")
    pair.pump()
    replies = of(pair.client_events, ReplyReceived)
    assert [r.call_id for r in replies] == [first]
    assert isinstance(of(pair.client_events, CallFailed)[0].error, errors.ServiceUnavailable)
    assert of(pair.client_events, Closed) and of(pair.server_events, Closed)
    assert of(pair.server_events, Closed)[0].reason == "shutdown"


def test_server_idle_timeout():
    pair = established(server_settings=ConnectionSettings(idle_timeout=30.0))
    assert pair.server.get_timer() == pytest.approx(pair.now + 30.0)
    pair.advance(29.0)
    assert not of(pair.server_events, Closing)
    pair.advance(1.5)
    assert [c.reason for c in of(pair.server_events, Closing)] == ["idle"]
    pair.pump()
    assert of(pair.client_events, Closed)[0].graceful
    assert of(pair.server_events, Closed)[0].reason == "idle"


def test_close_deadline_when_the_peer_never_answers():
    pair = established(server_settings=ConnectionSettings(close_timeout=2.0))
    pair.server.begin_close("shutdown", pair.now)
    pair.pump(drop_to_server=True)  # the client's CLOSE is lost
    assert not of(pair.server_events, Closed)
    pair.advance(2.5)
    (closed,) = of(pair.server_events, Closed)
    assert not closed.graceful


def test_connection_lost_fails_pending_calls():
    pair = established()
    call_id = pair.client.call("echo")
    pair.client.connection_lost(None, pair.now)
    events = pair.client.events()
    assert of(events, CallFailed)[0].call_id == call_id
    assert isinstance(of(events, CallFailed)[0].error, errors.ConnectionClosed)
    assert of(events, Closed) and not of(events, Closed)[0].graceful


# -- records --------------------------------------------------------------------------------


def test_bad_record_budget():
    pair = established(server_settings=ConnectionSettings(max_bad_records=3))
    pair.client.notify("sink", b"x")
    data = pair.client.data_to_send()
    pair.server.receive_data(data, pair.now)
    frames = FrameDecoder().feed(data)
    for _ in range(2):  # replays
        pair.server.receive_data(encode_records([frames[0][1]]), pair.now)
    assert pair.server.bad_records == 2 and pair.server.established
    forged = bytearray(frames[0][1])
    forged[-1] ^= 1
    for _ in range(2):
        pair.server.receive_data(encode_records([bytes(forged)]), pair.now)
    (failed,) = of(pair.server.events(), Failed)
    assert isinstance(failed.error, errors.ProtocolViolation)


def test_late_reject_after_completion_is_a_remote_failure():
    pair = Pair()
    pair.server.receive_data(pair.client.data_to_send(), pair.now)
    pair.client.receive_data(pair.server.data_to_send(), pair.now)
    pair.client.data_to_send()
    from rolewire.handshake.messages import Reject

    pair.client.receive_data(encode_frame(FrameKind.HANDSHAKE,
                                          Reject(RejectReason.TIMEOUT).encode()), pair.now)
    (failed,) = of(pair.client.events(), Failed)
    assert failed.remote and failed.reason == "TIMEOUT"


def test_batches_are_sealed_at_the_coalescing_bound():
    pair = established(client_settings=ConnectionSettings(coalesce_bytes=1000,
                                                          max_batch_messages=10))
    pair.client.notify_many("sink", [b"x" * 10] * 25)
    assert pair.client.wants_flush  # two batches of 10 sealed already
    pair.pump()
    assert len(of(pair.server_events, Notified)) == 25


def test_error_reply_body_is_code_and_text():
    message = CallMessage(MessageType.ERROR, 3, "echo", b"\x00\x05closing")
    assert parse_error(message) == (5, "closing")
    assert PING_OPERATION == ""


def test_connections_over_the_shuffling_memory_transport():
    """The in-memory transport drives the same sans-IO Connection: records
    reordered and duplicated, every call answered exactly once."""
    from rolewire.transport import ConnectionLink, Path

    service = make_service()
    client = Connection.client(CLIENT_CFG, now=0.0, framing="message",
                               settings=ConnectionSettings(max_bad_records=10_000))
    server = Connection.server(SERVER_CFG, service, now=0.0, framing="message",
                               settings=ConnectionSettings(max_bad_records=10_000))
    link = ConnectionLink(client, server, seed=7, paths=(Path(0, 8), Path(3, 20)),
                          duplicate=0.3)
    replies: dict[int, bytes] = {}
    ids = []
    for step in range(400):
        if client.established and len(ids) < 200:
            ids.append(client.call("echo", b"%d" % step, timeout=math.inf))
        ev_client, ev_server = link.pump(float(step), settle=step > 300)
        for ev in ev_server:
            if isinstance(ev, CallReceived):
                server.reply(ev.call_id, ev.operation.name,
                             service.invoke(ev.operation, ev.context, ev.body))
        for ev in ev_client:
            if isinstance(ev, ReplyReceived):
                assert ev.call_id not in replies
                replies[ev.call_id] = ev.body
    assert len(ids) == 200 and sorted(replies) == sorted(ids)
    assert server.bad_records > 0  # the duplicates were refused as replays


# -- send_call: a request sealed and framed at once ------------------------------------------

def _send_call(pair: Pair, operation: str, body: bytes, **kwargs) -> int:
    """send_call, its bytes delivered to the server and the replies back."""
    call_id, data = pair.client.send_call(operation, body, now=pair.now, **kwargs)
    assert not pair.client.has_output  # everything to write was returned
    if data:
        pair.server.receive_data(data, pair.now)
    pair._drain()
    pair.pump()
    return call_id


def test_send_call_alone_is_one_record_and_answered():
    pair = established(client_settings=ConnectionSettings(keepalive_interval=None))
    _send_call(pair, "echo", b"warm-up")
    call_id, data = pair.client.send_call("echo", b"hello", now=pair.now)
    frames = FrameDecoder().feed(data)
    assert [kind for kind, _ in frames] == [FrameKind.RECORD]
    assert pair.client.get_timer() == pytest.approx(
        pair.now + ConnectionSettings().call_timeout)
    pair.server.receive_data(data, pair.now)
    pair._drain()
    pair.pump()
    replies = [e for e in of(pair.client_events, ReplyReceived) if e.call_id == call_id]
    assert [r.body for r in replies] == [b"hello"] and pair.client.pending_calls == 0


def test_send_call_after_queued_messages_keeps_their_order():
    pair = established()
    _send_call(pair, "echo", b"warm-up")  # confirms the handshake (its ping)
    pair.auto_reply = False
    pair.server_events.clear()
    pair.client.notify("sink", b"first")
    call_id = _send_call(pair, "echo", b"second", timeout=3.0)
    kinds = [(type(e), e.body) for e in pair.server_events
             if isinstance(e, (Notified, CallReceived))]
    assert kinds == [(Notified, b"first"), (CallReceived, b"second")]
    assert pair.client.get_timer() == pytest.approx(pair.now + 3.0)
    assert call_id in pair.client._pending


def test_send_call_before_confirmation_sends_the_ping_as_call_does():
    pair = established()
    _, data = pair.client.send_call("echo", b"x", now=pair.now)
    assert pair.client._pings  # the first data after the handshake is confirmed
    assert len(FrameDecoder().feed(data)) == 1  # request and ping in one record
    pair.server.receive_data(data, pair.now)
    pair._drain()
    pair.pump()
    assert not pair.client._pings and pair.client.pending_calls == 0


def test_send_call_starts_a_due_rehandshake_first():
    from rolewire.protocol import Rehandshaked

    pair = established(client_settings=ConnectionSettings(rehandshake_records=3))
    bodies = [b"%d" % i for i in range(12)]
    ids = [_send_call(pair, "echo", body) for body in bodies]
    replies = {e.call_id: e.body for e in of(pair.client_events, ReplyReceived)}
    assert [replies[i] for i in ids] == bodies
    assert of(pair.client_events, Rehandshaked) and of(pair.server_events, Rehandshaked)


def test_send_call_refuses_like_call_with_nothing_sent():
    pair = small_records_pair()
    with pytest.raises(errors.RecordTooLarge):
        pair.client.send_call("echo", b"x" * 2000, now=pair.now)
    assert pair.client.pending_calls == 0 and not pair.client.has_output
    pair.client.close(pair.now)
    with pytest.raises(errors.ConnectionClosed):
        pair.client.send_call("echo", b"x", now=pair.now)


def test_send_call_on_a_closed_record_layer_fails_the_connection():
    """The session closes itself at its integrity limit; the next request
    sealed at once fails the connection (and the call) as a queued one does."""
    pair = established()
    _send_call(pair, "echo", b"warm-up")
    pair.client.session.close()
    call_id, data = pair.client.send_call("echo", b"x", now=pair.now)
    assert data == b""
    events = pair.client.events()
    failed = [e for e in events if isinstance(e, CallFailed) and e.call_id == call_id]
    assert failed and isinstance(failed[0].error, errors.RecordLayerClosed)
    assert of(events, Failed) and pair.client.ended
