"""In-band re-handshake (issue 14 §3; docs/PROTOCOL.md, "Re-handshake"):
fresh hybrid key exchange and role proofs inside the session, then both
directions switch keys without losing, duplicating or reordering messages;
late records of the old keys open during the grace period."""

from __future__ import annotations

import collections
import os
import sys

import pytest

from rolewire import errors
from rolewire.handshake import HandshakeConfig, Initiator, Responder
from rolewire.handshake.reasons import RejectReason
from rolewire.protocol.rehandshake import (
    ControlKind,
    Rehandshake,
    RehandshakeComplete,
    RehandshakeFailed,
    encode_control,
    parse_control,
)
from rolewire.roles import KeyRole, PasswordRole
from rolewire.transport import Path, ShufflingChannel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "handshake"))
from hs_util import FakeClock, pump

KEY = os.urandom(32)
PATHS = (Path(latency=0, jitter=40), Path(latency=20, jitter=300), Path(latency=5, jitter=600))


class Side:
    """One end: session + re-handshake driver + the channel it sends on."""

    def __init__(self, name, session, config, channel, **kw):
        self.name = name
        self.session = session
        self.rh = Rehandshake(session, config, **kw)
        self.out = channel
        self.received: list[bytes] = []
        self.rejected: list[Exception] = []
        self.events: list[object] = []

    def flush(self):
        for record in self.rh.records_to_send():
            self.out.send(record)
        while (event := self.rh.next_event()) is not None:
            self.events.append(event)

    def send(self, message: bytes):
        self.rh.poll()
        self.flush()
        self.out.send(self.session.seal(message))

    def receive(self, records):
        for record in records:
            try:
                plaintext = self.session.open(record)
            except errors.RecordError as exc:
                self.rejected.append(exc)
                continue
            if not self.rh.handle(plaintext):
                self.received.append(plaintext)
        self.flush()


def configs(password=False, clock=None):
    roles = [KeyRole("svc", KEY)]
    if password:
        roles.append(PasswordRole("ops", "correct horse battery staple"))
    extra = {"clock": clock} if clock is not None else {}
    return HandshakeConfig(roles=roles, grace_period=30, **extra)


IN_ORDER = (Path(latency=0, jitter=0),)


def linked(*, password=False, seed=0, paths=IN_ORDER, duplicate=0.0, clock=None, **kw):
    cfg = configs(password, clock)
    out = pump(Initiator(cfg), Responder(cfg))
    assert out.ok
    a = Side("a", out.initiator.session, cfg,
             ShufflingChannel(seed=seed, paths=paths, duplicate=duplicate), **kw)
    b = Side("b", out.responder.session, cfg,
             ShufflingChannel(seed=seed + 1, paths=paths, duplicate=duplicate), **kw)
    return a, b


def pump_sides(a, b):
    b.receive(a.out.deliver())
    a.receive(b.out.deliver())


def settle(a, b, rounds=20):
    for _ in range(rounds):
        b.receive(a.out.drain())
        a.receive(b.out.drain())


def exchange(a, b, count, *, start_at=None, starter=None, tag=b""):
    sent_a, sent_b = [], []
    for i in range(count):
        if i == start_at:
            starter.rh.start()
            starter.flush()
        m = tag + b"a%06d" % i
        sent_a.append(m)
        a.send(m)
        if i % 2 == 0:
            r = tag + b"b%06d" % i
            sent_b.append(r)
            b.send(r)
        pump_sides(a, b)
    return sent_a, sent_b


def exactly_once(sent, side):
    assert collections.Counter(side.received) == collections.Counter(sent)


@pytest.mark.parametrize("password", [False, True], ids=["3-messages", "4-messages"])
@pytest.mark.parametrize("starter", ["initiator", "responder"])
def test_rehandshake_switches_both_directions_in_order(password, starter):
    """In-order transport: every message arrives exactly once and in order,
    both directions end on generation 1 with new keys."""
    a, b = linked(password=password)
    old_transcript = a.session.transcript_hash
    sent_a, sent_b = exchange(a, b, 400, start_at=100, starter=a if starter == "initiator" else b)
    settle(a, b)
    assert b.received == sent_a and a.received == sent_b  # order kept
    for side in (a, b):
        assert side.session.generation == 1 and not side.rh.in_progress
        assert [type(e) for e in side.events] == [RehandshakeComplete]
        assert side.events[0].transcript_hash != old_transcript
        assert side.rejected == []
    assert a.events[0].transcript_hash == b.events[0].transcript_hash
    assert b.session.peer_roles == a.session.peer_roles == (
        {"svc", "ops"} if password else {"svc"})


