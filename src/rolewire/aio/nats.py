"""rolewire over NATS: sessions end to end *through* a broker.

A service instance subscribes to the service subject in a queue group (all
instances of a role share the load) and to its own inbox. A client sends
its Hello to the service subject with its inbox as the reply subject; the
instance that takes it answers from a session subject of its own
(``<instance inbox>.<session id>``) and every later message of the session
goes inbox to inbox. Each NATS message (a *packet*) carries whole frames,
exactly as they would travel on a TCP stream (docs/PROTOCOL.md, "NATS
binding"): one record per packet, or the records of one flush packed into
one packet up to the broker's ``max_payload``. Records are self-contained
and the replay window accepts any order, so nothing depends on the NATS
connection: a client or a service may reconnect to another node of a
cluster and its sessions go on.

The protocol is the sans-IO :class:`~rolewire.protocol.Connection`'s; this
module moves packets between it and nats-py, runs its timer, and runs the
service's handlers through the same code as the TCP server
(:mod:`rolewire.aio.server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rolewire.aio._base import Driver, handshake_outcome, run_handshake
from rolewire.aio.channel import Channel
from rolewire.aio.server import ServerStats, _ServerConnection, handler_is_async
from rolewire.errors import ConfigurationError, ConnectionClosed, ServiceUnavailable
from rolewire.handshake import HandshakeConfig
from rolewire.protocol import (
    Connection,
    ConnectionSettings,
    busy_frame,
)
from rolewire.protocol.wire import split_packets
from rolewire.services import Service

if TYPE_CHECKING:
    from typing import TypedDict

    from typing_extensions import Self

    from rolewire.telemetry import Telemetry

    class _SessionOptions(TypedDict):
        """NatsChannel's keyword arguments of :func:`_open_session`."""

        timeout: float
        batch: bool
        call_timeout: float | None
        keepalive_interval: float | None
        liveness_timeout: float

__all__ = ["NatsChannel", "NatsDriver", "NatsInstance", "connect_nats", "serve_nats"]

log = logging.getLogger("rolewire.nats")

#: NATS status header value of a "no responders" reply: the subject a packet
#: was sent to has no subscriber (the instance holding the session is gone).
NO_RESPONDERS = "503"
#: Packets received and not yet fed to the connection, past which newer
#: ones are dropped (the records are authenticated and the peer's liveness
#: probes retry; an unbounded queue would let a flood grow memory).
MAX_QUEUED_PACKETS = 4096
#: Seconds before a client sends its unanswered Hello again (doubling up to
#: the maximum, within the handshake timeout).
#: Bad records (replayed, too old, malformed) a session on the bus drops
#: before it gives up. Far above the TCP default: a broker may redeliver, and
#: anyone allowed to publish on a session subject can replay what it saw;
#: both are dropped, not a sign that the peer is broken. Records that fail
#: authentication are bounded separately by the session's integrity limit.
MAX_BAD_RECORDS = 100_000
#: Header of the unauthenticated "no such session" answer an instance sends
#: to a packet for a session it does not hold (it ended, or the instance
#: restarted): the client fails the session at once instead of waiting for
#: its liveness probe, and its next call handshakes again.
STATUS_HEADER = "Rolewire-Status"
NO_SESSION = "no-session"
#: "No responders" answers to a Hello (and its retransmissions) before a
#: client concludes that no instance serves the subject (~1 s with the
#: retransmission schedule below).
NO_RESPONDERS_LIMIT = 3
HELLO_RETRANSMIT = 0.25
HELLO_RETRANSMIT_MAX = 1.0


class _BusTransport:
    """What the stream code asks of an asyncio transport, for a session on a
    bus: there is no socket to close, only the session to end."""

    def __init__(self, driver: NatsDriver) -> None:
        self._driver = driver
        self._closing = False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._driver.ended()

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return self._driver.unsent()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class _BusWriter:
    """The stream writer's closing half (``close``/``wait_closed``)."""

    def __init__(self, transport: _BusTransport) -> None:
        self.transport = transport

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        return None


