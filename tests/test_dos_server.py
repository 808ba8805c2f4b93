"""Issue 11 section 4: denial of service against a real server on loopback.

Each test reproduces one attack of the issue and fails on the code before
the fix: idle sockets that locked everyone out, a full table that refused
newcomers, silent connections held for the whole handshake timeout,
pre-authentication frames of 1 MiB, unlimited handshakes per peer, and a
client that stops reading while asking for large replies. The combined
"Target" scenario is in tests/test_dos_target.py (server in a subprocess,
RSS measured).

No timing assertions: sleeps only give the server time to act, and every
assertion is about counters, bounds or outcomes.
"""

from __future__ import annotations

import asyncio
import gc
import os
import struct
import tracemalloc

import pytest

from rolewire import errors
from rolewire.aio import FrameDecoder, FrameKind, connect, serve
from rolewire.aio._base import COALESCE_BYTES, WRITE_HIGH_WATER
from rolewire.aio.framing import encode_frame, encode_records
from rolewire.handshake import (
    HandshakeComplete,
    HandshakeConfig,
    HandshakeLimiter,
    Initiator,
    RejectReason,
)
from rolewire.roles.key import KeyRole
from rolewire.rpc import CallMessage, MessageType, decode, encode
from rolewire.services import UNRESTRICTED, Service

KEY = os.urandom(32)
CFG = HandshakeConfig(roles=[KeyRole("svc", KEY)])
BIG_REPLY = 256 * 1024
OTHER_PEER = ("127.0.0.2", 0)  # a legitimate client on another address


def run(coro, timeout: float = 90.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def make_service() -> Service:
    service = Service("dos")
    service.ran = 0
    blob = os.urandom(BIG_REPLY)
    service.add("echo", lambda call, body: body, roles=["svc"])

    def big(call, body):
        service.ran += 1
        return blob

    async def abig(call, body):
        service.ran += 1
        await asyncio.sleep(0)
        return blob

    service.add("big", big, roles=["svc"])

    service.add("abig", abig, roles=["svc"])
    service.add("ping", lambda call, body: b"pong", roles=UNRESTRICTED)
    return service


async def legit_call(port: int) -> bytes:
    async with connect("127.0.0.1", port, CFG, timeout=60, local_addr=OTHER_PEER) as channel:
        return await channel.call("echo", b"legit", timeout=60)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 30.0) -> list:
    """Every frame the server sends until it closes (a reset counts as closed)."""
    decoder = FrameDecoder()
    frames = []
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return frames
            frames.extend(decoder.feed(data))
    except ConnectionError:
        return frames


def reject_codes(frames) -> list[int]:
    return [p[-1] for k, p in frames if k is FrameKind.HANDSHAKE and p[:1] == b"\x0f"]


# -- 1. idle sockets -------------------------------------------------------------------


def test_500_idle_sockets_from_one_peer_do_not_lock_out_another():
    """The attack: 500 TCP connections that send nothing. Old code: the
    per-peer cap equalled the global one, 256 handshake slots were held for
    the whole handshake timeout, every other client got BUSY. Now one
    address holds at most max_pending_per_peer of them, they hold no
    handshake slot, and they are closed after the first-byte deadline."""
    service = make_service()

    async def main():
        async with serve(service, CFG, handshake_timeout=30.0) as server:
            idle = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", server.port)
                                          for _ in range(500)))
            await asyncio.sleep(0.2)
            assert await legit_call(server.port) == b"legit"
            open_while_flooded = server.stats.connections_open
            # Every idle connection is closed by the server: BUSY at once, or
            # TIMEOUT at the first-byte deadline (well before the handshake
            # timeout of 30 s, which the test's own timeout would hit).
            outcomes = await asyncio.gather(*(closed_by_server(r, 25) for r, _ in idle))
            for _, w in idle:
                w.close()
            assert await legit_call(server.port) == b"legit"
            return server.stats, open_while_flooded, outcomes

    stats, open_while_flooded, outcomes = run(main())
    assert open_while_flooded <= 32 + 1
    assert stats.busy_rejects >= 500 - 32
    codes = [c for frames in outcomes for c in reject_codes(frames)]
    assert set(codes) <= {RejectReason.BUSY, RejectReason.TIMEOUT}
    assert codes.count(RejectReason.TIMEOUT) == stats.first_byte_timeouts >= 1
    assert stats.sessions_total == 2


