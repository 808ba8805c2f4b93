"""The client side: :func:`connect` runs the handshake as initiator and
returns a :class:`Channel` for calls and notifications.

A :class:`Channel` is a thin asyncio shell around a sans-IO
:class:`~rolewire.protocol.Connection`: it reads and writes the socket,
keeps the connection's timer on the event loop and turns its events into
the results of awaited calls. Every protocol decision (framing, reply
matching, timeouts, liveness, CLOSE) is the connection's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rolewire.aio._base import (
    STREAM_LIMIT,
    WRITE_HIGH_WATER,
    WRITE_TIMEOUT,
    StreamDriver,
    close_writer,
    handshake_outcome,
    log,
    run_handshake,
)
from rolewire.enduser.context import has_current, propagation_metadata
from rolewire.errors import ConnectionClosed
from rolewire.handshake import HandshakeConfig, HandshakeSuite
from rolewire.protocol import (
    CallFailed,
    Closed,
    Connection,
    ConnectionSettings,
    Failed,
    MessageType,
    ReplyReceived,
)
from rolewire.session import Session

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Channel", "OutgoingHook", "connect"]

#: ``hook(channel, kind, call_id, operation, body, metadata) -> metadata``:
#: runs on every outgoing call and notification of a channel that has it in
#: :attr:`Channel.outgoing_hooks` (call signing, :mod:`rolewire.nonrep`).
OutgoingHook = Callable[["Channel", MessageType, int, str, bytes, Mapping[str, bytes]],
                        Mapping[str, bytes]]


class Channel:
    """A secure channel to one server (built by :func:`connect`).

    Calls and notifications may be issued concurrently from many tasks;
    they are sealed and written in the order they were issued. Small
    messages issued in the same loop iteration leave in one write.

    Attributes:
        session: the :class:`~rolewire.session.Session` (counters, epochs).
        peer: ``"host:port"`` of the server.
        connection: the sans-IO :class:`~rolewire.protocol.Connection`.
        outgoing_hooks: hooks that may add metadata to every outgoing call
            (see :data:`OutgoingHook`).
    """

    side = "initiator"

    def __init__(self, connection: Connection, reader: asyncio.StreamReader | None,
                 writer: asyncio.StreamWriter | None, *, peer: str, suite: HandshakeSuite,
                 write_timeout: float = WRITE_TIMEOUT, driver: Any = None) -> None:
        assert connection.session is not None
        self.connection = connection
        self.session: Session = connection.session
        self.peer = peer
        self.suite = suite
        if driver is None:
            # A TCP stream; other transports (rolewire.aio.nats) bring a
            # driver with the same interface.
            assert reader is not None and writer is not None
            driver = StreamDriver(connection, reader, writer, write_timeout=write_timeout,
                                  on_timer_events=self._handle_events)
        else:
            driver._on_timer_events = self._handle_events
        self._writer = driver.writer
        self._driver = driver
        self._loop = self._driver.loop
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        #: Replies resolved by the last _handle_events (a chunk's events, or a
        #: timer's: none): two or more woke as many callers, whose next calls
        #: come in the same loop iteration (pipelining).
        self._replies_in_chunk = 0
        self.outgoing_hooks: list[OutgoingHook] = []
        self._end: Closed | Failed | None = None
        self._handle_events()  # records that arrived with the last handshake message
        self._reader_task = self._loop.create_task(self._read_loop())

    # -- properties ----------------------------------------------------------------
    @property
    def _transport(self) -> asyncio.Transport:
        # (tests pause and resume reading through it; the ignore: the driver
        # is duck-typed, a StreamDriver or a NatsDriver, so Any here)
        return self._driver.transport  # type: ignore[no-any-return]

    @property
    def peer_roles(self) -> frozenset[str]:
        """The roles the server proved and this side verified."""
        return self.session.peer_roles

    @property
    def closed(self) -> bool:
        """True once the channel is closed (or closing)."""
        return self._reader_task.done() or self.connection.closing

    @property
    def pending_calls(self) -> int:
        return len(self._calls)

    # -- calls -------------------------------------------------------------------------
    def _metadata(self, kind: MessageType, call_id: int, operation: str, body: bytes,
                  metadata: Mapping[str, bytes] | None) -> Mapping[str, bytes] | None:
        """The metadata of one outgoing call: ``metadata``, the end-user
        context of the handler we run in, and whatever the hooks add."""
        if not (metadata or self.outgoing_hooks or has_current()):
            return metadata
        meta: Mapping[str, bytes] = propagation_metadata(metadata or {})
        for hook in self.outgoing_hooks:
            meta = hook(self, kind, call_id, operation, body, meta)
        return meta or None

    async def call(self, operation: str, body: bytes = b"", *,
                   timeout: float | None = None,
                   metadata: Mapping[str, bytes] | None = None) -> bytes:
        """Call ``operation`` and return the response body. ``metadata``:
        ``{key: bytes}`` sent in the call's metadata section (docs/PROTOCOL.md,
        "Call metadata"); handlers see it as ``call.metadata``.

        ``timeout``: seconds to wait for the reply (default: the channel's
        ``call_timeout``, 60 s; ``math.inf``: no bound except liveness).

        Raises:
            Forbidden, UnknownOperation, ServiceUnavailable, RemoteCallError:
                the server answered with an error (typed, see
                :func:`rolewire.protocol.wire.remote_error`).
            RecordTooLarge: the message exceeds the session's record size;
                nothing was sent.
            CallTimeout: no reply within ``timeout`` (a ``TimeoutError``).
            PeerUnresponsive: the server stopped answering liveness probes.
            ConnectionClosed: the channel closed before the reply came.
            HandshakeRejected, HandshakeTimeout: the server rejected (or
                never confirmed) our last handshake message.
        """
        conn = self.connection
        body = bytes(body)
        if metadata or self.outgoing_hooks or has_current():
            conn.check_open()  # before the hooks see the call
            metadata = self._metadata(MessageType.REQUEST, conn.next_call_id, operation,
                                      body, metadata)
        calls = self._calls
        driver = self._driver
        # Lone: nothing else outstanding, and the last chunk did not wake
        # other callers that are about to call in this iteration too.
        lone = not calls and self._replies_in_chunk < 2
        # Registered before the driver writes: if sealing failed the
        # connection, the driver hands its events on at once, this call's
        # error to this future included.
        future: asyncio.Future[bytes] = self._loop.create_future()
        if lone and metadata is None and driver.writes_frames and not driver.flush_pending:
            # Nothing else outstanding or queued (sequential calls): sealed,
            # framed and written now, with no queue, loop callback or wait
            # for the end of the iteration (the latency of sequential calls).
            call_id, data = conn.send_call(operation, body, timeout=timeout,
                                           now=self._loop.time())
            calls[call_id] = future
            driver.write_now(data)
        else:
            call_id = conn.call(operation, body, timeout=timeout, metadata=metadata)
            calls[call_id] = future
            driver.flush_first(lone=lone)
        try:
            if driver.unsent() > WRITE_HIGH_WATER:
                await driver.drain()
            return await future
        finally:
            if self._calls.pop(call_id, None) is not None:
                conn.cancel(call_id)  # cancelled: a late reply is dropped

    async def notify(self, operation: str, body: bytes = b"", *,
                     metadata: Mapping[str, bytes] | None = None) -> None:
        """Send a one-way notification. It is queued and leaves with the
        other messages of this loop iteration (or at once past 64 KiB);
        waits only when the transport's buffer is full (at most the
        channel's ``write_timeout``)."""
        conn = self.connection
        body = bytes(body)
        meta = self._metadata(MessageType.NOTIFY, 0, operation, body, metadata)
        conn.notify(operation, body, metadata=meta)
        self._driver.flush_soon()
        await self._driver.drain()

    async def send_many(self, operation: str, bodies: Iterable[bytes], *,
                        metadata: Mapping[str, bytes] | None = None) -> None:
        """Send many notifications of one operation now: sealed by one native
        call per batch (up to 4096 messages / ~64 KiB) and written with one
        ``write`` per batch, in order. Waits for the transport buffer to
        drain below its high-water mark. ``metadata`` goes with each."""
        conn = self.connection
        if metadata or self.outgoing_hooks or has_current():
            conn.check_open()
            for body in bodies:
                body = bytes(body)
                conn.notify(operation, body, metadata=self._metadata(
                    MessageType.NOTIFY, 0, operation, body, metadata))
        else:
            conn.notify_many(operation, bodies,
                             sink=getattr(self._driver, "write_frames", None))
        self._driver.flush()
        await self._driver.drain()

    def queue(self, plaintext: bytes) -> None:
        """Queue one encoded call message as it is (e.g. a ``SIGNED_BATCH``
        head); it leaves with the next write."""
        self.connection.queue_message(plaintext)
        self._driver.flush_soon()

    async def flush_now(self) -> None:
        """Write everything queued now and wait for the transport buffer."""
        self.connection.check_open()
        self._driver.flush()
        await self._driver.drain()

    # -- events ------------------------------------------------------------------------
    def _handle_events(self) -> None:
        calls = self._calls
        replies = 0
        for event in self.connection.events():
            kind = type(event)
            if kind is ReplyReceived:
                future = calls.pop(event.call_id, None)  # type: ignore[union-attr]
                if future is not None and not future.done():
                    future.set_result(event.body)  # type: ignore[union-attr]
                    replies += 1
            elif kind is CallFailed:
                future = calls.pop(event.call_id, None)  # type: ignore[union-attr]
                if future is not None and not future.done():
                    future.set_exception(event.error)  # type: ignore[union-attr]
                    future.exception()  # mark retrieved: the caller may be gone
            elif kind is Closed or kind is Failed:
                self._end = event  # type: ignore[assignment]
                self._driver.flush(arm=False)  # a final CLOSE
                if kind is Failed:
                    self._driver.transport.abort()
                else:
                    self._driver.transport.close()
            # HandshakeDone was taken by connect(); the client serves nothing,
            # so the connection answered any request itself (CallRefused);
            # notifications and other messages need nothing here.
        self._replies_in_chunk = replies

    def _chunk(self, data: bytes) -> None:
        driver = self._driver
        self.connection.receive_data(data, self._loop.time())  # (driver.receive)
        self._handle_events()
        # Input alone never brings a client's deadline closer (replies end
        # calls, keepalive counts from the last input); what it makes us
        # send (a CLOSE, a pong, a re-handshake message) re-arms with it.
        if self.connection.has_output:
            driver.flush()

    async def _read_loop(self) -> None:
        driver = self._driver
        conn = self.connection
        loop = self._loop
        try:
            driver.flush()
            by_callbacks = getattr(driver, "read_by_callbacks", None)
            if by_callbacks is not None:
                # TCP: each chunk handled in data_received, no task switch.
                await by_callbacks(self._chunk)
                if not conn.ended:
                    conn.connection_lost(None, loop.time())
                    self._handle_events()
                return
            while not conn.ended:
                data = await driver.read()
                if not data:
                    conn.connection_lost(None, loop.time())
                    self._handle_events()
                    break
                driver.receive(data)
                self._handle_events()
                driver.flush()
        except asyncio.CancelledError:
            conn.abort(None, "cancelled")
            self._handle_events()
            raise
        finally:
            driver.stop()
            for future in self._calls.values():
                if not future.done():
                    future.set_exception(ConnectionClosed("the channel closed"))
                    future.exception()
            self._calls.clear()

    # -- closing -------------------------------------------------------------------------
    async def close(self, timeout: float = 5.0) -> None:
        """Close gracefully: send CLOSE after everything queued, let pending
        calls get their replies (up to ``timeout`` seconds), wait for the
        server's CLOSE, then close the connection. Idempotent."""
        if not self._reader_task.done():
            self.connection.close(self._loop.time(), timeout)
            self._handle_events()
            self._driver.flush()
            try:
                await asyncio.wait_for(asyncio.shield(self._reader_task), timeout + 1.0)
            except asyncio.TimeoutError:
                self._driver.transport.abort()
        try:
            await self._reader_task
        except asyncio.CancelledError:
            pass
        await close_writer(self._writer)

    def abort(self) -> None:
        """Close at once; pending calls fail with ConnectionClosed."""
        self.connection.abort(None, "aborted")
        self._handle_events()
        self._driver.transport.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"<Channel to {self.peer} peer_roles={sorted(self.peer_roles)} "
                f"pending={len(self._calls)} closed={self.closed}>")


