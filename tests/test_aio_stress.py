"""rolewire.aio under load: hundreds of sessions at once, back-pressure on
both sides, shutdown under load. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import random

from rolewire.aio import connect, serve
from rolewire.handshake import HandshakeConfig
from rolewire.roles.key import KeyRole
from rolewire.services import UNRESTRICTED, Service

KEY = os.urandom(32)
CFG = HandshakeConfig(roles=[KeyRole("svc", KEY)])


def run(coro, timeout: float = 25.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def make_service():
    svc = Service("stress")
    svc.received = {}
    svc.running = 0
    svc.peak = 0

    @svc.operation("echo", roles=["svc"])
    def echo(call, body):
        return body

    @svc.operation("aecho", roles=["svc"])
    async def aecho(call, body):
        svc.running += 1
        svc.peak = max(svc.peak, svc.running)
        await asyncio.sleep(random.random() * 0.005)
        svc.running -= 1
        return body[::-1]

    @svc.operation("put", roles=UNRESTRICTED)
    def put(call, body):
        svc.received.setdefault(call.peer, []).append(body)

    @svc.operation("count", roles=UNRESTRICTED)
    def count(call, body):
        return b"%d" % len(svc.received.get(call.peer, ()))

    return svc


def sessions_the_fd_limit_allows(wanted: int) -> int:
    """Raise the soft open-files limit towards what ``wanted`` sessions need
    (two sockets each, client and server side, plus headroom); if the hard
    limit is lower (macOS defaults to a soft limit of 256), size the test to
    it. Windows has no such per-process limit for sockets."""
    try:
        import resource
    except ImportError:  # Windows
        return wanted
    need = 2 * wanted + 128
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(10, min(wanted, (soft - 128) // 2))


def test_hundreds_of_concurrent_sessions():
    svc = make_service()
    sessions = sessions_the_fd_limit_allows(200)

    async def client(port, n):
        async with connect("127.0.0.1", port, CFG, timeout=20) as channel:
            for i in range(3):
                body = b"%d-%d" % (n, i)
                assert await channel.call("echo", body) == body
            replies = await asyncio.gather(*(channel.call("aecho", b"%d" % i) for i in range(5)))
            assert replies == [(b"%d" % i)[::-1] for i in range(5)]
            await channel.send_many("put", [b"%d" % i for i in range(50)])
            assert await channel.call("count") == b"50"
            return channel.peer_roles

    async def main():
        # Hundreds of handshakes at once from one address: over the per-peer
        # defaults that stop one address from filling the tables (issue 11
        # s.4), so this server allows them.
        async with serve(svc, CFG, max_connections=512, max_pending_per_peer=512,
                         handshake_rate=None) as server:
            roles = await asyncio.gather(*(client(server.port, n) for n in range(sessions)))
            assert all(r == {"svc"} for r in roles)
            await asyncio.sleep(0.1)
            return server.stats

    stats = run(main())
    assert stats.sessions_total == sessions and stats.handshakes_failed == 0
    assert stats.sessions_open == 0 and stats.connections_open == 0
    assert stats.requests == sessions * 9 and stats.notifications == sessions * 50
    assert stats.auth_failures == 0 and stats.replays_rejected == 0
    assert all(v == [b"%d" % i for i in range(50)] for v in svc.received.values())


def test_inflight_bound_applies_back_pressure():
    svc = make_service()

    async def main():
        async with (
            serve(svc, CFG, max_inflight=8) as server,
            connect("127.0.0.1", server.port, CFG) as channel,
        ):
            bodies = [os.urandom(16) for _ in range(2000)]
            replies = await asyncio.gather(*(channel.call("aecho", b) for b in bodies))
            assert replies == [b[::-1] for b in bodies]

    run(main())
    assert 1 < svc.peak <= 8


def test_large_stream_with_a_slow_reader():
    """The sender waits (drain) while the server is slow; nothing is lost."""
    svc = Service("slow")
    got = []

    @svc.operation("put", roles=UNRESTRICTED)
    async def put(call, body):
        got.append(len(body))
        if len(got) % 50 == 0:
            await asyncio.sleep(0.01)  # notifications are handled in order, inline

    @svc.operation("count", roles=UNRESTRICTED)
    def count(call, body):
        return b"%d" % len(got)

    async def main():
        async with (
            serve(svc, CFG) as server,
            connect("127.0.0.1", server.port, CFG) as channel,
        ):
            chunk = os.urandom(16 * 1024)
            for _ in range(40):
                await channel.send_many("put", [chunk] * 50)   # 32 MiB in total
                buffered = channel._transport.get_write_buffer_size()
                assert buffered <= 4 * 1024 * 1024
            assert await channel.call("count") == b"2000"

    run(main())
    assert got == [16 * 1024] * 2000


def test_shutdown_under_load():
    svc = make_service()

    async def client(port, stop):
        ok = 0
        try:
            async with connect("127.0.0.1", port, CFG) as channel:
                while not stop.is_set():
                    await channel.call("aecho", b"x")
                    ok += 1
        except Exception as exc:  # noqa: BLE001
            return ok, type(exc).__name__
        return ok, None

    async def main():
        stop = asyncio.Event()
        server = await serve(svc, CFG, close_timeout=2.0)
        tasks = [asyncio.ensure_future(client(server.port, stop)) for _ in range(30)]
        await asyncio.sleep(0.5)
        server.close()
        await server.wait_closed()
        stop.set()
        results = await asyncio.gather(*tasks)
        return server.stats, results

    stats, results = run(main())
    assert stats.sessions_open == 0 and stats.connections_open == 0
    # Every client made progress, and ended with a clean ConnectionClosed (or
    # the remote's ServiceUnavailable for a call that raced the CLOSE).
    assert all(ok > 0 for ok, _ in results)
    assert {err for _, err in results} <= {"ConnectionClosed", "ServiceUnavailable", None}


def test_server_stops_reading_a_client_that_does_not_read_replies():
    svc = make_service()

    async def main():
        async with (
            serve(svc, CFG) as server,
            connect("127.0.0.1", server.port, CFG) as channel,
        ):
            assert await channel.call("echo", b"warm") == b"warm"
            (conn,) = server._established
            channel._transport.pause_reading()
            body = os.urandom(16 * 1024)
            calls = [asyncio.ensure_future(channel.call("echo", body)) for _ in range(2000)]
            await asyncio.sleep(0.5)
            # ~32 MiB of replies are owed, but the server holds little of it.
            assert conn._transport.get_write_buffer_size() <= 2 * 1024 * 1024
            assert not all(c.done() for c in calls)
            channel._transport.resume_reading()
            replies = await asyncio.gather(*calls)
            assert replies == [body] * 2000

    run(main())
