"""Issue 11 section 4: records that fail to authenticate are counted per
session, and the session closes past a limit (the idea of RFC 9001's
integrity limit). Sans-IO (Session) and over a real loopback server."""

from __future__ import annotations

import asyncio
import os

import pytest

from rolewire import errors
from rolewire.aio import connect, serve
from rolewire.aio.framing import encode_records
from rolewire.handshake import HandshakeConfig
from rolewire.record import Suite
from rolewire.roles.key import KeyRole
from rolewire.rpc import CallMessage, MessageType, encode
from rolewire.services import Service
from rolewire.session import INTEGRITY_LIMIT, Session


def pair(**kwargs):
    keys = {name: os.urandom(32) for name in ("ak", "bk")}
    ivs = {name: os.urandom(12) for name in ("ai", "bi")}
    alice = Session.from_keys(suite=Suite.CHACHA20_POLY1305, send_key=keys["ak"],
                              send_iv=ivs["ai"], recv_key=keys["bk"], recv_iv=ivs["bi"])
    bob = Session.from_keys(suite=Suite.CHACHA20_POLY1305, send_key=keys["bk"],
                            send_iv=ivs["bi"], recv_key=keys["ak"], recv_iv=ivs["ai"],
                            is_initiator=False)
    return alice, bob


def forge(record: bytes) -> bytes:
    return record[:-1] + bytes([record[-1] ^ 1])


def test_session_closes_past_the_integrity_limit():
    """The attack: an on-path attacker sends forged records without end,
    each a forgery attempt against the session key. Old code counted them
    and went on opening forever; now the session closes itself."""
    alice, bob = pair()
    good = alice.seal(b"hello")
    for _ in range(INTEGRITY_LIMIT):
        with pytest.raises(errors.AuthenticationFailed):
            bob.open(forge(good))
    assert not bob.closed
    assert bob.open(good) == b"hello"  # below the limit the session goes on
    with pytest.raises(errors.IntegrityLimitExceeded):
        bob.open(forge(alice.seal(b"x")))
    assert bob.closed and bob.counters.auth_failures == INTEGRITY_LIMIT + 1
    with pytest.raises(errors.RecordLayerClosed):
        bob.open(alice.seal(b"after"))
    with pytest.raises(errors.RecordLayerClosed):
        bob.seal(b"reply")


def test_batch_open_closes_the_session_after_the_batch():
    alice, bob = pair()
    records = [forge(alice.seal(b"%d" % i)) for i in range(INTEGRITY_LIMIT + 5)]
    results = bob.open_many(records)
    assert all(isinstance(r, errors.AuthenticationFailed) for r in results)
    assert bob.closed


def test_replays_do_not_count_against_the_integrity_limit():
    alice, bob = pair()
    record = alice.seal(b"once")
    assert bob.open(record) == b"once"
    for _ in range(INTEGRITY_LIMIT * 2):
        with pytest.raises(errors.ReplayDetected):
            bob.open(record)
    assert not bob.closed


def test_configurable_limit():
    alice, bob = pair()
    strict = Session(layer=bob.record_layer, peer_roles=frozenset(), suite=None,
                     transcript_hash=b"", is_initiator=False, integrity_limit=0)
    with pytest.raises(errors.IntegrityLimitExceeded):
        strict.open(forge(alice.seal(b"x")))


def test_forged_records_over_loopback_close_the_session():
    key = os.urandom(32)
    cfg = HandshakeConfig(roles=[KeyRole("svc", key)])
    service = Service("s")
    service.add("echo", lambda call, body: body, roles=["svc"])

    async def main():
        async with serve(service, cfg) as server:
            async with connect("127.0.0.1", server.port, cfg) as channel:
                record = channel.session.seal(encode(CallMessage(MessageType.NOTIFY, 0,
                                                                 "echo", b"x")))
                channel._writer.write(encode_records([forge(record)] * INTEGRITY_LIMIT))
                assert await channel.call("echo", b"alive", timeout=20) == b"alive"
                fresh = channel.session.seal(b"y" * 16)
                channel._writer.write(encode_records([forge(fresh)] * 2))
                with pytest.raises(errors.ConnectionClosed):
                    await channel.call("echo", b"gone", timeout=20)
            return server.stats

    stats = asyncio.run(asyncio.wait_for(main(), 60))
    assert stats.auth_failures == INTEGRITY_LIMIT + 2 and stats.protocol_errors == 1


# -- the pre-authentication frame bound, sans-IO (protocol.Connection) ------------------


def test_sans_io_connection_refuses_a_large_pre_auth_frame_at_its_header():
    """Issue 11 s.4 over the sans-IO core: a responder that has authenticated
    nobody refuses a frame announcing more than the largest handshake
    message as soon as its 5-byte header arrives, before buffering it."""
    import struct

    from rolewire.protocol import Connection, Failed
    from rolewire.protocol.wire import FrameKind

    key = os.urandom(32)
    cfg = HandshakeConfig(roles=[KeyRole("svc", key)])
    service = Service("s")
    for kind, size, refused in ((FrameKind.HANDSHAKE, 1 << 20, True),
                                (FrameKind.RECORD, 1 << 20, True),
                                (FrameKind.HANDSHAKE, cfg.max_message_size + 1, True),
                                (FrameKind.HANDSHAKE, cfg.max_message_size, False)):
        server = Connection.server(cfg, service, now=0.0, peer="attacker")
        server.receive_data(struct.pack(">IB", size + 1, kind) + b"\x01" * 100, 0.0)
        failed = [e for e in server.events() if isinstance(e, Failed)]
        assert bool(failed) is refused, (kind, size)
        assert server.ended is refused
    # A legitimate handshake still completes (its frames are far below).
    client = Connection.client(cfg, now=0.0, peer="server")
    server = Connection.server(cfg, service, now=0.0, peer="client")
    for _ in range(4):
        server.receive_data(client.data_to_send(0.0), 0.0)
        client.receive_data(server.data_to_send(0.0), 0.0)
    assert server.handshake_done and client.handshake_done
