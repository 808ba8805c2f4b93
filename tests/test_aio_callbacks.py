"""The server and channel read by callbacks (aio._base.StreamDriver.start_callbacks):
a chunk whose handlers finish at once is handled in data_received; one that
must wait hands over to the connection's task, and chunks that arrive
meanwhile wait their turn. Order and answers stay those of the task loop."""

from __future__ import annotations

import asyncio
import os

from rolewire.aio import connect, serve
from rolewire.handshake import HandshakeConfig
from rolewire.roles.key import KeyRole
from rolewire.services import Service

KEY = os.urandom(32)
CFG = HandshakeConfig(roles=[KeyRole("shop", KEY)])


def run(coro, timeout: float = 30.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def make_service(trace: list) -> Service:
    svc = Service("cb")

    @svc.operation("echo", roles=["shop"])
    def echo(call, body):
        trace.append(("echo", body))
        return body

    @svc.operation("pause", roles=["shop"])
    async def pause(call, body):  # an async notification: the chunk must wait for it
        trace.append(("pause-start", body))
        await asyncio.sleep(0.02)
        trace.append(("pause-end", body))

    @svc.operation("late", roles=["shop"])
    def late(call, body):  # a sync handler returning an awaitable
        async def finish():
            await asyncio.sleep(0.01)
            trace.append(("late", body))
            return b"late:" + body
        return finish()

    return svc


def test_handlers_that_wait_keep_the_order_of_a_burst():
    trace: list = []

    async def main():
        async with serve(make_service(trace), CFG) as server, \
                connect("127.0.0.1", server.port, CFG) as channel:
            # One burst: sync calls, an async notification, more calls, a
            # handler whose result must be awaited, more calls.
            calls = [asyncio.ensure_future(channel.call("echo", b"%d" % i)) for i in range(5)]
            await channel.notify("pause", b"p")
            for i in range(5, 10):  # separate writes while "pause" runs: held chunks
                await asyncio.sleep(0.002)
                calls.append(asyncio.ensure_future(channel.call("echo", b"%d" % i)))
            calls.append(asyncio.ensure_future(channel.call("late", b"l")))
            for i in range(10, 15):
                await asyncio.sleep(0.001)
                calls.append(asyncio.ensure_future(channel.call("echo", b"%d" % i)))
            replies = await asyncio.gather(*calls)
            # and the connection goes on by callbacks afterwards
            assert await channel.call("echo", b"after") == b"after"
            return replies

    replies = run(main())
    assert replies == [b"%d" % i for i in range(10)] + [b"late:l"] + \
        [b"%d" % i for i in range(10, 15)]
    names = [entry for entry in trace if entry[0] != "echo" or entry[1] != b"after"]
    assert names.index(("pause-end", b"p")) < names.index(("echo", b"5"))
    assert names.index(("late", b"l")) < names.index(("echo", b"10"))
    assert [e[1] for e in names if e[0] == "echo"] == [b"%d" % i for i in range(15)]


def test_many_sequential_calls_and_a_clean_close():
    trace: list = []

    async def main():
        async with serve(make_service(trace), CFG) as server:
            async with connect("127.0.0.1", server.port, CFG) as channel:
                for i in range(200):
                    assert await channel.call("echo", b"%d" % i) == b"%d" % i
            for _ in range(100):
                if server.stats.sessions_open == 0:
                    break
                await asyncio.sleep(0.02)
            return server.stats.sessions_open, server.stats.requests

    open_after, requests = run(main())
    assert open_after == 0
    assert requests >= 200


def test_reads_grow_while_each_fills_its_buffer_and_drop_back_after():
    from rolewire.aio._base import READ_MAX, READ_SIZE, _ChunkProtocol

    class Transport:
        max_size = READ_SIZE

    class Stream:
        pass

    chunks: list[int] = []
    transport = Transport()
    protocol = _ChunkProtocol(Stream(), lambda data: chunks.append(len(data)), lambda: None,
                              transport)
    protocol.start(b"")
    sizes = []
    for n in (READ_SIZE, READ_MAX, READ_MAX, 100, READ_SIZE - 1, READ_SIZE):
        protocol.data_received(bytes(n))
        sizes.append(transport.max_size)
    assert sizes == [READ_MAX, READ_MAX, READ_MAX, READ_SIZE, READ_SIZE, READ_MAX]
    assert chunks == [READ_SIZE, READ_MAX, READ_MAX, 100, READ_SIZE - 1, READ_SIZE]
    # A transport without max_size (another event loop) is left alone.
    protocol = _ChunkProtocol(Stream(), chunks.append, lambda: None, object())
    protocol.start(b"")
    protocol.data_received(bytes(READ_SIZE))
