"""rolewire over a real nats-server: calls, notifications, queue groups,
batching, typed errors, failover between instances of a role.
(asyncio.run inside plain tests: no pytest-asyncio.)"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import nats
import pytest

from rolewire import errors
from rolewire.handshake import HandshakeConfig
from rolewire.nats import NatsServer, connect_nats, serve_nats
from rolewire.protocol.wire import decode_packet, split_packets
from rolewire.roles.key import KeyRole
from rolewire.services import Service

PAYMENT_KEY = os.urandom(32)
SHOP_KEY = os.urandom(32)
PAYMENT = HandshakeConfig(roles=[KeyRole("payment", PAYMENT_KEY)])
SHOP = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)])
SERVER = HandshakeConfig(roles=[KeyRole("payment", PAYMENT_KEY), KeyRole("shop", SHOP_KEY)])


async def eventually(condition, timeout: float = 20.0) -> None:
    """Wait (bounded) until ``condition()`` holds: the other side's task
    may still be finishing when our call returns."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def run(coro, timeout: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


class Ledger:
    """A payment service that records which instance ran each call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: Counter[bytes] = Counter()
        self.notes: list[bytes] = []
        self.service = Service("payment")

        @self.service.operation(roles=["payment"])
        def charge(call, body):
            self.calls[body] += 1
            return self.name.encode() + b":" + body

        @self.service.operation(roles=["payment"])
        def note(call, body):
            self.notes.append(body)

        @self.service.operation(roles=["payment"])
        async def slow(call, body):
            self.calls[body] += 1
            await asyncio.sleep(30)
            return b"late"

        @self.service.operation(roles=["shop"])
        def restock(call, body):
            return b"ok"


# -- framing --------------------------------------------------------------------


def test_packets_hold_whole_frames():
    frames = b"".join(len(p).to_bytes(4, "big") + p for p in
                      (b"\x02" + b"a" * 10, b"\x02" + b"b" * 300, b"\x01" + b"c" * 5))
    assert split_packets(frames, 0) == [frames[:15], frames[15:320], frames[320:]]
    assert split_packets(frames, 1 << 20) == [frames]
    packed = split_packets(frames, 320)
    assert packed == [frames[:320], frames[320:]]
    assert [f for p in packed for f in decode_packet(p)] == decode_packet(frames)
    for bad in (frames[:-1], frames + b"\x00", b"", frames[:3]):
        with pytest.raises(errors.ProtocolViolation):
            decode_packet(bad)


# -- calls -------------------------------------------------------------------------


def test_call_notify_send_many_and_roles(nats_server: NatsServer):
    ledger = Ledger("a")

    async def scenario():
        snc, cnc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        async with await serve_nats(ledger.service, SERVER, snc, "svc.payment"), \
                await connect_nats(cnc, "svc.payment", PAYMENT) as channel:
                assert channel.peer_roles == {"payment"}
                assert await channel.call("charge", b"1") == b"a:1"
                await channel.notify("note", b"n1")
                await channel.send_many("note", [b"m%d" % i for i in range(2000)])
                assert await channel.call("charge", b"2") == b"a:2"  # after the notes
                with pytest.raises(errors.Forbidden):
                    await channel.call("restock")
                with pytest.raises(errors.RolewireError):
                    await channel.call("nosuch")
        await snc.close()
        await cnc.close()

    run(scenario())
    assert ledger.notes == [b"n1"] + [b"m%d" % i for i in range(2000)]


def test_a_call_that_cannot_be_sealed_fails_at_once(nats_server: NatsServer):
    """The session closed itself (its integrity limit) under the channel: the
    next call raises the record layer's error instead of waiting for a reply
    that was never published. No timer could end the wait instead (no call
    timeout, no keepalive): without the driver's hand-on of an ended
    connection's events the call hangs and the run's bound fails the test."""
    ledger = Ledger("a")

    async def scenario():
        snc, cnc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        async with await serve_nats(ledger.service, SERVER, snc, "svc.payment"), \
                await connect_nats(cnc, "svc.payment", PAYMENT, call_timeout=None,
                                   keepalive_interval=None) as channel:
            assert await channel.call("charge", b"1") == b"a:1"
            channel.channel.connection.session.close()
            with pytest.raises(errors.RecordLayerClosed):
                await channel.call("charge", b"2")
        await snc.close()
        await cnc.close()

    run(scenario(), timeout=20.0)


@pytest.mark.parametrize("batch", [True, False])
def test_large_bodies_and_batching(nats_server: NatsServer, batch: bool):
    ledger = Ledger("a")
    bodies = [os.urandom(200_000) for _ in range(12)]  # > max_payload together

    async def scenario():
        snc, cnc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        packets: list[int] = []

        async def tap(msg):
            packets.append(len(msg.data))

        await cnc.subscribe(">", cb=tap)
        instance = await serve_nats(ledger.service, SERVER, snc, "svc.payment", batch=batch)
        channel = await connect_nats(cnc, "svc.payment", PAYMENT, batch=batch)
        await channel.send_many("note", bodies)
        await channel.send_many("note", [b"x" * 64] * 300)
        await channel.call("charge", b"done")
        await channel.close()
        await instance.close()
        await snc.close()
        await cnc.close()
        return packets, snc.max_payload

    packets, max_payload = run(scenario())
    assert ledger.notes == bodies + [b"x" * 64] * 300
    assert max(packets) <= max_payload
    if batch:
        # 300 small notes in a handful of packets, not 300
        assert len(packets) < 100
    else:
        assert len(packets) > 300


def test_no_instance_is_a_typed_error(nats_server: NatsServer):
    async def scenario():
        nc = await nats.connect(nats_server.url)
        with pytest.raises(errors.ServiceUnavailable):
            await connect_nats(nc, "svc.nobody", PAYMENT, timeout=20)
        await nc.close()

    run(scenario())


def test_wrong_role_is_refused(nats_server: NatsServer):
    ledger = Ledger("a")
    stranger = HandshakeConfig(roles=[KeyRole("payment", os.urandom(32))])

    async def scenario():
        snc, cnc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        async with await serve_nats(ledger.service, SERVER, snc, "svc.payment") as instance:
            with pytest.raises(errors.HandshakeError):
                await connect_nats(cnc, "svc.payment", stranger)
            await eventually(lambda: instance.sessions == 0)
        await snc.close()
        await cnc.close()

    run(scenario())
    assert not ledger.calls


def test_queue_group_shares_sessions(nats_server: NatsServer):
    ledgers = [Ledger("a"), Ledger("b")]

    async def scenario():
        servers = [await nats.connect(nats_server.url) for _ in ledgers]
        instances = [await serve_nats(ledger.service, SERVER, nc, "svc.payment")
                     for ledger, nc in zip(ledgers, servers)]
        cnc = await nats.connect(nats_server.url)
        channels = [await connect_nats(cnc, "svc.payment", PAYMENT) for _ in range(24)]
        answers = await asyncio.gather(*(c.call("charge", b"%d" % i)
                                         for i, c in enumerate(channels)))
        for channel in channels:
            await channel.close()
        for instance in instances:
            await instance.close()
        for nc in [*servers, cnc]:
            await nc.close()
        return answers

    answers = run(scenario())
    served_by = Counter(answer.split(b":")[0] for answer in answers)
    assert set(served_by) == {b"a", b"b"}  # both instances took sessions
    assert sum(sum(ledger.calls.values()) for ledger in ledgers) == 24


def test_failover_to_another_instance(nats_server: NatsServer):
    """The instance a client is bound to stops (its NATS connection is cut,
    as when the process dies): the call in flight fails with a typed error,
    the next call handshakes with the other instance; no call runs twice."""
    first, second = Ledger("a"), Ledger("b")

    async def scenario():
        nc_first = await nats.connect(nats_server.url)
        instance = await serve_nats(first.service, SERVER, nc_first, "svc.payment")
        cnc = await nats.connect(nats_server.url)
        channel = await connect_nats(cnc, "svc.payment", PAYMENT, keepalive_interval=0.5,
                                     liveness_timeout=2.0)
        assert await channel.call("charge", b"before") == b"a:before"
        nc_second = await nats.connect(nats_server.url)
        other = await serve_nats(second.service, SERVER, nc_second, "svc.payment")
        in_flight = asyncio.ensure_future(channel.call("slow", b"in-flight"))
        while not first.calls[b"in-flight"]:
            await asyncio.sleep(0.01)
        await nc_first.close()  # the bound instance is gone, without a CLOSE
        with pytest.raises((errors.ServiceUnavailable, errors.PeerUnresponsive,
                            errors.ConnectionClosed)):
            await in_flight
        assert await channel.call("charge", b"after") == b"b:after"
        assert channel.sessions_opened == 2
        await channel.close()
        await other.close()
        del instance
        await nc_second.close()
        await cnc.close()

    run(scenario())
    assert first.calls == Counter({b"before": 1, b"in-flight": 1})
    assert second.calls == Counter({b"after": 1})


def test_graceful_instance_close_ends_sessions_cleanly(nats_server: NatsServer):
    ledger = Ledger("a")

    async def scenario():
        snc, cnc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        instance = await serve_nats(ledger.service, SERVER, snc, "svc.payment")
        channel = await connect_nats(cnc, "svc.payment", PAYMENT)
        assert await channel.call("charge", b"1") == b"a:1"
        await instance.close()
        assert instance.sessions == 0
        # No instance left to fail over to: a typed error, never a hang (which
        # one depends on whether our side saw the CLOSE before the call).
        with pytest.raises((errors.ServiceUnavailable, errors.ConnectionClosed,
                            errors.PeerUnresponsive, errors.HandshakeError)):
            await channel.call("charge", b"2", timeout=20)
        await snc.close()
        await cnc.close()

    run(scenario())
    assert ledger.calls == Counter({b"1": 1})


def test_hello_lost_in_the_queue_group_is_retransmitted(nats_server: NatsServer):
    """A queue-group member that takes Hellos and never answers (a process
    that just died is still picked by the broker for a moment): the client
    sends its Hello again until a live instance answers."""
    ledger = Ledger("a")

    async def scenario():
        snc, cnc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        black_hole = await nats.connect(nats_server.url)
        swallowed = []

        async def swallow(msg):
            swallowed.append(msg.data)

        # It takes (and loses) up to 8 Hellos, then leaves the group: enough
        # to lose several, without making the test a matter of chance.
        await black_hole.subscribe("svc.payment", queue="svc.payment", cb=swallow, max_msgs=8)
        await black_hole.flush()
        async with await serve_nats(ledger.service, SERVER, snc, "svc.payment"):
            for i in range(6):
                channel = await connect_nats(cnc, "svc.payment", PAYMENT, timeout=30)
                assert await channel.call("charge", b"%d" % i) == b"a:%d" % i
                await channel.close()
        for nc in (snc, cnc, black_hole):
            await nc.close()
        return swallowed

    swallowed = run(scenario(), timeout=120)
    assert swallowed  # the black hole did take some Hellos
    assert sum(ledger.calls.values()) == 6


WORKER = """
import asyncio, base64, sys
import nats
from rolewire.handshake import HandshakeConfig
from rolewire.nats import serve_nats
from rolewire.roles.key import KeyRole
from rolewire.services import Service

