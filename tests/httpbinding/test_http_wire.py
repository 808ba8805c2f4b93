"""The HTTP binding's wire format: known-answer vectors (docs/PROTOCOL.md,
"HTTP binding"), parser round trips and robustness (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolewire.http.errors import BodyTooLarge, MalformedBody
from rolewire.http.wire import (
    KIND_REQUEST,
    FrameDecoder,
    RequestMeta,
    ResponseMeta,
    decode_session_id,
    encode_chunk,
    encode_session_id,
    frame,
    parse_chunk,
)
from rolewire.record import Suite
from rolewire.session import Session

SID = bytes(range(16))
REQUEST_META = RequestMeta(b"POST", b"/charge?x=1", SID, b"application/json",
                           ((b"idempotency-key", b"k1"), (b"x-absent", None)))
REQUEST_META_HEX = (
    "0201000004504f5354000b2f6368617267653f783d310010000102030405060708090a0b0c0d0e0f"
    "00106170706c69636174696f6e2f6a736f6e0002000f6964656d706f74656e63792d6b65790100"
    "026b310008782d616273656e7400")
RESPONSE_META = ResponseMeta(200, SID, b"application/json", ((b"rolewire-error", None),))
RESPONSE_META_HEX = (
    "020200c80010000102030405060708090a0b0c0d0e0f00106170706c69636174696f6e2f6a736f6e"
    "0001000e726f6c65776972652d6572726f7200")
EXCHANGE = b"\xee" * 16
CHUNK_HEX = ("0101" + "ee" * 16 + "00000000" + "0000005d" + REQUEST_META_HEX
             + "7b22616d6f756e74223a317d")
# The chunk sealed under send key 0^32, IV 0^12 (ChaCha20-Poly1305, epoch 0,
# counter 0) and framed: the whole body of that request.
BODY_HEX = (
    "000000a101010000000000000000000000009e060950bbbfd694765479929dc3e6e325e129a048e3"
    "6569129b513f32ee7ebd66e4757697c92d2bb40354d54ba004e431fd1f295309ff40aae602164172"
    "41622306a0f602561c8dc71db07c7007ce5ae402e1f77bd162c9d9a72359d9cfc7386f444e45741e"
    "240e281c51cce450c43312b0a076a7bb94bb7d921c0d35cc3cd02911dd672370d47467725ee49fb4"
    "09580f9ea0")


def test_metadata_vectors() -> None:
    assert REQUEST_META.encode().hex() == REQUEST_META_HEX
    assert RequestMeta.parse(bytes.fromhex(REQUEST_META_HEX)) == REQUEST_META
    assert RESPONSE_META.encode().hex() == RESPONSE_META_HEX
    assert ResponseMeta.parse(bytes.fromhex(RESPONSE_META_HEX)) == RESPONSE_META


@pytest.mark.parametrize("backend", ["c", "pure"])
def test_sealed_body_vector(backend: str) -> None:
    chunk = encode_chunk(KIND_REQUEST, EXCHANGE, 0, True, b'{"amount":1}',
                         REQUEST_META.encode())
    assert chunk.hex() == CHUNK_HEX
    sender = Session.from_keys(suite=Suite.CHACHA20_POLY1305, send_key=bytes(32),
                               send_iv=bytes(12), recv_key=b"\x01" * 32, recv_iv=bytes(12),
                               backend=backend)
    assert frame(sender.seal(chunk)).hex() == BODY_HEX
    receiver = Session.from_keys(suite=Suite.CHACHA20_POLY1305, send_key=b"\x01" * 32,
                                 send_iv=bytes(12), recv_key=bytes(32), recv_iv=bytes(12),
                                 backend=backend)
    decoder = FrameDecoder(max_record=1 << 16, max_body=1 << 20)
    (record,) = decoder.feed(bytes.fromhex(BODY_HEX))
    header, meta, data = parse_chunk(receiver.open(record))
    assert header.final and header.exchange == EXCHANGE and header.sequence == 0
    assert meta == REQUEST_META.encode() and data == b'{"amount":1}'


def test_session_id_header_form() -> None:
    text = encode_session_id(SID)
    assert len(text) == 22 and decode_session_id(text) == SID
    for bad in (None, "", "A" * 21, "B" * 22, "é" * 22, text + "A", "+" * 22):
        assert decode_session_id(bad) is None


header_pairs = st.lists(st.tuples(st.binary(max_size=20),
                                  st.one_of(st.none(), st.binary(max_size=40))), max_size=4)


@given(st.binary(max_size=10), st.binary(max_size=100), st.binary(min_size=16, max_size=16),
       st.binary(max_size=30), header_pairs, st.booleans())
def test_request_meta_roundtrip(method: bytes, target: bytes, sid: bytes, ctype: bytes,
                                headers: list[tuple[bytes, bytes | None]], hidden: bool) -> None:
    meta = RequestMeta(method, target, sid, ctype, tuple(headers), hidden)
    assert RequestMeta.parse(meta.encode()) == meta


@given(st.binary(max_size=300))
def test_parsers_never_raise_anything_but_malformed(data: bytes) -> None:
    for parse in (RequestMeta.parse, ResponseMeta.parse, parse_chunk):
        try:
            parse(data)
        except MalformedBody:
            pass


@given(st.lists(st.binary(max_size=50), max_size=10), st.integers(1, 7))
def test_frame_decoder_any_split(records: list[bytes], step: int) -> None:
    wire = b"".join(frame(r) for r in records)
    decoder = FrameDecoder(max_record=64, max_body=1 << 20)
    out: list[bytes] = []
    for i in range(0, len(wire), step):
        out += decoder.feed(wire[i:i + step])
    assert out == records and decoder.pending == 0


def test_frame_decoder_limits_before_buffering() -> None:
    decoder = FrameDecoder(max_record=100, max_body=1000)
    with pytest.raises(BodyTooLarge):
        decoder.feed(b"\x00\x00\x01\x00")  # a 256-byte record announced
    decoder = FrameDecoder(max_record=100, max_body=10)
    with pytest.raises(BodyTooLarge):
        decoder.feed(b"\x00" * 11)