def test_rehandshake_under_shuffling_and_duplicates():
    """Reordering and duplicates across the switch: exactly once; duplicates
    are refused as replays; late old-key records open in the grace period."""
    a, b = linked(paths=PATHS, duplicate=0.1, seed=7)
    sent_a, sent_b = exchange(a, b, 3000, start_at=500, starter=a)
    sent_a2, sent_b2 = exchange(a, b, 3000, start_at=700, starter=b, tag=b"2")
    settle(a, b)
    exactly_once(sent_a + sent_a2, b)
    exactly_once(sent_b + sent_b2, a)
    for side in (a, b):
        assert side.session.generation == 2
        assert all(isinstance(e, errors.ReplayDetected) for e in side.rejected)
    assert len(b.rejected) == a.out.duplicated
    assert len(a.rejected) == b.out.duplicated


def test_both_sides_start_at_once():
    a, b = linked(paths=PATHS, seed=3)
    a.rh.start()
    b.rh.start()
    a.flush()
    b.flush()
    sent_a, sent_b = exchange(a, b, 1500)
    settle(a, b)
    exactly_once(sent_a, b)
    exactly_once(sent_b, a)
    assert a.session.generation == b.session.generation == 1
    assert [type(e) for e in a.events] == [type(e) for e in b.events] == [RehandshakeComplete]


def test_interval_and_record_count_trigger():
    clock = FakeClock()
    a, b = linked(clock=clock, interval=3600, max_records=500)
    exchange(a, b, 100)
    assert a.session.generation == 0
    clock.now += 3600
    exchange(a, b, 50)
    settle(a, b)
    assert a.session.generation == b.session.generation == 1
    exchange(a, b, 600)  # a seals 600 records: the count triggers
    settle(a, b)
    assert a.session.generation == 2


def test_old_keys_close_after_the_grace_period():
    clock = FakeClock()
    a, b = linked(clock=clock)
    late = a.session.seal(b"late old-key record")
    a.rh.start()
    a.flush()
    settle(a, b)
    assert a.session.generation == b.session.generation == 1
    b.receive([late])
    assert b.received == [b"late old-key record"]  # within the grace period
    late2 = late[:6] + (1000).to_bytes(8, "big") + late[14:]  # forged counter
    b.receive([late2])
    assert isinstance(b.rejected[-1], errors.AuthenticationFailed)
    clock.now += 31
    exchange(a, b, 2)
    b.receive([late])
    assert isinstance(b.rejected[-1], (errors.UnknownEpoch, errors.ReplayDetected))


def test_rehandshake_fails_when_the_peer_cannot_prove_its_role_again():
    a, b = linked()
    # b's key role changed (rotated without telling a): the re-handshake
    # cannot verify it, and both sides report a failure.
    b.rh.config = HandshakeConfig(roles=[KeyRole("svc", os.urandom(32))])
    a.rh.start()
    a.flush()
    settle(a, b)
    assert any(isinstance(e, RehandshakeFailed) for e in a.events + b.events)
    assert a.session.generation == b.session.generation == 0
    assert not a.session.switch_pending and not b.session.switch_pending
    # the old keys still work (the adapter would close the connection)
    exchange(a, b, 3)
    assert b.received[-1] == b"a000002"


def test_rehandshake_is_bound_to_the_session():
    """The new transcript starts from the old one: a re-handshake answered
    from within another session (same roles) fails with DECRYPT_ERROR."""
    a, b = linked()
    c, d = linked()
    a.rh.start()
    hello = a.rh.records_to_send()
    kind, next_epoch, data = parse_control(b.session.open(hello[0]))
    assert kind == ControlKind.FLIGHT
    # d answers a's Hello as if it came from its own peer
    assert d.rh.handle(encode_control(kind, next_epoch, data))
    answer = d.rh.records_to_send()
    reply = c.session.open(answer[0])
    assert a.rh.handle(reply)
    event = a.rh.next_event()
    assert isinstance(event, RehandshakeFailed)
    assert event.reason == RejectReason.DECRYPT_ERROR
    assert a.session.generation == 0 and not a.session.switch_pending


