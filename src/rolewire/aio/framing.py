"""Stream framing for TCP (compatibility alias).

Frames are defined once, in :mod:`rolewire.protocol.wire`:
``length u32 | kind u8 | payload`` where ``length`` counts ``kind`` and
``payload``; ``kind`` 1 carries handshake bytes, 2 one record.
"""

from __future__ import annotations

from rolewire.protocol.wire import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    FrameKind,
    default_max_frame,
    encode_frame,
    encode_records,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "FrameKind",
    "default_max_frame",
    "encode_frame",
    "encode_records",
]
