"""The native fast path and its pure twin: byte-identical buffers and
arrays, the container format, and every way to feed it garbage."""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolewire.errors import ConfigurationError, ProtocolViolation
from rolewire.protocol import fastpath
from rolewire.protocol.fastpath import MSG, SLOW, FastReceiver, OperationTable, seal_frames
from rolewire.protocol.wire import (
    CallMessage,
    FrameKind,
    MessageType,
    decode,
    decode_container,
    encode,
    encode_container,
    encode_frame,
)
from rolewire.record import RecordLayer, RecordLimits, Suite

pytestmark = pytest.mark.skipif(not fastpath.native_available(),
                                reason="the C fast path is not built (or ROLEWIRE_PURE=1)")

LIMITS = RecordLimits(soft_messages=1 << 40, soft_bytes=1 << 50)
OPS = ["sink", "echo", "done", "ünïcode"]


def layers(suite: Suite = Suite.CHACHA20_POLY1305, limits: RecordLimits = LIMITS):
    """Sender and receiver, each in both backends, with the same keys."""
    k1, k2 = os.urandom(32), os.urandom(32)
    iv1, iv2 = os.urandom(suite.iv_size), os.urandom(suite.iv_size)

    def make(backend: str, send: tuple[bytes, bytes], recv: tuple[bytes, bytes]) -> RecordLayer:
        return RecordLayer(suite, send_key=send[0], send_iv=send[1], recv_key=recv[0],
                           recv_iv=recv[1], limits=limits, backend=backend)

    a = {b: make(b, (k1, iv1), (k2, iv2)) for b in ("c", "pure")}
    b = {x: make(x, (k2, iv2), (k1, iv1)) for x in ("c", "pure")}
    return a, b


def message(kind: MessageType, call_id: int, op: str, body: bytes) -> bytes:
    return encode(CallMessage(kind, call_id, op, body))


def snapshot(batch: fastpath.Received) -> tuple:
    n = batch.count
    return (n, batch.records, batch.opened, batch.flags, batch.out_used,
            bytes(batch.buffer[:batch.out_used]),
            *(list(getattr(batch, f)[:n]) for f in
              ("status", "types", "call_ids", "op_index", "op_off", "op_len", "body_off",
               "body_len")))


def feed_both(receivers: dict[str, FastReceiver], chunk: bytes) -> fastpath.Received:
    c, p = receivers["c"].feed(chunk), receivers["pure"].feed(chunk)
    assert snapshot(c) == snapshot(p)
    assert receivers["c"].buffered == receivers["pure"].buffered
    assert receivers["c"].handshake_pending == receivers["pure"].handshake_pending
    return c


def receivers_for(b: dict[str, RecordLayer], ops: OperationTable | None = None
                  ) -> dict[str, FastReceiver]:
    return {"c": FastReceiver(b["c"], ops, native=True),
            "pure": FastReceiver(b["pure"], ops, native=False)}


def sealed_both(a: dict[str, RecordLayer], messages: list[bytes], container_max: int = 0
                ) -> bytes:
    c = seal_frames(a["c"], messages, container_max, native=True)
    p = seal_frames(a["pure"], messages, container_max, native=False)
    assert c == p
    return c[0]


def decoded(batch: fastpath.Received, ops: OperationTable) -> list[CallMessage]:
    out = []
    for i in range(batch.count):
        assert batch.status[i] == MSG
        index = batch.op_index[i]
        op = ops.names[index] if index >= 0 else batch.operation(i).decode()
        out.append(CallMessage(MessageType(batch.types[i]), batch.call_ids[i], op,
                               batch.body(i)))
    return out


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("container_max", [0, 16 * 1024])
def test_round_trip_both_backends(suite: Suite, container_max: int) -> None:
    a, b = layers(suite)
    ops = OperationTable(OPS)
    msgs = [CallMessage(MessageType.NOTIFY, 0, "sink", os.urandom(i % 300)) for i in range(500)]
    msgs += [CallMessage(MessageType.REQUEST, 7, "echo", b"x" * 20000),
             CallMessage(MessageType.REQUEST, 8, "other", b"y"),
             CallMessage(MessageType.RESPONSE, 9, "ünïcode", b"")]
    frames = sealed_both(a, [encode(m) for m in msgs], container_max)
    batch = feed_both(receivers_for(b, ops), frames)
    assert decoded(batch, ops) == msgs
    assert batch.records == batch.opened
    if container_max:
        assert batch.records < len(msgs) // 10  # grouped
    else:
        assert batch.records == len(msgs)
    unknown = [i for i in range(batch.count) if batch.op_index[i] < 0]
    assert [batch.operation(i) for i in unknown] == [b"other"]


