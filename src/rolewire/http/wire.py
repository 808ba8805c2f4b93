"""The HTTP binding's wire format (docs/PROTOCOL.md, "HTTP binding"): header
names, paths, the length-prefixed record framing of bodies, the chunk header
inside every sealed plaintext and the canonical bound-metadata block.

The one definition of these formats: the server and client cores import them
from here. Pure functions over bytes, no state.

Record plaintext (every record of a sealed body)::

    u8   kind            1 = request, 2 = response
    u8   flags           bit 0: FINAL (last record of this body)
    16B  exchange id     random per request, echoed by its response
    u32  sequence        0, 1, 2 ... within this body
    [seq 0 only] u32 meta length || meta
    data                 the next piece of the HTTP body

Metadata (canonical; the receiver rebuilds it from the HTTP message it got
and compares in constant time): fields as ``u16 length || bytes``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rolewire.http.errors import BodyTooLarge, MalformedBody

__all__ = [
    "CONTENT_TYPE_HANDSHAKE",
    "CONTENT_TYPE_SEALED",
    "DEFAULT_CHUNK_SIZE",
    "EXCHANGE_ID_SIZE",
    "FLAG_FINAL",
    "HANDSHAKE_PATH",
    "HEADER_ERROR",
    "HEADER_REJECT",
    "HEADER_SESSION",
    "HEADER_SESSION_LIFETIME",
    "HIDDEN_TARGET_PATH",
    "KIND_REQUEST",
    "KIND_RESPONSE",
    "SESSION_ID_SIZE",
    "ChunkHeader",
    "FrameDecoder",
    "RequestMeta",
    "ResponseMeta",
    "bound_headers",
    "decode_session_id",
    "encode_chunk",
    "encode_session_id",
    "frame",
    "header_value",
    "lower_headers",
    "metadata_equal",
    "parse_chunk",
]

#: Where handshake messages are POSTed.
HANDSHAKE_PATH = "/.well-known/rolewire/handshake"
#: The fixed outer path of requests whose real target travels sealed.
HIDDEN_TARGET_PATH = "/.well-known/rolewire/request"

HEADER_SESSION = "rolewire-session"
HEADER_REJECT = "rolewire-reject"
HEADER_ERROR = "rolewire-error"
HEADER_SESSION_LIFETIME = "rolewire-session-lifetime"

CONTENT_TYPE_HANDSHAKE = "application/rolewire-handshake"
CONTENT_TYPE_SEALED = "application/rolewire"

SESSION_ID_SIZE = 16
EXCHANGE_ID_SIZE = 16
#: Plaintext bytes per record of a body (a larger body is several records).
DEFAULT_CHUNK_SIZE = 64 * 1024

KIND_REQUEST = 1
KIND_RESPONSE = 2
FLAG_FINAL = 0x01

#: Version byte at the start of every metadata block (the protocol version).
META_VERSION = 2
META_FLAG_HIDDEN_TARGET = 0x01

_CHUNK = struct.Struct(">BB16sI")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


def encode_session_id(raw: bytes) -> str:
    """The header form of a session id: unpadded base64url (22 characters)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_session_id(text: str | bytes | None) -> bytes | None:
    """The raw 16 bytes of a session id header, or None if it is absent or
    not a well-formed id."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            text = text.encode("ascii")
        except UnicodeEncodeError:
            return None
    if len(text) != 22:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + b"==")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != SESSION_ID_SIZE or encode_session_id(raw).encode() != text:
        return None
    return raw


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) in an ASGI-style header
    list; several occurrences are joined with ``", "`` (RFC 9110 5.3)."""
    values = [v.strip() for k, v in headers if k.lower() == name]
    if not values:
        return None
    return b", ".join(values)


