"""The protocol above the handshake, sans-IO (the h11 / aioquic model).

:mod:`rolewire.protocol.wire` defines every wire format once (frames, call
messages; the record header is re-exported from the record layer).
"""

from __future__ import annotations

from rolewire.protocol.wire import (
    CallDecoder,
    CallMessage,
    ErrorCode,
    FrameDecoder,
    FrameKind,
    MessageType,
)

__all__ = [
    "CallDecoder",
    "CallMessage",
    "ErrorCode",
    "FrameDecoder",
    "FrameKind",
    "MessageType",
]
