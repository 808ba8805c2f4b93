"""Every format rolewire puts on the wire above the handshake messages, defined
once (docs/PROTOCOL.md, "Transport over TCP", "Messages" and "Records").

Sans-IO and dependency-free: only :mod:`rolewire.errors` and the record
layer's public header definition are imported, so every layer (services,
the connection core, transports, baselines) can use it.

Frames (stream transports)::

    length u32 | kind u8 | payload         length counts kind and payload

``kind`` 1 carries handshake bytes, 2 one record. Message transports (one
datagram/message per unit) carry ``kind u8 | payload``: the same frame
without its length (:func:`encode_message` / :func:`decode_message`).

Call messages (the plaintext of one record)::

    type u8 | call_id u64 | op_len u8 | op (UTF-8) | [metadata] | body

Bit 0x80 of ``type`` (:data:`METADATA_FLAG`) says that a metadata section
follows the operation name (docs/PROTOCOL.md, "Call metadata")::

    metadata = meta_len u16 | entries (meta_len bytes)
    entry    = key_len u8 | key (ASCII) | value_len u16 | value

Keys are 1..64 bytes of ``a-z 0-9 . _ -``, strictly increasing (so each
key appears once and every mapping has exactly one encoding); a flagged
message has at least one entry. Without the flag the layout is the one of
protocol version 1, byte for byte.

Records (14-byte clear header, then ciphertext and tag) are defined by the
record layer; :class:`RecordHeader` and :func:`parse_header` are re-exported
here so this module lists every format.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from rolewire.errors import (
    Forbidden,
    ProtocolViolation,
    RemoteCallError,
    RolewireError,
    ServiceUnavailable,
    UnknownOperation,
)
from rolewire.record import HEADER_SIZE as RECORD_HEADER_SIZE
from rolewire.record import RecordHeader, parse_header

__all__ = [
    "CONTAINER_HEAD_SIZE",
    "DEFAULT_MAX_FRAME",
    "ITEM_HEAD_SIZE",
    "MAX_ERROR_TEXT",
    "MAX_METADATA",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY",
    "MAX_OPERATION_NAME",
    "METADATA_FLAG",
    "NO_METADATA",
    "PING_OPERATION",
    "RECORD_HEADER_SIZE",
    "CallDecoder",
    "CallMessage",
    "ErrorCode",
    "FrameDecoder",
    "FrameKind",
    "MessageType",
    "RecordHeader",
    "call_header",
    "decode",
    "decode_container",
    "decode_message",
    "decode_metadata",
    "decode_packet",
    "default_max_frame",
    "encode",
    "encode_container",
    "encode_frame",
    "encode_message",
    "encode_metadata",
    "encode_record",
    "encode_records",
    "error_message",
    "is_container",
    "parse_error",
    "parse_header",
    "remote_error",
    "split_packets",
]

# --- frames ----------------------------------------------------------------------

_LEN = struct.Struct(">I")
#: Largest frame accepted by default: a 1 MiB record plus its overhead.
DEFAULT_MAX_FRAME = (1 << 20) + 64


class FrameKind(enum.IntEnum):
    """What a frame's payload is."""

    HANDSHAKE = 1
    RECORD = 2


_KINDS = {int(k): k for k in FrameKind}
_RECORD_KIND = bytes((FrameKind.RECORD,))


def default_max_frame(config: object = None) -> int:
    """The frame bound for a handshake config: its largest record (the
    record limits' ``max_plaintext`` plus the worst-case overhead of 46
    bytes, rounded up to 64) or its largest handshake message, whichever is
    larger."""
    limits = getattr(config, "record_limits", None)
    max_plaintext = getattr(limits, "max_plaintext", 1 << 20)
    max_message = getattr(config, "max_message_size", 64 * 1024)
    return max(max_plaintext + 64, max_message)


def encode_frame(kind: FrameKind, payload: bytes) -> bytes:
    """One frame: ``length u32 | kind u8 | payload``."""
    return _LEN.pack(len(payload) + 1) + bytes((kind,)) + payload


def encode_record(record: bytes) -> bytes:
    """One record frame (what :func:`encode_records` makes of each)."""
    return _LEN.pack(len(record) + 1) + _RECORD_KIND + record


def encode_records(records: list[bytes]) -> bytes:
    """Many record frames as one buffer (one write on the socket)."""
    pack = _LEN.pack
    parts: list[bytes] = []
    append = parts.append
    for record in records:
        append(pack(len(record) + 1) + _RECORD_KIND)
        append(record)
    return b"".join(parts)


