"""rolewire.aio over real loopback sockets: calls, notifications, typed
errors, limits, timeouts, misbehaving peers, graceful close, counters and
log events. (asyncio.run inside plain tests: no pytest-asyncio.)"""

from __future__ import annotations

import asyncio
import logging
import os
import struct

import pytest

from rolewire import errors
from rolewire.aio import FrameDecoder, FrameKind, connect, serve
from rolewire.aio.framing import encode_frame, encode_records
from rolewire.handshake import (
    DEFAULT_SUITES,
    HandshakeConfig,
    HandshakeLimiter,
    Initiator,
    RejectReason,
)
from rolewire.record import RecordLimits
from rolewire.roles.key import KeyRole
from rolewire.rpc import CallMessage, MessageType, decode, encode
from rolewire.services import UNRESTRICTED, Service

SHOP_KEY = os.urandom(32)
PAYMENT_KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)

SERVER_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY), KeyRole("payment", PAYMENT_KEY)])
SHOP_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)])
PAYMENT_CFG = HandshakeConfig(roles=[KeyRole("payment", PAYMENT_KEY)])


def run(coro, timeout: float = 20.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def make_service():
    svc = Service("payment")
    svc.seen_roles = []
    svc.stream = []
    svc.gate = None

    @svc.operation("charge", roles=["payment"])
    def charge(call, body):
        svc.seen_roles.append(call.peer_roles)
        return b"charged:" + body

    @svc.operation("whoami", roles=["shop", "payment"])
    async def whoami(call, body):
        return ",".join(sorted(call.peer_roles)).encode()

    @svc.operation("slow", roles=UNRESTRICTED)
    async def slow(call, body):
        await asyncio.sleep(float(body or b"0.2"))
        return b"slow:" + body

    @svc.operation("wait", roles=UNRESTRICTED)
    async def wait(call, body):
        await svc.gate.wait()
        return b"released"

    @svc.operation("sink", roles=UNRESTRICTED)
    def sink(call, body):
        svc.stream.append(body)

    @svc.operation("count", roles=UNRESTRICTED)
    def count(call, body):
        return b"%d" % len(svc.stream)

    @svc.operation("boom", roles=UNRESTRICTED)
    def boom(call, body):
        raise RuntimeError("secret detail")

    return svc


async def raw_connect(port):
    return await asyncio.open_connection("127.0.0.1", port)


async def read_frames(reader, timeout=5.0):
    """Every frame until EOF."""
    decoder = FrameDecoder()
    frames = []
    while True:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        if not data:
            return frames
        frames.extend(decoder.feed(data))


def reject_code(frames):
    (kind, payload), = [f for f in frames if f[0] is FrameKind.HANDSHAKE][-1:]
    assert kind is FrameKind.HANDSHAKE and payload[0] == 0x0F  # Reject
    return payload[-1]


# -- calls ----------------------------------------------------------------------------


def test_request_response_with_roles_on_both_sides():
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            async with connect("127.0.0.1", server.port, PAYMENT_CFG) as channel:
                assert channel.peer_roles == {"payment"}
                assert await channel.call("charge", b"10") == b"charged:10"
                assert await channel.call("whoami") == b"payment"
                assert channel.session.transcript_hash and len(channel.session.transcript_hash) == 64
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                assert channel.peer_roles == {"shop"}
                assert await channel.call("whoami") == b"shop"
                with pytest.raises(errors.Forbidden) as info:
                    await channel.call("charge", b"10")
                assert info.value.operation == "charge" and info.value.code == 1
                assert "payment" not in str(info.value)  # no role name (issue 11 s. 3)
                # An unknown operation looks the same as a refused one.
                with pytest.raises(errors.Forbidden) as unknown:
                    await channel.call("nope")
                assert str(unknown.value) == str(info.value)
                err = await asyncio.gather(channel.call("boom"), return_exceptions=True)
                assert type(err[0]) is errors.RemoteCallError and "secret" not in str(err[0])
                # The session survives refused calls.
                assert await channel.call("whoami") == b"shop"
            return server.stats

    stats = run(main())
    assert svc.seen_roles == [frozenset({"payment"})]
    assert stats.sessions_total == 2 and stats.sessions_open == 0
    assert stats.forbidden_calls == 2 and stats.requests == 7  # "charge" and "nope"
    assert stats.records_opened >= 7 and stats.records_sealed >= 7
    assert stats.handshakes_failed == 0


def test_concurrent_calls_on_one_channel():
    svc = make_service()

    async def main():
        async with (
            serve(svc, SERVER_CFG) as server,
            connect("127.0.0.1", server.port, PAYMENT_CFG) as channel,
        ):
            bodies = [b"%d" % i for i in range(300)]
            replies = await asyncio.gather(*(channel.call("charge", b) for b in bodies))
            assert replies == [b"charged:" + b for b in bodies]
            # async handlers run concurrently: 20 x 0.2 s in well under 4 s
            loop = asyncio.get_running_loop()
            start = loop.time()
            slow = await asyncio.gather(*(channel.call("slow", b"0.2") for _ in range(20)))
            assert slow == [b"slow:0.2"] * 20 and loop.time() - start < 2.0

    run(main())


def test_notify_stream_arrives_complete_and_in_order():
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                for i in range(10_000):
                    await channel.notify("sink", b"n%05d" % i)
                await channel.send_many("sink", [b"m%05d" % i for i in range(10_000)])
                # A request after them is answered after they were handled.
                assert await channel.call("count") == b"20000"
                sealed = channel.session.counters.records_sealed
            return server.stats, sealed

    stats, sealed = run(main())
    assert svc.stream == [b"n%05d" % i for i in range(10_000)] + [b"m%05d" % i for i in range(10_000)]
    assert stats.notifications == 20_000
    # TCP is ordered: the messages of one flush travel in CONTAINER records.
    assert sealed < 1000 and stats.records_opened == sealed + 1  # + the CLOSE


def test_coalescing_uses_few_writes():
    """Many notifications issued in one loop iteration leave in one write."""
    svc = make_service()

    async def main():
        async with (
            serve(svc, SERVER_CFG) as server,
            connect("127.0.0.1", server.port, SHOP_CFG) as channel,
        ):
            writes = []
            transport = channel._writer.transport
            real_write = transport.write
            transport.write = lambda data: (writes.append(len(data)), real_write(data))
            await asyncio.gather(*(channel.notify("sink", b"x" * 10) for _ in range(500)))
            await channel.send_many("sink", [b"y" * 10] * 500)
            assert await channel.call("count") == b"1000"
            transport.write = real_write
            return writes

    writes = run(main())
    # 500 notifies, one send_many, one call (and CLOSE later)
    assert 3 <= len(writes) <= 4


def test_a_lone_call_leaves_at_once_and_calls_issued_together_share_a_write():
    """flush_first: a lone call is written inside call() (no wait for the
    iteration's end); calls queued while others are outstanding leave
    together at the iteration's end, for every connection."""
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            channels = [await connect("127.0.0.1", server.port, SHOP_CFG) for _ in range(3)]
            writes: list[list[int]] = []

            def counting(real, log):
                def write(data):
                    log.append(len(data))
                    real(data)
                return write

            for channel in channels:
                transport = channel._writer.transport
                writes.append([])
                transport.write = counting(transport.write, writes[-1])
            first = asyncio.ensure_future(channels[0].call("count", b"a"))
            await asyncio.sleep(0)  # the task ran up to its await: written already
            assert len(writes[0]) == 1
            assert await first == b"0"
            for log in writes:
                log.clear()
            replies = await asyncio.gather(*(c.call("count", b"%d" % i)
                                             for c in channels for i in range(16)))
            assert replies == [b"0"] * 48
            counts = [len(log) for log in writes]
            for channel in channels:
                await channel.close()
            return counts

    # The first call at once (it is lone), the other 15 in one write.
    assert run(main()) == [2, 2, 2]


def test_callers_woken_by_one_chunk_call_again_in_one_write():
    """Pipelining callers (each awaits its reply, then calls again): when one
    chunk brings several replies, the callers it wakes call in the same loop
    iteration, and the first of them is not taken for a lone call. Their
    calls leave together in one write, not one call at once and the rest at
    the iteration's end (a write, and a read on the server, more per round)."""
    svc = Service("held")
    gate = asyncio.Event()
    arrived = []

    @svc.operation("hold", roles=UNRESTRICTED)
    async def hold(call, body):
        # Both handlers return in one loop iteration: one server write.
        arrived.append(body)
        if len(arrived) == 2:
            gate.set()
            await asyncio.sleep(0)
        await gate.wait()
        return body

    @svc.operation("echo", roles=UNRESTRICTED)
    def echo(call, body):
        return body

    async def main():
        async with (
            serve(svc, SERVER_CFG) as server,
            connect("127.0.0.1", server.port, SHOP_CFG) as channel,
        ):
            writes: list[int] = []
            transport = channel._writer.transport
            real_write = transport.write

            def write(data):
                writes.append(len(data))
                real_write(data)

            transport.write = write

            async def caller(tag):
                first = await channel.call("hold", tag)
                return first, await channel.call("echo", tag)

            results = await asyncio.gather(caller(b"0"), caller(b"1"))
            transport.write = real_write
            return results, writes

    results, writes = run(main())
    assert results == [(b"0", b"0"), (b"1", b"1")]
    # hold: one lone write, one at the iteration's end; echo: both in one.
    assert len(writes) == 3


def test_oversized_message_is_a_typed_error_at_the_sender():
    svc = make_service()
    small = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)],
                            record_limits=RecordLimits(max_plaintext=1024))

    async def main():
        async with (
            serve(svc, SERVER_CFG) as server,
            connect("127.0.0.1", server.port, small) as channel,
        ):
            with pytest.raises(errors.RecordTooLarge):
                await channel.call("sink", b"x" * 2000)
            with pytest.raises(errors.RecordTooLarge):
                await channel.notify("sink", b"x" * 2000)
            with pytest.raises(errors.RecordTooLarge):
                await channel.send_many("sink", [b"ok", b"x" * 2000])
            # Nothing was sent; the channel still works.
            assert await channel.call("count") == b"0"
            big = await channel.call("slow", b"0.01")
            assert big == b"slow:0.01"

    run(main())


