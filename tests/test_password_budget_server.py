"""Issue 11 §1 over a real loopback server (rolewire.serve): the password
budget holds against VERIFY-only offers, parallel parked handshakes and
guesses spread over many source addresses (127.0.0.x), and a locked
password role does not take the other roles down. No timing assertions.

Guesses are counted in this process (the server runs on this event loop):
responder-side J-PAKE runs whose peer proof was checked or whose own proof
was sent.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from rolewire.aio import FrameDecoder, FrameKind, connect, serve
from rolewire.aio.framing import encode_frame
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    Initiator,
)
from rolewire.roles import KeyRole, PasswordRateLimiter, PasswordRole
from rolewire.roles.password import PasswordExchange
from rolewire.services import Service

PUBLIC_KEY = os.urandom(32)
SECRET = "tulip-7"


def run(coro, timeout: float = 120.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


@pytest.fixture
def guesses(monkeypatch):
    """Responder-side runs with the role's password that checked or sent a proof."""
    runs: dict[int, object] = {}
    verify, prove = PasswordExchange.verify, PasswordExchange.prove

    def counting_verify(ex, direction, h, proof):
        if not ex.initiator and ex.role is not None:
            runs[id(ex)] = ex
        return verify(ex, direction, h, proof)

    def counting_prove(ex, direction, h):
        if not ex.initiator and ex.role is not None:
            runs[id(ex)] = ex
        return prove(ex, direction, h)

    monkeypatch.setattr(PasswordExchange, "verify", counting_verify)
    monkeypatch.setattr(PasswordExchange, "prove", counting_prove)
    return runs


def service() -> Service:
    svc = Service("budget")

    @svc.operation("hello", roles=["public", "admin"])
    def hello(call, body):
        return b"hi " + ",".join(sorted(call.peer_roles)).encode()

    return svc


class RawClient:
    """A sans-IO initiator on a raw TCP connection, from a chosen local
    address, that can stop at message 4 (the responder's proof) and decide
    later whether to answer."""

    def __init__(self, init: Initiator) -> None:
        self.init = init
        self.decoder = FrameDecoder()
        self.msg4 = b""
        self.outcome: object = None

    async def open(self, port: int, local: str = "127.0.0.1") -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(local, 0))
        self.writer.write(encode_frame(FrameKind.HANDSHAKE, self.init.data_to_send()))

    async def _read_handshake(self) -> bytes:
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 60)
            if not data:
                return b""
            payloads = [p for kind, p in self.decoder.feed(data) if kind is FrameKind.HANDSHAKE]
            if payloads:
                return b"".join(payloads)

    async def run(self) -> object:
        """Runs the handshake to its end; returns the final event."""
        while True:
            ev = self.init.next_event()
            out = self.init.data_to_send()
            if out:
                self.writer.write(encode_frame(FrameKind.HANDSHAKE, out))
            if ev is not NEED_DATA:
                return ev
            data = await self._read_handshake()
            if not data:
                return None
            self.init.receive_data(data)

    async def park(self) -> None:
        """Messages 1 to 3, then hold message 4 unread by the initiator."""
        data = await self._read_handshake()
        self.init.receive_data(data)
        ev = self.init.next_event()
        if ev is not NEED_DATA:
            self.outcome = ev
            return
        self.writer.write(encode_frame(FrameKind.HANDSHAKE, self.init.data_to_send()))
        self.msg4 = await self._read_handshake()

    def offline_check(self) -> bool:
        """Does the responder's proof verify for our guess?"""
        self.init.receive_data(self.msg4)
        ev = self.init.next_event()
        return isinstance(ev, HandshakeComplete) and "admin" in ev.peer_roles

    def close(self) -> None:
        self.writer.transport.abort()


def test_initiators_that_never_prove_over_loopback(guesses):
    # Protocol 1: VERIFY-only offers made the server prove without checking
    # anything, uncounted. Protocol 2: each such run is charged.
    limiter = PasswordRateLimiter(max_failures=3, window=600, cooldown=600)
    cfg = HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                 PasswordRole("admin", SECRET, limiter=limiter)])

    async def main():
        async with serve(service(), cfg) as server:
            found = []
            for candidate in ["a", "b", "c", "d", SECRET]:
                client = RawClient(Initiator(HandshakeConfig(
                    roles=[KeyRole("public", PUBLIC_KEY), PasswordRole("admin", candidate)])))
                await client.open(server.port)
                await client.park()
                found.append(client.offline_check())
                client.close()  # never answers
                await asyncio.sleep(0)
            return found

    found = run(main())
    assert not any(found)
    assert len(guesses) <= 3
    assert limiter.failures("127.0.0.1", "admin") <= 3