def test_full_table_evicts_the_oldest_unauthenticated_connection():
    """Old code refused every newcomer while the table was full of
    connections that never authenticated; now the oldest such connection
    is evicted to admit the new one (authenticated sessions are kept)."""
    service = make_service()

    async def main():
        async with serve(service, CFG, max_connections=6, max_pending_per_peer=6,
                         handshake_timeout=30.0) as server:
            async with connect("127.0.0.1", server.port, CFG) as established:
                idle = [await asyncio.open_connection("127.0.0.1", server.port)
                        for _ in range(5)]
                await asyncio.sleep(0.1)
                assert server.stats.connections_open == 6
                assert await legit_call(server.port) == b"legit"
                assert await closed_by_server(idle[0][0]) == []  # the oldest, cut
                assert await established.call("echo", b"kept") == b"kept"
                for _, w in idle:
                    w.close()
            return server.stats

    stats = run(main())
    assert stats.evictions >= 1 and stats.busy_rejects == 0
    assert stats.sessions_total == 2


def test_silent_connection_is_closed_at_the_first_byte_deadline():
    """Old code kept a silent connection (and its handshake slot) for the
    whole handshake timeout (10 s by default)."""
    service = make_service()

    async def main():
        async with serve(service, CFG, handshake_timeout=60.0,
                         first_byte_timeout=0.3) as server:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            await asyncio.sleep(0.05)
            assert server.limiter.pending == 0  # no handshake slot for silence
            frames = await closed_by_server(r, timeout=50.0)
            w.close()
            return server.stats, frames

    stats, frames = run(main())
    assert reject_codes(frames) == [RejectReason.TIMEOUT]
    assert stats.first_byte_timeouts == 1 and stats.handshake_timeouts == 1


def test_per_peer_handshake_cap_refuses_only_that_peer():
    service = make_service()
    hello = encode_frame(FrameKind.HANDSHAKE, Initiator(CFG).data_to_send())

    async def main():
        async with serve(service, CFG, max_pending_per_peer=4,
                         handshake_timeout=30.0) as server:
            stalled = []
            for _ in range(4):  # four half-sent Hellos from 127.0.0.1
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(hello[:20])
                stalled.append((r, w))
            while server.limiter.pending < 4:
                await asyncio.sleep(0.01)
            with pytest.raises(errors.HandshakeRejected) as info:
                await connect("127.0.0.1", server.port, CFG, timeout=30)
            assert info.value.reason_code == RejectReason.BUSY
            assert await legit_call(server.port) == b"legit"  # another address
            for _, w in stalled:
                w.close()
            return server.stats

    stats = run(main())
    assert stats.busy_rejects == 1 and stats.evictions == 0


# -- 2. pre-authentication frames -------------------------------------------------------------


def test_pre_auth_frame_is_bounded_by_the_largest_handshake_message():
    """The attack: 1 MiB frames before authentication (old bound: the
    record limit); 200 of them took the server from 43 to 329 MB. Now a
    frame announcing more than the largest handshake message is refused at
    its header, before any of it is buffered."""
    service = make_service()
    limit = CFG.max_message_size

    async def main():
        async with serve(service, CFG, handshake_timeout=30.0) as server:
            results = []
            for kind, size in ((FrameKind.HANDSHAKE, 1 << 20), (FrameKind.RECORD, 1 << 20),
                               (FrameKind.HANDSHAKE, limit + 1)):
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(struct.pack(">IB", size + 1, kind) + b"\x00" * 1000)
                results.append(await closed_by_server(r))
                w.close()
            # A frame of exactly the bound is read (and then refused by the
            # handshake as garbage, with a Reject).
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(encode_frame(FrameKind.HANDSHAKE, b"\x01" + b"\x00" * (limit - 1)))
            at_bound = await closed_by_server(r)
            w.close()
            return server.stats, results, at_bound

    stats, results, at_bound = run(main())
    assert results == [[], [], []]  # cut without a word
    assert stats.protocol_errors == 3
    assert reject_codes(at_bound) == [RejectReason.DECODE_ERROR]


def test_large_record_right_after_message_three_still_opens():
    """The pre-authentication bound must not refuse a legitimate large
    record that the initiator sends in the same write as its last
    handshake message (it completes on queueing message 3)."""
    service = make_service()
    body = os.urandom((1 << 20) - 200)

    async def main():
        async with serve(service, CFG) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            hs = Initiator(CFG)
            writer.write(encode_frame(FrameKind.HANDSHAKE, hs.data_to_send()))
            decoder = FrameDecoder()
            event = hs.next_event()
            while not isinstance(event, HandshakeComplete):
                for kind, payload in decoder.feed(await reader.read(65536)):
                    assert kind is FrameKind.HANDSHAKE
                    hs.receive_data(payload)
                event = hs.next_event()
            session = event.session
            request = session.seal(encode(CallMessage(MessageType.REQUEST, 1, "echo", body)))
            writer.write(encode_frame(FrameKind.HANDSHAKE, hs.data_to_send())
                         + encode_records([request]))
            reply = None
            decoder = FrameDecoder()
            while reply is None:
                for kind, payload in decoder.feed(await reader.read(1 << 20)):
                    if kind is FrameKind.RECORD:
                        reply = decode(session.open(payload))
            writer.close()
            return reply

    reply = run(main())
    assert reply.type is MessageType.RESPONSE and reply.body == body


