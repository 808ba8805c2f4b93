"""asyncio adapter: the only part of rolewire that touches sockets.

:func:`serve` runs a :class:`~rolewire.services.Service` behind the
handshake (:func:`serve_workers`: in several processes on one port);
:func:`connect` returns a :class:`Channel` for calls and notifications. See docs/aio.md for framing, coalescing, limits, counters
and log events.
"""

from __future__ import annotations

from rolewire.aio.channel import Channel, connect
from rolewire.aio.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameKind
from rolewire.aio.server import Server, ServerStats, serve
from rolewire.aio.workers import WorkerInfo, WorkerPool, serve_workers

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Channel",
    "FrameDecoder",
    "FrameKind",
    "Server",
    "ServerStats",
    "WorkerInfo",
    "WorkerPool",
    "connect",
    "serve",
    "serve_workers",
]


def __getattr__(name: str) -> object:
    # Deprecated alias: the benchmark helpers moved to rolewire.benchmarks.stream.
    if name in ("bench_stream", "bench_calls"):
        import warnings

        from rolewire.benchmarks import stream

        warnings.warn(f"rolewire.aio.{name} moved to rolewire.benchmarks.stream",
                      DeprecationWarning, stacklevel=2)
        return getattr(stream, name)
    raise AttributeError(f"module 'rolewire.aio' has no attribute {name!r}")
