"""What the client :class:`~rolewire.aio.Channel` and the server's
connections share: moving bytes between an asyncio stream and a sans-IO
:class:`~rolewire.protocol.Connection` (coalesced writes, the connection's
timer on the event loop, back-pressure), and the lingering close.

No protocol logic lives here: the connection decides, this module only
reads, writes and keeps time. Nothing here is public API; see
:mod:`rolewire.aio`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rolewire.errors import ConnectionClosed, PeerUnresponsive
from rolewire.protocol import Connection, Failed, HandshakeDone

log = logging.getLogger("rolewire.aio")

if TYPE_CHECKING:
    from typing import Protocol

    class _HandshakeDriver(Protocol):
        """What :func:`run_handshake` moves a handshake with: a
        :class:`StreamDriver` (chunks of bytes) or rolewire.aio.nats's
        NatsDriver (lists of packets); ``receive`` takes what ``read`` gives."""

        conn: Connection
        loop: asyncio.AbstractEventLoop

        def receive(self, data: Any, /) -> None: ...
        def flush(self, *, arm: bool = True) -> None: ...
        async def read(self) -> Any: ...

#: Bytes asked of the stream per read; every record of one chunk is opened
#: with one native call. Buffers stay below glibc's mmap threshold (128 KiB):
#: larger ones are fresh mmap()s, and their page faults cost more than the
#: AEAD on a VM (measured: ~40 % of the receiver's CPU at 16 KiB messages).
READ_SIZE = 64 * 1024
#: Reads grow up to this while each one fills its buffer (a burst: the
#: socket holds more), and drop back to READ_SIZE at the first read that
#: does not. A chunk costs a fixed ~15 us of Python (event loop, one native
#: call, dispatch): at 16 KiB messages a 64 KiB read carries under four of
#: them. Measured, receiver CPU per 16 KiB message, stream of send_many
#: bursts: 64 KiB reads 18.7 us, 256 KiB 12-13 us (no page faults: glibc
#: serves a repeated size from the heap once it raised its mmap threshold
#: for it), 1 MiB 15 us (past the L2 cache).
READ_MAX = 256 * 1024
#: StreamReader buffer limit (it stops reading the socket above twice this).
STREAM_LIMIT = 1 << 20
#: Transport write buffer above which senders wait (``drain``).
WRITE_HIGH_WATER = 512 * 1024
WRITE_LOW_WATER = 128 * 1024
#: Default bound on one wait for the transport's write buffer to drain.
WRITE_TIMEOUT = 30.0
#: Queued plaintext sealed and written at once (the connection's default
#: ``coalesce_bytes``).
COALESCE_BYTES = 64 * 1024


def limit_recv_size(transport: asyncio.BaseTransport) -> None:
    """Make the selector transport ``recv()`` at most READ_SIZE bytes at a
    time (it asks for 256 KiB by default, an mmap()ed buffer per read; see
    READ_SIZE; reading by callbacks grows it during a burst, see READ_MAX).
    ``max_size`` is an attribute of CPython's selector transports; other
    event loops are left alone."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = READ_SIZE  # type: ignore[attr-defined]


class _IterationEnd:
    """The drivers of one event loop that asked to flush at the end of this
    loop iteration (:meth:`Driver.flush_soon`, a pipelined
    :meth:`Driver.flush_first`): one callback for all of them, not one per
    connection or per message."""

    __slots__ = ("drivers", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.drivers: list[Driver] = []
        self.scheduled = False

    def add(self, driver: Driver) -> None:
        self.drivers.append(driver)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        drivers, self.drivers = self.drivers, []
        self.scheduled = False
        for driver in drivers:
            if not driver.flush_pending:
                continue  # flushed or stopped meanwhile
            try:
                driver.flush()
            except Exception as exc:  # noqa: BLE001 - one connection's bug is not the others'
                self.loop.call_exception_handler({
                    "message": "rolewire: end-of-iteration flush failed", "exception": exc})


_iteration_ends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IterationEnd] = (
    weakref.WeakKeyDictionary())