class NatsDriver(Driver):
    """Moves one :class:`~rolewire.protocol.Connection`'s packets over NATS.

    The connection is stream-framed; :meth:`flush` publishes what it has to
    send, cut into packets of whole frames (``batch=True``: as few as
    ``max_payload`` allows; False: one frame per packet), to
    ``send_subject`` with ``reply_subject`` as the reply-to. Received
    packets are queued by :meth:`deliver` (called from the subscription) and
    taken by :meth:`read`; each is fed with
    :meth:`~rolewire.protocol.Connection.receive_packet`, so a truncated or
    padded packet costs only itself.

    It offers the stream driver's interface (``flush_soon``, ``flush``,
    ``drain``, ``read``, ``unsent``, ``arm_timer``, ``stop``,
    ``transport``, ``writer``), so the TCP server's connection code and the
    client :class:`~rolewire.aio.Channel` run over it unchanged.
    """

    def __init__(self, conn: Connection, nc: Any, *, send_subject: str | None,
                 reply_subject: str, batch: bool = True,
                 on_timer_events: Callable[[], None] = lambda: None,
                 on_end: Callable[[], object] = lambda: None) -> None:
        super().__init__(conn, on_timer_events=on_timer_events)
        self.nc = nc
        self.send_subject = send_subject
        self.reply_subject = reply_subject
        self.batch = batch
        self.transport = _BusTransport(self)
        self.writer = _BusWriter(self.transport)
        self._on_end = on_end
        self._inbox: deque[bytes] = deque()
        self._arrived = asyncio.Event()
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._publishing: asyncio.Task[None] | None = None
        self._ended = False
        self.dropped_packets = 0

    # -- receiving -------------------------------------------------------------------
    def deliver(self, packet: bytes) -> None:
        """A packet arrived for this session (subscription callback). Empty
        ones carry nothing (and b"" means the end to :meth:`read`'s callers)."""
        if self._ended or not packet:
            return
        if len(self._inbox) >= MAX_QUEUED_PACKETS:
            self.dropped_packets += 1
            return
        self._inbox.append(packet)
        self._arrived.set()

    def peer_gone(self, why: str) -> None:
        """The session's other end is gone (the broker answered "no
        responders", or the instance said it holds no such session). The
        session is over; pending calls fail with ServiceUnavailable."""
        if not self._ended:
            self.conn.abort(ServiceUnavailable(why), "peer_gone")
            self._on_timer_events()
            self.ended()

    async def read(self) -> list[bytes]:
        """Every packet that arrived since the last read (at least one);
        an empty list once the session ended. (The stream driver returns
        bytes; both are falsy at the end and go to :meth:`receive`.)"""
        while not self._inbox:
            if self._ended:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        packets = list(self._inbox)
        self._inbox.clear()
        return packets

    def receive(self, packets: list[bytes]) -> None:
        """Feed packets to the connection (their records opened together)."""
        self.conn.receive_packets(packets, self.loop.time())

    # -- sending -----------------------------------------------------------------------
    def flush(self, *, arm: bool = True) -> None:
        """Publish what the connection has to send (then re-arm the timer
        unless ``arm`` is False)."""
        self._take_flush()
        packets = self.data_to_publish()
        if packets and self.send_subject is not None:
            self._outbox.extend(packets)
            self._outbox_bytes += sum(map(len, packets))
            if self._publishing is None or self._publishing.done():
                self._publishing = self.loop.create_task(self._publish())
        if self.conn.ended:  # (see Driver)
            self._on_timer_events()
        if arm:
            self.arm_timer()

    async def _publish(self) -> None:
        outbox = self._outbox
        publish = self.nc.publish
        try:
            while outbox:
                packet = outbox.popleft()
                self._outbox_bytes -= len(packet)
                await publish(self.send_subject, packet, reply=self.reply_subject)
        except Exception as exc:  # noqa: BLE001 - the NATS client is closed or broken
            outbox.clear()
            self._outbox_bytes = 0
            if not self.conn.ended:
                self.conn.abort(ConnectionClosed(f"NATS publish failed: {type(exc).__name__}"),
                                "nats_error")
                self._on_timer_events()

    def data_to_publish(self) -> list[bytes]:
        """Take what the connection has to send now, cut into packets, without
        publishing it (the client publishes its Hello itself, to retransmit
        it)."""
        data = self.conn.data_to_send(self.loop.time())
        limit = max(int(getattr(self.nc, "max_payload", 0) or 0), 1024) if self.batch else 0
        return split_packets(data, limit) if data else []

    def unsent(self) -> int:
        """Bytes queued for publishing, not yet handed to nats-py."""
        return self._outbox_bytes

    async def drain(self) -> None:
        publishing = self._publishing
        if publishing is not None and not publishing.done() and self.unsent() > 512 * 1024:
            await asyncio.shield(publishing)

    def ended(self) -> None:
        """The session is over: wake the reader, let the owner forget us."""
        if self._ended:
            return
        self._ended = True
        self._arrived.set()
        self._on_end()