def test_large_messages_roundtrip():
    svc = make_service()

    async def main():
        async with (
            serve(svc, SERVER_CFG) as server,
            connect("127.0.0.1", server.port, SHOP_CFG) as channel,
        ):
            blob = os.urandom(1 << 20 - 1)
            await channel.send_many("sink", [blob[: 1 << 19], blob])
            await channel.notify("sink", blob[:1000])
            assert await channel.call("count") == b"3"
            with pytest.raises(errors.RecordTooLarge):
                await channel.notify("sink", b"x" * (1 << 20))
        return blob

    blob = run(main())
    assert svc.stream == [blob[: 1 << 19], blob, blob[:1000]]


# -- handshake outcomes ----------------------------------------------------------------


def test_no_shared_role_is_rejected():
    svc = make_service()
    stranger = HandshakeConfig(roles=[KeyRole("shop", OTHER_KEY)])

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            with pytest.raises(errors.HandshakeError):
                await connect("127.0.0.1", server.port, stranger)
            await asyncio.sleep(0.05)
            # ... and the server still serves others.
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                assert await channel.call("whoami") == b"shop"
            return server.stats

    stats = run(main())
    assert stats.handshakes_failed == 1 and stats.sessions_total == 1


def test_late_reject_of_message_three_reaches_the_caller():
    """The initiator completes after queueing message 3; the responder may
    still reject it (here: a required role is missing)."""
    svc = make_service()
    strict = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY), KeyRole("payment", PAYMENT_KEY)],
                             required_peer_roles={"payment"})

    async def main():
        async with serve(svc, strict) as server:
            channel = await connect("127.0.0.1", server.port, SHOP_CFG)
            with pytest.raises(errors.HandshakeRejected) as info:
                await channel.call("whoami")
            # protocol 2: every authentication failure is AUTH_FAILED on the wire
            assert info.value.reason_code == RejectReason.AUTH_FAILED
            with pytest.raises(errors.HandshakeRejected):
                await channel.call("whoami")
            await channel.close()
            assert channel.closed
            return server.stats

    stats = run(main())
    assert stats.handshakes_failed == 1 and stats.sessions_total == 0


