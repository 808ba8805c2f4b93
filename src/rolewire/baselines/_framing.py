"""What the baselines' asyncio driver shares (private): the wire format,
limits and settings.

Every baseline connection is a sans-IO
:class:`~rolewire.protocol.transport_secured.TransportSecuredConnection`,
the same core the rolewire transports drive: call codec, dispatch,
authorization, reply matching, budgets, timeouts and CLOSE are the
core's. The driver only moves bytes between an asyncio (TLS) stream and
that connection, keeps its timer on the event loop and runs handlers
(:mod:`rolewire.baselines._server`); the client turns its events into the
results of awaited calls (:mod:`rolewire.baselines._client`). TLS contexts
and errors: :mod:`rolewire.baselines._tls`.

Wire format: rolewire's stream framing, ``length u32 (big-endian) | kind u8
| payload``, with each RECORD frame's payload one call message in the clear
(TLS protects it). A frame longer than ``max_frame`` (length field: kind
byte plus call message; 16 MiB by default) is a
:class:`~rolewire.errors.ProtocolViolation`: the connection is closed before
the frame is buffered.

After accepting a connection (and completing TLS, where used) the server
sends one greeting, a HANDSHAKE frame holding :data:`HELLO`. A client's
``connect`` returns only after it has read it. With TLS 1.3 this matters:
the client finishes its side of the handshake before the server has checked
the client certificate, so a server that refuses the certificate is only
noticed on the first read. The greeting turns that into an error of
``connect`` instead of the first call.

:class:`BaselineServer` and :class:`BaselineClient` implement the common
``serve``/``connect`` shape; :mod:`rolewire.baselines.mtls` and
:mod:`rolewire.baselines.jwt` add TLS contexts and authentication (peer
roles, an :class:`~rolewire.protocol.Authorizer`). :func:`serve_plain` /
:func:`connect_plain` use no security at all (the benchmark's ceiling).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, Protocol, TypeVar

from rolewire.errors import ConfigurationError
from rolewire.protocol import ConnectionSettings
from rolewire.protocol.transport_secured import TransportSecurity

__all__ = [
    "HELLO",
    "MAX_FRAME",
    "PLAIN",
    "READ_CHUNK",
    "TLS13",
    "WRITE_HIGH_WATER",
    "Opening",
    "connection_settings",
    "limit_recv_size",
]

log = logging.getLogger("rolewire.baselines")

#: Largest frame accepted by default (its length field: kind byte + call message).
MAX_FRAME = 16 << 20
#: The server's greeting, the first frame on every connection.
HELLO = b"rolewire-baseline/2"
#: Senders wait for the transport when its buffer passes this many bytes.
WRITE_HIGH_WATER = 512 * 1024
#: Bytes asked of the stream per read.
READ_CHUNK = 64 * 1024
#: What secures the channel (reported as the connection's "suite").
PLAIN = TransportSecurity("plain")
TLS13 = TransportSecurity("tls1.3")

def limit_recv_size(transport: asyncio.BaseTransport) -> None:
    """Make the selector transport ``recv()`` at most ``READ_CHUNK`` bytes
    at a time, as :mod:`rolewire.aio` does: it asks for 256 KiB by default,
    a fresh mmap()ed buffer per read (measured: ~10 us per read). A CPython
    selector transport attribute; other event loops are left alone."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = READ_CHUNK  # type: ignore[attr-defined]


def connection_settings(*, max_frame: int = MAX_FRAME, max_inflight: int = 64,
                        handshake_timeout: float = 10.0,
                        call_timeout: float | None = None) -> ConnectionSettings:
    """The core's settings for a baseline connection: ``max_frame`` bounds a
    frame's length field; no keepalive probes, no idle timeout (TCP and TLS
    have their own), a call's deadline is the caller's ``timeout``."""
    if max_frame < 2:
        raise ConfigurationError("max_frame must be >= 2")
    return ConnectionSettings(handshake_timeout=handshake_timeout, call_timeout=call_timeout,
                              keepalive_interval=None, max_inflight=max_inflight,
                              max_frame=max_frame - 1, container_bytes=0,
                              rehandshake_interval=None, rehandshake_records=None)


# --- awaitable or async context manager -------------------------------------------

class _AsyncClosable(Protocol):
    async def __aexit__(self, *exc: object) -> None: ...


T = TypeVar("T", bound=_AsyncClosable)


class Opening(Generic[T]):
    """What ``serve``/``connect`` return: ``await`` it for the object, or
    use ``async with`` to close it on exit."""

    def __init__(self, factory: Callable[[], Awaitable[T]]) -> None:
        self._factory = factory
        self._obj: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._factory().__await__()

    async def __aenter__(self) -> T:
        self._obj = await self._factory()
        return self._obj

    async def __aexit__(self, *exc: object) -> None:
        assert self._obj is not None
        await self._obj.__aexit__(*exc)
