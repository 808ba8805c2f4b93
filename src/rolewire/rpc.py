"""Calls inside records: the sans-IO message codec of the service layer.

Each record's plaintext is one call message (docs/PROTOCOL.md, "Calls")::

    type u8 | call_id u64 | op_len u8 | op (UTF-8) | [metadata] | body

``REQUEST`` expects a ``RESPONSE`` or ``ERROR`` with the same call id;
``NOTIFY`` is one-way; ``ERROR`` carries ``code u16 || UTF-8 message`` as its
body; ``CLOSE`` ends the session gracefully; ``SIGNED_BATCH`` carries the
signed head of a batch of signed calls (:mod:`rolewire.nonrep`).

Bit 0x80 of ``type`` (:data:`METADATA_FLAG`) says that a metadata section
follows the operation name (docs/PROTOCOL.md, "Call metadata")::

    metadata = meta_len u16 | entries (meta_len bytes)
    entry    = key_len u8 | key (ASCII) | value_len u16 | value

Keys are 1..64 bytes of ``a-z 0-9 . _ -``, strictly increasing (so each
key appears once and every mapping has exactly one encoding); a flagged
message has at least one entry. Without the flag the layout is the one of
protocol version 1, byte for byte. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from rolewire.errors import ProtocolViolation, RolewireError

__all__ = [
    "MAX_METADATA",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY",
    "MAX_OPERATION_NAME",
    "METADATA_FLAG",
    "NO_METADATA",
    "CallMessage",
    "ErrorCode",
    "MessageType",
    "decode",
    "decode_metadata",
    "encode",
    "encode_metadata",
    "error_message",
    "parse_error",
    "remote_error",
]

MAX_OPERATION_NAME = 255
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
_U16 = struct.Struct(">H")
_KEY = re.compile(r"^[a-z0-9._-]{1,64}$")


class MessageType(enum.IntEnum):
    REQUEST = 1
    NOTIFY = 2
    RESPONSE = 3
    ERROR = 4
    CLOSE = 5
    SIGNED_BATCH = 6


class ErrorCode(enum.IntEnum):
    """Why a call failed, as the callee reports it."""

    FORBIDDEN = 1          # refused: no role for it (or, by default, no such operation)
    UNKNOWN_OPERATION = 2  # no such operation (only from a service with distinct_errors)
    HANDLER_FAILED = 3     # the handler raised; details stay in the callee's log
    BAD_REQUEST = 4        # the call message could not be decoded
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


def encode_metadata(metadata: Mapping[str, bytes]) -> bytes:
    """The metadata section (``meta_len u16 | entries``, keys sorted) of a
    non-empty mapping. Raises :class:`ProtocolViolation` for a bad key, too
    many entries or a section above :data:`MAX_METADATA` bytes."""
    if not metadata or len(metadata) > MAX_METADATA_ENTRIES:
        raise ProtocolViolation(f"metadata must have 1..{MAX_METADATA_ENTRIES} entries")
    parts = []
    for key in sorted(metadata):
        if not isinstance(key, str) or not _KEY.match(key):
            raise ProtocolViolation("metadata keys are 1..64 characters of a-z 0-9 . _ -")
        value = metadata[key]
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ProtocolViolation("metadata values are bytes")
        value = bytes(value)
        parts.append(bytes((len(key),)) + key.encode("ascii") + _U16.pack(len(value)) + value)
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
        if not _KEY.match(key) or key <= previous:
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


def encode(message: CallMessage) -> bytes:
    op = message.operation.encode("utf-8")
    if len(op) > MAX_OPERATION_NAME:
        raise ProtocolViolation("operation name longer than 255 bytes")
    if message.metadata:
        return (_HEAD.pack(message.type | METADATA_FLAG, message.call_id, len(op)) + op
                + encode_metadata(message.metadata) + message.body)
    return _HEAD.pack(message.type, message.call_id, len(op)) + op + message.body


def decode(data: bytes) -> CallMessage:
    """Parse one call message; raises :class:`ProtocolViolation` on bad input."""
    if len(data) < _HEAD.size:
        raise ProtocolViolation("call message truncated")
    kind, call_id, op_len = _HEAD.unpack_from(data)
    try:
        message_type = MessageType(kind & ~METADATA_FLAG)
    except ValueError:
        raise ProtocolViolation("unknown call message type") from None
    end = _HEAD.size + op_len
    if len(data) < end:
        raise ProtocolViolation("call message truncated")
    try:
        operation = data[_HEAD.size : end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("operation name is not UTF-8") from None
    if kind & METADATA_FLAG:
        metadata, end = decode_metadata(data, end)
        return CallMessage(message_type, call_id, operation, bytes(data[end:]), metadata)
    return CallMessage(message_type, call_id, operation, bytes(data[end:]))


def error_message(call_id: int, operation: str, code: ErrorCode, text: str) -> CallMessage:
    body = struct.pack(">H", code) + text.encode("utf-8")[:1024]
    return CallMessage(MessageType.ERROR, call_id, operation, body)


def parse_error(message: CallMessage) -> tuple[int, str]:
    if len(message.body) < 2:
        raise ProtocolViolation("error message truncated")
    (code,) = struct.unpack_from(">H", message.body)
    return code, message.body[2:].decode("utf-8", "replace")


def remote_error(message: CallMessage) -> RolewireError:
    """The typed exception for an ERROR reply: :class:`~rolewire.errors.Forbidden`,
    :class:`~rolewire.errors.UnknownOperation`,
    :class:`~rolewire.errors.ServiceUnavailable` or
    :class:`~rolewire.errors.RemoteCallError` (with ``code``)."""
    from rolewire.errors import Forbidden, RemoteCallError, ServiceUnavailable, UnknownOperation

    code, text = parse_error(message)
    cls = {ErrorCode.FORBIDDEN: Forbidden, ErrorCode.UNKNOWN_OPERATION: UnknownOperation,
           ErrorCode.UNAVAILABLE: ServiceUnavailable}.get(code, RemoteCallError)  # type: ignore[call-overload]
    return cls(text, operation=message.operation, code=code)  # type: ignore[no-any-return]
