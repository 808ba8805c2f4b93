"""The connection's native receive path (ConnectionSettings.fast_receive)
against the frame-decoder path it replaces: the same bytes, cut the same
way, tampered and replayed the same way, give the same events, counters and
failures. Sans-IO: bytes and a fake clock only."""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rolewire.errors import RecordTooLarge
from rolewire.handshake import HandshakeConfig
from rolewire.protocol import (
    CallFailed,
    CallReceived,
    CallRefused,
    Closed,
    Closing,
    Connection,
    ConnectionSettings,
    Failed,
    HandshakeDone,
    Notified,
    NotifiedBatch,
    OtherMessage,
    ReplyReceived,
)
from rolewire.protocol.wire import CallMessage, FrameKind, MessageType, encode, encode_frame
from rolewire.roles.key import KeyRole
from rolewire.services import Service

SHOP_KEY = os.urandom(32)
ADMIN_KEY = os.urandom(32)
SERVER_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY), KeyRole("admin", ADMIN_KEY)])
CLIENT_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)])
NOW = 100.0
_LEN = struct.Struct(">I")


def make_service() -> Service:
    svc = Service("fast")
    svc.add("echo", lambda call, body: body, roles=["shop"])
    svc.add("sink", lambda call, body: None, roles=["shop"])
    svc.add("admin_op", lambda call, body: b"secret", roles=["admin"])
    svc.add("echo_meta", lambda call, body: body, roles=["shop"])
    return svc


def established(fast: bool, container_bytes: int, batched: bool = False,
                service: Service | None = None,
                client_fast: bool = True) -> tuple[Connection, Connection]:
    client = Connection.client(CLIENT_CFG, now=NOW, peer="server",
                               settings=ConnectionSettings(container_bytes=container_bytes,
                                                           fast_receive=client_fast))
    server = Connection.server(SERVER_CFG, service or make_service(), now=NOW, peer="client",
                               settings=ConnectionSettings(
                                   fast_receive=fast, batch_notifications=batched,
                                   # a few refusals close the connection mid-batch
                                   call_guard={"max_refusals": 1,
                                               "refusals_per_second": 0.001}))
    for _ in range(6):
        data = client.data_to_send(NOW)
        if data:
            server.receive_data(data, NOW)
        data = server.data_to_send(NOW)
        if data:
            client.receive_data(data, NOW)
    assert client.established and server.established
    client.events()
    server.events()
    return client, server


def expand(result: tuple) -> tuple:
    """A run's result with each NotifiedBatch as the Notified events it stands for."""
    events = []
    for event in result[0]:
        if event[0] == "notified_batch":
            events += [("notified", event[1], body, event[3]) for body in event[2]]
        else:
            events.append(event)
    return (events, *result[1:])


def normal(event: object) -> tuple:
    """An event as comparable plain data."""
    if isinstance(event, NotifiedBatch):
        return ("notified_batch", event.operation.name, event.bodies, dict(event.context.metadata))
    if isinstance(event, Notified):
        return ("notified", event.operation.name, event.body, dict(event.context.metadata))
    if isinstance(event, CallReceived):
        return ("call", event.call_id, event.operation.name, event.body,
                dict(event.context.metadata))
    if isinstance(event, CallRefused):
        return ("refused", event.call_id, event.operation, int(event.code), event.notification,
                event.limit_reached)
    if isinstance(event, (Failed, CallFailed)):
        return (type(event).__name__, type(event.error).__name__)
    if isinstance(event, (Closing, Closed)):
        return (type(event).__name__, event.reason)
    if isinstance(event, (ReplyReceived, OtherMessage, HandshakeDone)):
        return (type(event).__name__,)
    return (type(event).__name__, repr(event))


def frames_of(data: bytes) -> list[tuple[int, int]]:
    """(offset, length incl. the 4-byte length field) of each frame."""
    out, pos = [], 0
    while pos < len(data):
        (length,) = _LEN.unpack_from(data, pos)
        out.append((pos, 4 + length))
        pos += 4 + length
    return out


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("notify"), st.sampled_from(["sink", "echo", "admin_op", "nope", "é"]),
              st.binary(max_size=80)),
    st.tuples(st.just("call"), st.sampled_from(["echo", "admin_op", "nope", ""]),
              st.binary(max_size=80)),
    st.tuples(st.just("meta"), st.sampled_from(["sink", "echo"]), st.binary(max_size=16)),
    st.tuples(st.just("flush"), st.just(""), st.just(b"")),
), min_size=1, max_size=40)


