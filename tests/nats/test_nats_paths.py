"""Several paths at once, and a real three-node cluster.

- One session receives its records over TCP and NATS at the same time (the
  paper's multi-transport case): the sender splits its records across a
  loopback TCP stream and a NATS subject, sends some on both, and delays
  one path; the receiver feeds both into the same sans-IO
  :class:`~rolewire.protocol.Connection` and every message is delivered
  exactly once.
- Across a cluster: a client on one node calls a service on another; the
  client's node is killed while calls flow, nats-py reconnects to another
  node, and the session goes on (no new handshake).
(asyncio.run inside plain tests: no pytest-asyncio.)"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter

import nats

from rolewire import errors
from rolewire.aio.nats import MAX_BAD_RECORDS
from rolewire.handshake import HandshakeConfig
from rolewire.nats import NatsCluster, NatsServer, connect_nats, serve_nats
from rolewire.protocol import Connection, ConnectionSettings, Notified
from rolewire.protocol.wire import split_packets
from rolewire.roles.key import KeyRole
from rolewire.services import Service

KEY = os.urandom(32)
CONFIG = HandshakeConfig(roles=[KeyRole("pipeline", KEY)])


def run(coro, timeout: float = 90.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def _pipeline_service() -> Service:
    service = Service("sink")

    @service.operation(roles=["pipeline"])
    def item(call, body):
        return None

    @service.operation(roles=["pipeline"])
    def echo(call, body):
        return body

    return service


def _connected_pair(now: float) -> tuple[Connection, Connection]:
    """A client and a server connection after an in-memory handshake."""
    # Duplicates are expected on a multi-path session: the bad-record budget
    # is the bus binding's (replays are dropped, not a fault).
    settings = ConnectionSettings(max_bad_records=MAX_BAD_RECORDS, keepalive_interval=None)
    client = Connection.client(CONFIG, now=now, settings=settings)
    server = Connection.server(CONFIG, _pipeline_service(), now=now, settings=settings)
    for _ in range(8):
        server.receive_data(client.data_to_send(now), now)
        client.receive_data(server.data_to_send(now), now)
        if client.established and server.established:
            break
    assert client.established and server.established
    client.events()
    server.events()
    return client, server


def test_one_session_over_tcp_and_nats_at_once(nats_server: NatsServer):
    rng = random.Random(7)
    n = 3000

    async def scenario():
        loop = asyncio.get_running_loop()
        client, server = _connected_pair(loop.time())
        delivered: Counter[bytes] = Counter()

        def take_events() -> None:
            for event in server.events():
                if isinstance(event, Notified):
                    delivered[event.body] += 1

        # Path 1: a TCP stream into the server connection.
        async def on_tcp(reader, writer):
            while data := await reader.read(65536):
                server.receive_data(data, loop.time())
                take_events()
            writer.close()

        tcp_server = await asyncio.start_server(on_tcp, "127.0.0.1", 0)
        port = tcp_server.sockets[0].getsockname()[1]
        _, tcp_out = await asyncio.open_connection("127.0.0.1", port)
        # Path 2: a NATS subject into the same server connection.
        sub_nc, pub_nc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)

        async def on_nats(msg):
            server.receive_packet(msg.data, loop.time())
            take_events()

        await sub_nc.subscribe("session.records", cb=on_nats)
        await sub_nc.flush()

        late: list[bytes] = []
        for start in range(0, n, 100):
            for i in range(start, start + 100):
                client.notify("item", b"m%d" % i)
            # One record per packet, so records can be spread and duplicated.
            for packet in split_packets(client.data_to_send(loop.time()), 0):
                choice = rng.random()
                if choice < 0.45:
                    tcp_out.write(packet)
                elif choice < 0.9:
                    late.append(packet)  # NATS, sent later: reordered
                else:
                    tcp_out.write(packet)  # both paths: a duplicate
                    late.append(packet)
            if len(late) > 150:
                rng.shuffle(late)
                for packet in late:
                    await pub_nc.publish("session.records", packet)
                late.clear()
            await tcp_out.drain()
        rng.shuffle(late)
        for packet in late:
            await pub_nc.publish("session.records", packet)
        await pub_nc.flush()
        deadline = loop.time() + 30
        while sum(delivered.values()) < n and loop.time() < deadline:
            await asyncio.sleep(0.02)
        tcp_out.close()
        tcp_server.close()
        await sub_nc.close()
        await pub_nc.close()
        return delivered, server

    delivered, server = run(scenario())
    assert delivered == Counter({b"m%d" % i: 1 for i in range(n)})  # each exactly once
    assert server.session is not None
    assert server.session.counters.replays_rejected > 0  # the duplicates were dropped
    assert server.established


def test_cluster_calls_across_nodes_and_node_loss(nats_cluster: NatsCluster):
    counts: Counter[bytes] = Counter()
    service = Service("sink")

    @service.operation(roles=["pipeline"])
    def echo(call, body):
        counts[body] += 1
        return body

    async def scenario():
        client_node, service_node, spare = nats_cluster.nodes
        snc = await nats.connect(service_node.url)
        # The client knows every node; it starts on client_node.
        cnc = await nats.connect(servers=[client_node.url, spare.url], dont_randomize=True,
                                 reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        assert cnc.connected_url.port == client_node.port
        instance = await serve_nats(service, CONFIG, snc, "svc.sink")
        channel = None
        for _ in range(100):  # interest travels between nodes asynchronously
            try:
                channel = await connect_nats(cnc, "svc.sink", CONFIG, timeout=5)
                break
            except errors.ServiceUnavailable:
                await asyncio.sleep(0.1)
        assert channel is not None
        answered, failed = [], []
        for i in range(40):
            if i == 15:
                client_node.kill()  # the client's node dies while calls flow
            try:
                body = b"c%d" % i
                assert await channel.call("echo", body, timeout=4) == body
                answered.append(body)
            except (errors.CallTimeout, errors.PeerUnresponsive, errors.ServiceUnavailable,
                    errors.ConnectionClosed) as exc:
                failed.append(type(exc).__name__)
        assert cnc.connected_url.port == spare.port  # nats-py reconnected elsewhere
        sessions = channel.sessions_opened
        await channel.close()
        await instance.close()
        await snc.close()
        await cnc.close()
        return answered, failed, sessions

    answered, _failed, sessions = run(scenario(), timeout=180)
    assert len(answered) >= 30
    assert all(counts[body] == 1 for body in answered)  # none run twice
    assert all(n == 1 for n in counts.values())
    assert sessions == 1  # records do not depend on the NATS connection