@pytest.mark.parametrize("bad", [
    b"\x07",
    encode_control(ControlKind.FLIGHT, 5),          # flight without data
    encode_control(ControlKind.SWITCH, 5, b"x"),    # switch with data
    encode_control(9, 5, b"x"),                     # unknown kind
    b"\x07" + bytes(8) + b"\x01x" + bytes(5),       # operation name set
])
def test_malformed_control_messages_are_protocol_violations(bad):
    a, _b = linked()
    with pytest.raises(errors.ProtocolViolation):
        a.rh.handle(bad)


def test_application_messages_pass_through():
    a, _b = linked()
    assert parse_control(b"\x01" + bytes(9)) is None
    assert a.rh.handle(b"\x02 anything") is False


def test_flight_announcing_an_old_epoch_is_refused():
    a, b = linked()
    b.session.seal(b"x")
    a.rh.start()
    records = a.rh.records_to_send()
    kind, _epoch, data = parse_control(b.session.open(records[0]))
    with pytest.raises(errors.ProtocolViolation):
        b.rh.handle(encode_control(kind, 0, data))


def test_unexpected_flight_without_a_rehandshake_is_refused():
    a, _b = linked()
    with pytest.raises(errors.ProtocolViolation):
        a.rh.handle(encode_control(ControlKind.FLIGHT, 9, b"\x04\x00\x00\x00"))


def test_reject_code_of_a_failed_rehandshake():
    a, b = linked()
    b.rh.config = HandshakeConfig(roles=[KeyRole("other", os.urandom(32))])
    a.rh.start()
    a.flush()
    settle(a, b)
    failures = [e for e in a.events + b.events if isinstance(e, RehandshakeFailed)]
    assert failures and failures[0].reason == RejectReason.NO_SHARED_ROLE


def test_rehandshake_over_tcp_with_traffic_both_ways():
    """Real sockets (asyncio, 127.0.0.1), records in wire frames, both sides
    sending while the responder side starts a re-handshake: in order,
    exactly once, generation 1 on both ends."""
    import asyncio

    from rolewire.protocol.wire import FrameDecoder, FrameKind, encode_frame

    cfg = configs(password=True)
    out = pump(Initiator(cfg), Responder(cfg))
    assert out.ok
    count = 600

    async def run_side(session, reader, writer, tag, start_at):
        rh = Rehandshake(session, cfg)
        received: list[bytes] = []
        events: list[object] = []
        decoder = FrameDecoder()
        peer_done = asyncio.Event()

        def flush():
            for record in rh.records_to_send():
                writer.write(encode_frame(FrameKind.RECORD, record))
            while (event := rh.next_event()) is not None:
                events.append(event)

        async def sender():
            for i in range(count):
                if i == start_at:
                    rh.start()
                rh.poll()
                flush()
                writer.write(encode_frame(FrameKind.RECORD, session.seal(tag + b"%05d" % i)))
                if i % 16 == 0:
                    await writer.drain()
                    await asyncio.sleep(0)
            writer.write(encode_frame(FrameKind.RECORD, session.seal(b"END")))
            await writer.drain()

        async def receiver():
            while not peer_done.is_set():
                data = await reader.read(65536)
                if not data:
                    break
                for _kind, payload in decoder.feed(data):
                    plaintext = session.open(payload)
                    if rh.handle(plaintext):
                        continue
                    if plaintext == b"END":
                        peer_done.set()
                    else:
                        received.append(plaintext)
                flush()
                await writer.drain()

        await asyncio.gather(sender(), receiver())
        # let the last control records out before closing
        flush()
        await writer.drain()
        return received, events, session

    async def main():
        results = {}
        server_done = asyncio.Event()

        async def on_client(reader, writer):
            results["server"] = await run_side(out.responder.session, reader, writer, b"S", 150)
            server_done.set()
            await asyncio.sleep(0.05)
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        results["client"] = await run_side(out.initiator.session, reader, writer, b"C", -1)
        await asyncio.wait_for(server_done.wait(), 60)
        writer.close()
        server.close()
        await server.wait_closed()
        return results

    results = asyncio.run(asyncio.wait_for(main(), 120))
    client_got, client_events, client_session = results["client"]
    server_got, server_events, server_session = results["server"]
    assert client_got == [b"S%05d" % i for i in range(count)]
    assert server_got == [b"C%05d" % i for i in range(count)]
    assert [type(e) for e in client_events] == [RehandshakeComplete]
    assert [type(e) for e in server_events] == [RehandshakeComplete]
    # the server (re-initiator) completed on reading ResponderAuth and
    # switched at once; the client switched on the server's SWITCH, which
    # TCP delivered before the server's END
    assert client_session.generation == server_session.generation == 1