def _framing(batch: bool) -> dict[str, Any]:
    """Connection settings for a packet mode: batched packets may carry
    CONTAINER records (several messages in one record, docs/PROTOCOL.md);
    ``batch=False`` is one message per record per NATS message."""
    return {} if batch else {"container_bytes": 0}


def new_session_id() -> str:
    """A random, unguessable session subject token (so a third party on the
    bus cannot address a session it did not see)."""
    return secrets.token_hex(12)


# --- the service side ----------------------------------------------------------------


class NatsInstance:
    """One instance of a service on NATS (built by :func:`serve_nats`).

    It takes Hellos from the service subject in the queue group ``queue``
    (every instance of the role in one group: NATS hands each Hello to one
    of them) and serves each session from a subject of its own inbox. Calls
    run through the same code as the TCP server's connections.

    Attributes:
        subject: the service subject.
        inbox: this instance's inbox prefix (sessions live below it).
        stats: :class:`~rolewire.aio.ServerStats` counters.
    """

    def __init__(self, service: Service, config: HandshakeConfig, nc: Any, subject: str, *,
                 queue: str | None = None, batch: bool = True, max_sessions: int = 4096,
                 max_pending_handshakes: int = 256, handshake_timeout: float = 10.0,
                 idle_timeout: float | None = 300.0, max_inflight: int = 64,
                 close_timeout: float = 5.0, call_guard: dict[str, Any] | None = None,
                 telemetry: Telemetry | None = None) -> None:
        if not isinstance(config, HandshakeConfig):
            raise ConfigurationError("config must be a HandshakeConfig")
        if not subject or any(c in subject for c in " \t\r\n*>"):
            raise ConfigurationError("subject must be a literal NATS subject (no wildcards)")
        if max_sessions < 1 or max_pending_handshakes < 1:
            raise ConfigurationError("max_sessions and max_pending_handshakes must be >= 1")
        self.service = service
        self.config = config
        self.nc = nc
        self.subject = subject
        self.queue = queue or subject
        self.batch = batch
        self.max_sessions = max_sessions
        self.max_pending_handshakes = max_pending_handshakes
        self.handshake_timeout = min(handshake_timeout, config.timeout)
        self.idle_timeout = idle_timeout
        self.max_inflight = max_inflight
        self.close_timeout = close_timeout
        self.call_guard = dict(call_guard or {})
        self.stats = ServerStats()
        #: :class:`~rolewire.telemetry.Telemetry` (None: no telemetry work),
        #: as for the TCP server: call spans and counters per operation.
        self.telemetry = telemetry
        if telemetry is not None:
            telemetry.watch(self.stats)
        self.inbox = ""
        self._subscriptions: list[Any] = []
        self._sessions: dict[str, NatsDriver] = {}
        self._served: set[Any] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshaking = 0
        self._async_ops: dict[str, bool] = {}
        self._closing = False

    async def _start(self) -> None:
        self.inbox = self.nc.new_inbox()
        self._subscriptions = [
            await self.nc.subscribe(self.subject, queue=self.queue, cb=self._on_hello),
            await self.nc.subscribe(self.inbox + ".*", cb=self._on_packet),
        ]
        await self.nc.flush()
        log.info("serving on NATS", extra={"event": "listening", "subject": self.subject,
                                           "queue": self.queue})

    @property
    def sessions(self) -> int:
        """Sessions open or being set up on this instance."""
        return len(self._sessions)

    def is_async(self, operation: str) -> bool:
        """True if the operation's handler is a coroutine function."""
        return handler_is_async(self.service, self._async_ops, operation)

    # -- packets in ----------------------------------------------------------------------
    async def _on_hello(self, msg: Any) -> None:
        if self._closing or not msg.reply or not msg.data:
            return
        if len(self._sessions) >= self.max_sessions or \
                self._handshaking >= self.max_pending_handshakes:
            # Refuse as a loaded TCP server does: a BUSY Reject, nothing kept.
            self.stats.handshakes_failed += 1
            await self._publish_quietly(msg.reply, busy_frame())
            return
        session_id = new_session_id()
        loop = asyncio.get_running_loop()
        settings = ConnectionSettings(
            handshake_timeout=self.handshake_timeout, idle_timeout=self.idle_timeout,
            close_timeout=self.close_timeout, max_inflight=self.max_inflight,
            call_guard=self.call_guard, keepalive_interval=None,
            max_bad_records=MAX_BAD_RECORDS, **_framing(self.batch))
        peer = f"nats:{msg.reply}"
        conn = Connection.server(self.config, self.service, now=loop.time(), peer=peer,
                                 handshake_peer=peer, settings=settings, logger=log)
        driver = NatsDriver(conn, self.nc, send_subject=msg.reply,
                            reply_subject=f"{self.inbox}.{session_id}", batch=self.batch,
                            on_end=lambda: self._sessions.pop(session_id, None))
        self._sessions[session_id] = driver
        driver.deliver(msg.data)
        task = loop.create_task(self._run(driver, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_packet(self, msg: Any) -> None:
        driver = self._sessions.get(msg.subject.rpartition(".")[2])
        if driver is not None:
            if msg.data:
                driver.deliver(msg.data)
        elif msg.reply and msg.data and not self._closing:
            await self._no_session(msg.reply)

    async def _no_session(self, subject: str) -> None:
        with contextlib.suppress(Exception):
            await self.nc.publish(subject, b"", headers={STATUS_HEADER: NO_SESSION})

    async def _publish_quietly(self, subject: str, data: bytes) -> None:
        with contextlib.suppress(Exception):
            await self.nc.publish(subject, data)

    # -- one session ---------------------------------------------------------------------
    async def _run(self, driver: NatsDriver, peer: str) -> None:
        stats = self.stats
        conn = driver.conn
        self._handshaking += 1
        try:
            await run_handshake(driver)
        finally:
            self._handshaking -= 1
        if not conn.established:
            stats.handshakes_failed += 1
            driver.flush(arm=False)  # the Reject, if any
            driver.ended()
            return
        stats.sessions_open += 1
        stats.sessions_total += 1
        served = _ServerConnection(self, driver, peer=peer)  # type: ignore[arg-type]
        self._served.add(served)
        try:
            if self._closing:
                served.begin_close("shutdown")
            await served.run()
        finally:
            self._served.discard(served)
            stats.sessions_open -= 1
            driver.ended()
            if conn.failure is not None and driver.send_subject:
                # Failed (not closed with CLOSE): tell the client now, so
                # its calls in flight fail without waiting for liveness.
                await self._no_session(driver.send_subject)

    # -- closing -------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop taking Hellos, close every session gracefully (CLOSE after
        the calls in flight), then unsubscribe. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._subscriptions:
            with contextlib.suppress(Exception):
                await self._subscriptions[0].unsubscribe()
        for driver in list(self._sessions.values()):
            if not driver.conn.handshake_done:  # nothing to drain: end it now
                driver.conn.abort(None, "shutdown")
                driver.ended()
        for served in list(self._served):
            served.begin_close("shutdown")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.close_timeout + 1.0)
        for driver in list(self._sessions.values()):
            driver.conn.abort(None, "shutdown")
            driver.ended()
        for task in list(self._tasks):
            task.cancel()
        for sub in self._subscriptions[1:]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.nc.flush()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_nats(service: Service, config: HandshakeConfig, nc: Any, subject: str, *,
                     queue: str | None = None, batch: bool = True,
                     **options: Any) -> NatsInstance:
    """Serve ``service`` on the NATS subject ``subject`` through the
    connected nats-py client ``nc``: subscribe in the queue group ``queue``
    (default: the subject), so every process holding the role that serves
    the same subject shares the load. Returns the running
    :class:`NatsInstance` (``await instance.close()``, or ``async with``).

    ``batch``: pack the records of one flush into one NATS message (up to
    the server's ``max_payload``); False: one record per NATS message.
    Other options (``max_sessions``, ``max_pending_handshakes``,
    ``handshake_timeout``, ``idle_timeout``, ``max_inflight``,
    ``close_timeout``, ``call_guard``, ``telemetry``) are those of
    :class:`NatsInstance`.
    """
    instance = NatsInstance(service, config, nc, subject, queue=queue, batch=batch, **options)
    await instance._start()
    return instance


