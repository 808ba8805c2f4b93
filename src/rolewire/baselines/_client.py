"""The client side of the baselines (private): a (TLS) stream moved
through a sans-IO
:class:`~rolewire.protocol.transport_secured.TransportSecuredConnection`,
its events turned into the results of awaited calls (see
:mod:`rolewire.baselines._framing`)."""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from rolewire.baselines._framing import (
    HELLO,
    MAX_FRAME,
    PLAIN,
    READ_CHUNK,
    WRITE_HIGH_WATER,
    Opening,
    connection_settings,
    limit_recv_size,
    log,
)
from rolewire.baselines._tls import tls_error
from rolewire.errors import ConnectionClosed, ProtocolViolation
from rolewire.protocol import CallFailed, Closed, Failed, HandshakeDone, ReplyReceived
from rolewire.protocol.transport_secured import TransportSecuredConnection, TransportSecurity

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BaselineClient", "connect_plain", "open_client"]

T = TypeVar("T")

# --- client -------------------------------------------------------------------------


class BaselineClient:
    """One client connection (built by the baselines' ``connect``): moves the
    bytes of a
    :class:`~rolewire.protocol.transport_secured.TransportSecuredConnection`
    and turns its events into the results of awaited calls.

    ``call`` may be used from many tasks at once: requests are pipelined and
    replies matched by call id (by the connection core). Every call,
    notification and ``send_many`` batch is written at once, in one write
    (as a hand-written TLS client does; rolewire's own channel coalesces)."""

    def __init__(self, connection: TransportSecuredConnection, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, peer: str = "") -> None:
        self.connection = connection
        #: The server's roles, as the transport proved them.
        self.peer_roles = connection.peer_roles
        self.peer = peer
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        limit_recv_size(self._transport)
        self._loop = asyncio.get_running_loop()
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._handle_events()  # whatever came with the greeting
        self._reader_task = self._loop.create_task(self._read_loop())

    @property
    def closed(self) -> bool:
        return self._reader_task.done() or self.connection.closing

    @property
    def pending_calls(self) -> int:
        return len(self._calls)

    # -- bytes out, time ---------------------------------------------------------------
    def _send(self) -> None:
        data = self.connection.data_to_send(self._loop.time())
        if data and not self._transport.is_closing():
            self._writer.write(data)
        self._arm()

    async def _drain(self) -> None:
        if self._transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            try:
                await self._writer.drain()
            except (ConnectionError, ssl.SSLError) as exc:
                raise ConnectionClosed("the connection closed while sending") from exc

    def _arm(self) -> None:
        # Lazily, as the server's connections do.
        when = self.connection.get_timer()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        now = max(self._loop.time(), self._timer_at or 0.0)  # (see _Served._fire)
        self._timer = self._timer_at = None
        self.connection.handle_timer(now)
        self._handle_events()
        self._send()

    # -- calls ---------------------------------------------------------------------------
    async def _request(self, operation: str, body: bytes, timeout: float | None,
                       metadata: Mapping[str, bytes] | None) -> bytes:
        conn = self.connection
        call_id = conn.call(operation, body, timeout=math.inf if timeout is None else timeout,
                            metadata=metadata)
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._calls[call_id] = future
        self._send()
        try:
            if self._transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await self._drain()
            return await future
        finally:
            if self._calls.pop(call_id, None) is not None:
                conn.cancel(call_id)  # cancelled: a late reply is dropped

    async def call(self, operation: str, body: bytes = b"", *,
                   timeout: float | None = 10.0) -> bytes:
        """Request/response. Raises the typed error of an ERROR reply
        (:func:`rolewire.rpc.remote_error`), :class:`ConnectionClosed` if the
        connection drops, :class:`~rolewire.errors.CallTimeout` (a
        :class:`TimeoutError`) after ``timeout`` seconds (None: no bound)."""
        return await self._request(operation, bytes(body), timeout, None)

    async def notify(self, operation: str, body: bytes = b"") -> None:
        """One-way message; waits only when the transport buffer is full."""
        self.connection.notify(operation, bytes(body))
        self._send()
        await self._drain()

    async def send_many(self, operation: str, bodies: Iterable[bytes]) -> None:
        """Many notifications in one write."""
        self.connection.notify_many(operation, bodies)
        self._send()
        await self._drain()

    # -- events ----------------------------------------------------------------------------
    def _handle_events(self) -> None:
        calls = self._calls
        for event in self.connection.events():
            kind = type(event)
            if kind is ReplyReceived:
                future = calls.pop(event.call_id, None)  # type: ignore[union-attr]
                if future is not None and not future.done():
                    future.set_result(event.body)  # type: ignore[union-attr]
            elif kind is CallFailed:
                future = calls.pop(event.call_id, None)  # type: ignore[union-attr]
                if future is not None and not future.done():
                    future.set_exception(event.error)  # type: ignore[union-attr]
                    future.exception()  # mark retrieved: the caller may be gone
            elif kind is Closed or kind is Failed:
                self._send()  # a final CLOSE
                if kind is Failed:
                    self._transport.abort()
                else:
                    self._transport.close()
            # The client serves nothing: the core answered any request itself.

    async def _read_loop(self) -> None:
        conn = self.connection
        loop = self._loop
        try:
            while not conn.ended:
                try:
                    data = await self._reader.read(READ_CHUNK)
                except (ConnectionError, OSError) as exc:
                    log.debug("connection lost", extra={"event": "connection_lost",
                                                        "reason": type(exc).__name__})
                    data = b""
                if not data:
                    conn.connection_lost(None, loop.time())
                    self._handle_events()
                    break
                conn.receive_data(data, loop.time())
                self._handle_events()
                self._send()
        except asyncio.CancelledError:
            conn.abort(None, "cancelled")
            self._handle_events()
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
            for future in self._calls.values():
                if not future.done():
                    future.set_exception(ConnectionClosed("the connection closed"))
                    future.exception()
            self._calls.clear()

    # -- closing -----------------------------------------------------------------------------
    async def close(self, timeout: float = 5.0) -> None:
        """Close gracefully: ``CLOSE`` goes out after everything queued,
        pending calls still get their replies (up to ``timeout``), then the
        connection closes when the server's ``CLOSE`` arrives. Idempotent."""
        if not self._reader_task.done():
            self.connection.close(self._loop.time(), timeout)
            self._handle_events()
            self._send()
            try:
                await asyncio.wait_for(asyncio.shield(self._reader_task), timeout + 1.0)
            except (asyncio.TimeoutError, TimeoutError):
                self._transport.abort()
        try:
            await self._reader_task
        except asyncio.CancelledError:
            pass
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout)
        except (OSError, RuntimeError, ssl.SSLError, asyncio.TimeoutError, TimeoutError):
            pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} to {self.peer} peer_roles={sorted(self.peer_roles)} "
                f"pending={len(self._calls)} closed={self.closed}>")


