"""Calls inside records: the call-message codec (compatibility alias).

The codec is defined once, in :mod:`rolewire.protocol.wire` (docs/PROTOCOL.md,
"Messages" and "Call metadata")::

    type u8 | call_id u64 | op_len u8 | op (UTF-8) | [metadata] | body

This module re-exports it so existing imports keep working.
"""

from __future__ import annotations

from rolewire.protocol.wire import (
    MAX_METADATA,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY,
    MAX_OPERATION_NAME,
    METADATA_FLAG,
    NO_METADATA,
    CallMessage,
    ErrorCode,
    MessageType,
    decode,
    decode_metadata,
    encode,
    encode_metadata,
    error_message,
    parse_error,
    remote_error,
)

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