def encode_message(kind: FrameKind, payload: bytes) -> bytes:
    """A frame for a message transport: ``kind u8 | payload`` (the
    transport delimits it)."""
    return bytes((kind,)) + payload


def decode_message(message: bytes) -> tuple[FrameKind, bytes]:
    """Split a message-transport frame; raises :class:`ProtocolViolation`
    if it is empty or of an unknown kind."""
    if not message:
        raise ProtocolViolation("empty message")
    kind = _KINDS.get(message[0])
    if kind is None:
        raise ProtocolViolation("unknown frame kind")
    return kind, bytes(message[1:])


class FrameDecoder:
    """Feed bytes, get complete frames back; keeps partial data. A peer
    announcing a frame longer than ``max_frame`` is cut off
    (:class:`ProtocolViolation`) before any of it is buffered."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._need = 0  # bytes the buffered partial frame needs in total

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete frame."""
        return len(self._buffer)

    @property
    def pending_frame(self) -> int:
        """Size (length field included) that the partial frame being
        buffered announced in its header; 0 if there is none or its header
        is incomplete. Lets a caller refuse a frame it will not accept
        before its bytes arrive (e.g. a responder before authentication)."""
        return self._need if self._buffer else 0

    def take_buffered(self) -> bytes:
        """Hand back the bytes of the incomplete frame held and forget them
        (for a caller that goes on with another decoder of the same stream,
        e.g. the native fast path once a session is open)."""
        buffered = bytes(self._buffer)
        self._buffer = bytearray()
        self._need = 0
        return buffered

    def feed(self, data: bytes) -> list[tuple[FrameKind, bytes]]:
        """Returns the frames completed by ``data``; raises
        :class:`ProtocolViolation` on an oversized or unknown frame."""
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return []  # still inside one large frame: no copy, no parse
            buffer: bytes = bytes(self._buffer)
        else:
            buffer = bytes(data)
        frames: list[tuple[FrameKind, bytes]] = []
        append = frames.append
        unpack = _LEN.unpack_from
        kinds = _KINDS
        limit = self.max_frame + 1
        size = len(buffer)
        position = 0
        self._need = 0
        while size - position >= 4:
            (length,) = unpack(buffer, position)
            if length < 1 or length > limit:
                raise ProtocolViolation("frame length out of range")
            end = position + 4 + length
            if end > size:
                self._need = end - position
                break
            kind = kinds.get(buffer[position + 4])
            if kind is None:
                raise ProtocolViolation("unknown frame kind")
            append((kind, buffer[position + 5 : end]))
            position = end
        if position < size:
            self._buffer = bytearray(buffer[position:]) if position else bytearray(buffer)
        else:
            self._buffer = bytearray()
        return frames


def decode_packet(packet: bytes, max_frame: int = DEFAULT_MAX_FRAME,
                  ) -> list[tuple[FrameKind, bytes]]:
    """The frames of one *packet*: a message of a message transport (a NATS
    message) that carries one or more whole stream frames
    (``length u32 | kind u8 | payload`` each, as on a stream), never part of
    one. Stateless, unlike :class:`FrameDecoder`: a packet that does not
    split into whole frames (truncated, padded, an oversized or unknown
    frame) raises :class:`ProtocolViolation` and nothing of it is used."""
    decoder = FrameDecoder(max_frame)
    frames = decoder.feed(packet)
    if decoder.buffered or not frames:
        raise ProtocolViolation("packet does not hold whole frames")
    return frames


def split_packets(frames: bytes, max_packet: int) -> list[bytes]:
    """Cut a buffer of whole frames (what a stream-framed
    :class:`~rolewire.protocol.Connection` returns from ``data_to_send``)
    into packets of whole frames, each at most ``max_packet`` bytes where
    one frame fits (a larger frame travels alone). ``max_packet=0``: one
    frame per packet."""
    size = len(frames)
    if max_packet and size <= max_packet:
        return [frames] if frames else []
    packets: list[bytes] = []
    unpack = _LEN.unpack_from
    start = position = 0
    while position < size:
        end = position + 4 + unpack(frames, position)[0]
        if position > start and (not max_packet or end - start > max_packet):
            packets.append(frames[start:position])
            start = position
        position = end
    if start < size:
        packets.append(frames[start:size])
    return packets


# --- call messages -----------------------------------------------------------------