async def _connect(host: str, port: int, config: HandshakeConfig, *, timeout: float,
                   max_frame: int | None, local_addr: tuple[str, int] | None = None,
                   call_timeout: float | None = 60.0,
                   keepalive_interval: float | None = 30.0, liveness_timeout: float = 15.0,
                   write_timeout: float = WRITE_TIMEOUT) -> Channel:
    if not isinstance(config, HandshakeConfig):
        raise TypeError("config must be a HandshakeConfig")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(timeout, config.timeout)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, limit=STREAM_LIMIT, local_addr=local_addr), timeout)
    peername = writer.get_extra_info("peername")
    peer = f"{peername[0]}:{peername[1]}" if peername else f"{host}:{port}"
    try:
        settings = ConnectionSettings(
            handshake_timeout=max(deadline - loop.time(), 0.001), max_frame=max_frame,
            call_timeout=call_timeout, keepalive_interval=keepalive_interval,
            liveness_timeout=liveness_timeout)
        conn = Connection.client(config, now=loop.time(), peer=peer, handshake_peer=host,
                                 settings=settings, logger=log)
        driver = StreamDriver(conn, reader, writer, on_timer_events=lambda: None,
                              write_timeout=write_timeout)
        await run_handshake(driver)
    except BaseException:
        writer.transport.abort()
        raise
    done, failure = handshake_outcome(conn)
    if done is None:
        driver.flush(arm=False)  # our Reject, if any
        await close_writer(writer)
        if failure is not None:
            raise failure.error
        raise ConnectionClosed("the connection ended during the handshake")
    return Channel(conn, reader, writer, peer=peer, suite=done.suite,
                   write_timeout=write_timeout)


