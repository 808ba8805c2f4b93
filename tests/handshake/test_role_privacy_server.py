"""Issue 11 §2 over a real loopback server (rolewire.serve / connect): a
passive observer (a recording TCP relay) learns no role name from a
dictionary, a prober with guessed roles learns nothing and sees the same
Reject for "no such role" and "wrong proof", and password probes are
counted. No timing assertions."""

from __future__ import annotations

import asyncio
import os

import pytest
from test_role_privacy import DICTIONARY, dictionary_hits

from rolewire import errors
from rolewire.aio import FrameDecoder, FrameKind, connect, serve
from rolewire.handshake import HandshakeConfig, RejectReason
from rolewire.handshake import messages as m
from rolewire.roles import KeyRole, PasswordRateLimiter, PasswordRole
from rolewire.services import Service

KEY = os.urandom(32)


def run(coro, timeout: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def service() -> Service:
    svc = Service("privacy")

    @svc.operation("hello", roles=["payment", "admin"])
    def hello(call, body):
        return b"hi"

    return svc


async def relay(target_port: int, captured: list[bytes]):
    """A TCP relay that records what the client sends (a passive tap)."""

    async def handle(reader, writer):
        up_r, up_w = await asyncio.open_connection("127.0.0.1", target_port)

        async def pipe(src, dst, record):
            try:
                while data := await src.read(65536):
                    if record:
                        captured.append(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_passive_tap_learns_no_name_over_loopback():
    roles = [KeyRole("payment", KEY), PasswordRole("admin", "hunter2")]
    cfg = HandshakeConfig(roles=roles)
    captured: list[bytes] = []

    async def main():
        async with serve(service(), cfg) as server:
            tap = await relay(server.port, captured)
            async with tap:
                port = tap.sockets[0].getsockname()[1]
                async with connect("127.0.0.1", port, cfg) as channel:
                    return await channel.call("hello")

    assert run(main()) == b"hi"
    wire = b"".join(captured)
    # (only the long names: 2-byte words like "hr" occur in random bytes)
    assert not any(name.encode() in wire for name in DICTIONARY if len(name) >= 6)
    (kind, payload), *_ = FrameDecoder().feed(wire)
    assert kind is FrameKind.HANDSHAKE
    hello = m.parse_message(payload[0], payload[4:])
    assert isinstance(hello, m.Hello)
    assert dictionary_hits(hello) == []  # protocol 1: every name recovered


def test_prober_sees_one_reject_for_no_such_role_and_wrong_password():
    limiter = PasswordRateLimiter(max_failures=10)
    cfg = HandshakeConfig(roles=[KeyRole("payment", KEY),
                                 PasswordRole("admin", "hunter2", limiter=limiter)])
    probes = {
        # allow_anonymous: the probe goes on to the server's verdict
        "unknown key role": HandshakeConfig(roles=[KeyRole("payment", os.urandom(32))],
                                            allow_anonymous=True),
        "unknown password role": HandshakeConfig(roles=[PasswordRole("nosuch", "x")],
                                                 allow_anonymous=True),
        "wrong password": HandshakeConfig(roles=[PasswordRole("admin", "guess")],
                                          allow_anonymous=True),
    }

    async def main():
        codes = {}
        async with serve(service(), cfg) as server:
            for label, probe in probes.items():
                with pytest.raises(errors.HandshakeError) as info:
                    async with connect("127.0.0.1", server.port, probe) as channel:
                        await channel.call("hello")
                err = info.value
                codes[label] = getattr(err, "reason_code", None) or type(err).__name__
        return codes

    codes = run(main())
    # protocol 1: NO_SHARED_ROLE for the first two, AUTH_FAILED for the third
    assert codes == dict.fromkeys(probes, RejectReason.AUTH_FAILED), codes
    assert limiter.failures("127.0.0.1", "admin") == 1  # the wrong password counted