def _field(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise MalformedBody("a bound metadata field is longer than 65535 bytes")
    return _U16.pack(len(data)) + data


def _encode_headers(pairs: Sequence[tuple[bytes, bytes | None]]) -> bytes:
    out = [_U16.pack(len(pairs))]
    for name, value in pairs:
        out.append(_field(name))
        if value is None:
            out.append(b"\x00")
        else:
            out.append(b"\x01" + _field(value))
    return b"".join(out)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedBody("truncated bound metadata")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def field(self) -> bytes:
        return self.take(self.u16())

    def headers(self) -> tuple[tuple[bytes, bytes | None], ...]:
        pairs = []
        for _ in range(self.u16()):
            name = self.field()
            present = self.u8()
            if present not in (0, 1):
                raise MalformedBody("bad header presence flag in bound metadata")
            pairs.append((name, self.field() if present else None))
        return tuple(pairs)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedBody("trailing bytes after bound metadata")


def bound_headers(headers: Iterable[tuple[bytes, bytes]],
                  names: Iterable[bytes]) -> tuple[tuple[bytes, bytes | None], ...]:
    """The (name, value-or-None) pairs of the named headers, names lower case
    and sorted, each once: the canonical header part of the metadata."""
    headers = list(headers)
    return tuple((name, header_value(headers, name))
                 for name in sorted({n.lower() for n in names}))


@dataclass(frozen=True)
class RequestMeta:
    """What a sealed request binds: method, target (path and query, raw),
    session id, the real content type and the named headers."""

    method: bytes
    target: bytes
    session_id: bytes
    content_type: bytes
    headers: tuple[tuple[bytes, bytes | None], ...] = ()
    hidden_target: bool = False

    def encode(self) -> bytes:
        flags = META_FLAG_HIDDEN_TARGET if self.hidden_target else 0
        return b"".join((bytes((META_VERSION, KIND_REQUEST, flags)), _field(self.method),
                         _field(self.target), _field(self.session_id),
                         _field(self.content_type), _encode_headers(self.headers)))

    @classmethod
    def parse(cls, data: bytes) -> RequestMeta:
        r = _Reader(data)
        if r.u8() != META_VERSION or r.u8() != KIND_REQUEST:
            raise MalformedBody("not request metadata of this protocol version")
        flags = r.u8()
        if flags & ~META_FLAG_HIDDEN_TARGET:
            raise MalformedBody("unknown metadata flags")
        meta = cls(r.field(), r.field(), r.field(), r.field(), r.headers(),
                   bool(flags & META_FLAG_HIDDEN_TARGET))
        r.end()
        return meta


@dataclass(frozen=True)
class ResponseMeta:
    """What a sealed response binds: status, session id, the real content
    type and the named response headers (the request it answers is bound by
    the exchange id of every record)."""

    status: int
    session_id: bytes
    content_type: bytes
    headers: tuple[tuple[bytes, bytes | None], ...] = ()

    def encode(self) -> bytes:
        return b"".join((bytes((META_VERSION, KIND_RESPONSE)), _U16.pack(self.status),
                         _field(self.session_id), _field(self.content_type),
                         _encode_headers(self.headers)))

    @classmethod
    def parse(cls, data: bytes) -> ResponseMeta:
        r = _Reader(data)
        if r.u8() != META_VERSION or r.u8() != KIND_RESPONSE:
            raise MalformedBody("not response metadata of this protocol version")
        meta = cls(r.u16(), r.field(), r.field(), r.headers())
        r.end()
        return meta


def metadata_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two encoded metadata blocks."""
    return hmac.compare_digest(a, b)


@dataclass(frozen=True)
class ChunkHeader:
    kind: int
    final: bool
    exchange: bytes
    sequence: int


def encode_chunk(kind: int, exchange: bytes, sequence: int, final: bool, data: bytes,
                 meta: bytes | None = None) -> bytes:
    """The plaintext of one record of a body (see the module docstring)."""
    head = _CHUNK.pack(kind, FLAG_FINAL if final else 0, exchange, sequence)
    if sequence == 0:
        assert meta is not None
        return b"".join((head, _U32.pack(len(meta)), meta, data))
    return head + data


def parse_chunk(plaintext: bytes) -> tuple[ChunkHeader, bytes | None, bytes]:
    """Splits an opened record's plaintext into (header, meta or None, data)."""
    if len(plaintext) < _CHUNK.size:
        raise MalformedBody("sealed chunk shorter than its header")
    kind, flags, exchange, sequence = _CHUNK.unpack_from(plaintext)
    if kind not in (KIND_REQUEST, KIND_RESPONSE) or flags & ~FLAG_FINAL:
        raise MalformedBody("bad sealed chunk header")
    pos = _CHUNK.size
    meta = None
    if sequence == 0:
        if len(plaintext) < pos + 4:
            raise MalformedBody("sealed chunk without its metadata")
        (n,) = _U32.unpack_from(plaintext, pos)
        pos += 4
        if len(plaintext) < pos + n:
            raise MalformedBody("truncated metadata in sealed chunk")
        meta = plaintext[pos:pos + n]
        pos += n
    return ChunkHeader(kind, bool(flags & FLAG_FINAL), exchange, sequence), meta, \
        plaintext[pos:]


def frame(record: bytes) -> bytes:
    """One record as it travels in a body: ``u32 length || record``."""
    return _U32.pack(len(record)) + record


class FrameDecoder:
    """Incremental decoder of a framed body: feed bytes, take whole records.

    ``max_record`` bounds one record (checked on its length prefix, before
    the record is buffered); ``max_body`` bounds the whole body (checked on
    every feed, before anything is decrypted)."""

    __slots__ = ("_buf", "max_body", "max_record", "received")

    def __init__(self, *, max_record: int, max_body: int) -> None:
        self._buf = bytearray()
        self.max_record = max_record
        self.max_body = max_body
        self.received = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.received += len(data)
        if self.received > self.max_body:
            raise BodyTooLarge("the sealed body exceeds the size limit")
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (n,) = _U32.unpack_from(self._buf)
            if n > self.max_record:
                raise BodyTooLarge("a sealed record exceeds the size limit")
            if len(self._buf) < 4 + n:
                break
            out.append(bytes(self._buf[4:4 + n]))
            del self._buf[:4 + n]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not form a whole record yet."""
        return len(self._buf)


def lower_headers(headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]]
                  ) -> list[tuple[bytes, bytes]]:
    """Header pairs as lower-case-name bytes (ASGI form)."""
    if isinstance(headers, Mapping):
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return [(k.lower(), v) for k, v in headers]