MAX_OPERATION_NAME = 255
#: Longest ERROR text sent (bytes of UTF-8; longer texts are cut).
MAX_ERROR_TEXT = 1024
#: A REQUEST to this (empty, unregistrable) operation is a liveness probe:
#: the callee answers an empty RESPONSE without consulting its service.
PING_OPERATION = ""
#: Bit of the type byte: a metadata section follows the operation name.
METADATA_FLAG = 0x80
#: Most bytes of one metadata section (its u16 length).
MAX_METADATA = 0xFFFF
#: Most entries in one metadata section.
MAX_METADATA_ENTRIES = 32
#: Longest metadata key, bytes.
MAX_METADATA_KEY = 64
#: The metadata of a message that carries none (immutable, shared).
NO_METADATA: Mapping[str, bytes] = MappingProxyType({})
_HEAD = struct.Struct(">BQB")
_ID = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_KEY = re.compile(r"^[a-z0-9._-]{1,64}$")
HEAD_SIZE = _HEAD.size  # 10


class MessageType(enum.IntEnum):
    """The low seven bits of a call message's first byte."""

    REQUEST = 1
    NOTIFY = 2
    RESPONSE = 3
    ERROR = 4
    CLOSE = 5
    SIGNED_BATCH = 6
    #: A re-handshake control message (rolewire.protocol.rehandshake), never a call.
    REHANDSHAKE = 7
    #: Several call messages in one record (ordered transports): see
    #: :func:`encode_container`.
    CONTAINER = 8


_TYPES = {int(t): t for t in MessageType}


class ErrorCode(enum.IntEnum):
    """Why a call failed, as the callee reports it."""

    FORBIDDEN = 1          # refused: no role for it (or, by default, no such operation)
    UNKNOWN_OPERATION = 2  # no such operation (only from a service with distinct_errors)
    HANDLER_FAILED = 3     # the handler raised; details stay in the callee's log
    BAD_REQUEST = 4        # the request was refused before its handler ran (bad input)
    UNAVAILABLE = 5        # the service is shutting down or overloaded


class CallMessage(NamedTuple):
    """One call message. A named tuple rather than a frozen dataclass: one is
    built per message received, and a tuple is built in half the time."""

    type: MessageType
    call_id: int
    operation: str
    body: bytes = b""
    #: ``{key: value}`` of the metadata section (empty: none on the wire).
    metadata: Mapping[str, bytes] = NO_METADATA


#: Validated metadata keys and their encoded ``key_len | key`` (a bounded
#: cache: the same few keys recur on every call).
_KEY_HEADS: dict[str, bytes] = {}


def encode_metadata(metadata: Mapping[str, bytes]) -> bytes:
    """The metadata section (``meta_len u16 | entries``, keys sorted) of a
    non-empty mapping. Raises :class:`ProtocolViolation` for a bad key, too
    many entries or a section above :data:`MAX_METADATA` bytes."""
    if not metadata or len(metadata) > MAX_METADATA_ENTRIES:
        raise ProtocolViolation(f"metadata must have 1..{MAX_METADATA_ENTRIES} entries")
    parts = []
    for key in sorted(metadata):
        head = _KEY_HEADS.get(key)
        if head is None:
            if not isinstance(key, str) or not _KEY.match(key):
                raise ProtocolViolation("metadata keys are 1..64 characters of a-z 0-9 . _ -")
            head = bytes((len(key),)) + key.encode("ascii")
            if len(_KEY_HEADS) < 256:
                _KEY_HEADS[key] = head
        value = metadata[key]
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ProtocolViolation("metadata values are bytes")
        value = bytes(value)
        parts.append(head + _U16.pack(len(value)) + value)
    entries = b"".join(parts)
    if len(entries) > MAX_METADATA:
        raise ProtocolViolation("metadata section longer than 65535 bytes")
    return _U16.pack(len(entries)) + entries