def script(client: Connection, actions: list) -> bytes:
    """The client's bytes for ``actions`` (a flush ends a write, so the
    records of one write share containers)."""
    out = []
    for kind, op, body in actions:
        if kind == "notify":
            client.notify(op, body)
        elif kind == "call":
            client.call(op, body, timeout=None)
        elif kind == "meta":
            client.notify(op, body, metadata={"trace": b"t"})
        else:
            out.append(client.data_to_send(NOW))
    out.append(client.data_to_send(NOW))
    return b"".join(out)


def run(fast: bool, container_bytes: int, actions: list, cuts: list[int],
        tamper: list[int], replay: list[int], close: bool, server_closing: bool = False,
        batched: bool = False) -> tuple:
    client, server = established(fast, container_bytes, batched)
    if server_closing:  # (after "sink" was decided) notifications dropped, requests refused
        client.notify("sink", b"warm")
        server.receive_data(client.data_to_send(NOW), NOW)
        server.begin_close("shutdown", NOW)
    data = script(client, actions)
    if close:
        client.close(NOW)
        data += client.data_to_send(NOW)
    frames = frames_of(data)
    chunks = bytearray()
    for i, (at, size) in enumerate(frames):
        frame = bytearray(data[at:at + size])
        if i in tamper and size > 6:
            frame[5 + (i * 7) % (size - 5)] ^= 0x40
        chunks += frame
        if i in replay:
            chunks += frame
    stream = bytes(chunks)
    positions = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(positions):
        server.receive_data(stream[a:b], NOW)
    events = [normal(e) for e in server.events()]
    session = server.session
    assert session is not None
    c = session.counters
    counters = (c.records_opened, c.bytes_opened, c.replays_rejected, c.auth_failures,
                c.other_rejections)
    return events, counters, server.bad_records, server.ended, server.data_to_send(NOW) != b""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS, container=st.sampled_from([0, 64, 16 * 1024]),
       cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12),
       tamper=st.sets(st.integers(min_value=0, max_value=12), max_size=3),
       replay=st.sets(st.integers(min_value=0, max_value=12), max_size=3),
       close=st.booleans(), server_closing=st.booleans(), batched=st.booleans())
def test_fast_receive_gives_the_events_of_the_decoder_path(actions, container, cuts, tamper,
                                                           replay, close, server_closing,
                                                           batched):
    slow = run(False, container, actions, cuts, tamper, replay, close, server_closing)
    fast = run(True, container, actions, cuts, tamper, replay, close, server_closing, batched)
    assert expand(fast) == expand(slow)


def test_fast_receive_is_used_after_the_handshake_and_caches_notifications():
    client, server = established(True, 16 * 1024)
    client.notify_many("sink", [b"x" * 64] * 500)
    server.receive_data(client.data_to_send(NOW), NOW)
    events = server.events()
    assert [type(e) for e in events] == [Notified] * 500
    assert server._fast is not None  # the native (or pure-twin) receiver took the chunk
    assert server._fast_notify  # the second and later notifications took the fast path
    assert {e.body for e in events} == {b"x" * 64}


def test_a_handshake_frame_after_the_handshake_fails_the_server_on_the_fast_path():
    client, server = established(True, 16 * 1024)
    client.notify("sink", b"a")
    data = client.data_to_send(NOW) + encode_frame(FrameKind.HANDSHAKE, b"\x01junk")
    client.notify("sink", b"b")
    data += client.data_to_send(NOW)
    server.receive_data(data, NOW)
    events = [normal(e) for e in server.events()]
    assert events[0] == ("notified", "sink", b"a", {})
    assert events[-1] == ("Failed", "ProtocolViolation")
    assert ("notified", "sink", b"b", {}) not in events


def test_a_large_record_split_into_many_reads_is_opened_once_complete():
    client, server = established(True, 16 * 1024)
    body = os.urandom(60_000)
    client.notify("sink", body)
    data = client.data_to_send(NOW)
    for i in range(0, len(data), 1000):
        server.receive_data(data[i:i + 1000], NOW)
    events = server.events()
    assert [normal(e) for e in events] == [("notified", "sink", body, {})]


@pytest.mark.parametrize("fast", [False, True])
def test_forged_records_past_the_budget_close_the_connection(fast):
    client, server = established(fast, 16 * 1024)
    client.notify("sink", b"x")
    good = bytearray(client.data_to_send(NOW))
    good[-1] ^= 1
    server.receive_data(bytes(good) * 150, NOW)
    events = [normal(e) for e in server.events()]
    assert events[-1] == ("Failed", "ProtocolViolation")
    assert server.ended


