"""Calls inside records: the call-message codec (compatibility alias).

The codec is defined once, in :mod:`rolewire.protocol.wire` (see
docs/PROTOCOL.md, "Messages")::

    type u8 | call_id u64 | op_len u8 | op (UTF-8) | body

This module re-exports it so existing imports keep working.
"""

from __future__ import annotations

from rolewire.protocol.wire import (
    MAX_OPERATION_NAME,
    CallMessage,
    ErrorCode,
    MessageType,
    decode,
    encode,
    error_message,
    parse_error,
    remote_error,
)

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