def decode_metadata(data: bytes, offset: int = 0) -> tuple[Mapping[str, bytes], int]:
    """Parse the metadata section starting at ``offset``; returns the
    (read-only) mapping and the offset after it. Raises
    :class:`ProtocolViolation` on any deviation from the canonical form."""
    if len(data) < offset + 2:
        raise ProtocolViolation("call metadata truncated")
    (length,) = _U16.unpack_from(data, offset)
    pos, end = offset + 2, offset + 2 + length
    if len(data) < end:
        raise ProtocolViolation("call metadata truncated")
    entries: dict[str, bytes] = {}
    previous = ""
    while pos < end:
        key_len = data[pos]
        key_end = pos + 1 + key_len
        if not 1 <= key_len <= MAX_METADATA_KEY or key_end + 2 > end:
            raise ProtocolViolation("malformed call metadata entry")
        try:
            key = bytes(data[pos + 1 : key_end]).decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolViolation("metadata key is not ASCII") from None
        if (key not in _KEY_HEADS and not _KEY.match(key)) or key <= previous:
            raise ProtocolViolation("metadata keys must be valid and strictly increasing")
        (value_len,) = _U16.unpack_from(data, key_end)
        pos = key_end + 2 + value_len
        if pos > end:
            raise ProtocolViolation("malformed call metadata entry")
        entries[key] = bytes(data[key_end + 2 : pos])
        previous = key
        if len(entries) > MAX_METADATA_ENTRIES:
            raise ProtocolViolation("too many call metadata entries")
    if not entries:
        raise ProtocolViolation("empty call metadata section")
    return MappingProxyType(entries), end


def call_header(kind: MessageType, call_id: int, operation: str) -> bytes:
    """The bytes a call message without metadata starts with; the body
    follows directly."""
    op = operation.encode("utf-8")
    if len(op) > MAX_OPERATION_NAME:
        raise ProtocolViolation("operation name longer than 255 bytes")
    return _HEAD.pack(kind, call_id, len(op)) + op


def encode(message: CallMessage) -> bytes:
    """The bytes of one call message (with its metadata section, if any)."""
    if message.metadata:
        op = message.operation.encode("utf-8")
        if len(op) > MAX_OPERATION_NAME:
            raise ProtocolViolation("operation name longer than 255 bytes")
        return (_HEAD.pack(message.type | METADATA_FLAG, message.call_id, len(op)) + op
                + encode_metadata(message.metadata) + message.body)
    return call_header(message.type, message.call_id, message.operation) + message.body