@pytest.mark.parametrize("container", [0, 16 * 1024])
def test_a_refusal_limit_reached_mid_chunk_stops_cached_notifications(container):
    actions = [("notify", "sink", b"1"), ("notify", "admin_op", b""), ("flush", "", b""),
               ("notify", "admin_op", b""), ("notify", "sink", b"2"), ("call", "echo", b"3")]
    slow = run(False, container, actions, [], [], [], False)
    fast = run(True, container, actions, [], [], [], False, batched=True)
    assert expand(fast) == expand(slow)
    assert ("notified", "sink", b"2", {}) not in fast[0]
    assert ("Closing", "refused_calls") in fast[0]


def test_batched_notifications_come_as_one_event_per_run():
    client, server = established(True, 16 * 1024, batched=True)
    client.notify("sink", b"first")  # decided on the slow path, then cached
    server.receive_data(client.data_to_send(NOW), NOW)
    server.events()
    client.notify_many("sink", [b"%d" % i for i in range(300)])
    client.notify("echo", b"other")
    client.notify_many("sink", [b"a", b"b"])
    server.receive_data(client.data_to_send(NOW), NOW)
    events = [normal(e) for e in server.events()]
    assert events[0] == ("notified_batch", "sink", [b"%d" % i for i in range(300)], {})
    assert events[1:] == [("notified", "echo", b"other", {}),
                          ("notified_batch", "sink", [b"a", b"b"], {})]


def test_invoke_many_runs_every_body_and_survives_a_failing_handler():
    svc = Service("many")
    seen = []

    def handler(call, body):
        if body == b"bad":
            raise RuntimeError("boom")
        seen.append(body)

    svc.add("op", handler, roles=["shop"])
    op = svc.operations["op"]
    context = svc.call_context(op, frozenset({"shop"}), "peer")
    assert svc.invoke_many(op, context, [b"1", b"bad", b"2"]) is None
    assert seen == [b"1", b"2"]


def test_invoke_many_awaits_asynchronous_handlers_in_order():
    import asyncio

    svc = Service("many")
    seen = []

    async def handler(call, body):
        await asyncio.sleep(0)
        seen.append(body)

    svc.add("op", handler, roles=["shop"])
    op = svc.operations["op"]
    context = svc.call_context(op, frozenset({"shop"}), "peer")
    pending = svc.invoke_many(op, context, [b"1", b"2", b"3"])
    assert pending is not None
    asyncio.run(pending)
    assert seen == [b"1", b"2", b"3"]


def test_connections_of_one_service_share_one_operation_table():
    # A table is ~25 KiB of C memory: one per service, not per connection
    # (a Service is an unhashable dataclass: the cache must not need a hash).
    service = make_service()
    servers = []
    for _ in range(3):
        client, server = established(True, 16 * 1024, service=service)
        client.notify("sink", b"x")
        server.receive_data(client.data_to_send(NOW), NOW)
        servers.append(server)
    tables = {id(server._ops) for server in servers}
    assert len(tables) == 1 and servers[0]._ops is not None
    assert len(servers[0]._ops) == len(service.operations)


def test_a_client_parses_replies_to_its_calls_on_the_fast_path():
    client, server = established(True, 16 * 1024)
    call_id = client.call("echo", b"ping", timeout=None)
    server.receive_data(client.data_to_send(NOW), NOW)
    for event in server.events():
        if isinstance(event, CallReceived):
            server.reply(event.call_id, event.operation.name, event.body)
    client.receive_data(server.data_to_send(NOW), NOW)
    replies = [e for e in client.events() if isinstance(e, ReplyReceived)]
    assert [(r.call_id, r.body) for r in replies] == [(call_id, b"ping")]
    assert client._ops is not None and client._ops.find(b"echo") >= 0


def _reply_event(event: object) -> tuple:
    """A client event as comparable plain data (replies with id and body)."""
    if isinstance(event, ReplyReceived):
        return ("reply", event.call_id, event.body, dict(event.metadata))
    if isinstance(event, CallFailed):
        return ("failed", event.call_id, type(event.error).__name__, str(event.error))
    return normal(event)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(st.sampled_from(["echo", "admin_op", "nope", "echo_meta"]),
                      min_size=1, max_size=30),
       container=st.sampled_from([0, 64, 16 * 1024]),
       cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=8),
       close=st.booleans())
def test_a_client_gets_the_reply_events_of_the_decoder_path(calls, container, cuts, close):
    """Pipelined replies (responses, error replies, replies with metadata, a
    CLOSE after a refusal or at the end) in one chunk or cut anywhere: the
    client's fast path gives the events of its frame-decoder path, in order."""
    results = []
    for fast in (False, True):
        client, server = established(True, container, client_fast=fast)
        ids = [client.call(op, b"%d" % i, timeout=None) for i, op in enumerate(calls)]
        server.receive_data(client.data_to_send(NOW), NOW)
        for event in server.events():
            if isinstance(event, CallReceived):
                if event.operation.name == "echo_meta" and not server.closing:
                    server.queue_message(encode(CallMessage(
                        MessageType.RESPONSE, event.call_id, "echo_meta", event.body,
                        {"trace": b"t"})))
                    server.inflight -= 1
                else:
                    server.reply(event.call_id, event.operation.name, event.body)
        if close:
            server.begin_close("shutdown", NOW)
        data = server.data_to_send(NOW)
        positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for a, b in itertools.pairwise(positions):
            client.receive_data(data[a:b], NOW)
        results.append(([_reply_event(e) for e in client.events()], client.pending_calls,
                         client.ended))
        assert ids
    assert results[0] == results[1]