async def open_client(cls: Callable[..., T], host: str, port: int, *,
                      ssl_context: ssl.SSLContext | None = None,
                      server_hostname: str | None = None, timeout: float | None = 10.0,
                      max_frame: int = MAX_FRAME,
                      peer_roles: Callable[[asyncio.StreamWriter], frozenset[str]] | None = None,
                      security: TransportSecurity = PLAIN,
                      **kwargs: Any) -> T:
    """Connect (TLS if ``ssl_context``), read the server greeting, build the
    client object (``cls(connection, reader, writer, peer=..., **kwargs)``).
    TLS failures become :class:`TLSHandshakeFailed` /
    :class:`TLSCertificateRejected`; a server that hangs up without TLS gives
    :class:`ConnectionClosed`; nothing listening gives :class:`OSError`."""
    loop = asyncio.get_running_loop()
    settings = connection_settings(max_frame=max_frame,
                                   handshake_timeout=timeout if timeout else 1e9)
    peer = f"{host}:{port}"

    async def establish() -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                   TransportSecuredConnection]:
        extra: dict[str, Any] = {}
        if ssl_context is not None:
            extra.update(ssl=ssl_context, server_hostname=server_hostname or host,
                         ssl_handshake_timeout=timeout)
        reader, writer = await asyncio.open_connection(host, port, limit=READ_CHUNK, **extra)
        try:
            roles = peer_roles(writer) if peer_roles is not None else frozenset()
            conn = TransportSecuredConnection.client(
                now=loop.time(), peer_roles=roles, peer=peer, greeting=HELLO,
                security=security, settings=settings)
            while not conn.established and not conn.ended:
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise asyncio.IncompleteReadError(b"", None)
                conn.receive_data(data, loop.time())
            while (event := conn.next_event()) is not None:
                if isinstance(event, HandshakeDone):
                    return reader, writer, conn
                if isinstance(event, Failed):
                    raise ProtocolViolation("the server did not greet as a rolewire baseline")
            raise ConnectionClosed("the server closed the connection before greeting")
        except BaseException:
            writer.close()
            raise

    try:
        reader, writer, conn = await asyncio.wait_for(establish(), timeout)
    except ssl.SSLError as exc:
        raise tls_error(exc) from None
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError,
            asyncio.TimeoutError, TimeoutError) as exc:
        if ssl_context is not None:
            raise tls_error(exc) from None
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            raise
        raise ConnectionClosed("the server closed the connection before greeting") from None
    return cls(conn, reader, writer, peer=peer, **kwargs)


def connect_plain(host: str, port: int, *, timeout: float | None = 10.0,
                  max_frame: int = MAX_FRAME) -> Opening[BaselineClient]:
    """Connect over plain TCP (no security). Benchmarks only."""
    return Opening(lambda: open_client(BaselineClient, host, port, timeout=timeout,
                                       max_frame=max_frame))