def test_memory_per_pending_handshake_is_bounded():
    """State and test the memory of a pending handshake: each connection
    here holds a maximal partial handshake frame (the largest message
    minus one byte). docs/aio.md states the bound: 192 KiB each, all Python
    allocations (decoder, stream buffer, responder, transport) included."""
    service = make_service()
    n = 24
    frame_head = struct.pack(">IB", CFG.max_message_size + 1, FrameKind.HANDSHAKE)
    partial = frame_head + b"\x01" + b"\x00" * (CFG.max_message_size - 2)

    async def main():
        async with serve(service, CFG, max_pending_per_peer=n + 1,
                         handshake_timeout=60.0) as server:
            warm = await asyncio.open_connection("127.0.0.1", server.port)
            warm[1].write(partial)
            while server.limiter.pending < 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(n)]
            for _, w in conns:
                w.write(partial)
            await asyncio.gather(*(w.drain() for _, w in conns))
            while server.limiter.pending < n + 1:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # let the server read what was sent
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            for _, w in [warm, *conns]:
                w.close()
            return held

    held = run(main())
    per_connection = held / n
    print(f"memory per pending handshake: {per_connection / 1024:.1f} KiB")
    assert per_connection < 192 * 1024


# -- 3. handshake rate ----------------------------------------------------------------------


def test_handshake_rate_budget_per_peer():
    """Old code let one address start handshakes (and their X448/X25519 +
    ML-KEM work) as fast as it liked. Now a token bucket per address,
    enforced while the server is loaded (handshakes pending)."""
    service = make_service()
    limiter = HandshakeLimiter(max_pending=16, max_per_peer=8)  # enforced at >= 2 pending
    hello = encode_frame(FrameKind.HANDSHAKE, Initiator(CFG).data_to_send())

    async def main():
        async with serve(service, CFG, handshake_rate=(0.01, 3), limiter=limiter,
                         handshake_timeout=30.0) as server:
            # Unloaded: the bucket runs dry, but nobody waits, so no refusal.
            for _ in range(5):
                async with connect("127.0.0.1", server.port, CFG) as channel:
                    assert await channel.call("echo", b"x") == b"x"
            assert server.stats.rate_limited == 0
            # Loaded: two stalled handshakes from a third address.
            stalled = []
            for _ in range(2):
                _r, w = await asyncio.open_connection("127.0.0.1", server.port,
                                                     local_addr=("127.0.0.3", 0))
                w.write(hello[:20])
                stalled.append(w)
            while limiter.pending < 2:
                await asyncio.sleep(0.01)
            with pytest.raises(errors.HandshakeRejected) as info:
                await connect("127.0.0.1", server.port, CFG)
            assert info.value.reason_code == RejectReason.BUSY
            # Another address still has its budget.
            assert await legit_call(server.port) == b"legit"
            for w in stalled:
                w.close()
            return server.stats

    stats = run(main())
    assert stats.rate_limited == 1 and stats.sessions_total == 6


# -- 4. a client that stops reading ----------------------------------------------------------


@pytest.mark.parametrize("operation", ["big", "abig"])
def test_client_that_stops_reading_gets_bounded_memory(operation):
    """The attack: pause reading, issue 2000 calls for 256 KiB replies; old
    code answered every request of a read chunk at once (hundreds of MB in
    the transport buffer). Now the server stops handling a connection's
    requests while its unsent replies exceed the write high-water mark, so
    what it holds is bounded by the mark plus one read and (for
    asynchronous handlers) the replies of the calls already running."""
    service = make_service()
    max_inflight = 4
    calls = 600

    async def main():
        async with serve(service, CFG, max_inflight=max_inflight) as server:
            async with connect("127.0.0.1", server.port, CFG) as channel:
                assert await channel.call("echo", b"warm") == b"warm"
                (conn,) = server._established
                channel._transport.pause_reading()
                pending = [asyncio.ensure_future(channel.call(operation)) for _ in range(calls)]
                peak = 0
                for _ in range(150):
                    await asyncio.sleep(0.01)
                    peak = max(peak, conn._out_bytes
                               + conn._transport.get_write_buffer_size())
                handled_while_paused = service.ran
                channel._transport.resume_reading()
                replies = await asyncio.gather(*pending)
                assert all(len(r) == BIG_REPLY for r in replies)
            return peak, handled_while_paused

    peak, handled = run(main())
    bound = WRITE_HIGH_WATER + COALESCE_BYTES + (1 + max_inflight) * BIG_REPLY
    print(f"{operation}: peak unsent {peak / 1024:.0f} KiB (bound {bound / 1024:.0f} KiB),"
          f" {handled} of {calls} requests handled while the client did not read")
    assert peak <= bound
    assert handled < calls
