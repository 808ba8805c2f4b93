"""The server side: :func:`serve` accepts TCP connections, runs the handshake
as responder and dispatches calls to a :class:`~rolewire.services.Service`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Generator, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rolewire.aio._base import (
    READ_SIZE,
    STREAM_LIMIT,
    WRITE_HIGH_WATER,
    Frame,
    HandshakeAborted,
    RecordConnection,
    close_writer,
    limit_recv_size,
    linger_close,
    log,
    log_handshake_complete,
    log_handshake_failed,
    run_handshake,
)
from rolewire.budgets import CallGuard, PeerBudget, peer_group
from rolewire.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectionClosed,
    ProtocolViolation,
    RecordError,
    ReplayDetected,
    TooManyHandshakes,
)
from rolewire.handshake import (
    CookieChecker,
    HandshakeConfig,
    HandshakeLimiter,
    Responder,
    busy_reject,
)
from rolewire.handshake.limiter import HandshakeSlot
from rolewire.handshake.messages import Reject
from rolewire.handshake.reasons import RejectReason
from rolewire.protocol.wire import (
    CallMessage,
    ErrorCode,
    FrameDecoder,
    FrameKind,
    MessageType,
    default_max_frame,
    encode,
    encode_frame,
    error_message,
)
from rolewire.services import CallContext, Refusal, Service, audit_log
from rolewire.session import Session

if TYPE_CHECKING:
    from typing_extensions import Self

    from rolewire.telemetry import Telemetry

__all__ = ["Server", "ServerStats", "serve"]

_CLOSE = encode(CallMessage(MessageType.CLOSE, 0, ""))


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


def _outcome(reply: CallMessage | None, known: bool) -> str:
    """A request's outcome for telemetry: ``ok``, ``forbidden``,
    ``unknown`` or ``error`` (the local view: precise even where the reply
    is uniform)."""
    if reply is None or reply.type is MessageType.RESPONSE:
        return "ok"
    if not known:
        return "unknown"
    code = int.from_bytes(reply.body[:2], "big") if reply.type is MessageType.ERROR else 0
    return "forbidden" if code == ErrorCode.FORBIDDEN else "error"


class _ServerConnection(RecordConnection):
    side = "responder"

    def __init__(self, server: Server, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, session: Session, decoder: FrameDecoder, *,
                 peer: str) -> None:
        super().__init__(reader, writer, session, decoder, peer=peer)
        self._server = server
        self._stats = server.stats
        self._service = server.service
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog: deque[CallMessage] = deque()
        #: operation name -> (Operation, shared CallContext) of notifications
        #: this connection may send (see _cache_notify).
        self._notify_fast: dict[str, tuple[Any, CallContext]] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._idle_event = asyncio.Event()  # set when nothing is in flight
        self._idle_event.set()
        self._closing = False     # we decided to close: new requests get UNAVAILABLE
        self._close_sent = False
        self._peer_closed = False
        self._close_reason = "eof"
        self._idle_handle: asyncio.TimerHandle | None = None
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._rekeys_seen = session.counters.rekeys
        # Refused calls of this connection: audit-line budget, close threshold.
        self.guard = CallGuard(**server.call_guard)
        self._refused_seen = 0
        # Per-connection state of the call layers (end-user token cache,
        # signed-call batches): rolewire.callstate.
        self.call_state = server.service.connection_state(session.transcript_hash,
                                                          session.peer_roles, peer)
        if server.idle_timeout:
            self._idle_handle = self._loop.call_later(server.idle_timeout, self._idle_check)

    # -- statistics hooks ------------------------------------------------------------
    def _count_sealed(self, n: int) -> None:
        self._stats.records_sealed += n
        rekeys = self.session.counters.rekeys
        if rekeys != self._rekeys_seen:
            self._stats.rekeys += rekeys - self._rekeys_seen
            self._rekeys_seen = rekeys

    def _count_opened(self, ok: int, errors: list[RecordError]) -> None:
        stats = self._stats
        stats.records_opened += ok
        for error in errors:
            if isinstance(error, ReplayDetected):
                stats.replays_rejected += 1
            elif isinstance(error, AuthenticationFailed):
                stats.auth_failures += 1
            else:
                stats.other_bad_records += 1

    def _check_guard(self) -> None:
        """Count refused calls; close a connection past its refusal budget."""
        guard = self.guard
        if guard.refused != self._refused_seen:
            self._stats.forbidden_calls += guard.refused - self._refused_seen
            self._refused_seen = guard.refused
            if guard.exhausted and not self._closing:
                self._stats.refusal_closes += 1
                audit_log.warning("too many refused calls: closing the connection", extra={
                    "event": "refused_calls_limit", "peer": self.peer,
                    "refused": guard.refused})
                self.begin_close("refused_calls")

    # -- timers ----------------------------------------------------------------------
    def _idle_check(self) -> None:
        self._idle_handle = None
        if self._closing or self._transport.is_closing():
            return
        timeout = self._server.idle_timeout
        if timeout is None:  # idle closing is off; nothing scheduled this
            return
        idle_for = self._loop.time() - self.last_activity
        if self._inflight == 0 and not self._backlog and idle_for >= timeout:
            self._stats.idle_closes += 1
            log.info("idle timeout", extra={"event": "idle_timeout", "peer": self.peer,
                                            "idle": round(idle_for, 3)})
            self.begin_close("idle")
            return
        self._idle_handle = self._loop.call_later(max(timeout - idle_for, 0.05),
                                                  self._idle_check)

    # -- closing ----------------------------------------------------------------------
    def begin_close(self, reason: str) -> None:
        """Start a graceful close from our side: requests already running
        finish and are answered, new ones get UNAVAILABLE, then CLOSE is sent;
        the connection ends when the client closes too, or after the
        server's ``close_timeout``."""
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        self._loop.create_task(self._send_close_when_idle())
        self._deadline_handle = self._loop.call_later(self._server.close_timeout,
                                                      self._transport.abort)

    async def _send_close_when_idle(self) -> None:
        try:
            await asyncio.wait_for(self._idle_event.wait(), self._server.close_timeout)
        except asyncio.TimeoutError:
            pass
        self._send_close()

    def _send_close(self) -> None:
        if not self._close_sent and not self._transport.is_closing():
            self._close_sent = True
            self.queue(_CLOSE)
            self.flush()

    # -- the connection's life ---------------------------------------------------------
    async def run(self, leftover: list[Frame]) -> None:
        try:
            frames: list[Frame] | None = leftover
            while True:
                if frames:
                    await self._process(frames)
                    self.flush()  # the replies of this chunk, in one write
                if self._peer_closed:
                    break
                max_inflight = self._server.max_inflight
                while self._backlog or self._inflight >= max_inflight:
                    if self._backlog and self._inflight < max_inflight:
                        # Held back while replies were unsent: wait until
                        # they drain, then start what the backlog holds.
                        await self.drain()
                        while self._backlog and self._inflight < max_inflight:
                            self._start(self._backlog.popleft())
                        continue
                    self._room.clear()
                    await self._room.wait()  # back-pressure: stop reading
                # A client that does not read its replies stops being read.
                await self.drain()
                frames = await self.read_frames()
                if frames is None:
                    break
            if self._peer_closed:
                # Graceful: answer what is running, then CLOSE and close.
                self._closing = True
                try:
                    await asyncio.wait_for(self._idle_event.wait(), self._server.close_timeout)
                except asyncio.TimeoutError:
                    pass
                self._send_close()
                if self._close_reason == "eof":
                    self._close_reason = "closed_by_peer"
        except ConnectionClosed:
            self._close_reason = "connection_lost"
        except ProtocolViolation as exc:
            self._stats.protocol_errors += 1
            self._close_reason = "protocol_violation"
            log.warning("protocol violation", extra={
                "event": "protocol_violation", "peer": self.peer, "side": self.side,
                "error": str(exc)})
            self._transport.abort()
        finally:
            for handle in (self._idle_handle, self._deadline_handle):
                if handle is not None:
                    handle.cancel()
            if not self._peer_closed:
                for task in list(self._tasks):
                    task.cancel()
            if self._transport.is_closing():
                self._transport.abort()
            else:
                self.flush()
            await close_writer(self._writer)
            if self.guard.suppressed_total:
                audit_log.warning("audit lines suppressed", extra={
                    "event": "audit_suppressed", "peer": self.peer,
                    "suppressed": self.guard.suppressed_total, "refused": self.guard.refused})
            self.log_closed(self._close_reason)
            self.session.close()

    def _cache_notify(self, name: str, state: object) -> None:
        """Remember an operation's permission and shared context for this
        connection's notifications, if nothing beyond roles is checked per
        call (no end-user or signature requirement)."""
        service = self._service
        operation = service.operations.get(name)
        roles = self.session.peer_roles
        if operation is None or not operation.permits(roles) or \
                service.needs_call_checks(operation):
            return
        context = service.call_context(operation, roles, self.peer, 0,
                                       state=state)  # type: ignore[arg-type]
        if isinstance(context, CallContext):
            self._notify_fast[name] = (operation, context)

    async def _process(self, frames: list[Frame]) -> None:
        records = []
        for kind, payload in frames:
            if kind is not FrameKind.RECORD:
                raise ProtocolViolation("handshake frame after the handshake completed")
            records.append(payload)
        service = self._service
        roles = self.session.peer_roles
        peer = self.peer
        stats = self._stats
        decode = self.calls.decode
        guard = self.guard
        now = self._loop.time()
        dispatch_nowait = service.dispatch_nowait
        state = self.call_state
        messages: Iterable[CallMessage] = map(decode, self.open_records(records))
        if state.admit is not None:  # signed calls wait until their batch verifies
            messages = state.admit(messages)
        fast = self._notify_fast
        invoke = service.invoke
        for message in messages:
            call_type = message.type
            if call_type is MessageType.NOTIFY:
                stats.notifications += 1
                if self._closing:
                    continue
                cached = None if message.metadata else fast.get(message.operation)
                if cached is not None:
                    # Notification fast path: permission and context cached
                    # for this connection (its peer roles are fixed).
                    done = invoke(cached[0], cached[1], message.body)
                    if done is not None and not isinstance(done, (bytes, Refusal)):
                        await done
                    continue
                done = dispatch_nowait(message, roles, peer, guard, now, state)
                if done is not None and not isinstance(done, CallMessage):
                    await done
                if guard.refused != self._refused_seen:
                    self._check_guard()
                elif not message.metadata and len(fast) < 256:
                    self._cache_notify(message.operation, state)
            elif call_type is MessageType.REQUEST:
                stats.requests += 1
                if self._closing:
                    self.queue(encode(error_message(
                        message.call_id, message.operation, ErrorCode.UNAVAILABLE,
                        "the server is closing this connection")))
                elif not self._server.is_async(message.operation):
                    # Synchronous handler (or an unknown operation): answer
                    # inline, no task needed.
                    if self._server.telemetry is None:
                        reply = dispatch_nowait(message, roles, peer, guard, now, state)
                        if reply is not None and not isinstance(reply, CallMessage):
                            reply = await reply
                    else:
                        reply = await self._traced(message, now)
                    self._reply(reply)
                    if guard.refused != self._refused_seen:
                        self._check_guard()
                    if self._unsent() > WRITE_HIGH_WATER:
                        # Issue 11 s.4: a client that does not read must not
                        # make us buffer a chunk's worth of large replies.
                        # Stop handling its requests until they drain.
                        self.flush()
                        await self.drain()
                elif (self._inflight < self._server.max_inflight
                      and self._unsent() <= WRITE_HIGH_WATER):
                    self._start(message)
                else:
                    self._backlog.append(message)
            elif call_type is MessageType.CLOSE:
                self._peer_closed = True
                break
            elif call_type is MessageType.SIGNED_BATCH:
                continue  # a signed batch head for a service that verifies none
            else:
                # RESPONSE/ERROR: the server issues no calls.
                raise ProtocolViolation("unexpected reply message from the client")

    def _unsent(self) -> int:
        """Reply bytes queued or in the transport's buffer, not yet sent."""
        return self._out_bytes + self._transport.get_write_buffer_size()

    def _reply(self, reply: CallMessage | None) -> None:
        if reply is None:
            return
        if not self._transport.is_closing():
            self.queue(encode(reply))

    def _start(self, message: CallMessage) -> None:
        self._inflight += 1
        self._idle_event.clear()
        task = self._loop.create_task(self._run_call(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _traced(self, message: CallMessage, now: float) -> CallMessage | None:
        """Dispatch one request inside its span and record its outcome."""
        telemetry = self._server.telemetry
        assert telemetry is not None
        service = self._service
        known = message.operation in service.operations
        span = telemetry.start_call(service.name, message.operation, known, self.peer,
                                    message.metadata)
        started = self._loop.time()
        reply: CallMessage | None = None
        try:
            if span is None:
                reply = await service.dispatch(message, self.session.peer_roles, self.peer,
                                               self.guard, now, self.call_state)
            else:
                with telemetry.use_span(span):
                    reply = await service.dispatch(message, self.session.peer_roles,
                                                   self.peer, self.guard, now, self.call_state)
        finally:
            telemetry.end_call(span, service.name, message.operation, known,
                               _outcome(reply, known), self._loop.time() - started)
        return reply

    async def _run_call(self, message: CallMessage) -> None:
        try:
            if self._server.telemetry is None:
                reply = await self._service.dispatch(message, self.session.peer_roles,
                                                     self.peer, self.guard, self._loop.time(),
                                                     self.call_state)
            else:
                reply = await self._traced(message, self._loop.time())
            self._reply(reply)
            self._check_guard()
        finally:
            self._inflight -= 1
            self.last_activity = self._loop.time()
            if self._transport.is_closing():
                self._backlog.clear()  # nobody to answer
            elif self._backlog and self._unsent() <= WRITE_HIGH_WATER:
                self._start(self._backlog.popleft())
            # The run loop re-checks the backlog and the in-flight bound.
            self._room.set()
            if self._inflight == 0:
                self._idle_event.set()
                if self._closing and not self._backlog:
                    self._send_close()  # leaves in the same write as the last reply


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

    def is_async(self, operation: str) -> bool:
        """True if the operation's handler is a coroutine function (it then
        runs in its own task)."""
        known = self._async_ops.get(operation)
        if known is None:
            op = self.service.operations.get(operation)
            known = op is not None and inspect.iscoroutinefunction(op.handler)
            if op is not None:
                self._async_ops[operation] = known
        return known

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
        writer.write(encode_frame(FrameKind.HANDSHAKE, busy_reject()))
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
        decoder = FrameDecoder(self.max_frame)
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
                writer.write(encode_frame(FrameKind.HANDSHAKE,
                                          Reject(RejectReason.TIMEOUT).encode()))
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
        telemetry = self.telemetry
        span = None
        started = loop.time()
        if telemetry is not None:
            peername = writer.get_extra_info("peername")
            span = telemetry.start_handshake(host, peername[1] if peername else None)
        try:
            hs = Responder(self.config, peer=host, cookies=self.cookies,
                           under_load=self.limiter.pending > self.cookie_load)
            event, leftover = await run_handshake(
                hs, reader, writer, decoder, timeout=self.handshake_timeout, first_data=first,
                max_pending_frame=self.config.max_message_size + 5)  # + length, kind
        except HandshakeAborted as aborted:
            stats.handshakes_failed += 1
            if aborted.reason == "TIMEOUT":
                stats.handshake_timeouts += 1
            log_handshake_failed(aborted.reason, peer=peer, side="responder",
                                 remote=aborted.remote, error=aborted.error)
            if telemetry is not None:
                telemetry.end_handshake(span, loop.time() - started, complete=False,
                                        reason=aborted.reason)
            self._authenticated(pending)
            await linger_close(reader, writer, timeout=0.5)
            return
        except (ProtocolViolation, ConnectionClosed, OSError) as exc:
            stats.handshakes_failed += 1
            if isinstance(exc, ProtocolViolation):
                stats.protocol_errors += 1
            log_handshake_failed(type(exc).__name__, peer=peer, side="responder", error=exc)
            if telemetry is not None:
                telemetry.end_handshake(span, loop.time() - started, complete=False,
                                        reason=type(exc).__name__)
            writer.transport.abort()
            return
        finally:
            # Frees the slot and the per-peer count however we left.
            self._authenticated(pending)
        if isinstance(getattr(reader, "_limit", None), int):
            # asyncio has no public setter for a stream's buffer limit.
            reader._limit = STREAM_LIMIT  # type: ignore[attr-defined]
        log_handshake_complete(event, peer=peer, side="responder")
        if telemetry is not None:
            telemetry.end_handshake(span, loop.time() - started, complete=True,
                                    suite=event.suite.wire_name,
                                    role_kinds=(kind for kind, _ in event.peer_role_kinds))
        stats.sessions_open += 1
        stats.sessions_total += 1
        conn = _ServerConnection(self, reader, writer, event.session, decoder, peer=peer)
        self._established.add(conn)
        try:
            if self._closing:
                conn.begin_close("shutdown")
            await conn.run(leftover)
        finally:
            self._established.discard(conn)
            stats.sessions_open -= 1


async def _serve(service: Service, config: HandshakeConfig, *, host: str, port: int,
                 backlog: int, **kwargs: Any) -> Server:
    server = Server(service, config, **kwargs)
    await server._start(host, port, backlog=backlog)
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
          telemetry: Telemetry | None = None) -> _Serve:
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
    """
    return _Serve(service, config, host=host, port=port, max_connections=max_connections,
                  handshake_timeout=handshake_timeout, idle_timeout=idle_timeout,
                  limiter=limiter, max_frame=max_frame, max_inflight=max_inflight,
                  close_timeout=close_timeout, backlog=backlog, call_guard=call_guard,
                  max_pending_per_peer=max_pending_per_peer,
                  first_byte_timeout=first_byte_timeout, handshake_rate=handshake_rate,
                  telemetry=telemetry)