def test_max_connections_gives_busy():
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG, max_connections=2) as server:
            a = await connect("127.0.0.1", server.port, SHOP_CFG)
            b = await connect("127.0.0.1", server.port, SHOP_CFG)
            with pytest.raises(errors.HandshakeRejected) as info:
                await connect("127.0.0.1", server.port, SHOP_CFG)
            assert info.value.reason_code == RejectReason.BUSY
            assert await a.call("whoami") == b"shop"
            await a.close()
            await asyncio.sleep(0.05)
            c = await connect("127.0.0.1", server.port, SHOP_CFG)  # the slot is free again
            assert await c.call("whoami") == b"shop"
            await b.close()
            await c.close()
            return server.stats

    stats = run(main())
    assert stats.busy_rejects == 1 and stats.sessions_total == 3


def test_handshake_limiter_bounds_half_open_handshakes():
    """A silent connection holds no handshake slot (it gets TIMEOUT after the
    first-byte deadline); when the handshake table is full, the oldest
    half-open handshake is evicted for the new one instead of the new one
    getting BUSY (issue 11 s.4; tests/test_dos_server.py has the rest)."""
    svc = make_service()
    limiter = HandshakeLimiter(max_pending=1, max_per_peer=1)

    async def main():
        async with serve(svc, SERVER_CFG, limiter=limiter, handshake_timeout=0.4) as server:
            r, w = await raw_connect(server.port)
            await asyncio.sleep(0.05)
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                assert await channel.call("whoami") == b"shop"
            frames = await read_frames(r)
            assert reject_code(frames) == RejectReason.TIMEOUT
            w.close()
            # A stalled handshake (half a Hello) holds the only slot ...
            r, w = await raw_connect(server.port)
            w.write(_hello_frame()[:20])
            await w.drain()
            while limiter.pending == 0:
                await asyncio.sleep(0.01)
            # ... and is evicted for the next handshake.
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                assert await channel.call("whoami") == b"shop"
            try:
                assert await read_frames(r) == []
            except ConnectionError:
                pass  # cut with a reset
            w.close()
            assert limiter.pending == 0
            return server.stats

    stats = run(main())
    assert stats.handshake_timeouts == 1 and stats.evictions == 1 and stats.busy_rejects == 0
    assert limiter.pending == 0