# --- the client side ------------------------------------------------------------------


async def _open_session(nc: Any, subject: str, config: HandshakeConfig, *, timeout: float,
                        batch: bool, call_timeout: float | None,
                        keepalive_interval: float | None,
                        liveness_timeout: float) -> Channel:
    """One session with one instance: Hello to the service subject, then
    inbox to inbox with the instance that answered."""
    loop = asyncio.get_running_loop()
    inbox = nc.new_inbox()
    settings = ConnectionSettings(
        handshake_timeout=min(timeout, config.timeout), call_timeout=call_timeout,
        keepalive_interval=keepalive_interval, liveness_timeout=liveness_timeout,
        max_bad_records=MAX_BAD_RECORDS, **_framing(batch))
    peer = f"nats:{subject}"
    conn = Connection.client(config, now=loop.time(), peer=peer, handshake_peer=subject,
                             settings=settings, logger=log)
    subscription: list[Any] = []

    def unsubscribe() -> None:
        if subscription:
            loop.create_task(_unsubscribe(subscription.pop()))

    driver = NatsDriver(conn, nc, send_subject=subject, reply_subject=inbox, batch=batch,
                        on_end=unsubscribe)
    bound = False
    unanswered = [0]  # "no responders" answers to our Hello so far

    async def on_packet(msg: Any) -> None:
        nonlocal bound
        headers = msg.headers
        if headers:
            if headers.get("Status") == NO_RESPONDERS:
                # Only about the subject we send to: a stray status is ignored.
                if headers.get("Nats-Subject", driver.send_subject) != driver.send_subject:
                    return
                if bound:
                    driver.peer_gone("the service instance holding the session is gone "
                                     "(no responders)")
                    return
                # Before binding: the broker may not know a queue member that
                # subscribed a moment ago; the Hello is retransmitted, and
                # only repeated answers mean that nobody serves the subject.
                unanswered[0] += 1
                if unanswered[0] >= NO_RESPONDERS_LIMIT:
                    driver.peer_gone(f"no instance serves {subject!r} (no responders)")
                return
            if headers.get(STATUS_HEADER) == NO_SESSION:
                if bound and msg.subject == inbox:
                    driver.peer_gone("the service instance no longer holds the session")
                return
        if not bound:
            if not msg.reply:
                return
            # The instance that took our Hello answers from its session
            # subject; everything else of the session goes there. Whoever
            # answers must still complete the handshake, so a forged first
            # answer costs a failed handshake, never a session.
            driver.send_subject = msg.reply
            bound = True
        elif msg.reply and msg.reply != driver.send_subject:
            return  # another instance answering a retransmitted Hello
        driver.deliver(msg.data)

    subscription.append(await nc.subscribe(inbox, cb=on_packet))
    hello = driver.data_to_publish()

    async def retransmit_hello() -> None:
        # A Hello can be lost between a queue group and the broker (a member
        # that just died is still picked for a moment, a subscription that
        # just arrived is not yet everywhere in a cluster): send the same
        # Hello again until some instance answers. The first answer binds
        # the session; later answers are dropped above.
        delay = HELLO_RETRANSMIT
        while True:
            await asyncio.sleep(delay)
            if bound or conn.ended:
                return
            with contextlib.suppress(Exception):
                for packet in hello:
                    await nc.publish(subject, packet, reply=inbox)
            delay = min(delay * 2, HELLO_RETRANSMIT_MAX)

    retransmitter = loop.create_task(retransmit_hello())
    for packet in hello:
        await nc.publish(subject, packet, reply=inbox)
    try:
        await run_handshake(driver)
    except BaseException:
        driver.ended()
        raise
    finally:
        retransmitter.cancel()
    done, failure = handshake_outcome(conn)
    if done is None:
        if bound:
            driver.flush(arm=False)  # our Reject, if any (never to the service subject)
        driver.ended()
        if failure is not None:
            raise failure.error
        raise ConnectionClosed("the session ended during the handshake")
    return Channel(conn, None, None, peer=peer, suite=done.suite, driver=driver)