service = Service("payment")

@service.operation(roles=["payment"])
def charge(call, body):
    return b"worker:" + body

@service.operation(roles=["payment"])
async def slow(call, body):
    print("slow", body.decode(), flush=True)
    await asyncio.sleep(60)
    return b"late"

async def main():
    config = HandshakeConfig(roles=[KeyRole("payment", base64.b64decode(sys.argv[2]))])
    nc = await nats.connect(sys.argv[1])
    await serve_nats(service, config, nc, "svc.payment")
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_failover_when_the_worker_process_is_killed(nats_server: NatsServer, tmp_path):
    """A real worker process holding the session is SIGKILLed with a call in
    flight: that call fails with a typed error, the next call goes to the
    other instance of the queue group."""
    import base64
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    survivor = Ledger("survivor")

    worker = subprocess.Popen(
        [sys.executable, str(script), nats_server.url, base64.b64encode(PAYMENT_KEY).decode()],
        stdout=subprocess.PIPE, text=True)

    async def scenario():
        try:
            assert worker.stdout is not None
            loop = asyncio.get_running_loop()
            assert (await loop.run_in_executor(None, worker.stdout.readline)).strip() == "ready"
            cnc = await nats.connect(nats_server.url)
            channel = await connect_nats(cnc, "svc.payment", PAYMENT, keepalive_interval=0.5,
                                         liveness_timeout=2.0)
            assert await channel.call("charge", b"1") == b"worker:1"
            snc = await nats.connect(nats_server.url)
            other = await serve_nats(survivor.service, SERVER, snc, "svc.payment")
            in_flight = asyncio.ensure_future(channel.call("slow", b"x", timeout=30))
            assert (await loop.run_in_executor(None, worker.stdout.readline)).strip() == "slow x"
            worker.kill()
            await loop.run_in_executor(None, worker.wait)
            with pytest.raises((errors.ServiceUnavailable, errors.PeerUnresponsive,
                                errors.ConnectionClosed)):
                await in_flight
            assert await channel.call("charge", b"2") == b"survivor:2"
            await channel.close()
            await other.close()
            await snc.close()
            await cnc.close()
        finally:
            if worker.poll() is None:
                worker.kill()

    try:
        run(scenario(), timeout=120)
    finally:
        worker.wait()
    assert survivor.calls == Counter({b"2": 1})
