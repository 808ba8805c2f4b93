"""The record layer (hazmat): seal and open records, reject replays.

Most users get a record layer from a completed handshake (``Session``); use
this module directly only with keys you derived yourself. Wire format:
docs/PROTOCOL.md, section "Records".
"""

from __future__ import annotations

from rolewire.record._base import (
    PackedOpenResult,
    PackedRecords,
    RecordLayer,
    default_backend,
)
from rolewire.record._format import (
    DEFAULT_WINDOW,
    HEADER_SIZE,
    PROTOCOL_MAX_PLAINTEXT,
    VERSION,
    WINDOW_MAX,
    WINDOW_MIN,
    RecordLimits,
    Suite,
)
from rolewire.record._window import ReplayWindow

__all__ = [
    "DEFAULT_WINDOW",
    "HEADER_SIZE",
    "PROTOCOL_MAX_PLAINTEXT",
    "VERSION",
    "WINDOW_MAX",
    "WINDOW_MIN",
    "PackedOpenResult",
    "PackedRecords",
    "RecordLayer",
    "RecordLimits",
    "ReplayWindow",
    "Suite",
    "default_backend",
]