async def _unsubscribe(subscription: Any) -> None:
    with contextlib.suppress(Exception):
        await subscription.unsubscribe()


class NatsChannel:
    """A channel to a service on NATS (built by :func:`connect_nats`): the
    API of :class:`~rolewire.aio.Channel` (``call``, ``notify``,
    ``send_many``, ``close``, typed errors).

    It holds one session with one instance of the service's queue group.
    When that session ends (the instance stopped: the broker reports no
    responders, or liveness probes go unanswered), calls in flight fail
    with a typed error — :class:`~rolewire.errors.ServiceUnavailable`,
    :class:`~rolewire.errors.PeerUnresponsive` or
    :class:`~rolewire.errors.ConnectionClosed`, never a hang — and the next
    call runs a new handshake, which the queue group gives to another
    instance. A call is never sent twice by the channel.
    """

    def __init__(self, nc: Any, subject: str, config: HandshakeConfig, *, timeout: float,
                 batch: bool, call_timeout: float | None, keepalive_interval: float | None,
                 liveness_timeout: float) -> None:
        self.nc = nc
        self.subject = subject
        self.config = config
        self._options: _SessionOptions = {
            "timeout": timeout, "batch": batch, "call_timeout": call_timeout,
            "keepalive_interval": keepalive_interval, "liveness_timeout": liveness_timeout}
        self._channel: Channel | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        self._closed = False
        #: Sessions opened so far (1 + failovers).
        self.sessions_opened = 0

    async def _current(self) -> Channel:
        if self._closed:
            raise ConnectionClosed("the channel is closed")
        channel = self._channel
        if channel is not None and not channel.closed:
            return channel
        async with self._opening:
            channel = self._channel
            if channel is None or channel.closed:
                if channel is not None:
                    await channel.close(timeout=0.1)
                channel = await _open_session(self.nc, self.subject, self.config,
                                              **self._options)
                self._channel = channel
                self.sessions_opened += 1
            return channel

    @property
    def channel(self) -> Channel | None:
        """The current session's :class:`~rolewire.aio.Channel` (None before
        the first one)."""
        return self._channel

    @property
    def peer_roles(self) -> frozenset[str]:
        """The roles the current instance proved (empty before a session)."""
        return self._channel.peer_roles if self._channel is not None else frozenset()

    @property
    def closed(self) -> bool:
        return self._closed

    async def connect(self) -> NatsChannel:
        """Open the first session now (``connect_nats`` does)."""
        await self._current()
        return self

    async def call(self, operation: str, body: bytes = b"", *, timeout: float | None = None,
                   metadata: Mapping[str, bytes] | None = None) -> bytes:
        """:meth:`rolewire.aio.Channel.call` on the current session (a new one
        first if the last ended)."""
        channel = await self._current()
        return await channel.call(operation, body, timeout=timeout, metadata=metadata)

    async def notify(self, operation: str, body: bytes = b"", *,
                     metadata: Mapping[str, bytes] | None = None) -> None:
        """:meth:`rolewire.aio.Channel.notify` on the current session."""
        channel = await self._current()
        await channel.notify(operation, body, metadata=metadata)

    async def send_many(self, operation: str, bodies: Iterable[bytes], *,
                        metadata: Mapping[str, bytes] | None = None) -> None:
        """:meth:`rolewire.aio.Channel.send_many` on the current session."""
        channel = await self._current()
        await channel.send_many(operation, bodies, metadata=metadata)

    async def flush_now(self) -> None:
        channel = await self._current()
        await channel.flush_now()

    async def close(self, timeout: float = 5.0) -> None:
        """Close the current session gracefully. Idempotent."""
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<NatsChannel to {self.subject} sessions={self.sessions_opened}>"


