"""Call metadata in the call codec (docs/PROTOCOL.md, "Call metadata"):
known-answer bytes, canonical form, every malformed section refused, and
metadata end to end over rolewire.aio."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolewire.aio import connect, serve
from rolewire.errors import ProtocolViolation
from rolewire.handshake import HandshakeConfig
from rolewire.protocol.wire import CallDecoder
from rolewire.roles.key import KeyRole
from rolewire.rpc import (
    METADATA_FLAG,
    NO_METADATA,
    CallMessage,
    MessageType,
    decode,
    decode_metadata,
    encode,
    encode_metadata,
)
from rolewire.services import UNRESTRICTED, Service

KEY = os.urandom(32)
CFG = HandshakeConfig(roles=[KeyRole("k", KEY)])


def test_known_answer():
    message = CallMessage(MessageType.REQUEST, 7, "op", b"BODY", {"b": b"2", "a": b"xy"})
    expected = (bytes([0x81]) + struct.pack(">Q", 7) + b"\x02op"
                + struct.pack(">H", 11) + b"\x01a\x00\x02xy" + b"\x01b\x00\x012" + b"BODY")
    assert encode(message) == expected
    back = decode(expected)
    assert back.type is MessageType.REQUEST and back.body == b"BODY"
    assert dict(back.metadata) == {"a": b"xy", "b": b"2"}


def test_without_metadata_is_the_version_1_layout():
    message = CallMessage(MessageType.NOTIFY, 0, "sink", b"x")
    assert encode(message) == bytes([2]) + bytes(8) + b"\x04sink" + b"x"
    assert decode(encode(message)).metadata is NO_METADATA
    # an empty mapping encodes like no metadata at all
    assert encode(message._replace(metadata={})) == encode(message)


keys = st.from_regex(r"[a-z0-9._-]{1,64}", fullmatch=True)


@given(st.dictionaries(keys, st.binary(max_size=300), min_size=1, max_size=32),
       st.binary(max_size=200), st.sampled_from(list(MessageType)),
       st.integers(0, 2**64 - 1))
def test_round_trip_and_fast_path(meta, body, kind, call_id):
    data = encode(CallMessage(kind, call_id, "op.name", body, meta))
    for back in (decode(data), CallDecoder().decode(data)):
        assert back == (kind, call_id, "op.name", body, back.metadata)
        assert dict(back.metadata) == meta
    cache = CallDecoder()
    cache.decode(data)
    assert dict(cache.decode(data).metadata) == meta  # cached op name, still parsed


def _flagged(section: bytes, body: bytes = b"") -> bytes:
    return bytes([MessageType.REQUEST | METADATA_FLAG]) + struct.pack(">Q", 1) + b"\x02op" \
        + section + body


@pytest.mark.parametrize("section", [
    b"",                                      # flag but no section
    b"\x00",                                  # truncated length
    struct.pack(">H", 0),                     # empty section
    struct.pack(">H", 9) + b"\x01a\x00\x01x",  # length beyond the message
    struct.pack(">H", 5) + b"\x01a\x00\x05",  # value past the section
    struct.pack(">H", 4) + b"\x00\x00\x00\x00",  # empty key
    struct.pack(">H", 4) + b"\x01A\x00\x00",  # upper case
    struct.pack(">H", 4) + b"\x01\xff\x00\x00",  # not ASCII
    struct.pack(">H", 8) + b"\x01b\x00\x00\x01a\x00\x00",  # out of order
    struct.pack(">H", 8) + b"\x01a\x00\x00\x01a\x00\x00",  # duplicate
    struct.pack(">H", 3) + b"\x01a\x00",      # entry header cut
])
def test_malformed_sections_are_refused(section):
    with pytest.raises(ProtocolViolation):
        decode(_flagged(section, b"body"))
    with pytest.raises(ProtocolViolation):
        CallDecoder().decode(_flagged(section, b"body"))
    warm = CallDecoder()  # the operation name cached: the fast path refuses alike
    warm.decode(encode(CallMessage(MessageType.REQUEST, 1, "op", b"", {"a": b"1"})))
    with pytest.raises(ProtocolViolation):
        warm.decode(_flagged(section, b"body"))


def test_too_many_entries_and_bad_keys_refused_on_encode():
    with pytest.raises(ProtocolViolation):
        encode_metadata({f"k{i}": b"" for i in range(33)})
    for bad in ({"Bad": b""}, {"": b""}, {"k" * 65: b""}, {"k": "text"}):
        with pytest.raises(ProtocolViolation):
            encode_metadata(bad)  # type: ignore[arg-type]
    with pytest.raises(ProtocolViolation):
        encode_metadata({"a": bytes(40000), "b": bytes(40000)})
    entries = b"".join(bytes([2]) + b"k%d" % i + b"\x00\x00" for i in range(10))
    many = struct.pack(">H", len(entries) * 4) + entries * 4  # keys repeat: refused
    with pytest.raises(ProtocolViolation):
        decode_metadata(many)


def test_metadata_end_to_end_over_aio():
    service = Service("svc")
    seen = []

    @service.operation("echo", roles=UNRESTRICTED)
    def echo(call, body):
        seen.append(dict(call.metadata))
        return body

    @service.operation("sink", roles=UNRESTRICTED)
    def sink(call, body):
        seen.append(dict(call.metadata))

    async def main():
        async with serve(service, CFG, port=0) as server:  # noqa: SIM117
            async with connect("127.0.0.1", server.port, CFG) as channel:
                assert await channel.call("echo", b"hi", metadata={"trace": b"t1"}) == b"hi"
                assert await channel.call("echo", b"plain") == b"plain"
                await channel.notify("sink", b"n", metadata={"trace": b"t2"})
                await channel.send_many("sink", [b"a", b"b"], metadata={"x": b"1"})
                assert await channel.call("echo", b"") == b""

    asyncio.run(asyncio.wait_for(main(), 30))
    assert seen == [{"trace": b"t1"}, {}, {"trace": b"t2"}, {"x": b"1"}, {"x": b"1"}, {}]