def decode(data: bytes) -> CallMessage:
    """Parse one call message; raises :class:`ProtocolViolation` on bad input."""
    if len(data) < _HEAD.size:
        raise ProtocolViolation("call message truncated")
    kind, call_id, op_len = _HEAD.unpack_from(data)
    message_type = _TYPES.get(kind & ~METADATA_FLAG)
    if message_type is None:
        raise ProtocolViolation("unknown call message type")
    end = _HEAD.size + op_len
    if len(data) < end:
        raise ProtocolViolation("call message truncated")
    try:
        operation = bytes(data[_HEAD.size : end]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("operation name is not UTF-8") from None
    if kind & METADATA_FLAG:
        metadata, end = decode_metadata(data, end)
        return CallMessage(message_type, call_id, operation, bytes(data[end:]), metadata)
    return CallMessage(message_type, call_id, operation, bytes(data[end:]))


class CallDecoder:
    """:func:`decode` with a cache of operation names (the slow part of
    decoding is re-validating the same few names); anything unusual
    (metadata included) goes through :func:`decode` itself, so errors are
    the same. One per connection."""

    __slots__ = ("_ops",)

    CACHE_SIZE = 1024

    def __init__(self) -> None:
        self._ops: dict[bytes, str] = {}

    def decode(self, plaintext: bytes) -> CallMessage:
        """Parse one call message (see :func:`decode`)."""
        if len(plaintext) >= 10:
            kind = _TYPES.get(plaintext[0])
            end = 10 + plaintext[9]
            if kind is not None and len(plaintext) >= end:
                op = self._ops.get(plaintext[10:end])
                if op is not None:
                    return CallMessage(kind, _ID.unpack_from(plaintext, 1)[0], op,
                                       plaintext[end:])
            elif plaintext[0] & METADATA_FLAG and len(plaintext) >= end:
                # Metadata: the cached operation name, then the section
                # (decode_metadata raises the same errors decode would).
                kind = _TYPES.get(plaintext[0] & ~METADATA_FLAG)
                op = self._ops.get(plaintext[10:end])
                if kind is not None and op is not None:
                    metadata, body_at = decode_metadata(plaintext, end)
                    return CallMessage(kind, _ID.unpack_from(plaintext, 1)[0], op,
                                       plaintext[body_at:], metadata)
        message = decode(plaintext)
        if len(self._ops) < self.CACHE_SIZE:
            self._ops[bytes(plaintext[10:10 + plaintext[9]])] = message.operation
        return message


# --- containers -----------------------------------------------------------------

_CONTAINER_HEAD = bytes((MessageType.CONTAINER,)) + bytes(9)  # call id 0, empty op
_ITEM = struct.Struct(">I")
#: Bytes a container adds: its call-message header; each item adds ITEM_HEAD.
CONTAINER_HEAD_SIZE = HEAD_SIZE
ITEM_HEAD_SIZE = _ITEM.size


def encode_container(messages: list[bytes]) -> bytes:
    """Several encoded call messages as one CONTAINER message (the plaintext
    of one record)::

        type u8 = 8 | call_id u64 = 0 | op_len u8 = 0 | (length u32 | message)+

    Items are complete call messages (any type but CONTAINER, metadata
    allowed), in the order they are to be handled."""
    if not messages:
        raise ProtocolViolation("a container holds at least one message")
    pack = _ITEM.pack
    parts = [_CONTAINER_HEAD]
    for message in messages:
        if len(message) < HEAD_SIZE or message[0] & ~METADATA_FLAG == MessageType.CONTAINER:
            raise ProtocolViolation("container items are call messages, not containers")
        parts.append(pack(len(message)))
        parts.append(message)
    return b"".join(parts)


def is_container(plaintext: bytes) -> bool:
    """True if ``plaintext`` claims to be a CONTAINER (type byte 7, with or
    without the metadata bit); :func:`decode_container` checks the rest."""
    return bool(plaintext) and plaintext[0] & ~METADATA_FLAG == MessageType.CONTAINER


def decode_container(plaintext: bytes) -> list[bytes]:
    """The items of a CONTAINER message; raises :class:`ProtocolViolation`
    unless it is exactly well formed: the fixed header (no metadata bit, call
    id 0, empty operation), then at least one item, each ``length u32`` and a
    message of at least a call header's size that is not itself a container,
    filling the plaintext exactly. Items are decoded on their own (an item
    with a bad body is that item's error, not the container's)."""
    if len(plaintext) < HEAD_SIZE or bytes(plaintext[:HEAD_SIZE]) != _CONTAINER_HEAD:
        raise ProtocolViolation("malformed container header")
    items: list[bytes] = []
    pos, size = HEAD_SIZE, len(plaintext)
    while pos < size:
        if size - pos < ITEM_HEAD_SIZE:
            raise ProtocolViolation("container item truncated")
        (length,) = _ITEM.unpack_from(plaintext, pos)
        pos += ITEM_HEAD_SIZE
        if length < HEAD_SIZE or length > size - pos:
            raise ProtocolViolation("container item length out of range")
        if plaintext[pos] & ~METADATA_FLAG == MessageType.CONTAINER:
            raise ProtocolViolation("containers do not nest")
        items.append(bytes(plaintext[pos:pos + length]))
        pos += length
    if not items:
        raise ProtocolViolation("a container holds at least one message")
    return items


def error_message(call_id: int, operation: str, code: ErrorCode, text: str) -> CallMessage:
    """An ERROR reply: body ``code u16 | UTF-8 text`` (text cut to
    :data:`MAX_ERROR_TEXT` bytes)."""
    body = _U16.pack(code) + text.encode("utf-8")[:MAX_ERROR_TEXT]
    return CallMessage(MessageType.ERROR, call_id, operation, body)


def parse_error(message: CallMessage) -> tuple[int, str]:
    """``(code, text)`` of an ERROR message; raises :class:`ProtocolViolation`
    if the body is shorter than its code."""
    if len(message.body) < 2:
        raise ProtocolViolation("error message truncated")
    (code,) = _U16.unpack_from(message.body)
    return code, bytes(message.body[2:]).decode("utf-8", "replace")


_REMOTE_ERRORS: dict[int, type[RemoteCallError]] = {
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.UNKNOWN_OPERATION: UnknownOperation,
    ErrorCode.UNAVAILABLE: ServiceUnavailable,
}


def remote_error(message: CallMessage) -> RolewireError:
    """The typed exception for an ERROR reply: :class:`~rolewire.errors.Forbidden`,
    :class:`~rolewire.errors.UnknownOperation`,
    :class:`~rolewire.errors.ServiceUnavailable` or
    :class:`~rolewire.errors.RemoteCallError` (with ``code``)."""
    code, text = parse_error(message)
    cls = _REMOTE_ERRORS.get(code, RemoteCallError)
    return cls(text, operation=message.operation, code=code)
