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
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from rolewire.errors import ConnectionClosed, ServiceUnavailable
from rolewire.protocol import Connection
from rolewire.protocol.wire import split_packets

__all__ = ["NatsDriver"]

log = logging.getLogger("rolewire.nats")

#: NATS status header value of a "no responders" reply: the subject a packet
#: was sent to has no subscriber (the instance holding the session is gone).
NO_RESPONDERS = "503"
#: Packets received and not yet fed to the connection, past which newer
#: ones are dropped (the records are authenticated and the peer's liveness
#: probes retry; an unbounded queue would let a flood grow memory).
MAX_QUEUED_PACKETS = 4096


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


class NatsDriver:
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
                 on_end: Callable[[], None] = lambda: None) -> None:
        self.conn = conn
        self.nc = nc
        self.send_subject = send_subject
        self.reply_subject = reply_subject
        self.batch = batch
        self.loop = asyncio.get_running_loop()
        self.transport = _BusTransport(self)
        self.writer = _BusWriter(self.transport)
        self._on_timer_events = on_timer_events
        self._on_end = on_end
        self._inbox: deque[bytes] = deque()
        self._arrived = asyncio.Event()
        self._outbox: deque[bytes] = deque()
        self._publishing: asyncio.Task[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._ended = False
        self.dropped_packets = 0

    # -- receiving -------------------------------------------------------------------
    def deliver(self, packet: bytes) -> None:
        """A packet arrived for this session (subscription callback)."""
        if self._ended:
            return
        if len(self._inbox) >= MAX_QUEUED_PACKETS:
            self.dropped_packets += 1
            return
        self._inbox.append(packet)
        self._arrived.set()

    def peer_gone(self) -> None:
        """The broker answered "no responders": nobody holds our peer's
        subject any more (the instance stopped). The session is over."""
        if not self._ended:
            self.conn.abort(ServiceUnavailable("the service instance holding the session "
                                               "is gone (no responders)"), "no_responders")
            self._on_timer_events()
            self.ended()

    async def read(self) -> bytes:
        """The next packet; b"" once the session ended."""
        while not self._inbox:
            if self._ended:
                return b""
            self._arrived.clear()
            await self._arrived.wait()
        return self._inbox.popleft()

    def receive(self, packet: bytes) -> None:
        """Feed one packet to the connection."""
        self.conn.receive_packet(packet, self.loop.time())

    # -- sending -----------------------------------------------------------------------
    def flush_soon(self) -> None:
        if self.conn.wants_flush:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self, *, arm: bool = True) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        data = self.conn.data_to_send(self.loop.time())
        if data and self.send_subject is not None:
            limit = max(int(getattr(self.nc, "max_payload", 0) or 0), 1024) if self.batch else 0
            self._outbox.extend(split_packets(data, limit))
            if self._publishing is None or self._publishing.done():
                self._publishing = self.loop.create_task(self._publish())
        if arm:
            self.arm_timer()

    async def _publish(self) -> None:
        outbox = self._outbox
        publish = self.nc.publish
        try:
            while outbox:
                await publish(self.send_subject, outbox.popleft(), reply=self.reply_subject)
        except Exception as exc:  # noqa: BLE001 - the NATS client is closed or broken
            outbox.clear()
            if not self.conn.ended:
                self.conn.abort(ConnectionClosed(f"NATS publish failed: {type(exc).__name__}"),
                                "nats_error")
                self._on_timer_events()

    def unsent(self) -> int:
        return sum(len(p) for p in self._outbox)

    async def drain(self) -> None:
        publishing = self._publishing
        if publishing is not None and not publishing.done() and self.unsent() > 512 * 1024:
            await asyncio.shield(publishing)

    # -- timer ---------------------------------------------------------------------------
    def arm_timer(self) -> None:
        when = self.conn.get_timer()
        if when is None:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.conn.handle_timer(max(self.loop.time(), self._timer_at))
        self._on_timer_events()
        self.flush()

    def stop(self) -> None:
        for handle in (self._timer, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._flush_handle = None

    def ended(self) -> None:
        """The session is over: wake the reader, let the owner forget us."""
        if self._ended:
            return
        self._ended = True
        self._arrived.set()
        self._on_end()


def new_session_id() -> str:
    """A random, unguessable session subject token (so a third party on the
    bus cannot address a session it did not see)."""
    return secrets.token_hex(12)
