"""Issue 11 §4, the cookie round trip on a real loopback server: above its
load threshold the server answers a Hello with a cookie reply and computes
nothing until the peer echoes the cookie; connect() does that transparently.
No timing assertions."""

from __future__ import annotations

import asyncio
import os

from rolewire.aio import FrameDecoder, FrameKind, connect, serve
from rolewire.aio.framing import encode_frame
from rolewire.handshake import HandshakeConfig, Initiator, machine
from rolewire.handshake import messages as m
from rolewire.roles import KeyRole
from rolewire.services import Service

KEY = os.urandom(32)
CFG = HandshakeConfig(roles=[KeyRole("payment", KEY)])


def run(coro, timeout: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def service() -> Service:
    svc = Service("cookie")

    @svc.operation("ping", roles=["payment"])
    def ping(call, body):
        return b"pong"

    return svc


def test_server_under_load_demands_a_cookie_before_any_key_exchange(monkeypatch):
    calls = []
    real = machine.responder_exchange

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(machine, "responder_exchange", counting)

    async def main():
        async with serve(service(), CFG) as server:
            server.cookie_load = 0  # always "under load" for this test
            # 20 clients that send a Hello and never answer the cookie reply
            replies = []
            for _ in range(20):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(encode_frame(FrameKind.HANDSHAKE,
                                          Initiator(CFG).data_to_send()))
                decoder = FrameDecoder()
                frames = []
                while not frames:
                    data = await asyncio.wait_for(reader.read(65536), 30)
                    assert data
                    frames = decoder.feed(data)
                replies.append(frames[0][1][0])
                writer.transport.abort()
            assert calls == []  # no X25519/X448 + ML-KEM for any of them
            # a real client answers the cookie and gets through
            async with connect("127.0.0.1", server.port, CFG) as channel:
                pong = await channel.call("ping")
            return replies, pong

    replies, pong = run(main())
    # protocol 1 had no cookie: every Hello cost the server a key exchange
    assert set(replies) == {m.MsgType.COOKIE_REPLY}
    assert pong == b"pong" and calls == [1]


def test_server_not_under_load_sends_no_cookie():
    async def main():
        async with serve(service(), CFG) as server:
            assert server.cookie_load >= 1
            async with connect("127.0.0.1", server.port, CFG) as channel:
                return await channel.call("ping")

    assert run(main()) == b"pong"