def test_containers_respect_their_bound_and_single_messages_stay_plain() -> None:
    a, b = layers()
    small = [message(MessageType.NOTIFY, 0, "sink", b"z" * 100) for _ in range(100)]
    frames = sealed_both(a, small, 1024)
    # Each record carries at most 1024 bytes of plaintext.
    pos, sizes = 0, []
    while pos < len(frames):
        (length,) = struct.unpack_from(">I", frames, pos)
        sizes.append(length - 1 - Suite.CHACHA20_POLY1305.overhead)
        pos += 4 + length
    assert max(sizes) <= 1024 and len(sizes) == 13  # 8 items of 118 bytes each
    one = sealed_both(a, small[:1], 1024)
    assert len(one) == 5 + len(small[0]) + Suite.CHACHA20_POLY1305.overhead
    batch = feed_both(receivers_for(b), frames + one)
    assert batch.count == 101


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=80),
       container_max=st.sampled_from([0, 18, 64, 1000, 16384]),
       cuts=st.lists(st.integers(0, 1 << 30), max_size=6))
def test_differential_with_random_sizes_and_chunking(sizes: list[int], container_max: int,
                                                     cuts: list[int]) -> None:
    a, b = layers()
    ops = OperationTable(OPS)
    msgs = [CallMessage(MessageType.NOTIFY, i, "sink", bytes([i % 256]) * n)
            for i, n in enumerate(sizes)]
    frames = sealed_both(a, [encode(m) for m in msgs], container_max)
    receivers = receivers_for(b, ops)
    points = sorted({c % (len(frames) + 1) for c in cuts} | {0, len(frames)})
    got: list[CallMessage] = []
    for start, end in itertools.pairwise(points):
        got += decoded(feed_both(receivers, frames[start:end]), ops)
    assert got == msgs
    assert receivers["c"].buffered == 0


# --- negative cases --------------------------------------------------------------------


