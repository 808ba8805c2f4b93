"""The server side: :func:`serve` accepts TCP connections, runs the handshake
as responder and dispatches calls to a :class:`~rolewire.services.Service`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Generator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rolewire.aio._base import (
    READ_SIZE,
    STREAM_LIMIT,
    WRITE_HIGH_WATER,
    StreamDriver,
    close_writer,
    limit_recv_size,
    linger_close,
    log,
    run_handshake,
)
from rolewire.budgets import CallGuard, PeerBudget, peer_group
from rolewire.errors import (
    ConfigurationError,
    ConnectionClosed,
    HandshakeError,
    ProtocolViolation,
    TooManyHandshakes,
)
from rolewire.handshake import CookieChecker, HandshakeConfig, HandshakeLimiter, RejectReason
from rolewire.handshake.limiter import HandshakeSlot
from rolewire.protocol import (
    CallReceived,
    CallRefused,
    Closed,
    Closing,
    Connection,
    ConnectionSettings,
    ErrorCode,
    Failed,
    Notified,
    NotifiedBatch,
    busy_frame,
    reject_frame,
)
from rolewire.protocol.wire import default_max_frame
from rolewire.services import Refusal, Service
from rolewire.session import Session

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from typing_extensions import Self

    from rolewire.telemetry import Telemetry

__all__ = ["Server", "ServerStats", "serve"]



def log_handshake_failed(reason: str, *, peer: str, side: str) -> None:
    """The log line of a connection refused before its handshake ran (the
    connection core logs the others)."""
    log.info("handshake failed", extra={
        "event": "handshake_failed", "peer": peer, "side": side, "reason": reason,
        "remote": False, "error": ""})


@dataclass
class ServerStats:
    """Counters of one :class:`Server` (monotonic except ``*_open``)."""

    connections_open: int = 0
    connections_total: int = 0
    sessions_open: int = 0
    sessions_total: int = 0
    handshakes_failed: int = 0
    handshake_timeouts: int = 0
    busy_rejects: int = 0
    evictions: int = 0
    first_byte_timeouts: int = 0
    rate_limited: int = 0
    protocol_errors: int = 0
    idle_closes: int = 0
    records_sealed: int = 0
    records_opened: int = 0
    replays_rejected: int = 0
    auth_failures: int = 0
    other_bad_records: int = 0
    requests: int = 0
    notifications: int = 0
    forbidden_calls: int = 0
    refusal_closes: int = 0
    rekeys: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def handler_is_async(service: Service, cache: dict[str, bool], operation: str) -> bool:
    """True if ``operation``'s handler is a coroutine function (it then runs
    in its own task); ``cache`` is the caller's, one per server."""
    known = cache.get(operation)
    if known is None:
        op = service.operations.get(operation)
        known = op is not None and inspect.iscoroutinefunction(op.handler)
        if op is not None:
            cache[operation] = known
    return known


@dataclass
class _Stop:
    """Where :meth:`_ServerConnection._process_now` stopped (see there)."""

    index: int
    pending: Any
    drain: bool


