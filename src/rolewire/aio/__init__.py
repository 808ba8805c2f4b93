"""asyncio adapter: the only part of rolewire that touches sockets.

:func:`serve` runs a :class:`~rolewire.services.Service` behind the
handshake; :func:`connect` returns a :class:`Channel` for calls and
notifications. See docs/aio.md for framing, coalescing, limits, counters
and log events.
"""

from __future__ import annotations

from rolewire.aio.channel import Channel, connect
from rolewire.aio.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameKind
from rolewire.aio.server import Server, ServerStats, serve

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Channel",
    "FrameDecoder",
    "FrameKind",
    "Server",
    "ServerStats",
    "bench_calls",
    "bench_stream",
    "connect",
    "serve",
]


def __getattr__(name: str) -> object:
    # The benchmark helpers import multiprocessing; load them on demand.
    if name in ("bench_stream", "bench_calls"):
        from rolewire.aio import bench

        return getattr(bench, name)
    raise AttributeError(f"module 'rolewire.aio' has no attribute {name!r}")
