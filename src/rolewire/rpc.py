"""Calls inside records: the sans-IO message codec of the service layer.

Each record's plaintext is one call message (docs/PROTOCOL.md, "Calls")::

    type u8 | call_id u64 | op_len u8 | op (UTF-8) | body

``REQUEST`` expects a ``RESPONSE`` or ``ERROR`` with the same call id;
``NOTIFY`` is one-way; ``ERROR`` carries ``code u16 || UTF-8 message`` as its
body; ``CLOSE`` ends the session gracefully. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from rolewire.errors import ProtocolViolation, RolewireError

__all__ = [
    "MAX_OPERATION_NAME",
    "CallMessage",
    "ErrorCode",
    "MessageType",
    "decode",
    "encode",
    "error_message",
    "parse_error",
    "remote_error",
]

MAX_OPERATION_NAME = 255
_HEAD = struct.Struct(">BQB")


class MessageType(enum.IntEnum):
    REQUEST = 1
    NOTIFY = 2
    RESPONSE = 3
    ERROR = 4
    CLOSE = 5


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


def encode(message: CallMessage) -> bytes:
    op = message.operation.encode("utf-8")
    if len(op) > MAX_OPERATION_NAME:
        raise ProtocolViolation("operation name longer than 255 bytes")
    return _HEAD.pack(message.type, message.call_id, len(op)) + op + message.body


def decode(data: bytes) -> CallMessage:
    """Parse one call message; raises :class:`ProtocolViolation` on bad input."""
    if len(data) < _HEAD.size:
        raise ProtocolViolation("call message truncated")
    kind, call_id, op_len = _HEAD.unpack_from(data)
    try:
        message_type = MessageType(kind)
    except ValueError:
        raise ProtocolViolation("unknown call message type") from None
    end = _HEAD.size + op_len
    if len(data) < end:
        raise ProtocolViolation("call message truncated")
    try:
        operation = data[_HEAD.size : end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("operation name is not UTF-8") from None
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