# -- misbehaving peers -----------------------------------------------------------------


def _hello_frame():
    return encode_frame(FrameKind.HANDSHAKE, Initiator(SHOP_CFG).data_to_send())


def test_misbehaving_peers_do_not_hurt_the_server():
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG, handshake_timeout=0.5) as server:
            async with connect("127.0.0.1", server.port, SHOP_CFG) as good:
                # 1. disconnect mid-frame
                r, w = await raw_connect(server.port)
                hello = _hello_frame()
                w.write(hello[: len(hello) // 2])
                await w.drain()
                w.close()
                # 2. disconnect mid-handshake (after the responder's reply)
                r, w = await raw_connect(server.port)
                w.write(hello)
                decoder = FrameDecoder()
                got = []
                while not got:
                    got = decoder.feed(await r.read(65536))
                assert got[0][0] is FrameKind.HANDSHAKE
                w.close()
                # 3. garbage bytes (not even a frame)
                r, w = await raw_connect(server.port)
                w.write(b"\xff" * 64 + os.urandom(200))
                assert await read_frames(r) == []  # closed without a word
                w.close()
                # 4. garbage inside a handshake frame: the handshake rejects it
                r, w = await raw_connect(server.port)
                w.write(encode_frame(FrameKind.HANDSHAKE, b"\x01\x00\x00\x05hello"))
                assert reject_code(await read_frames(r)) == RejectReason.DECODE_ERROR
                w.close()
                # 5. a record before the handshake
                r, w = await raw_connect(server.port)
                w.write(encode_frame(FrameKind.RECORD, b"\x01" * 40))
                assert await read_frames(r) == []
                w.close()
                # 6. a stalled peer
                r, w = await raw_connect(server.port)
                # ... meanwhile the good channel and new clients work.
                assert await good.call("whoami") == b"shop"
                async with connect("127.0.0.1", server.port, SHOP_CFG) as other:
                    assert await other.call("whoami") == b"shop"
                assert reject_code(await read_frames(r)) == RejectReason.TIMEOUT
                w.close()
                assert await good.call("whoami") == b"shop"
            await asyncio.sleep(0.1)
            return server.stats, server.limiter.pending

    stats, pending = run(main())
    assert pending == 0
    assert stats.handshakes_failed == 6 and stats.handshake_timeouts == 1
    assert stats.protocol_errors == 2 and stats.sessions_total == 2
    assert stats.connections_open == 0


def test_bad_records_are_dropped_then_the_connection_is_cut():
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                record = channel.session.seal(encode(CallMessage(MessageType.NOTIFY, 0, "sink",
                                                                 b"forged")))
                forged = record[:-1] + bytes([record[-1] ^ 1])
                channel._writer.write(encode_records([forged] * 5 + [record, record]))
                # forged records and the replay are dropped; the session goes on
                assert await channel.call("count") == b"1"
                assert server.stats.auth_failures == 5 and server.stats.replays_rejected == 1
                fresh = channel.session.seal(b"x" * 20)
                forged = fresh[:-1] + bytes([fresh[-1] ^ 1])
                channel._writer.write(encode_records([forged] * 120))
                with pytest.raises(errors.ConnectionClosed):
                    await channel.call("count", timeout=5)
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                assert await channel.call("count") == b"1"
            return server.stats

    stats = run(main())
    assert stats.auth_failures == 125 and stats.protocol_errors == 1


def test_garbage_frame_after_handshake_closes_only_that_connection():
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            other = await connect("127.0.0.1", server.port, SHOP_CFG)
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                assert await channel.call("whoami") == b"shop"
                channel._writer.write(struct.pack(">IB", 3, 9) + b"zz")
                with pytest.raises(errors.ConnectionClosed):
                    await channel.call("count", timeout=5)
            assert await other.call("whoami") == b"shop"
            await other.close()
            return server.stats

    stats = run(main())
    assert stats.protocol_errors == 1 and stats.sessions_total == 2


# -- timeouts and closing ----------------------------------------------------------------


def test_idle_timeout_closes_the_session():
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG, idle_timeout=0.3) as server:
            channel = await connect("127.0.0.1", server.port, SHOP_CFG)
            assert await channel.call("whoami") == b"shop"
            # a call that takes longer than the idle timeout is not idle
            assert await channel.call("slow", b"0.5") == b"slow:0.5"
            await asyncio.sleep(0.7)
            assert channel.closed
            with pytest.raises(errors.ConnectionClosed):
                await channel.call("whoami")
            await channel.close()
            return server.stats

    stats = run(main())
    assert stats.idle_closes == 1 and stats.sessions_open == 0


def test_client_close_waits_for_pending_calls():
    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            channel = await connect("127.0.0.1", server.port, SHOP_CFG)
            calls = [asyncio.ensure_future(channel.call("slow", b"0.3")) for _ in range(5)]
            await asyncio.sleep(0)
            await channel.close()
            assert [c.result() for c in calls] == [b"slow:0.3"] * 5
            assert channel.closed
            with pytest.raises(errors.ConnectionClosed):
                await channel.call("whoami")
            await channel.close()  # idempotent
            await asyncio.sleep(0.05)
            return server.stats

    stats = run(main())
    assert stats.sessions_open == 0 and stats.requests == 5


def test_server_close_finishes_running_calls():
    svc = make_service()

    async def main():
        svc.gate = asyncio.Event()
        server = await serve(svc, SERVER_CFG)
        port = server.port
        channel = await connect("127.0.0.1", port, SHOP_CFG)
        calls = [asyncio.ensure_future(channel.call("wait")) for _ in range(3)]
        await asyncio.sleep(0.1)
        server.close()
        await asyncio.sleep(0.05)
        svc.gate.set()
        await server.wait_closed()
        assert [c.result() for c in calls] == [b"released"] * 3
        await asyncio.sleep(0.05)
        assert channel.closed
        with pytest.raises(errors.ConnectionClosed):
            await channel.call("whoami")
        await channel.close()
        with pytest.raises(OSError):
            await connect("127.0.0.1", port, SHOP_CFG)
        return server.stats

    stats = run(main())
    assert stats.sessions_open == 0 and stats.connections_open == 0


def test_call_timeout():
    svc = make_service()

    async def main():
        async with (
            serve(svc, SERVER_CFG) as server,
            connect("127.0.0.1", server.port, SHOP_CFG) as channel,
        ):
            with pytest.raises(asyncio.TimeoutError):
                await channel.call("slow", b"1.0", timeout=0.1)
            assert channel.pending_calls == 0
            # the late reply is ignored
            assert await channel.call("whoami") == b"shop"

    run(main())


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_call_that_cannot_be_sealed_fails_at_once(pipelined):
    """The session closed itself (its integrity limit) under the channel: the
    next call raises the record layer's error instead of waiting for a reply
    that was never sent, alone or with others outstanding."""
    svc = make_service()

    async def main():
        async with (
            serve(svc, SERVER_CFG) as server,
            connect("127.0.0.1", server.port, SHOP_CFG) as channel,
        ):
            assert await channel.call("whoami") == b"shop"
            other = (asyncio.ensure_future(channel.call("slow", b"0.5")) if pipelined
                     else None)
            await asyncio.sleep(0)
            channel.connection.session.close()
            with pytest.raises(errors.RecordLayerClosed):
                await channel.call("whoami")
            if other is not None:
                with pytest.raises(errors.RolewireError):
                    await other
            assert channel.closed

    run(main(), timeout=10.0)


def test_a_server_that_cannot_seal_its_reply_closes_the_connection():
    """Only the server's sending side closed under one connection (hazmat, C
    record layer): sealing the reply fails that connection, and the server
    closes it at once (the caller gets an error, not a wait for its call
    timeout); the server goes on serving others."""
    from rolewire.record._c import CRecordLayer, lib

    svc = make_service()

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            async with connect("127.0.0.1", server.port, PAYMENT_CFG) as channel:
                assert await channel.call("charge", b"1") == b"charged:1"  # (sync handler)
                (served,) = server._established
                layer = served.conn.session.record_layer
                if not isinstance(layer, CRecordLayer):
                    pytest.skip("needs the C record layer (ROLEWIRE_PURE=1)")
                lib.rw_sender_close(layer._sender)
                with pytest.raises(errors.ConnectionClosed):
                    await channel.call("charge", b"2")
            async with connect("127.0.0.1", server.port, PAYMENT_CFG) as other:
                assert await other.call("charge", b"3") == b"charged:3"

    run(main(), timeout=20.0)


def test_client_handshake_timeout_against_a_silent_server():
    async def silent(reader, writer):
        try:
            await asyncio.sleep(5)
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(errors.HandshakeTimeout):
            await connect("127.0.0.1", port, SHOP_CFG, timeout=0.3)
        assert loop.time() - start < 2
        server.close()
        await server.wait_closed()

    run(main())


# -- observability -------------------------------------------------------------------------


def test_rekeys_and_log_events(caplog):
    svc = make_service()
    rekeying = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)],
                               record_limits=RecordLimits(soft_messages=3),
                               # Containers: 1000 messages are ~11 records.
                               min_epoch_records=1)
    caplog.set_level(logging.DEBUG, logger="rolewire")

    async def main():
        async with serve(svc, SERVER_CFG) as server:
            async with connect("127.0.0.1", server.port, rekeying) as channel:
                for start in range(0, 1000, 100):
                    await channel.send_many("sink", [b"secret-body-%d" % i
                                                     for i in range(start, start + 100)])
                assert await channel.call("count") == b"1000"
                assert channel.session.counters.rekeys >= 3
                th = channel.session.transcript_hash
            await asyncio.sleep(0.05)
            return th

    th = run(main())
    events = [r for r in caplog.records if r.name == "rolewire.aio"]
    by_event = {}
    for record in events:
        by_event.setdefault(getattr(record, "event", None), []).append(record)
    done = by_event["handshake_complete"]
    assert {r.side for r in done} == {"initiator", "responder"}
    for record in done:
        assert record.transcript == th[:4].hex() and len(record.transcript) == 8
        assert record.suite == DEFAULT_SUITES[0].wire_name
        assert record.peer.startswith("127.0.0.1:")
        assert record.peer_roles == ["shop"]
    assert {r.direction for r in by_event["rekey"]} == {"send", "receive"}
    assert len(by_event["session_closed"]) == 2
    text = "\n".join(str(r.__dict__) for r in caplog.records)
    assert "secret-body" not in text and th.hex() not in text