class _ServerConnection:
    """One established connection: a sans-IO
    :class:`~rolewire.protocol.Connection` over a stream, with the service's
    handlers run for its :class:`~rolewire.protocol.CallReceived` and
    :class:`~rolewire.protocol.Notified` events (synchronous handlers
    inline, coroutine handlers as tasks, at most ``max_inflight`` at once).
    The connection decides everything else."""

    side = "responder"

    def __init__(self, server: Server, driver: StreamDriver, *, peer: str) -> None:
        self._server = server
        self._stats = server.stats
        self._service = server.service
        self._driver = driver
        self.conn = driver.conn
        self.peer = peer
        self._loop = driver.loop
        self._transport = driver.transport
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Both made only when needed (a deque or an Event is ~0.7 KiB, and
        # most connections never hold a request back or wait for room).
        self._backlog: deque[CallReceived] | None = None
        self._room: asyncio.Future[None] | None = None
        # Reading by callbacks: chunks held while the run loop finishes one
        # that must wait (None: not holding), what it hands over, its wake-up.
        self._held: list[bytes] | None = None
        self._handover: tuple[list[Any], _Stop | None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._stream_ended = False
        self._graceful = False
        self._seen = (0, 0, 0, 0, 0, 0)  # session counters already in the stats
        driver._on_timer_events = self._control_events

    @property
    def _notify_fast(self) -> frozenset[str]:
        # The notification fast path lives in the connection core (tests).
        return self.conn.cached_notifications

    @property
    def _out_bytes(self) -> int:
        # Reply bytes queued in the connection, not sealed yet (tests).
        return self.conn.queued_bytes

    @property
    def session(self) -> Session:
        session = self.conn.session
        assert session is not None
        return session

    def begin_close(self, reason: str) -> None:
        """Start a graceful close from our side (see
        :meth:`rolewire.protocol.Connection.begin_close`)."""
        self.conn.begin_close(reason, self._loop.time())
        self._control_events()
        self._driver.flush()

    # -- statistics ------------------------------------------------------------------
    def _sync_stats(self) -> None:
        session = self.conn.session
        assert session is not None
        c = session.counters
        now = (c.records_sealed, c.records_opened, c.replays_rejected, c.auth_failures,
               c.other_rejections, c.rekeys)
        seen = self._seen
        if now != seen:
            stats = self._stats
            stats.records_sealed += now[0] - seen[0]
            stats.records_opened += now[1] - seen[1]
            stats.replays_rejected += now[2] - seen[2]
            stats.auth_failures += now[3] - seen[3]
            stats.other_bad_records += now[4] - seen[4]
            stats.rekeys += now[5] - seen[5]
            self._seen = now

    # -- events ------------------------------------------------------------------------
    def _control(self, event: object) -> None:
        """Events other than calls: statistics, and the end of the connection."""
        kind = type(event)
        stats = self._stats
        if kind is CallRefused:
            refused: CallRefused = event  # type: ignore[assignment]
            if refused.notification:
                stats.notifications += 1
            else:
                stats.requests += 1
            if refused.code in _COUNTED_REFUSALS:
                stats.forbidden_calls += 1
            if refused.limit_reached:
                stats.refusal_closes += 1
            telemetry = self._server.telemetry
            if telemetry is not None and not refused.notification:
                service = self._service
                known = refused.operation in service.operations
                span = telemetry.start_call(service.name, refused.operation, known, self.peer)
                outcome = ("unknown" if not known else
                           "forbidden" if refused.code == ErrorCode.FORBIDDEN else "error")
                telemetry.end_call(span, service.name, refused.operation, known, outcome, 0.0)
        elif kind is Closing:
            if event.reason == "idle":  # type: ignore[attr-defined]
                stats.idle_closes += 1
        elif kind is Closed:
            self._graceful = event.graceful  # type: ignore[attr-defined]
            self._driver.flush(arm=False)  # our CLOSE
            if self._graceful:
                self._transport.close()
            else:
                self._transport.abort()
            self._room_free()
        elif kind is Failed:
            if isinstance(event.error, ProtocolViolation):  # type: ignore[attr-defined]
                stats.protocol_errors += 1
            self._transport.abort()
            self._room_free()
        # HandshakeDone (taken already), OtherMessage (a signed-batch head
        # for a service that verifies none), replies: nothing to do.

    def _control_events(self) -> None:
        """Events outside a received chunk (timers, replies of tasks)."""
        for event in self.conn.events():
            if type(event) is CallReceived:  # cannot happen outside a chunk
                self._call(event)
            else:
                self._control(event)
        if self.conn.session is not None:
            self._sync_stats()

    def _room_free(self) -> None:
        """Wake the run loop if it waits for room (a task ended, or the
        connection did)."""
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    def _call(self, event: CallReceived) -> None:
        if (self._running < self._server.max_inflight
                and self._driver.unsent() <= WRITE_HIGH_WATER):
            self._start(event)
        else:
            if self._backlog is None:
                self._backlog = deque()
            self._backlog.append(event)

    def _process_now(self, events: list[Any], start: int = 0) -> _Stop | None:
        """Handle ``events[start:]`` without waiting: run synchronous
        handlers inline, start coroutine handlers as tasks. Returns None
        when all are done, or where it stopped: an event whose handler
        returned an awaitable (``pending``: await it, then answer the event
        if it is a request), or a reply that filled the write buffer
        (``drain``: Issue 11 s.4, a client that does not read must not make
        us buffer a chunk's worth of large replies)."""
        stats = self._stats
        conn = self.conn
        service = self._service
        invoke = service.invoke
        invoke_many = getattr(service, "invoke_many", None)
        is_async = self._server.is_async
        async_ops = self._server._async_ops  # (what is_async reads; same module)
        traced = self._server.telemetry is not None
        driver = self._driver
        # Room in the write buffer for replies (re-read only when queued
        # replies could fill it: a chunk of small replies checks one sum).
        room = WRITE_HIGH_WATER - self._transport.get_write_buffer_size()
        for i in range(start, len(events)):
            event = events[i]
            kind = type(event)
            if kind is NotifiedBatch:
                stats.notifications += len(event.bodies)
                # (ignore: invoke_many is None only for a service without
                # one, whose connections are not set to batch notifications)
                pending = invoke_many(  # type: ignore[misc]
                    event.operation, event.context, event.bodies)
                if pending is not None:
                    return _Stop(i, pending, False)
            elif kind is Notified:
                stats.notifications += 1
                result = invoke(event.operation, event.context, event.body)
                if not isinstance(result, (bytes, tuple)):
                    return _Stop(i, result, False)
            elif kind is CallReceived:
                stats.requests += 1
                operation = event.operation
                known = async_ops.get(operation.name)
                if known if known is not None else is_async(operation.name):
                    self._call(event)
                    continue
                # Synchronous handler: answer inline, no task needed.
                if traced:
                    return _Stop(i, self._traced(event), False)
                result = invoke(operation, event.context, event.body)
                if not isinstance(result, (bytes, tuple)):
                    return _Stop(i, result, False)
                conn.reply(event.call_id, operation.name, result)
                if conn.queued_bytes > room:
                    room = WRITE_HIGH_WATER - driver.unsent()
                    if conn.queued_bytes > room:
                        return _Stop(i + 1, None, True)
            else:
                self._control(event)
        return None

    async def _process(self, events: list[Any], start: int = 0,
                       stop: _Stop | None = None) -> None:
        """Handle every event in order, waiting where a handler needs it
        (``stop``: where :meth:`_process_now` already stopped)."""
        if stop is None:
            stop = self._process_now(events, start)
        while stop is not None:
            index = stop.index
            if stop.pending is not None:
                result = await stop.pending
                event = events[index]
                if type(event) is CallReceived:
                    self.conn.reply(event.call_id, event.operation.name, result)
                    if self._driver.unsent() + self.conn.queued_bytes > WRITE_HIGH_WATER:
                        stop = _Stop(index + 1, None, True)
                        continue
                index += 1
            if stop.drain:
                self._driver.flush()
                await self._driver.drain()
            stop = self._process_now(events, index)

    async def _traced(self, event: CallReceived) -> bytes | Refusal:
        """Run one request's handler inside its span and record its outcome."""
        telemetry = self._server.telemetry
        assert telemetry is not None
        service = self._service
        name = event.operation.name
        span = telemetry.start_call(service.name, name, True, self.peer,
                                    event.context.metadata)
        started = self._loop.time()
        result: bytes | Refusal | Awaitable[bytes | Refusal] | None = None
        try:
            if span is None:
                result = service.invoke(event.operation, event.context, event.body)
                if not isinstance(result, (bytes, tuple)):
                    result = await result
            else:
                with telemetry.use_span(span):
                    result = service.invoke(event.operation, event.context, event.body)
                    if not isinstance(result, (bytes, tuple)):
                        result = await result
        finally:
            telemetry.end_call(span, service.name, name, True,
                               "ok" if isinstance(result, bytes) else "error",
                               self._loop.time() - started)
        assert result is not None
        return result

    def _start(self, event: CallReceived) -> None:
        self._running += 1
        task = self._loop.create_task(self._run_call(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_call(self, event: CallReceived) -> None:
        conn = self.conn
        try:
            if self._server.telemetry is None:
                result = self._service.invoke(event.operation, event.context, event.body)
                if not isinstance(result, (bytes, tuple)):
                    result = await result
            else:
                result = await self._traced(event)
            conn.reply(event.call_id, event.operation.name, result, self._loop.time())
            self._control_events()
            self._driver.flush_soon()
        finally:
            self._running -= 1
            if self._transport.is_closing():
                self._backlog = None  # nobody to answer
            elif self._backlog and self._driver.unsent() <= WRITE_HIGH_WATER:
                self._start(self._backlog.popleft())
            # The run loop re-checks the backlog and the in-flight bound.
            self._room_free()

    # -- the connection's life ---------------------------------------------------------
    async def _wait_for_room(self) -> None:
        """Back-pressure before reading on: while the connection has too
        many requests running (or held back), and while the client does not
        read its replies, do not read from it."""
        conn = self.conn
        driver = self._driver
        max_inflight = self._server.max_inflight
        while not conn.ended and (conn.reading_paused or self._backlog):
            if self._backlog and self._running < max_inflight:
                # Held back while replies were unsent: wait until
                # they drain, then start what the backlog holds.
                await driver.drain()
                while self._backlog and self._running < max_inflight:
                    self._start(self._backlog.popleft())
                if not conn.reading_paused:
                    continue
            self._room = self._loop.create_future()
            await self._room  # back-pressure: stop reading
            self._room = None
        if not conn.ended:
            await driver.drain()  # (returns at once below the high-water mark)

    async def _finish(self, events: list[Any], stop: _Stop | None = None) -> None:
        """Handle a chunk's events (waiting where needed), then write the
        replies of the chunk in one write."""
        await self._process(events, stop=stop)
        self._driver.flush()
        self._sync_stats()

    def _chunk(self, data: bytes) -> None:
        """A chunk read by callback (see :meth:`_run_by_callbacks`)."""
        held = self._held
        if held is not None:
            held.append(data)
            return
        conn = self.conn
        driver = self._driver
        conn.receive_data(data, self._loop.time())  # (driver.receive)
        events = conn.events()
        stop = self._process_now(events)
        driver.flush()
        self._sync_stats()
        if stop is None and not (conn.reading_paused or self._backlog) \
                and self._transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
            return
        # Something must wait: the run loop takes over until it is done.
        self._held = []
        if not self._transport.is_closing():
            self._transport.pause_reading()
        self._handover = (events, stop)
        self._signal()

    def _signal(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _stream_end(self) -> None:
        self._stream_ended = True
        self._signal()

    async def _run_by_callbacks(self, start: Any) -> None:
        """Read by callbacks: a chunk whose handlers all finish at once is
        handled in the transport's ``data_received`` (no task switch per
        chunk); one that must wait (a coroutine handler's result, a full
        write buffer, too many requests running) pauses reading and is
        finished here, with the chunks that came meanwhile, in order.
        Returns when the connection ended or the stream did."""
        conn = self.conn
        loop = self._loop
        driver = self._driver
        await start(self._chunk, self._stream_end)
        while not conn.ended:
            if self._handover is None and not self._stream_ended:
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
            handover, self._handover = self._handover, None
            if handover is not None:
                events, stop = handover
                if stop is not None:
                    await self._finish(events, stop)
                await self._wait_for_room()
                held = self._held or []
                while held and not conn.ended:
                    driver.receive(held.pop(0))
                    await self._finish(conn.events())
                    await self._wait_for_room()
                self._held = None
                if not conn.ended and not self._transport.is_closing():
                    self._transport.resume_reading()
            elif self._stream_ended:
                break
        if self._stream_ended and not conn.ended:
            conn.connection_lost(None, loop.time())
            self._control_events()

    async def run(self) -> None:
        conn = self.conn
        driver = self._driver
        loop = self._loop
        try:
            await self._finish(conn.events())  # records that came with the handshake
            start_callbacks = getattr(driver, "start_callbacks", None)
            if start_callbacks is not None:
                await self._run_by_callbacks(start_callbacks)
            while not conn.ended:
                await self._wait_for_room()
                if conn.ended:
                    break
                data = await driver.read()
                if not data:
                    conn.connection_lost(None, loop.time())
                    self._control_events()
                    break
                driver.receive(data)
                await self._finish(conn.events())
        except ConnectionClosed:
            conn.connection_lost(ConnectionClosed("lost"), loop.time())
            self._control_events()
        finally:
            driver.stop()
            if not self._graceful:
                for task in list(self._tasks):
                    task.cancel()
            if not conn.ended:
                conn.abort(None, "connection_lost")
                self._control_events()
            if self._transport.is_closing():
                self._transport.abort()
            else:
                driver.flush(arm=False)
            await close_writer(driver.writer)
            self._sync_stats()


#: Refusals counted as ``forbidden_calls`` (not authorized / no such operation).
_COUNTED_REFUSALS = (ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_OPERATION)


#: Stream buffer limit before the handshake completes (asyncio stops reading
#: a connection whose buffer passes twice its limit).
PRE_AUTH_STREAM_LIMIT = 32 * 1024
#: Busy refusals lingering (to deliver their Reject) at once; more are cut.
_MAX_LINGERING = 256


class _Pending:
    """An unauthenticated connection in the server's table."""

    __slots__ = ("key", "slot", "writer")

    def __init__(self, key: str, writer: asyncio.StreamWriter) -> None:
        self.key = key
        self.writer = writer
        self.slot: HandshakeSlot | None = None


class Server:
    """A running rolewire server (built by :func:`serve`).

    Attributes:
        stats: :class:`ServerStats` (live counters).
        service: the :class:`~rolewire.services.Service` it dispatches to.
    """

    def __init__(self, service: Service, config: HandshakeConfig, *, max_connections: int,
                 handshake_timeout: float, idle_timeout: float | None,
                 limiter: HandshakeLimiter | None, max_frame: int | None,
                 max_inflight: int, close_timeout: float,
                 call_guard: dict[str, Any] | None = None,
                 max_pending_per_peer: int | None = None,
                 first_byte_timeout: float = 3.0,
                 handshake_rate: tuple[float, int] | None = (20.0, 64),
                 telemetry: Telemetry | None = None) -> None:
        if not isinstance(config, HandshakeConfig):
            raise ConfigurationError("config must be a HandshakeConfig")
        if max_connections < 1 or max_inflight < 1:
            raise ConfigurationError("max_connections and max_inflight must be >= 1")
        if handshake_timeout <= 0 or close_timeout <= 0 or first_byte_timeout <= 0 or (
                idle_timeout is not None and idle_timeout <= 0):
            raise ConfigurationError("timeouts must be > 0 (idle_timeout may be None)")
        if max_pending_per_peer is None:
            max_pending_per_peer = max(1, min(32, max_connections // 8))
        if max_pending_per_peer < 1:
            raise ConfigurationError("max_pending_per_peer must be >= 1")
        self.service = service
        self.config = config
        self.max_connections = max_connections
        self.handshake_timeout = min(handshake_timeout, config.timeout)
        self.idle_timeout = idle_timeout
        #: Unauthenticated connections (waiting for their first byte or in
        #: the handshake) from one address (IPv6: one /64) at once.
        self.max_pending_per_peer = max_pending_per_peer
        #: Seconds a new connection may take to send its first byte.
        self.first_byte_timeout = min(first_byte_timeout, self.handshake_timeout)
        if limiter is None:
            pending = min(256, max_connections)
            limiter = HandshakeLimiter(max_pending=pending,
                                       max_per_peer=min(pending, max_pending_per_peer))
        self.limiter = limiter
        #: Stateless cookie round trip (docs/PROTOCOL.md, "Cookie"): with more
        #: than ``cookie_load`` handshakes pending, a Hello must echo a cookie
        #: for its address before the responder computes anything.
        self.cookies = CookieChecker()
        self.cookie_load = max(1, limiter.max_pending // 2)
        #: Handshakes one address may start: (per second, burst); None: no bound.
        self.handshake_rate = handshake_rate
        self._handshake_budget = (PeerBudget(*handshake_rate)
                                  if handshake_rate is not None else None)
        #: The handshake rate is enforced while at least this many
        #: handshakes are pending (an eighth of the handshake table).
        self.rate_enforced_above = max(1, limiter.max_pending // 8)
        self.max_frame = max_frame or default_max_frame(config)
        self.max_inflight = max_inflight
        self.close_timeout = close_timeout
        self.call_guard = dict(call_guard or {})
        #: :class:`~rolewire.telemetry.Telemetry` (None: no telemetry work).
        self.telemetry = telemetry
        CallGuard(**self.call_guard)  # bad settings fail here, not per connection
        self.stats = ServerStats()
        if telemetry is not None:
            telemetry.watch(self.stats)
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._established: set[_ServerConnection] = set()
        # Unauthenticated connections, oldest first (the eviction order).
        self._unauthenticated: dict[asyncio.StreamWriter, _Pending] = {}
        self._pending_per_peer: dict[str, int] = {}
        self._lingering = 0
        self._closing = False
        self._async_ops: dict[str, bool] = {}
        self._settings_cache: tuple[tuple[Any, ...], ConnectionSettings] | None = None

    # -- public -------------------------------------------------------------------------
    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        """The listening port (useful with ``port=0``)."""
        return int(self.sockets[0].getsockname()[1])

    def reload_config(self, config: HandshakeConfig) -> None:
        """Hot reload: new handshakes use ``config`` (e.g. rotated role
        secrets re-read with ``ServiceConfig.load_roles()``); sessions that
        are already open keep their keys and peer roles and are not dropped."""
        if not isinstance(config, HandshakeConfig):
            raise ConfigurationError("config must be a HandshakeConfig")
        self.config = config
        logging.getLogger("rolewire.aio").info("handshake config reloaded", extra={
            "event": "config_reloaded", "roles": sorted(r.name for r in config.roles)})

    def close(self) -> None:
        """Stop accepting; abort handshakes in progress; close established
        sessions gracefully (running calls finish, then CLOSE)."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._unauthenticated):
            writer.transport.abort()
        for conn in list(self._established):
            conn.begin_close("shutdown")

    async def wait_closed(self) -> None:
        """Wait until every connection has ended (at most about
        ``close_timeout`` after :meth:`close`)."""
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self.close_timeout + 1.0)
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def _connection_settings(self) -> ConnectionSettings:
        """The settings of a new connection: one object shared by all
        connections while the server's knobs stay the same (an object per
        connection costs ~0.5 KiB)."""
        knobs = (self.handshake_timeout, self.idle_timeout, self.close_timeout,
                 self.max_inflight, self.max_frame, self.call_guard,
                 hasattr(self.service, "invoke_many"))
        cached = self._settings_cache
        if cached is None or cached[0] != knobs:
            settings = ConnectionSettings(
                handshake_timeout=knobs[0], idle_timeout=knobs[1], close_timeout=knobs[2],
                max_inflight=knobs[3], max_frame=knobs[4], call_guard=knobs[5],
                keepalive_interval=None,
                # runs of notifications as one event: one invoke_many per run
                batch_notifications=knobs[6])
            cached = self._settings_cache = (knobs, settings)
        return cached[1]

    def is_async(self, operation: str) -> bool:
        """True if the operation's handler is a coroutine function (it then
        runs in its own task)."""
        return handler_is_async(self.service, self._async_ops, operation)

    # -- connections ----------------------------------------------------------------------
    async def _start(self, host: str, port: int, **kwargs: Any) -> None:
        # The stream buffer limit starts small (a pre-authentication peer
        # gets at most about twice PRE_AUTH_STREAM_LIMIT buffered) and is
        # raised to STREAM_LIMIT once the handshake has completed.
        self._server = await asyncio.start_server(self._on_connection, host, port,
                                                  limit=PRE_AUTH_STREAM_LIMIT, **kwargs)

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            # Cancelled by wait_closed() or loop shutdown. Not re-raised: the
            # stream machinery would log the cancelled task as an error.
            writer.transport.abort()
        except Exception:
            logging.getLogger("rolewire.aio").exception(
                "connection handler failed", extra={"event": "connection_error"})
            writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        peername = writer.get_extra_info("peername")
        host = str(peername[0]) if peername else "?"
        peer = f"{host}:{peername[1]}" if peername else "?"
        if self._closing:
            writer.transport.abort()
            return
        limit_recv_size(writer.transport)
        key = peer_group(host)
        if self._pending_per_peer.get(key, 0) >= self.max_pending_per_peer:
            # One address may not fill the table (issue 11 s.4: 500 idle
            # sockets from one peer used to lock everyone out).
            await self._refuse_busy(reader, writer, peer, "peer_pending")
            return
        if stats.connections_open >= self.max_connections and not self._evict_oldest():
            await self._refuse_busy(reader, writer, peer, "connections")
            return
        pending = _Pending(key, writer)
        self._unauthenticated[writer] = pending
        self._pending_per_peer[key] = self._pending_per_peer.get(key, 0) + 1
        stats.connections_open += 1
        stats.connections_total += 1
        try:
            await self._handshake_and_run(reader, writer, host, peer, pending)
        finally:
            self._authenticated(pending)
            stats.connections_open -= 1

    def _authenticated(self, pending: _Pending) -> None:
        """Take a connection out of the unauthenticated table (idempotent)."""
        if self._unauthenticated.pop(pending.writer, None) is None:
            return
        n = self._pending_per_peer.get(pending.key, 0) - 1
        if n <= 0:
            self._pending_per_peer.pop(pending.key, None)
        else:
            self._pending_per_peer[pending.key] = n
        if pending.slot is not None:
            pending.slot.release()

    def _evict_oldest(self, *, handshaking: bool = False) -> bool:
        """Cut the oldest unauthenticated connection (with ``handshaking``:
        the oldest holding a handshake slot) to make room for a new one;
        False if there is none. Its slot is freed at once."""
        for writer, pending in self._unauthenticated.items():
            if handshaking and pending.slot is None:
                continue
            self._authenticated(pending)
            writer.transport.abort()
            self.stats.evictions += 1
            log.info("unauthenticated connection evicted", extra={
                "event": "evicted", "peer": pending.key})
            return True
        return False

    async def _refuse_busy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           peer: str, why: str) -> None:
        stats = self.stats
        stats.busy_rejects += 1
        log.info("connection refused: busy", extra={
            "event": "busy_reject", "peer": peer, "open": stats.connections_open,
            "why": why})
        writer.write(busy_frame())
        if self._lingering >= _MAX_LINGERING:
            # Under a flood, refusals must not pile up either: cut at once
            # (the BUSY may be lost to a RST; the peer sees a reset).
            writer.transport.abort()
            return
        self._lingering += 1
        try:
            await linger_close(reader, writer, timeout=0.5)
        finally:
            self._lingering -= 1

    async def _handshake_and_run(self, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter, host: str, peer: str,
                                 pending: _Pending) -> None:
        stats = self.stats
        loop = asyncio.get_running_loop()
        # A short deadline for the first byte: a connection that says nothing
        # holds no handshake slot, and not for long.
        try:
            first = await asyncio.wait_for(reader.read(READ_SIZE), self.first_byte_timeout)
        except asyncio.TimeoutError:
            stats.handshakes_failed += 1
            stats.handshake_timeouts += 1
            stats.first_byte_timeouts += 1
            log_handshake_failed("TIMEOUT", peer=peer, side="responder")
            if not writer.transport.is_closing():
                writer.write(reject_frame(RejectReason.TIMEOUT))
            await close_writer(writer)
            return
        except (ConnectionError, OSError):
            first = b""
        if not first or writer.transport.is_closing():
            stats.handshakes_failed += 1
            log_handshake_failed("ConnectionClosed", peer=peer, side="responder")
            writer.transport.abort()
            return
        budget = self._handshake_budget
        # Every handshake is charged to its peer's bucket; an empty bucket
        # is enforced only while the server is loaded (handshakes pending),
        # so a lone client reconnecting fast is not refused when nobody
        # waits, and the heaviest peers are the first refused when others do.
        if (budget is not None and not budget.take(pending.key, loop.time())
                and self.limiter.pending >= self.rate_enforced_above):
            stats.handshakes_failed += 1
            stats.rate_limited += 1
            log_handshake_failed("BUSY", peer=peer, side="responder")
            if self.telemetry is not None:
                self.telemetry.end_handshake(None, 0.0, complete=False, reason="BUSY")
            self._authenticated(pending)
            await self._refuse_busy(reader, writer, peer, "handshake_rate")
            return
        try:
            slot = self.limiter.acquire(pending.key)
        except TooManyHandshakes:
            slot = None
            if self.limiter.pending >= self.limiter.max_pending and self._evict_oldest(
                    handshaking=True):
                with contextlib.suppress(TooManyHandshakes):
                    slot = self.limiter.acquire(pending.key)
        if slot is None:
            stats.handshakes_failed += 1
            log_handshake_failed("BUSY", peer=peer, side="responder")
            if self.telemetry is not None:
                self.telemetry.end_handshake(None, 0.0, complete=False, reason="BUSY")
            self._authenticated(pending)
            await self._refuse_busy(reader, writer, peer, "handshakes")
            return
        pending.slot = slot
        conn = Connection.server(self.config, self.service, now=loop.time(), peer=peer,
                                 handshake_peer=host, settings=self._connection_settings(),
                                 logger=log,
                                 cookies=self.cookies,
                                 under_load=self.limiter.pending > self.cookie_load)
        driver = StreamDriver(conn, reader, writer, on_timer_events=lambda: None)
        telemetry = self.telemetry
        span = None
        started = loop.time()
        if telemetry is not None:
            peername = writer.get_extra_info("peername")
            span = telemetry.start_handshake(host, peername[1] if peername else None)
        try:
            await run_handshake(driver, first)
        except (ConnectionClosed, OSError) as exc:
            conn.abort(exc, type(exc).__name__)
        finally:
            # Frees the slot and the per-peer count however we left.
            self._authenticated(pending)
        # This frame stays suspended for the connection's life, and its
        # locals with it: not the first read (~1.3 KiB per connection).
        del first
        if not conn.established:
            stats.handshakes_failed += 1
            failed = next((e for e in conn.events() if isinstance(e, Failed)), None)
            if telemetry is not None:
                telemetry.end_handshake(span, loop.time() - started, complete=False,
                                        reason=failed.reason if failed is not None
                                        else "ConnectionClosed")
            if failed is not None and failed.reason == "TIMEOUT":
                stats.handshake_timeouts += 1
            if failed is not None and isinstance(failed.error, ProtocolViolation):
                stats.protocol_errors += 1
                writer.transport.abort()
                return
            if failed is not None and isinstance(failed.error, HandshakeError):
                driver.flush(arm=False)  # the Reject
                await linger_close(reader, writer, timeout=0.5)
                return
            writer.transport.abort()
            return
        if isinstance(getattr(reader, "_limit", None), int):
            # asyncio has no public setter for a stream's buffer limit.
            reader._limit = STREAM_LIMIT  # type: ignore[attr-defined]
        if telemetry is not None:
            session = conn.session
            assert session is not None
            telemetry.end_handshake(span, loop.time() - started, complete=True,
                                    suite=session.suite.wire_name,  # type: ignore[attr-defined]
                                    role_kinds=(kind for kind, _ in session.peer_role_kinds))
        stats.sessions_open += 1
        stats.sessions_total += 1
        served = _ServerConnection(self, driver, peer=peer)
        self._established.add(served)
        try:
            if self._closing:
                served.begin_close("shutdown")
            await served.run()
        finally:
            self._established.discard(served)
            stats.sessions_open -= 1


async def _serve(service: Service, config: HandshakeConfig, *, host: str, port: int,
                 backlog: int, reuse_port: bool = False, **kwargs: Any) -> Server:
    server = Server(service, config, **kwargs)
    await server._start(host, port, backlog=backlog,
                        **({"reuse_port": True} if reuse_port else {}))
    log.info("listening", extra={"event": "listening", "host": host, "port": server.port})
    return server


class _Serve:
    """``await serve(...)`` or ``async with serve(...) as server``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._server: Server | None = None

    def __await__(self) -> Generator[Any, None, Server]:
        return _serve(*self._args, **self._kwargs).__await__()

    async def __aenter__(self) -> Server:
        self._server = await self
        return self._server

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def serve(service: Service, config: HandshakeConfig, *, host: str = "127.0.0.1",
          port: int = 0, max_connections: int = 1024, handshake_timeout: float = 10.0,
          idle_timeout: float | None = 300.0, limiter: HandshakeLimiter | None = None,
          max_frame: int | None = None, max_inflight: int = 64,
          close_timeout: float = 5.0, backlog: int = 1024,
          call_guard: dict[str, Any] | None = None, max_pending_per_peer: int | None = None,
          first_byte_timeout: float = 3.0,
          handshake_rate: tuple[float, int] | None = (20.0, 64),
          telemetry: Telemetry | None = None, workers: int = 1,
          reuse_port: bool = False) -> _Serve:
    """Listen on ``host:port`` and serve ``service`` to every peer that
    completes a handshake with ``config``.

    Use as ``server = await serve(...)`` or ``async with serve(...) as server``.

    Args:
        max_connections: connections (handshaking or established) served at
            once; one more gets a BUSY Reject and is closed.
        handshake_timeout: seconds for the whole handshake (also bounded by
            ``config.timeout``); a stalled peer gets a TIMEOUT Reject.
        idle_timeout: an established session with no traffic and no call in
            progress for this long is closed gracefully (None: never).
        limiter: bounds half-open handshakes (default: ``min(256,
            max_connections)`` pending, ``max_pending_per_peer`` per address).
        max_frame: largest frame accepted (default: the config's largest
            record or handshake message).
        max_inflight: requests of one connection running at once; beyond it
            the server stops reading from that connection (back-pressure).
        close_timeout: how long a graceful close may take before the
            connection is cut.
        backlog: the listen queue (asyncio's default of 100 drops SYNs when
            hundreds of clients connect at once).
        call_guard: keyword arguments of each connection's
            :class:`~rolewire.budgets.CallGuard` (audit lines per connection;
            the refused-call threshold past which it is closed).
        max_pending_per_peer: unauthenticated connections (before or in the
            handshake) from one address, IPv6 peers grouped by /64; one more
            gets BUSY (default: ``max_connections // 8``, at most 32). When
            the connection table or the handshake table is full, the oldest
            unauthenticated connection is evicted to admit a new one.
        first_byte_timeout: seconds a new connection may stay silent before
            it is closed (it holds no handshake slot meanwhile).
        handshake_rate: ``(per_second, burst)`` handshakes one address may
            start (a token bucket); over it, BUSY while the server is loaded
            (at least an eighth of the handshake slots in use). None:
            unbounded.
        telemetry: a :class:`~rolewire.telemetry.Telemetry`: handshake and
            request metrics and spans, the server's counters as observable
            instruments (docs/observability.md). None: none of that work.
        workers: must be 1 here: worker processes cannot be started safely
            from inside a running event loop; other values raise
            :class:`~rolewire.errors.ConfigurationError` pointing to
            :func:`rolewire.aio.serve_workers` (or saying that the platform
            lacks SO_REUSEPORT).
        reuse_port: listen with SO_REUSEPORT, so that several processes
            can listen on one port (what each worker of ``serve_workers``
            does).
    """
    if workers != 1:
        # Here, at call time, not when awaited. (Imported late: the workers
        # module builds on this one.)
        from rolewire.aio.workers import refuse_in_loop_workers

        refuse_in_loop_workers(workers)
    return _Serve(service, config, host=host, port=port, max_connections=max_connections,
                  handshake_timeout=handshake_timeout, idle_timeout=idle_timeout,
                  limiter=limiter, max_frame=max_frame, max_inflight=max_inflight,
                  close_timeout=close_timeout, backlog=backlog, call_guard=call_guard,
                  max_pending_per_peer=max_pending_per_peer,
                  first_byte_timeout=first_byte_timeout, handshake_rate=handshake_rate,
                  telemetry=telemetry, reuse_port=reuse_port)