def _iteration_end_of(loop: asyncio.AbstractEventLoop) -> _IterationEnd:
    found = _iteration_ends.get(loop)
    if found is None:
        found = _iteration_ends[loop] = _IterationEnd(loop)
    return found


class Driver:
    """What every asyncio transport of a :class:`Connection` shares: the
    flush scheduling (everything queued in one loop iteration leaves
    together, at once when the connection has sealed a full batch) and the
    connection's one timer on the event loop (:meth:`arm_timer`; when it
    fires, :meth:`~Connection.handle_timer` runs and ``on_timer_events``
    gets the events). Subclasses move the bytes: :meth:`flush`,
    :meth:`receive`, :meth:`read`, :meth:`drain`, :meth:`unsent`.

    After every flush, a connection that has ended hands its events to
    ``on_timer_events`` at once: sealing can fail it (the key used up, the
    session closed itself), and nothing else would read those events (the
    calls' errors, the close) before the next input, since an ended
    connection arms no timer."""

    #: Writes the connection's frames to a byte stream as they are
    #: (:meth:`write_now`): a caller may then take them from
    #: :meth:`~Connection.send_call` itself.
    writes_frames = False

    def __init__(self, conn: Connection, *, on_timer_events: Callable[[], None]) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self._on_timer_events = on_timer_events
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: A flush at the end of this loop iteration is due (_IterationEnd);
        #: any flush before it takes it.
        self.flush_pending = False
        self._iteration_end = _iteration_end_of(self.loop)

    def flush_soon(self) -> None:
        """Send at the end of this loop iteration (now if a batch is full)."""
        if self.conn.wants_flush:
            self.flush()
        elif not self.flush_pending:
            self.flush_pending = True
            self._iteration_end.add(self)

    def flush_first(self, *, lone: bool = False) -> None:
        """For a request. ``lone`` (no other call of this connection is
        outstanding: sequential calls) and nothing else queued in this loop
        iteration: written now and the timer armed (no wait for the end of
        the iteration, no loop callback: the latency of sequential calls).
        Otherwise it leaves with everything else queued in this iteration,
        at its end, in one write (pipelined calls: one write per iteration,
        not one per call)."""
        if lone and not self.flush_pending:
            # Nothing else outstanding (sequential calls): written and the
            # timer armed now, no end-of-iteration callback (which costs a
            # loop iteration more per call, an epoll included).
            self.flush()
        else:
            # Other calls are outstanding (pipelining): this one and the
            # rest of the iteration's leave together at its end.
            self.flush_soon()

    def _take_flush(self) -> None:
        """For :meth:`flush`: the flush due at the end of the iteration is
        this one."""
        self.flush_pending = False

    def flush(self, *, arm: bool = True) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the connection's timer ------------------------------------------------------
    def arm_timer(self) -> None:
        when = self.conn.get_timer()
        if when is None:
            return  # a pending handle fires and finds nothing to do
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # asyncio may run a timer up to its clock resolution early.
        self.conn.handle_timer(max(self.loop.time(), self._timer_at))
        self._on_timer_events()
        self.flush()

    def stop(self) -> None:
        """Cancel the timer and any pending flush (the connection ended)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self.flush_pending = False


class StreamDriver(Driver):
    """Moves one :class:`Connection`'s bytes over an asyncio stream.

    - :meth:`flush_soon` after queuing: everything queued in one loop
      iteration leaves in one ``write`` (at once when the connection has
      sealed a full batch);
    - :meth:`arm_timer` keeps one loop timer at the connection's
      :meth:`~Connection.get_timer`; when it fires,
      :meth:`~Connection.handle_timer` runs and ``on_timer_events`` gets the
      events (re-armed lazily: an early timer just re-arms).
    """

    writes_frames = True

    def __init__(self, conn: Connection, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *,
                 on_timer_events: Callable[[], None],
                 write_timeout: float = WRITE_TIMEOUT) -> None:
        super().__init__(conn, on_timer_events=on_timer_events)
        self.reader = reader
        self.writer = writer
        # StreamWriter.transport is typed a WriteTransport; a stream's is a
        # full Transport (the server pauses and resumes reading through it).
        self.transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self.write_timeout = write_timeout
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        limit_recv_size(self.transport)

    # -- writing -------------------------------------------------------------------
    def flush(self, *, arm: bool = True) -> None:
        """Write everything the connection has to send, with one ``write``
        (then re-arm the timer unless ``arm`` is False)."""
        self.flush_pending = False  # (_take_flush)
        data = self.conn.data_to_send(self.loop.time())
        if data and not self.transport.is_closing():
            self.transport.write(data)  # (what StreamWriter.write does)
        if self.conn.ended:  # (see the class docstring)
            self._on_timer_events()
        if arm:
            self.arm_timer()

    def write_now(self, data: bytes) -> None:
        """Write frames the connection returned (:meth:`~Connection.send_call`)
        and arm the timer: a :meth:`flush` whose data is already taken."""
        if data and not self.transport.is_closing():
            self.transport.write(data)
        if self.conn.ended:  # (see the class docstring)
            self._on_timer_events()
        self.arm_timer()

    def write_frames(self, data: bytes) -> None:
        """Write frames the connection sealed now (``notify_many``'s sink: a
        burst leaves batch by batch, so its buffers are reused, not held)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    def unsent(self) -> int:
        """Bytes in the transport's write buffer, not yet sent."""
        return self.transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water
        mark, at most ``write_timeout`` seconds: a peer that reads nothing
        for that long is cut (:class:`~rolewire.errors.PeerUnresponsive`)."""
        if self.transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
            return
        try:
            await asyncio.wait_for(self.writer.drain(), self.write_timeout)
        except asyncio.TimeoutError:
            error = PeerUnresponsive(
                f"the peer read nothing for {self.write_timeout:g} s (write buffer full)")
            self.conn.abort(error, "write_timeout")
            self.transport.abort()
            self._on_timer_events()
            raise error from None
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionClosed("the connection was lost") from exc

    # -- reading -----------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Feed bytes read from the stream to the connection."""
        self.conn.receive_data(data, self.loop.time())

    async def read(self) -> bytes:
        """The next chunk; b"" at end of stream or on a connection error."""
        try:
            return await self.reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""


    async def read_by_callbacks(self, on_chunk: Callable[[bytes], None]) -> None:
        """Read by callbacks from now on (see :meth:`start_callbacks`);
        returns at the end of the stream or when the connection is lost."""
        ended: asyncio.Future[None] = self.loop.create_future()

        def on_end() -> None:
            if not ended.done():
                ended.set_result(None)

        await self.start_callbacks(on_chunk, on_end)
        await ended

    async def start_callbacks(self, on_chunk: Callable[[bytes], None],
                              on_end: Callable[[], None]) -> None:
        """Read by callbacks from now on: each chunk goes to ``on_chunk``
        from the transport's ``data_received``, with no task wake-up per
        chunk (two loop iterations less per reply; what asyncio protocols
        do); ``on_end()`` runs once, at the end of the stream or when the
        connection is lost. Returns once switched (chunks the stream had
        buffered are handed over first, in order). Writing, ``drain`` and
        ``pause_reading`` work as before: the stream protocol still hears
        about write flow control and loss."""
        stream_protocol = self.transport.get_protocol()
        protocol = _ChunkProtocol(stream_protocol, on_chunk, on_end, self.transport)
        self.transport.set_protocol(protocol)
        # What the stream had buffered before the switch (nothing more
        # arrives there): end it, take it, then let the protocol run.
        self.reader.feed_eof()
        try:
            buffered = await self.reader.read()
        except (ConnectionError, OSError):
            buffered = b""
        protocol.start(buffered)
        if self.transport.is_closing():
            protocol.end()