async def connect_nats(nc: Any, subject: str, config: HandshakeConfig, *,
                       timeout: float = 10.0, batch: bool = True,
                       call_timeout: float | None = 60.0,
                       keepalive_interval: float | None = 5.0,
                       liveness_timeout: float = 5.0) -> NatsChannel:
    """Open a session with an instance of the service on ``subject``
    through the connected nats-py client ``nc``; returns a
    :class:`NatsChannel`.

    Timeouts (seconds): ``timeout`` the handshake; ``call_timeout`` the
    default of :meth:`NatsChannel.call`; ``keepalive_interval`` /
    ``liveness_timeout``: with a reply awaited, the instance is probed after
    this much silence and the session fails with
    :class:`~rolewire.errors.PeerUnresponsive` if the probe goes unanswered
    (shorter than over TCP: on a bus, silence is the only sign of a
    partitioned instance).

    Raises the handshake's typed errors, and
    :class:`~rolewire.errors.ServiceUnavailable` when no instance serves
    the subject.
    """
    if not isinstance(config, HandshakeConfig):
        raise ConfigurationError("config must be a HandshakeConfig")
    channel = NatsChannel(nc, subject, config, timeout=timeout, batch=batch,
                          call_timeout=call_timeout, keepalive_interval=keepalive_interval,
                          liveness_timeout=liveness_timeout)
    return await channel.connect()