def _burst(client: Connection, bodies: list[bytes], sink: object) -> bytes:
    """What the client writes for a notify, a burst and a call (with
    ``sink``: the burst's batches as they are sealed, then the rest)."""
    pieces: list[bytes] = []
    client.notify("sink", b"queued before")  # shares the first batch
    if sink:
        client.notify_many("sink", bodies, sink=pieces.append)
        assert len(pieces) > 1
    else:
        client.notify_many("sink", bodies)
    client.call("echo", b"after", timeout=None)
    return b"".join(pieces) + client.data_to_send(NOW)


@pytest.mark.parametrize("container", [0, 16 * 1024])
def test_notify_many_with_a_sink_writes_the_same_frames_batch_by_batch(container):
    bodies = [os.urandom(n) for n in
              [16 * 1024] * 9 + [10, 200, 3000] * 30 + [16 * 1024, 70 * 1024, 5]]
    results = []
    for sink in (False, True):
        client, server = established(True, container, batched=True)
        data = _burst(client, bodies, sink)
        server.receive_data(data, NOW)
        bodies_seen = []
        for event in server.events():
            if isinstance(event, NotifiedBatch):
                bodies_seen += event.bodies
            elif isinstance(event, Notified):
                bodies_seen.append(event.body)
            elif isinstance(event, CallReceived):
                bodies_seen.append(("call", event.body))
        assert bodies_seen == [b"queued before", *bodies, ("call", b"after")]
        results.append([length for _, length in frames_of(data)])
    assert results[0] == results[1]  # the same records, cut the same way


def test_notify_many_with_a_sink_is_all_or_nothing():
    client, server = established(True, 16 * 1024)
    client.notify("sink", b"queued before")
    first = client.data_to_send(NOW)
    pieces: list[bytes] = []
    too_large = bytes(client.session.max_plaintext)
    with pytest.raises(RecordTooLarge):
        client.notify_many("sink", [bytes(70 * 1024)] * 4 + [too_large], sink=pieces.append)
    assert pieces == [] and client.data_to_send(NOW) == b""
    server.receive_data(first, NOW)
    assert [type(e) for e in server.events()] == [Notified]


LARGE_ACTIONS = st.lists(st.tuples(
    st.sampled_from(["notify", "notify", "call", "meta", "flush"]),
    st.sampled_from(["sink", "echo", "admin_op", "nope"]),
    st.sampled_from([0, 100, 4000, 5000, 16 * 1024, 40_000]).map(os.urandom)),
    min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=LARGE_ACTIONS, container=st.sampled_from([0, 16 * 1024]),
       cuts=st.lists(st.integers(min_value=0, max_value=1 << 18), max_size=6),
       tamper=st.sets(st.integers(min_value=0, max_value=12), max_size=2),
       batched=st.booleans())
def test_large_bodies_give_the_events_of_the_decoder_path(actions, container, cuts, tamper,
                                                          batched):
    # Batches averaging >= 4 KiB a message copy each body from the fast
    # path's buffer (not from one copy of it); other messages of the batch
    # still see one copy.
    slow = run(False, container, actions, cuts, tamper, [], False)
    fast = run(True, container, actions, cuts, tamper, [], False, batched=batched)
    assert expand(fast) == expand(slow)


def test_large_notification_bodies_are_bytes_of_their_own():
    client, server = established(True, 0, batched=True)
    bodies = [os.urandom(16 * 1024) for _ in range(5)]
    client.notify_many("sink", bodies)
    client.notify("sink", b"x" * 9000, metadata={"k": b"v"})  # slow, in the same chunk
    client.call("echo", b"y" * 9000, timeout=None)
    server.receive_data(client.data_to_send(NOW), NOW)
    events = server.events()
    seen = []
    for e in events:
        seen += e.bodies if isinstance(e, NotifiedBatch) else [e.body]
    assert seen == [*bodies, b"x" * 9000, b"y" * 9000]
    assert all(type(b) is bytes for b in seen)
    assert isinstance(events[-1], CallReceived) and any(isinstance(e, NotifiedBatch)
                                                         for e in events)