class _ChunkProtocol(asyncio.Protocol):
    """The transport's protocol after :meth:`StreamDriver.start_callbacks`:
    chunks to a callback; flow control and loss also to the stream protocol
    it replaced (so ``StreamWriter.drain`` keeps working)."""

    def __init__(self, stream_protocol: Any, on_chunk: Callable[[bytes], None],
                 on_end: Callable[[], None], transport: Any = None) -> None:
        self._stream = stream_protocol
        self._on_chunk = on_chunk
        self._on_end: Callable[[], None] | None = on_end
        self._early: list[bytes] | None = []  # chunks before start()
        # The read size of a CPython selector transport (its ``max_size``;
        # see READ_MAX), if it has one.
        self._transport = transport
        self._read_size = getattr(transport, "max_size", None)
        if not isinstance(self._read_size, int):
            self._read_size = None

    def start(self, buffered: bytes) -> None:
        early, self._early = self._early, None
        for chunk in [buffered, *(early or ())]:
            if chunk and self._on_end is not None:
                self._on_chunk(chunk)

    def end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end()

    def data_received(self, data: bytes) -> None:
        size = self._read_size
        if size is not None:
            if len(data) >= size:
                if size < READ_MAX:  # the socket holds more: read more at once
                    self._read_size = self._transport.max_size = min(size * 4, READ_MAX)
            elif size > READ_SIZE:
                self._read_size = self._transport.max_size = READ_SIZE
        if self._early is not None:
            self._early.append(data)
        elif self._on_end is not None:
            self._on_chunk(data)

    def eof_received(self) -> bool:
        self.end()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._stream.connection_lost(exc)
        self.end()

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()