# -- wired into the sans-IO Connection ------------------------------------------------


def _connection_pair(**kw):
    from tests.test_connection import established

    return established(**kw)


@pytest.mark.parametrize("who", ["client", "server"])
def test_connection_rehandshake_on_demand_with_calls_in_flight(who):
    from rolewire.protocol import Rehandshaked, ReplyReceived

    pair = _connection_pair()
    ids = [pair.client.call("echo", b"before %d" % i) for i in range(5)]
    getattr(pair, who).rehandshake()
    ids += [pair.client.call("echo", b"during %d" % i) for i in range(5)]
    pair.pump(20)
    ids += [pair.client.call("echo", b"after %d" % i) for i in range(5)]
    pair.pump(20)
    replies = {e.call_id: e.body for e in pair.client_events if isinstance(e, ReplyReceived)}
    assert sorted(replies) == sorted(ids)
    for events, conn in ((pair.client_events, pair.client), (pair.server_events, pair.server)):
        (done,) = [e for e in events if isinstance(e, Rehandshaked)]
        assert done.generation == 1 and done.peer_roles == {"shop"}
        assert conn.session.generation == 1 and conn.established
    assert pair.client.session.send_epoch >= 1 and pair.server.session.recv_epoch >= 1


def test_connection_rehandshake_by_record_count():
    from rolewire.protocol import ConnectionSettings, Rehandshaked

    settings = ConnectionSettings(rehandshake_records=50)
    pair = _connection_pair(client_settings=settings)
    for i in range(120):
        pair.client.notify("sink", b"%d" % i)
        pair.pump(3)
    assert [e.generation for e in pair.client_events if isinstance(e, Rehandshaked)] == [1, 2]


def test_connection_fails_when_the_rehandshake_fails():
    from rolewire.protocol import Failed

    pair = _connection_pair()
    # the server's key for "shop" changed since the connection was opened
    pair.server._rehandshake.config = HandshakeConfig(roles=[KeyRole("shop", os.urandom(32))])
    pair.client.rehandshake()
    pair.pump(20)
    failed = [e for e in pair.client_events + pair.server_events if isinstance(e, Failed)]
    assert failed and all(e.reason.startswith("rehandshake_") for e in failed)


def test_connection_malformed_control_message_fails_it():
    from rolewire.protocol import Failed

    pair = _connection_pair()
    pair.client._queue(encode_control(ControlKind.SWITCH, 1, b"junk"))
    pair.pump()
    (failed,) = [e for e in pair.server_events if isinstance(e, Failed)]
    assert isinstance(failed.error, errors.ProtocolViolation)


def test_connection_rehandshake_counts_records_sealed_by_the_fast_path():
    """Batches sealed through the native container path count toward the
    record trigger too, and the switch keeps every message."""
    from rolewire.protocol import ConnectionSettings, Rehandshaked

    settings = ConnectionSettings(rehandshake_records=40, container_bytes=64)
    pair = _connection_pair(client_settings=settings)
    for burst in range(10):
        for i in range(30):
            pair.client.notify("sink", b"burst %d message %d" % (burst, i))
        pair.pump(5)
    generations = [e.generation for e in pair.client_events if isinstance(e, Rehandshaked)]
    assert generations and generations == list(range(1, len(generations) + 1))
    assert pair.client.established and pair.server.established
    from rolewire.protocol import Notified

    bodies = [e.body for e in pair.server_events if isinstance(e, Notified)]
    assert bodies == [b"burst %d message %d" % (b, i) for b in range(10) for i in range(30)]


def test_wanted_before_send_is_in_progress_or_due():
    """What the connection asks per batch (wanted_before_send, with the
    session clock's now) agrees with in_progress or due() at every send of
    a run with time and count triggers and a re-handshake in between."""
    clock = FakeClock()
    a, b = linked(clock=clock, interval=3600, max_records=300)
    seen = set()
    for step in range(900):
        if step in (100, 500):
            clock.now += 3600
        for side in (a, b):
            rh = side.rh
            wanted = rh.wanted_before_send(clock.now)
            assert wanted == (rh.in_progress or rh.due())
            seen.add(wanted)
        a.send(b"a%06d" % step)
        if step % 2 == 0:
            b.send(b"b%06d" % step)
        pump_sides(a, b)
    settle(a, b)
    assert seen == {True, False} and a.session.generation >= 2
