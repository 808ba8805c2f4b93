"""An intermediary that attacks, on a real nats-server: a wiretap on ``>``
sees every packet, republishes captured packets (replay), reorders them,
truncates them, and injects one session's records into another session's
inbox. Nothing is accepted twice, nothing forged is accepted, no plaintext
is visible to the wiretap, and the sessions keep working.
(asyncio.run inside plain tests: no pytest-asyncio.)"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import nats

from rolewire.handshake import HandshakeConfig
from rolewire.nats import NatsServer, connect_nats, serve_nats
from rolewire.protocol.wire import decode_packet
from rolewire.roles.key import KeyRole
from rolewire.services import Service

KEY = os.urandom(32)
CONFIG = HandshakeConfig(roles=[KeyRole("payment", KEY)])
SECRET = b"card=4111-1111-1111-1111;cvv=737"


def run(coro, timeout: float = 90.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


class Wiretap:
    """Subscribes to every subject and keeps (subject, reply, data)."""

    def __init__(self) -> None:
        self.packets: list[tuple[str, str, bytes]] = []

    async def start(self, url: str) -> Wiretap:
        self.nc = await nats.connect(url)

        async def keep(msg):
            self.packets.append((msg.subject, msg.reply, msg.data))

        await self.nc.subscribe(">", cb=keep)
        await self.nc.flush()
        return self

    def session_packets(self, *, to_server: bool) -> list[tuple[str, str, bytes]]:
        """Record packets of established sessions (sent to an inbox)."""
        found = []
        for subject, reply, data in self.packets:
            if not subject.startswith("_INBOX.") or not data:
                continue
            server_side = subject.count(".") == 2  # <instance inbox>.<session id>
            try:
                kinds = {kind for kind, _ in decode_packet(data)}
            except Exception:  # noqa: BLE001, S112 - not a packet of ours
                continue
            if server_side == to_server and kinds == {2}:  # RECORD frames only
                found.append((subject, reply, data))
        return found


def make_service(counts: Counter[bytes]) -> Service:
    service = Service("payment")

    @service.operation(roles=["payment"])
    def charge(call, body):
        counts[body] += 1
        return b"ok " + body

    @service.operation(roles=["payment"])
    def note(call, body):
        counts[body] += 1

    return service


def test_wiretap_replays_reorders_truncates_injects(nats_server: NatsServer):
    counts: Counter[bytes] = Counter()
    service = make_service(counts)

    async def scenario():
        tap = await Wiretap().start(nats_server.url)
        snc, cnc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        instance = await serve_nats(service, CONFIG, snc, "svc.payment")
        alice = await connect_nats(cnc, "svc.payment", CONFIG)
        bob = await connect_nats(cnc, "svc.payment", CONFIG)
        for i in range(20):
            assert await alice.call("charge", SECRET + b"-alice-%d" % i) == \
                b"ok " + SECRET + b"-alice-%d" % i
        await alice.send_many("note", [SECRET + b"-note-%d" % i for i in range(50)])
        assert await bob.call("charge", SECRET + b"-bob") == b"ok " + SECRET + b"-bob"
        await asyncio.sleep(0.2)  # let the tap see the last replies
        before = Counter(counts)
        assert sum(before.values()) == 71

        # 1. No plaintext on the wire.
        assert not any(SECRET in data for _, _, data in tap.packets)
        assert not any(b"charge" in data or b"note" in data for _, _, data in tap.packets)

        to_server = tap.session_packets(to_server=True)
        to_client = tap.session_packets(to_server=False)
        assert to_server and to_client
        injector = await nats.connect(nats_server.url)
        # 2. Replay every captured packet, in reverse order (reordered),
        #    twice, to the subjects it was sent to.
        for _ in range(2):
            for subject, reply, data in reversed(to_server + to_client):
                await injector.publish(subject, data, reply=reply or "")
        # 3. Truncated and padded copies.
        for subject, reply, data in to_server[:10]:
            await injector.publish(subject, data[:-7], reply=reply or "")
            await injector.publish(subject, data + b"\x00" * 9, reply=reply or "")
        # 4. Alice's records into Bob's session inbox on the server.
        server_subjects = {subject for subject, _, _ in to_server}
        for subject in server_subjects:
            for other, reply, data in to_server:
                if other != subject:
                    await injector.publish(subject, data, reply=reply or "")
        # 5. A forged record: a captured one with one ciphertext bit flipped.
        subject, reply, data = to_server[0]
        forged = bytearray(data)
        forged[-1] ^= 1
        await injector.publish(subject, bytes(forged), reply=reply or "")
        await injector.flush()
        await asyncio.sleep(0.5)

        # Nothing was run twice, nothing forged was run ...
        assert counts == before
        # ... and both sessions still work.
        assert await alice.call("charge", b"after-alice") == b"ok after-alice"
        assert await bob.call("charge", b"after-bob") == b"ok after-bob"
        assert alice.sessions_opened == bob.sessions_opened == 1
        bad = [served.conn.bad_records for served in instance._served]
        await alice.close()
        await bob.close()
        await instance.close()
        for nc in (snc, cnc, injector, tap.nc):
            await nc.close()
        return bad

    bad = run(scenario())
    assert sum(bad) > 0  # the replays were seen and dropped
    assert counts[b"after-alice"] == counts[b"after-bob"] == 1
    assert all(n == 1 for n in counts.values())


def test_injected_garbage_and_foreign_hellos_do_not_disturb(nats_server: NatsServer):
    """Garbage on the service subject, on session subjects and on the
    client's inbox: dropped, the sessions go on."""
    counts: Counter[bytes] = Counter()
    service = make_service(counts)

    async def scenario():
        tap = await Wiretap().start(nats_server.url)
        snc, cnc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        instance = await serve_nats(service, CONFIG, snc, "svc.payment")
        channel = await connect_nats(cnc, "svc.payment", CONFIG)
        assert await channel.call("charge", b"1") == b"ok 1"
        await asyncio.sleep(0.2)
        subjects = {subject for subject, _, _ in tap.packets if subject.startswith("_INBOX.")}
        injector = await nats.connect(nats_server.url)
        for junk in (b"", b"\x00", os.urandom(50), b"\x00\x00\x00\x05\x02abcd",
                     b"\xff\xff\xff\xff\x02"):
            await injector.publish("svc.payment", junk, reply=injector.new_inbox())
            for subject in subjects:
                await injector.publish(subject, junk)
        await injector.flush()
        await asyncio.sleep(0.3)
        assert await channel.call("charge", b"2") == b"ok 2"
        await channel.close()
        await instance.close()
        for nc in (snc, cnc, injector, tap.nc):
            await nc.close()

    run(scenario())
    assert counts == Counter({b"1": 1, b"2": 1})