async def linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                       timeout: float = 1.0, max_bytes: int = 1 << 20) -> None:
    """Close after our last bytes reached the peer: half-close, then read and
    discard until the peer closes too (bounded by ``timeout`` and
    ``max_bytes``). Closing with unread input would make the kernel send a
    RST, which can destroy the Reject or CLOSE we just wrote."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        if not writer.transport.is_closing() and writer.can_write_eof():
            writer.write_eof()
        seen = 0
        while seen < max_bytes:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            data = await asyncio.wait_for(reader.read(READ_SIZE), remaining)
            if not data:
                break
            seen += len(data)
    except (asyncio.TimeoutError, OSError, RuntimeError):
        pass
    finally:
        await close_writer(writer)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, RuntimeError):
        pass


def handshake_outcome(conn: Connection) -> tuple[HandshakeDone | None, Failed | None]:
    """After :func:`run_handshake`: the connection's HandshakeDone (the
    session is up) or its Failed event, whichever came; (None, None) if it
    ended otherwise. Events after it stay queued for the channel."""
    while (event := conn.next_event()) is not None:
        if isinstance(event, HandshakeDone):
            return event, None
        if isinstance(event, Failed):
            return None, event
    return None, None


async def run_handshake(driver: _HandshakeDriver, first_data: bytes = b"") -> None:
    """Move the handshake's bytes until the connection is established or has
    ended (its events say which; protocol failures are events, not
    exceptions). ``first_data``: bytes already read from the stream. The
    handshake deadline is the connection's timer, checked here."""
    conn = driver.conn
    loop = driver.loop
    if first_data:
        driver.receive(first_data)
    driver.flush(arm=False)
    while not conn.established and not conn.ended:
        when = conn.get_timer()
        remaining = (when - loop.time()) if when is not None else None
        if remaining is not None and remaining <= 0:
            conn.handle_timer(loop.time())
            driver.flush(arm=False)
            continue
        try:
            data = await asyncio.wait_for(driver.read(), remaining)
        except asyncio.TimeoutError:
            continue
        if not data:
            conn.connection_lost(None, loop.time())
            break
        driver.receive(data)
        driver.flush(arm=False)
