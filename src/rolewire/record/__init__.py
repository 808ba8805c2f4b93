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
    EPOCH_ADVANCED,
    HEADER_SIZE,
    OPENSSL_CHACHA_THRESHOLD,
    PROTOCOL_MAX_PLAINTEXT,
    VERSION,
    WINDOW_MAX,
    WINDOW_MIN,
    RecordHeader,
    RecordLimits,
    Suite,
    error_for,
    parse_header,
    status_of,
)
from rolewire.record._window import ReplayWindow

__all__ = [
    "DEFAULT_WINDOW",
    "EPOCH_ADVANCED",
    "HEADER_SIZE",
    "OPENSSL_CHACHA_THRESHOLD",
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
    "error_for",
    "native_library",
    "parse_header",
    "raw_aead_loop",
    "status_of",
]


def raw_aead_loop(suite: Suite, size: int, iterations: int) -> None:
    """Benchmark only (C backend): libsodium seal+open of ``size``-byte
    messages ``iterations`` times in a C loop, no record layer -- the ceiling
    the record layer is measured against."""
    from rolewire.record._c import raw_loop

    raw_loop(suite, size, iterations)


def native_library() -> tuple[object, object] | None:
    """Hazmat: ``(ffi, lib)`` of the compiled C core (``rolewire._native``,
    libsodium installed), for native code built on the record API such as
    :mod:`rolewire.protocol.fastpath`; None where it is not built."""
    try:
        from rolewire._native_loader import ffi, lib
    except ImportError:
        return None
    return ffi, lib
