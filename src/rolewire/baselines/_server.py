"""The server side of the baselines (private): accepts (TLS) streams and
moves each one's bytes through a sans-IO
:class:`~rolewire.protocol.transport_secured.TransportSecuredConnection`,
running the handlers of its events (see :mod:`rolewire.baselines._framing`)."""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from rolewire.baselines._tls import CertSource, PathLike, reload_chain, tls_error
from rolewire.errors import ConfigurationError, ProtocolViolation, RolewireError
from rolewire.protocol import Authorizer, CallReceived, Failed, Notified
from rolewire.protocol.transport_secured import TransportSecuredConnection
from rolewire.services import Refusal, Service

if TYPE_CHECKING:
    from typing_extensions import Self

    from rolewire.services import CallContext, Operation

__all__ = [
    "BaselineServer",
    "BaselineStats",
    "Peer",
    "current_authorization",
    "peer_address",
    "serve_plain",
]

#: StreamWriter.start_tls exists (3.11+): the server runs TLS per connection
#: and sees handshake failures; on 3.10 asyncio runs it (failures unseen).
_STARTTLS = hasattr(asyncio.StreamWriter, "start_tls")

#: The evidence the connection's authorizer attached to the request being
#: handled (``CallContext.signed``: the JWT baseline's verified request),
#: set by the server around the handler.
_current: contextvars.ContextVar[object] = contextvars.ContextVar("rolewire_baseline_auth")


def current_authorization() -> object:
    """The evidence the server's authorizer attached to the request being
    handled (``CallContext.signed``; ``None`` if it attached none); raises
    :class:`LookupError` outside a request handler."""
    return _current.get()


# --- server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """What the server knows about a connection before any request: its
    address, the roles proven for the whole connection (mTLS: from the client
    certificate) and an identity string for logs (certificate name)."""

    address: str
    roles: frozenset[str] = frozenset()
    identity: str = ""


Identify = Callable[[asyncio.StreamWriter], Peer]


def peer_address(writer: asyncio.StreamWriter) -> str:
    """``host:port`` of the connection's peer (for logs)."""
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


@dataclass
class BaselineStats:
    """Counters of one baseline server. ``refused``: calls refused for
    their credential (the JWT baseline's token), not for the caller's roles."""

    connections_total: int = 0
    connections_open: int = 0
    requests: int = 0
    notifications: int = 0
    refused: int = 0
    protocol_errors: int = 0
    handshakes_failed: int = 0