def test_handshake_failed_is_logged(caplog):
    svc = make_service()
    caplog.set_level(logging.INFO, logger="rolewire.aio")

    async def main():
        async with serve(svc, SERVER_CFG, handshake_timeout=0.2) as server:
            r, w = await raw_connect(server.port)
            await read_frames(r)
            w.close()

    run(main())
    failed = [r for r in caplog.records if getattr(r, "event", "") == "handshake_failed"]
    assert failed and failed[0].reason == "TIMEOUT"


def test_framing_decoder_edges():
    decoder = FrameDecoder(max_frame=100)
    frames = encode_frame(FrameKind.HANDSHAKE, b"abc") + encode_records([b"r1", b"r22"])
    out = []
    for i in range(len(frames)):  # byte by byte
        out.extend(decoder.feed(frames[i:i + 1]))
    assert out == [(FrameKind.HANDSHAKE, b"abc"), (FrameKind.RECORD, b"r1"),
                   (FrameKind.RECORD, b"r22")]
    assert decoder.buffered == 0
    with pytest.raises(errors.ProtocolViolation):
        FrameDecoder(max_frame=100).feed(struct.pack(">I", 102))
    with pytest.raises(errors.ProtocolViolation):
        FrameDecoder().feed(struct.pack(">I", 0))
    with pytest.raises(errors.ProtocolViolation):
        FrameDecoder().feed(struct.pack(">IB", 1, 3))
    # a large frame arriving in pieces
    big = encode_frame(FrameKind.RECORD, os.urandom(50_000))
    d = FrameDecoder()
    got = []
    for i in range(0, len(big), 997):
        got.extend(d.feed(big[i:i + 997]))
    assert got == [(FrameKind.RECORD, big[5:])]