class _Connect:
    """``await connect(...)`` or ``async with connect(...) as channel``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._channel: Channel | None = None

    def __await__(self) -> Generator[Any, None, Channel]:
        return _connect(*self._args, **self._kwargs).__await__()

    async def __aenter__(self) -> Channel:
        self._channel = await self
        return self._channel

    async def __aexit__(self, *exc: object) -> None:
        assert self._channel is not None
        await self._channel.close()


def connect(host: str, port: int, config: HandshakeConfig, *, timeout: float = 10.0,
            max_frame: int | None = None, local_addr: tuple[str, int] | None = None,
            call_timeout: float | None = 60.0, keepalive_interval: float | None = 30.0,
            liveness_timeout: float = 15.0, write_timeout: float = WRITE_TIMEOUT) -> _Connect:
    """Open a TCP connection, run the handshake as initiator, return a
    :class:`Channel`. Use as ``channel = await connect(...)`` or
    ``async with connect(...) as channel``.

    Timeouts (seconds; docs/aio.md, "Timeouts"):

    - ``timeout`` (10): connecting plus the handshake (also bounded by
      ``config.timeout``);
    - ``call_timeout`` (60): default of :meth:`Channel.call`'s ``timeout``
      (None: calls wait for their reply as long as the server is alive);
    - ``keepalive_interval`` (30) / ``liveness_timeout`` (15): with a reply
      awaited or data sent since the server was last heard, the channel
      probes it after ``keepalive_interval`` of silence and fails with
      :class:`~rolewire.errors.PeerUnresponsive` if the probe is not
      answered within ``liveness_timeout``. The first data sent is always
      followed by a probe: if the server never confirms the handshake (its
      last message was lost) the channel fails with
      :class:`~rolewire.errors.HandshakeTimeout` within ``timeout``.
      ``keepalive_interval=None`` turns probing off;
    - ``write_timeout`` (30): a call, notify or send_many waiting for a full
      write buffer to drain gives up after this long
      (:class:`~rolewire.errors.PeerUnresponsive`, the channel is cut).

    Raises the handshake's typed error
    (:class:`~rolewire.errors.HandshakeRejected` with the server's reason
    code, e.g. BUSY when the server is at its connection bound;
    :class:`~rolewire.errors.HandshakeTimeout`, ...),
    :class:`~rolewire.errors.ConnectionClosed` or ``OSError``.

    ``local_addr`` binds the local end (e.g. ``("127.0.0.2", 0)``: servers
    apply their per-peer limits by source address).
    """
    return _Connect(host, port, config, timeout=timeout, max_frame=max_frame,
                    local_addr=local_addr, call_timeout=call_timeout,
                    keepalive_interval=keepalive_interval, liveness_timeout=liveness_timeout,
                    write_timeout=write_timeout)

