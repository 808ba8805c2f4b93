"""The record layer (hazmat): seal and open records, reject replays.

Most users get a record layer from a completed handshake (``Session``); use
this module directly only with keys you derived yourself. Wire format:
docs/PROTOCOL.md, section "Records".
"""

from __future__ import annotations

from rolewire.record._base import (
    Buffer,
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
    RecordHeader,
    RecordLimits,
    Suite,
    parse_header,
)
from rolewire.record._window import ReplayWindow

__all__ = [
    "DEFAULT_WINDOW",
    "HEADER_SIZE",
    "PROTOCOL_MAX_PLAINTEXT",
    "VERSION",
    "WINDOW_MAX",
    "WINDOW_MIN",
    "Buffer",
    "PackedOpenResult",
    "PackedRecords",
    "RecordHeader",
    "RecordLayer",
    "RecordLimits",
    "ReplayWindow",
    "Suite",
    "default_backend",
    "parse_header",
    "raw_aead_loop",
]


def raw_aead_loop(suite: Suite, size: int, iterations: int) -> None:
    """Benchmark only (C backend): libsodium seal+open of ``size``-byte
    messages ``iterations`` times in a C loop, no record layer -- the ceiling
    the record layer is measured against."""
    from rolewire.record._c import raw_loop

    raw_loop(suite, size, iterations)