def test_replayed_tampered_and_foreign_records_are_reported_per_entry() -> None:
    a, b = layers()
    frames = sealed_both(a, [message(MessageType.NOTIFY, 0, "sink", b"a" * 40)] * 3)
    first = frames[:len(frames) // 3]
    tampered = bytearray(first)
    tampered[-1] ^= 1
    short = encode_frame(FrameKind.RECORD, b"\x01\x01")  # truncated header
    receivers = receivers_for(b)
    batch = feed_both(receivers, first + bytes(tampered) + first + short + frames)
    assert list(batch.status[:batch.count]) == [MSG, -7, -7, -1, -7, MSG, MSG]
    assert batch.records == 7 and batch.opened == 3
    assert type(batch.error(1)).__name__ == "ReplayDetected"


def test_tampered_record_fails_authentication() -> None:
    a, b = layers()
    frames = bytearray(sealed_both(a, [message(MessageType.NOTIFY, 0, "sink", b"a" * 40)]))
    frames[-1] ^= 0x40
    batch = feed_both(receivers_for(b), bytes(frames))
    assert list(batch.status[:1]) == [-9]


@pytest.mark.parametrize("frame", [struct.pack(">I", 0) + b"\x02",
                                   struct.pack(">I", (1 << 20) + 200) + b"\x02",
                                   encode_frame(FrameKind.RECORD, b"")[:4] + b"\x09"])
def test_bad_frames_are_protocol_violations(frame: bytes) -> None:
    _a, b = layers()
    for backend, receiver in receivers_for(b).items():
        with pytest.raises(ProtocolViolation):
            receiver.feed(frame + b"\x00" * 8)
        del backend


def test_handshake_frame_stops_the_batch() -> None:
    a, b = layers()
    one = sealed_both(a, [message(MessageType.NOTIFY, 0, "sink", b"1")])
    two = sealed_both(a, [message(MessageType.NOTIFY, 0, "sink", b"2")])
    hs = encode_frame(FrameKind.HANDSHAKE, b"hello")
    receivers = receivers_for(b)
    batch = feed_both(receivers, one + hs + two)
    assert batch.count == 1 and receivers["c"].handshake_pending
    for r in receivers.values():
        assert r.take_frame() == (FrameKind.HANDSHAKE, b"hello")
    batch = feed_both(receivers, b"")
    assert batch.count == 1 and batch.body(0) == b"2"


def _sealed_plaintexts(a: dict[str, RecordLayer], plaintexts: list[bytes]) -> bytes:
    # One plaintext per record (container_max 0): lets a test send any bytes.
    return sealed_both(a, plaintexts, 0)


BAD_CONTAINERS = [
    bytes([8]) + bytes(9),                                            # no item
    bytes([8]) + bytes(9) + b"\x00\x00",                              # item header cut
    bytes([8]) + bytes(9) + struct.pack(">I", 9) + bytes(9),          # item below a header
    bytes([8]) + bytes(9) + struct.pack(">I", 50) + bytes(10),        # item overruns
    bytes([8, 0, 0, 0, 0, 0, 0, 0, 1, 0]) + struct.pack(">I", 10) + bytes([2]) + bytes(9),
    bytes([8]) + bytes(8) + b"\x01x" + struct.pack(">I", 10) + bytes([2]) + bytes(9),
    bytes([0x88]) + bytes(9) + struct.pack(">I", 10) + bytes([2]) + bytes(9),
    # nested container
    bytes([8]) + bytes(9) + struct.pack(">I", 24) + encode_container([bytes([2]) + bytes(9)]),
]


@pytest.mark.parametrize("plaintext", BAD_CONTAINERS)
def test_malformed_containers_go_slow_and_the_decoder_rejects_them(plaintext: bytes) -> None:
    a, b = layers()
    batch = feed_both(receivers_for(b), _sealed_plaintexts(a, [plaintext]))
    assert list(batch.status[:batch.count]) == [SLOW]
    assert batch.plaintext(0) == plaintext
    with pytest.raises(ProtocolViolation):
        decode_container(plaintext)


@pytest.mark.parametrize("plaintext", [b"", b"\x02", bytes([9]) + bytes(9),
                                       bytes([2]) + bytes(8) + b"\x05ab",
                                       bytes([6]) + bytes(9),        # SIGNED_BATCH: slow
                                       bytes([7]) + bytes(14),       # REHANDSHAKE: slow
                                       encode(CallMessage(MessageType.NOTIFY, 1, "sink", b"b",
                                                          {"k": b"v"}))])
def test_unusual_messages_go_slow(plaintext: bytes) -> None:
    a, b = layers()
    batch = feed_both(receivers_for(b), _sealed_plaintexts(a, [plaintext]))
    assert list(batch.status[:batch.count]) == [SLOW]
    assert batch.plaintext(0) == plaintext


def test_slow_items_inside_a_valid_container() -> None:
    a, b = layers()
    meta = encode(CallMessage(MessageType.NOTIFY, 1, "sink", b"b", {"k": b"v"}))
    plain = message(MessageType.NOTIFY, 2, "sink", b"c")
    frames = _sealed_plaintexts(a, [encode_container([plain, meta, plain])])
    batch = feed_both(receivers_for(b, OperationTable(OPS)), frames)
    assert list(batch.status[:3]) == [MSG, SLOW, MSG]
    assert decode(batch.plaintext(1)).metadata == {"k": b"v"}
    assert decode_container(encode_container([plain, meta])) == [plain, meta]


def test_encode_container_refuses_nesting_and_empty() -> None:
    with pytest.raises(ProtocolViolation):
        encode_container([])
    with pytest.raises(ProtocolViolation):
        encode_container([encode_container([bytes([2]) + bytes(9)])])


def test_rekey_flag_and_exhaustion_match() -> None:
    limits = RecordLimits(soft_messages=5, soft_bytes=1 << 50, hard_messages=8)
    a, _b = layers(limits=limits)
    msgs = [message(MessageType.NOTIFY, 0, "sink", b"q")] * 3
    c = seal_frames(a["c"], msgs, native=True)
    assert c == seal_frames(a["pure"], msgs, native=False) and c[2] == 0
    c = seal_frames(a["c"], msgs, native=True)
    p = seal_frames(a["pure"], msgs, native=False)
    assert c == p and c[2] & 1  # soft limit reached: rekey
    with pytest.raises(Exception) as c_exc:
        seal_frames(a["c"], msgs, native=True)
    with pytest.raises(Exception) as p_exc:
        seal_frames(a["pure"], msgs, native=False)
    assert type(c_exc.value) is type(p_exc.value)


def test_operation_table_and_arguments() -> None:
    ops = OperationTable(["a", "b"])
    assert ops.add("a") == 0 and ops.add("c") == 2 and ops.find(b"b") == 1
    assert ops.find(b"zz") == -1 and len(ops) == 3
    with pytest.raises(ConfigurationError):
        OperationTable(capacity=0)
    full = OperationTable(capacity=1)
    full.add("x")
    with pytest.raises(ConfigurationError):
        full.add("y")
    a, _b = layers()
    with pytest.raises(ConfigurationError):
        seal_frames(a["c"], [b"x" * 10], 10)
    with pytest.raises(ConfigurationError):
        FastReceiver(a["pure"], native=True)


# --- in the sans-IO connection ----------------------------------------------------------


@pytest.mark.parametrize("framing", ["stream", "message"])
def test_connection_uses_containers_on_streams_only(framing: str) -> None:
    from rolewire.protocol import ConnectionSettings, Notified, ReplyReceived
    from tests.test_connection import Pair

    pair = Pair(framing=framing)
    pair.pump()
    bodies = [b"%05d" % i for i in range(3000)]
    pair.client.notify_many("sink", bodies)
    call_id = pair.client.call("echo", b"after")
    pair.pump()
    got = [ev.body for ev in pair.server_events if isinstance(ev, Notified)]
    assert got == bodies
    assert any(isinstance(ev, ReplyReceived) and ev.call_id == call_id and ev.body == b"after"
               for ev in pair.client_events)
    sealed = pair.client.session.counters.records_sealed
    # What re-handshake triggers read counts the container records too.
    assert pair.client.session.records_in_generation == sealed
    if framing == "stream":
        assert sealed < 100  # 3000 messages in a few 16 KiB containers
    else:
        assert sealed > 3000  # unordered transports: one record per message
    # Containers off: one record per message on a stream too.
    plain = Pair(client_settings=ConnectionSettings(container_bytes=0))
    plain.pump()
    plain.client.notify_many("sink", bodies[:50])
    plain.pump()
    assert plain.client.session.counters.records_sealed > 50


def test_connection_rejects_a_malformed_container() -> None:
    from rolewire.protocol import Failed
    from tests.test_connection import Pair

    pair = Pair()
    pair.pump()
    nested = bytes([8]) + bytes(9) + struct.pack(">I", 24) + encode_container(
        [bytes([2]) + bytes(9)])
    pair.client._queue(nested)
    pair.pump()
    (failed,) = [ev for ev in pair.server_events if isinstance(ev, Failed)]
    assert isinstance(failed.error, ProtocolViolation)