def test_parked_parallel_handshakes_over_loopback(guesses):
    limiter = PasswordRateLimiter(max_failures=5, window=600, cooldown=600)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)], timeout=90)

    async def main():
        async with serve(service(), cfg, handshake_timeout=90) as server:
            clients = [RawClient(Initiator(HandshakeConfig(
                roles=[PasswordRole("admin", SECRET if i == 59 else f"wrong-{i}")],
                timeout=90))) for i in range(60)]
            for c in clients:
                await c.open(server.port)
            await asyncio.gather(*(c.park() for c in clients))
            found = [c.offline_check() for c in clients if c.msg4]
            for c in clients:
                c.close()
            return found

    found = run(main())
    # Protocol 1: all 60 passed the check at Hello and the right one (last)
    # completed. Protocol 2: 5 runs in flight at most; the last is a dummy.
    assert not any(found)
    assert len(guesses) <= 5


def test_guesses_from_many_addresses_over_loopback(guesses):
    limiter = PasswordRateLimiter(max_failures=3, window=600, cooldown=600,
                                  role_max_failures=8)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)])

    async def main():
        async with serve(service(), cfg) as server:
            outcomes = []
            for host in range(2, 32):
                for attempt in range(3):
                    client = RawClient(Initiator(HandshakeConfig(
                        roles=[PasswordRole("admin", f"g{host}-{attempt}")])))
                    await client.open(server.port, local=f"127.0.0.{host}")
                    outcomes.append(await client.run())
                    client.close()
            return outcomes

    outcomes = run(main())
    # Before the fix: 3 guesses per address, 90 in all.
    assert len(guesses) <= 8
    assert not any(isinstance(ev, HandshakeComplete) for ev in outcomes)


def test_locked_password_role_does_not_take_key_roles_down():
    limiter = PasswordRateLimiter(max_failures=1, window=600, cooldown=600)
    cfg = HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                 PasswordRole("admin", SECRET, limiter=limiter)])
    client = HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY), PasswordRole("admin", SECRET)])

    async def main():
        async with serve(service(), cfg) as server:
            limiter.begin("127.0.0.1", "admin").failed()  # locked out now
            async with connect("127.0.0.1", server.port, client) as channel:
                return await channel.call("hello", b"")

    # Before the fix: the handshake failed with RATE_LIMITED.
    assert run(main()) == b"hi public"


def test_injected_rejects_do_not_lock_the_client_out_over_loopback():
    # Protocol 1: a relay that replaced the server's last handshake message by
    # a Reject counted a password failure at the client each time.
    from rolewire import errors
    from rolewire.handshake import RejectReason
    from rolewire.handshake.messages import Reject

    client_limiter = PasswordRateLimiter(max_failures=2)
    client = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=client_limiter)])
    # (the server keeps each run the relay cut after its proof: a guess it
    # cannot tell from a real one; give it room so the last call shows the
    # client is not locked)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET,
                                              limiter=PasswordRateLimiter(max_failures=100))])

    async def relay(target_port: int):
        async def handle(reader, writer):
            up_r, up_w = await asyncio.open_connection("127.0.0.1", target_port)

            async def up():
                try:
                    while data := await reader.read(65536):
                        up_w.write(data)
                except (ConnectionError, OSError):
                    pass
                finally:
                    up_w.close()

            async def down():
                decoder, seen = FrameDecoder(), 0
                try:
                    while data := await up_r.read(65536):
                        for kind, payload in decoder.feed(data):
                            if kind is FrameKind.HANDSHAKE:
                                seen += 1
                                if seen == 2:  # ResponderAuth -> an injected Reject
                                    payload = Reject(RejectReason.AUTH_FAILED).encode()
                            writer.write(encode_frame(kind, payload))
                except (ConnectionError, OSError):
                    pass
                finally:
                    writer.close()

            await asyncio.gather(up(), down())

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    async def main():
        async with serve(service(), cfg) as server:
            tap = await relay(server.port)
            async with tap:
                port = tap.sockets[0].getsockname()[1]
                for _ in range(5):
                    with pytest.raises(errors.HandshakeError):
                        async with connect("127.0.0.1", port, client) as channel:
                            await channel.call("hello")
            # straight to the server: not locked out
            async with connect("127.0.0.1", server.port, client) as channel:
                return await channel.call("hello")

    assert run(main()) == b"hi admin"
    assert client_limiter.failures("127.0.0.1", "admin") == 0
    assert client_limiter.locked_for("127.0.0.1", "admin") == 0