def test_call_message_header_matches_rpc_codec():
    from rolewire.protocol.wire import call_header

    body = b"payload"
    message = decode(call_header(MessageType.NOTIFY, 0, "sink") + body)
    assert message == CallMessage(MessageType.NOTIFY, 0, "sink", body)
    assert call_header(MessageType.REQUEST, 7, "op") + body == encode(
        CallMessage(MessageType.REQUEST, 7, "op", body))
    with pytest.raises(errors.ProtocolViolation):
        call_header(MessageType.NOTIFY, 0, "x" * 256)


def test_hot_reload_of_role_secrets_keeps_live_sessions():
    from rolewire import errors as _errors
    from rolewire.aio import connect as _connect
    from rolewire.aio import serve as _serve
    from rolewire.handshake import HandshakeConfig as _Config
    from rolewire.roles import KeyRole as _KeyRole
    from rolewire.services import Service as _Service

    old_key, new_key = os.urandom(32), os.urandom(32)
    svc = _Service("reload")
    svc.add("echo", lambda ctx, body: body, roles=["r"])

    async def scenario():
        server = await _serve(svc, _Config(roles=[_KeyRole("r", old_key)]))
        try:
            live = await _connect("127.0.0.1", server.port, _Config(roles=[_KeyRole("r", old_key)]))
            assert await live.call("echo", b"1") == b"1"
            server.reload_config(_Config(roles=[_KeyRole("r", new_key)]))
            assert await live.call("echo", b"2") == b"2"  # not dropped
            with pytest.raises(_errors.HandshakeError):
                stale = await _connect("127.0.0.1", server.port,
                                       _Config(roles=[_KeyRole("r", old_key)]))
                await stale.call("echo", b"x")
            fresh = await _connect("127.0.0.1", server.port,
                                   _Config(roles=[_KeyRole("r", new_key)]))
            assert await fresh.call("echo", b"3") == b"3"
            await fresh.close()
            await live.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
