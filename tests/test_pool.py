"""rolewire.pool.Pool against real servers on loopback: bounded connections,
reconnect after the server's idle timeout and after a restart, in-flight
calls on a dying connection fail typed (never hang), one retry for
idempotent calls, backoff with full jitter. No timing assertions."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolewire import ConnectionClosed, HandshakeConfig, KeyRole, Service, serve
from rolewire.errors import ConfigurationError
from rolewire.pool import PeerUnavailable, Pool, backoff_delay

KEY = os.urandom(32)
CONFIG = HandshakeConfig(roles=[KeyRole("svc", KEY)])


def make_service() -> Service:
    svc = Service("pooled")
    svc.calls = 0
    svc.gate = None

    @svc.operation("echo", roles=["svc"])
    async def echo(call, body):
        svc.calls += 1
        await asyncio.sleep(0.01)
        return body

    @svc.operation("hold", roles=["svc"])
    async def hold(call, body):
        svc.calls += 1
        if svc.gate is not None:
            gate, svc.gate = svc.gate, None
            gate.set_result(call)
            await asyncio.sleep(3600)  # until the connection dies
        return b"held " + body

    return svc


def run(coro, timeout: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_connections_are_bounded_and_reused():
    svc = make_service()

    async def main():
        async with serve(svc, CONFIG) as server:
            async with Pool("127.0.0.1", server.port, CONFIG, max_connections=3) as pool:
                replies = await asyncio.gather(*(pool.call("echo", b"%d" % i, timeout=60)
                                                 for i in range(60)))
                assert replies == [b"%d" % i for i in range(60)]
                assert 1 <= pool.connections <= 3
                for i in range(5):  # sequential calls reuse one idle connection
                    assert await pool.call("echo", b"x", timeout=60) == b"x"
                assert pool.stats["connects"] <= 3
            assert server.stats.sessions_total <= 3

    run(main())


def test_reconnects_after_the_servers_idle_timeout():
    svc = make_service()

    async def main():
        async with serve(svc, CONFIG, idle_timeout=0.2) as server:
            pool = Pool("127.0.0.1", server.port, CONFIG)
            try:
                assert await pool.call("echo", b"1", timeout=60) == b"1"
                while server.stats.idle_closes == 0:  # the server closes the idle session
                    await asyncio.sleep(0.05)
                while pool.connections:  # the pool notices the CLOSE
                    await asyncio.sleep(0.02)
                assert await pool.call("echo", b"2", timeout=60) == b"2"
                assert pool.stats["connects"] == 2 and pool.stats["connect_failures"] == 0
            finally:
                await pool.close()

    run(main())


def test_reconnects_after_a_server_restart_with_backoff():
    svc = make_service()

    async def main():
        server = await serve(svc, CONFIG)
        port = server.port
        pool = Pool("127.0.0.1", port, CONFIG, initial_backoff=0.05, max_backoff=0.2)
        try:
            assert await pool.call("echo", b"before", timeout=60) == b"before"
            server.close()
            await server.wait_closed()
            # Server down: a typed error, never a hang.
            with pytest.raises(ConnectionClosed):
                await pool.call("echo", b"down", timeout=60)
            with pytest.raises(PeerUnavailable) as down:
                await pool.call("echo", b"down", timeout=60)
            assert isinstance(down.value.__cause__, (OSError, ConnectionClosed))
            assert pool.stats["connect_failures"] >= 1
            # Back on the same port: the pool reconnects by itself.
            server = await serve(svc, CONFIG, port=port)
            for _ in range(200):
                try:
                    assert await pool.call("echo", b"after", timeout=60) == b"after"
                    break
                except PeerUnavailable:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the pool never reconnected")
            assert pool.connections == 1
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_in_flight_call_on_a_dying_connection_fails_typed_or_retries_if_idempotent():
    svc = make_service()

    async def main():
        async with serve(svc, CONFIG) as server, \
            Pool("127.0.0.1", server.port, CONFIG, max_connections=1) as pool:
            assert await pool.call("echo", b"warm", timeout=60) == b"warm"
            (channel,) = pool._channels
            loop = asyncio.get_running_loop()

            # Not idempotent: the dying connection's call fails typed.
            svc.gate = loop.create_future()
            pending = asyncio.ensure_future(pool.call("hold", b"a", timeout=60))
            await svc.gate
            channel.abort()  # the link dies while the call is in flight
            with pytest.raises(ConnectionClosed):
                await pending
            assert pool.stats["retries"] == 0

            # Idempotent: sent once more, on a new connection, and answered.
            svc.gate = loop.create_future()
            pending = asyncio.ensure_future(pool.call("hold", b"b", timeout=60,
                                                      idempotent=True))
            await svc.gate
            (channel,) = pool._channels
            channel.abort()
            assert await pending == b"held b"
            assert pool.stats["retries"] == 1

    run(main())


def test_call_timeout_covers_the_backoff_wait():
    async def main():
        # Nothing listens on this port: every attempt is refused.
        probe = await serve(make_service(), CONFIG)
        port = probe.port
        probe.close()
        await probe.wait_closed()
        pool = Pool("127.0.0.1", port, CONFIG, initial_backoff=30.0, max_backoff=60.0,
                    rand=lambda: 1.0)
        with pytest.raises(PeerUnavailable):
            await pool.call("echo", timeout=10)
        # Now backing off for 30 s: a call with a 1 s budget fails at once.
        with pytest.raises(PeerUnavailable, match="reconnecting"):
            await pool.call("echo", timeout=1)
        await pool.close()
        with pytest.raises(ConnectionClosed):
            await pool.call("echo", timeout=1)

    run(main())


@given(attempt=st.integers(0, 200), initial=st.floats(0.001, 5.0),
       spread=st.floats(1.0, 100.0), r=st.floats(0.0, 1.0))
def test_backoff_is_full_jitter_within_the_exponential_ceiling(attempt, initial, spread, r):
    maximum = initial * spread
    delay = backoff_delay(attempt, initial, maximum, lambda: r)
    ceiling = min(maximum, initial * 2.0 ** min(attempt, 64))
    assert 0.0 <= delay <= ceiling * (1 + 1e-12)
    assert backoff_delay(attempt, initial, maximum, lambda: 1.0) >= \
        backoff_delay(max(attempt - 1, 0), initial, maximum, lambda: 1.0)


def test_bad_pool_settings():
    with pytest.raises(ConfigurationError):
        Pool("h", 1, CONFIG, max_connections=0)
    with pytest.raises(ConfigurationError):
        Pool("h", 1, CONFIG, initial_backoff=2, max_backoff=1)


def test_pool_from_a_config_file(tmp_path):
    import base64

    from rolewire.config import load_config

    (tmp_path / "svc.key").write_bytes(base64.b64encode(KEY))
    svc = make_service()

    async def main():
        async with serve(svc, CONFIG) as server:
            (tmp_path / "client.toml").write_text(
                '[service]\nname = "c"\n[[role]]\nname = "svc"\nkind = "key"\n'
                f'key_file = "svc.key"\n[peers.pooled]\naddress = "127.0.0.1:{server.port}"\n')
            config = load_config(tmp_path / "client.toml")
            with pytest.raises(ConfigurationError, match="no \\[peers.nope\\]"):
                config.pool("nope")
            async with config.pool("pooled", max_connections=2) as pool:
                assert await pool.call("echo", b"cfg", timeout=60) == b"cfg"
                assert pool.max_connections == 2

    run(main())