class _Served:
    """One accepted connection: reads into the sans-IO connection, runs the
    handlers of its events, writes what it queues, keeps its timer."""

    def __init__(self, server: BaselineServer, conn: TransportSecuredConnection,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        limit_recv_size(self.transport)
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- bytes out, time -------------------------------------------------------------
    def flush(self) -> None:
        self._flush_handle = None
        data = self.conn.data_to_send(self.loop.time())
        if data and not self.transport.is_closing():
            self.writer.write(data)
        self._arm()

    def _flush_soon(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def _arm(self) -> None:
        # Lazily: a timer that fires early just re-arms (no cancel and
        # call_at per call).
        when = self.conn.get_timer()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # (the loop may run a timer up to its clock resolution early)
        now = max(self.loop.time(), self._timer_at or 0.0)
        self._timer = self._timer_at = None
        self.conn.handle_timer(now)
        self._control(self.conn.events())  # (timers end calls and connections, never start one)
        self.flush()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def begin_close(self, reason: str) -> None:
        self.conn.begin_close(reason, self.loop.time())
        self._control(self.conn.events())
        self.flush()
        self._wake()

    # -- events ----------------------------------------------------------------------
    def _control(self, events: Iterable[object]) -> None:
        for event in events:
            if isinstance(event, Failed) and isinstance(event.error, ProtocolViolation):
                self.server.stats.protocol_errors += 1
                log.warning("protocol violation", extra={
                    "event": "protocol_violation", "system": self.server.system,
                    "peer": self.conn.peer, "reason": str(event.error)})

    def _process(self, events: list[Any]) -> Awaitable[None] | None:
        """Run the handlers of ``events`` in order; returns an awaitable for
        the rest once a handler turns out to be asynchronous (None when all
        ran inline: no coroutine per chunk on the hot path)."""
        stats = self.server.stats
        conn = self.conn
        for index, event in enumerate(events):
            kind = type(event)
            if kind is CallReceived:
                stats.requests += 1
                operation = event.operation
                if self.server.is_async(operation):
                    self._start(event)
                    continue
                result = self._invoke(operation, event.context, event.body)
                if not isinstance(result, (bytes, Refusal)):
                    return self._finish(result, event, events[index + 1:])
                conn.reply(event.call_id, operation.name, result, self.loop.time())
            elif kind is Notified:
                stats.notifications += 1
                result = self._invoke(event.operation, event.context, event.body)
                if not isinstance(result, (bytes, Refusal)):
                    return self._finish(result, event, events[index + 1:])
            else:
                self._control((event,))
        return None

    async def _finish(self, pending: Awaitable[bytes | Refusal], event: Any,
                      rest: list[Any]) -> None:
        token = _current.set(event.context.signed)  # (the handler's coroutine part)
        try:
            result = await pending
        finally:
            _current.reset(token)
        if type(event) is CallReceived:
            self.conn.reply(event.call_id, event.operation.name, result, self.loop.time())
        later = self._process(rest)
        if later is not None:
            await later

    def _invoke(self, operation: Operation, context: CallContext,
                body: bytes) -> bytes | Refusal | Awaitable[bytes | Refusal]:
        evidence = context.signed
        if evidence is None:
            return self.server.service.invoke(operation, context, body)
        token = _current.set(evidence)
        try:
            return self.server.service.invoke(operation, context, body)
        finally:
            _current.reset(token)

    def _start(self, event: CallReceived) -> None:
        task = self.loop.create_task(self._run_call(event))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._wake()

    async def _run_call(self, event: CallReceived) -> None:
        token = _current.set(event.context.signed)  # (a task has its own copy of the context)
        try:
            result = self.server.service.invoke(event.operation, event.context, event.body)
            if not isinstance(result, (bytes, Refusal)):
                result = await result
        finally:
            _current.reset(token)
        self.conn.reply(event.call_id, event.operation.name, result, self.loop.time())
        self._control(self.conn.events())
        self._flush_soon()

    # -- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        conn = self.conn
        loop = self.loop
        try:
            self._control(conn.events())  # HandshakeDone: open at once
            self.flush()  # the greeting
            while not conn.ended:
                if conn.reading_paused:
                    self._waiter = loop.create_future()
                    await self._waiter
                    continue
                try:
                    data = await self.reader.read(READ_CHUNK)
                except (ConnectionError, OSError) as exc:
                    conn.connection_lost(exc, loop.time())
                    data = b""
                if not data:
                    conn.connection_lost(None, loop.time())
                    self._control(conn.events())
                    break
                conn.receive_data(data, loop.time())
                pending = self._process(conn.events())
                if pending is not None:
                    await pending
                self.flush()
                if self.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    await self.writer.drain()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=5.0)
                for pending in self.tasks:
                    pending.cancel()
            self.flush()


class BaselineServer:
    """A server of one :class:`~rolewire.services.Service` over framed
    streams (built by the baselines' ``serve``).

    Each connection is a
    :class:`~rolewire.protocol.transport_secured.TransportSecuredConnection`:
    the peer's roles come from ``identify`` (mTLS: the client certificate),
    calls are authorized by ``authorizer`` (default: the service itself; the
    JWT baseline wraps it to check each request's token). Requests whose
    handler is a coroutine function run as tasks (at most ``max_inflight``
    per connection, then the server stops reading); other requests and all
    notifications run inline, in order. Replies produced while handling one
    received chunk leave in one write.
    """

    system = "plain"
    security = PLAIN

    def __init__(self, service: Service, *, ssl_context: ssl.SSLContext | None = None,
                 identify: Identify | None = None, authorizer: Authorizer | None = None,
                 max_frame: int = MAX_FRAME, max_inflight: int = 64,
                 handshake_timeout: float = 10.0) -> None:
        self.service = service
        self.authorizer: Authorizer = authorizer if authorizer is not None else service
        self.ssl_context = ssl_context
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.handshake_timeout = handshake_timeout
        self.settings = connection_settings(max_frame=max_frame, max_inflight=max_inflight,
                                            handshake_timeout=handshake_timeout)
        self.stats = BaselineStats()
        self._identify = identify or (lambda writer: Peer(peer_address(writer)))
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._served: set[_Served] = set()
        self._is_async: dict[str, bool] = {}
        self._closing = False
        #: OpenSSL's reason for the most recent failed TLS handshake (for
        #: operators and tests; never secret).
        self.last_handshake_failure = ""

    async def start(self, host: str, port: int, backlog: int = 1024) -> None:
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None and not _STARTTLS:
            kwargs.update(ssl=self.ssl_context, ssl_handshake_timeout=self.handshake_timeout)
        self._server = await asyncio.start_server(self._handle, host, port, backlog=backlog,
                                                  limit=READ_CHUNK, **kwargs)

    async def _start_tls(self, writer: asyncio.StreamWriter) -> bool:
        """Run the server side of the TLS handshake on an accepted
        connection (Python >= 3.11), so that a failure is seen here: counted
        and logged with OpenSSL's reason. (asyncio closes the connection
        without flushing the alert, so the client only sees the connection
        drop.) Returns False if the handshake failed."""
        assert self.ssl_context is not None
        try:
            await writer.start_tls(self.ssl_context,  # type: ignore[attr-defined,unused-ignore]
                                   ssl_handshake_timeout=self.handshake_timeout)
        except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError,
                TimeoutError) as exc:
            self.stats.handshakes_failed += 1
            reason = tls_error(exc).reason
            if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
                reason = f"{reason}: {exc.verify_message}"
            log.warning("TLS handshake failed", extra={
                "event": "tls_handshake_failed", "system": self.system,
                "peer": peer_address(writer), "reason": reason})
            self.last_handshake_failure = reason
            return False
        return True

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        """The listening port (useful with ``port=0``)."""
        return int(self.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop accepting; close every connection gracefully (a ``CLOSE``
        once its running requests are answered; it ends when the client's
        CLOSE comes back, or after the close timeout)."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for served in list(self._served):
            served.begin_close("server_closing")

    def reload_certificate(self, cert: CertSource, key: PathLike | None = None) -> None:
        """Present a renewed certificate on new connections (live ones keep
        their session). Raises :class:`ConfigurationError` if it cannot be
        loaded; the old certificate then stays in use."""
        if self.ssl_context is None:
            raise ConfigurationError("this server does not use TLS")
        reload_chain(self.ssl_context, cert, key)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until every connection handler has ended (then cancel the
        stragglers)."""
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=timeout)
        for task in list(self._handlers):
            task.cancel()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- per connection -----------------------------------------------------------------
    def is_async(self, operation: Operation) -> bool:
        """Whether ``operation``'s handler is a coroutine function (run as a task)."""
        cached = self._is_async.get(operation.name)
        if cached is None:
            cached = asyncio.iscoroutinefunction(operation.handler)
            self._is_async[operation.name] = cached
        return cached

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        served: _Served | None = None
        try:
            if self._closing:
                return
            if self.ssl_context is not None and _STARTTLS and not await self._start_tls(writer):
                return
            try:
                peer = self._identify(writer)
            except RolewireError as exc:
                log.warning("connection refused", extra={
                    "event": "connection_refused", "system": self.system,
                    "peer": peer_address(writer), "reason": type(exc).__name__})
                return
            conn = TransportSecuredConnection.server(
                self.authorizer, now=asyncio.get_running_loop().time(), peer_roles=peer.roles,
                peer=peer.identity or peer.address, greeting=HELLO, security=self.security,
                settings=self.settings)
            served = _Served(self, conn, reader, writer)
            self._served.add(served)
            await served.run()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            if served is not None:
                self._served.discard(served)
            self.stats.connections_open -= 1
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (OSError, RuntimeError, ssl.SSLError, asyncio.TimeoutError, TimeoutError):
                pass


def serve_plain(service: Service, *, host: str = "127.0.0.1", port: int = 0,
                peer_roles: Iterable[str] = (), max_frame: int = MAX_FRAME,
                max_inflight: int = 64) -> Opening[BaselineServer]:
    """Serve ``service`` over plain TCP, granting every connection
    ``peer_roles`` ("trust the network"). Benchmarks only."""
    roles = frozenset(peer_roles)

    async def start() -> BaselineServer:
        server = BaselineServer(service, max_frame=max_frame, max_inflight=max_inflight,
                                identify=lambda w: Peer(peer_address(w), roles))
        await server.start(host, port)
        return server

    return Opening(start)
