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
    HandshakeFailed,
    Initiator,
    RejectReason,
    machine,
)
from rolewire.handshake.messages import Flag
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
    runs: set[int] = set()
    verify, prove = PasswordExchange.verify, PasswordExchange.prove

    def counting_verify(ex, direction, h, proof):
        if not ex.initiator:
            runs.add(id(ex))
        return verify(ex, direction, h, proof)

    def counting_prove(ex, direction, h):
        if not ex.initiator:
            runs.add(id(ex))
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
    address, that can stop after message 2 and send message 3 later."""

    def __init__(self, init: Initiator) -> None:
        self.init = init
        self.decoder = FrameDecoder()
        self.held = b""
        self.outcome: object = None

    async def open(self, port: int, local: str = "127.0.0.1") -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(local, 0))
        self.writer.write(encode_frame(FrameKind.HANDSHAKE, self.init.data_to_send()))

    async def run(self) -> object:
        """Runs the handshake to its end; returns the final event."""
        while True:
            ev = self.init.next_event()
            if ev is not NEED_DATA:
                return ev
            out = self.init.data_to_send()
            if out:
                self.writer.write(encode_frame(FrameKind.HANDSHAKE, out))
            data = await asyncio.wait_for(self.reader.read(65536), 60)
            if not data:
                return None
            for kind, payload in self.decoder.feed(data):
                assert kind is FrameKind.HANDSHAKE
                self.init.receive_data(payload)

    async def park(self) -> None:
        """Read message 2 and hold message 3."""
        while not self.held:
            data = await asyncio.wait_for(self.reader.read(65536), 60)
            if not data:
                self.outcome = "closed"
                return
            for kind, payload in self.decoder.feed(data):
                self.init.receive_data(payload)
            ev = self.init.next_event()
            if isinstance(ev, HandshakeFailed):
                self.outcome = ev
                return
            self.held = self.init.data_to_send()

    async def finish(self) -> object:
        """Send message 3 and read the outcome."""
        self.writer.write(encode_frame(FrameKind.HANDSHAKE, self.held))
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 60)
            if not data:
                break
            for kind, payload in self.decoder.feed(data):
                if kind is FrameKind.HANDSHAKE and not self.init.finished:
                    self.init.receive_data(payload)
            if not self.init.finished:
                ev = self.init.next_event()
                if ev is not NEED_DATA:
                    self.outcome = ev
                    break
            else:
                break
        self.writer.close()
        return self.outcome

    def close(self) -> None:
        self.writer.transport.abort()


def verify_only(password: str, monkeypatch) -> Initiator:
    real = machine._my_flags

    def flags(role):
        return int(Flag.VERIFY) if isinstance(role, PasswordRole) else real(role)

    with monkeypatch.context() as m:
        m.setattr(machine, "_my_flags", flags)
        return Initiator(HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                                PasswordRole("admin", password)]))


def test_verify_only_offers_over_loopback(monkeypatch, guesses):
    limiter = PasswordRateLimiter(max_failures=5)
    cfg = HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY),
                                 PasswordRole("admin", SECRET, limiter=limiter)])

    async def main():
        async with serve(service(), cfg) as server:
            outcomes = []
            for candidate in ["a", "b", "c", SECRET]:
                client = RawClient(verify_only(candidate, monkeypatch))
                await client.open(server.port)
                outcomes.append(await client.run())
                client.close()
            return outcomes

    outcomes = run(main())
    for ev in outcomes:
        # Before the fix the last one completed with "admin" verified.
        assert isinstance(ev, HandshakeFailed) and ev.remote
        assert ev.reason_code == RejectReason.ILLEGAL_PARAMETER
    assert len(guesses) == 0


def test_parked_parallel_handshakes_over_loopback(guesses):
    limiter = PasswordRateLimiter(max_failures=5, window=600, cooldown=600)
    cfg = HandshakeConfig(roles=[PasswordRole("admin", SECRET, limiter=limiter)], timeout=90)

    async def main():
        async with serve(service(), cfg, handshake_timeout=90) as server:
            clients = [RawClient(Initiator(HandshakeConfig(
                roles=[PasswordRole("admin", f"wrong-{i}")], timeout=90)))
                for i in range(60)]
            for c in clients:
                await c.open(server.port)
            await asyncio.gather(*(c.park() for c in clients))
            parked = [c for c in clients if c.held]
            for c in parked:
                await c.finish()
            for c in clients:
                if not c.held:
                    c.close()
            # the right password, after the lockout started
            right = RawClient(Initiator(HandshakeConfig(roles=[PasswordRole("admin", SECRET)])))
            await right.open(server.port)
            return len(parked), await right.run()

    n_parked, last = run(main())
    # Before the fix: all 60 parked, 60 guesses counted afterwards.
    assert n_parked <= 5
    assert len(guesses) <= 5
    assert isinstance(last, HandshakeFailed) and last.reason_code == RejectReason.RATE_LIMITED


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
