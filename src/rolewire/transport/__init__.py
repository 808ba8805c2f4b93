"""Transports other than TCP: today an in-memory, shuffling one for tests
(records are self-contained, so any transport that carries bytes works)."""

from __future__ import annotations

from rolewire.transport.memory import (
    ConnectionLink,
    Endpoint,
    MemoryLink,
    Path,
    RecordHeader,
    Relay,
    ShufflingChannel,
    parse_header,
)

__all__ = [
    "ConnectionLink",
    "Endpoint",
    "MemoryLink",
    "Path",
    "RecordHeader",
    "Relay",
    "ShufflingChannel",
    "parse_header",
]
