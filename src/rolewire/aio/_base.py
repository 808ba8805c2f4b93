"""Machinery shared by the client :class:`~rolewire.aio.Channel` and the
server's connections: driving a sans-IO handshake over a stream, the
coalescing record writer, batch opening of received records, and the
lingering close.

Nothing here is public API; see :mod:`rolewire.aio`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable

from rolewire.errors import (
    ConnectionClosed,
    HandshakeTimeout,
    ProtocolViolation,
    RecordError,
    RecordTooLarge,
    ReplayDetected,
    RolewireError,
)
from rolewire.handshake import HandshakeComplete, HandshakeFailed, NeedData
from rolewire.handshake.machine import Handshake
from rolewire.handshake.messages import Reject
from rolewire.handshake.reasons import RejectReason
from rolewire.protocol.fastpath import seal_frames
from rolewire.protocol.wire import (
    CallDecoder,
    FrameDecoder,
    FrameKind,
    decode_container,
    encode_frame,
    encode_records,
)
from rolewire.session import Session

log = logging.getLogger("rolewire.aio")

#: Bytes asked of the stream per read; every record of one chunk is opened
#: with one native call. Buffers stay below glibc's mmap threshold (128 KiB):
#: larger ones are fresh mmap()s, and their page faults cost more than the
#: AEAD on a VM (measured: ~40 % of the receiver's CPU at 16 KiB messages).
READ_SIZE = 64 * 1024
#: StreamReader buffer limit (it stops reading the socket above twice this).
STREAM_LIMIT = 1 << 20
#: Pending outgoing plaintext that forces a flush before the next loop
#: iteration; also the most plaintext sealed by one native call.
COALESCE_BYTES = 64 * 1024
#: Most plaintext of one CONTAINER record (several messages of one flush in
#: one record, as TLS packs a write into 16 KiB records): TCP is ordered, so
#: a burst of small messages pays the per-record cost once per container.
CONTAINER_MAX = 16 * 1024
#: Most messages sealed by one native call (bounds the batch's memory).
MAX_BATCH_MESSAGES = 4096
#: Transport write buffer above which senders wait (``drain``).
WRITE_HIGH_WATER = 512 * 1024
WRITE_LOW_WATER = 128 * 1024
#: A connection that produced this many bad records is closed.
MAX_BAD_RECORDS = 100
#: At most one "bad record" debug line per connection and this many seconds.
BAD_RECORD_LOG_INTERVAL = 1.0

Frame = tuple[FrameKind, bytes]


def limit_recv_size(transport: asyncio.BaseTransport) -> None:
    """Make the selector transport ``recv()`` at most READ_SIZE bytes at a
    time (it asks for 256 KiB by default, an mmap()ed buffer per read; see
    READ_SIZE). ``max_size`` is an attribute of CPython's selector
    transports; other event loops are left alone."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = READ_SIZE  # type: ignore[attr-defined]


def transcript_prefix(transcript_hash: bytes) -> str:
    """The first 8 hex characters: enough to correlate both sides' logs,
    never the whole hash."""
    return transcript_hash[:4].hex()


class HandshakeAborted(Exception):
    """Internal: the handshake ended without a session; ``error`` is the
    typed exception for the caller, ``reason`` the reason name for logs."""

    def __init__(self, error: BaseException, reason: str, remote: bool = False) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.remote = remote


def reason_name(code: int) -> str:
    try:
        return RejectReason(code).name
    except ValueError:
        return f"code-{code}"


async def run_handshake(hs: Handshake, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, decoder: FrameDecoder, *,
                        timeout: float, first_data: bytes = b"",
                        max_pending_frame: int | None = None,
                        ) -> tuple[HandshakeComplete, list[Frame]]:
    """Drive ``hs`` until it completes. Returns the event and any frames that
    arrived after the last handshake message (records to hand to the
    session). Raises :class:`HandshakeAborted` (the Reject, if any, was
    written), :class:`ProtocolViolation` or :class:`ConnectionClosed`.

    ``first_data``: bytes already read from the stream. ``max_pending_frame``
    (a responder's pre-authentication bound): while the handshake needs more
    data, the frame it waits for is a handshake message, so a partial frame
    announcing more than this many bytes (length field included) is refused
    at its header, before it is buffered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    frames: deque[Frame] = deque()
    if first_data:
        frames.extend(decoder.feed(first_data))

    def send_pending() -> None:
        out = hs.data_to_send()
        if out and not writer.transport.is_closing():
            writer.write(encode_frame(FrameKind.HANDSHAKE, out))

    send_pending()
    while True:
        event = hs.next_event()
        send_pending()
        if isinstance(event, HandshakeComplete):
            return event, list(frames)
        if isinstance(event, HandshakeFailed):
            raise HandshakeAborted(event.error, reason_name(event.reason_code), event.remote)
        assert isinstance(event, NeedData)
        if frames:
            kind, payload = frames.popleft()
            if kind is not FrameKind.HANDSHAKE:
                raise ProtocolViolation("record frame before the handshake completed")
            hs.receive_data(payload)
            continue
        if max_pending_frame is not None and decoder.pending_frame > max_pending_frame:
            raise ProtocolViolation(
                "frame larger than the largest handshake message before authentication")
        remaining = deadline - loop.time()
        data = b""
        if remaining > 0:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), remaining)
            except asyncio.TimeoutError:
                remaining = 0
            if remaining > 0 and not data:
                raise ConnectionClosed("the peer closed the connection during the handshake")
        if remaining <= 0:
            hs.check_timeout()
            if hs.finished:
                event = hs.next_event()
                send_pending()
                if isinstance(event, HandshakeFailed):
                    raise HandshakeAborted(event.error, reason_name(event.reason_code))
            # The adapter's limit is shorter than the config's: reject ourselves.
            if not writer.transport.is_closing():
                writer.write(encode_frame(FrameKind.HANDSHAKE,
                                          Reject(RejectReason.TIMEOUT).encode()))
            raise HandshakeAborted(HandshakeTimeout("the handshake did not finish in time"),
                                   RejectReason.TIMEOUT.name)
        frames.extend(decoder.feed(data))


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


class RecordConnection:
    """An established connection: a session over a stream.

    Outgoing call messages are queued with :meth:`queue`; the queue is
    sealed with one ``seal_many`` call and written with one ``write`` on the
    next loop iteration, or at once when it holds ``COALESCE_BYTES``.
    Incoming chunks are parsed into frames and all records of a chunk are
    opened with one ``open_many`` call (:meth:`open_records`).
    """

    side = "?"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session: Session, decoder: FrameDecoder, *, peer: str,
                 containers: bool = True) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self.session = session
        self._decoder = decoder
        self.peer = peer
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._max_plaintext = session.max_plaintext
        #: Plaintext bound of one CONTAINER record (0: one record per message).
        self._container_max = min(CONTAINER_MAX, session.max_plaintext) if containers else 0
        self._rekeys = session.counters.rekeys
        self._recv_epoch = session.recv_epoch
        self.bad_records = 0
        self._bad_logged_at = 0.0
        self._bad_suppressed = 0
        self._started = time.monotonic()
        self.last_activity = self._loop.time()
        self._failure: BaseException | None = None
        self.calls = CallDecoder()
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        limit_recv_size(self._transport)

    # -- hooks (server statistics) ----------------------------------------------
    def _count_sealed(self, n: int) -> None:
        pass

    def _count_opened(self, ok: int, errors: list[RecordError]) -> None:
        pass

    # -- sending ----------------------------------------------------------------
    def _check_size(self, plaintext: bytes) -> None:
        if len(plaintext) > self._max_plaintext:
            raise RecordTooLarge(
                f"message of {len(plaintext)} bytes exceeds the session's maximum record "
                f"plaintext ({self._max_plaintext} bytes)")

    def queue(self, plaintext: bytes) -> None:
        """Queue one call message (sealed and written soon, in order)."""
        self._check_size(plaintext)
        self._out.append(plaintext)
        self._out_bytes += len(plaintext)
        if self._out_bytes >= COALESCE_BYTES or len(self._out) >= MAX_BATCH_MESSAGES:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def queue_many(self, plaintexts: Iterable[bytes]) -> None:
        """Queue several messages (sizes already checked); flushes in batches
        of at most ``MAX_BATCH_MESSAGES`` messages or about 64 KiB each."""
        out = self._out
        for item in plaintexts:
            out.append(item)
            self._out_bytes += len(item)
            if self._out_bytes >= COALESCE_BYTES or len(out) >= MAX_BATCH_MESSAGES:
                self.flush()
                out = self._out
        if self._out_bytes >= COALESCE_BYTES:
            self.flush()
        elif self._out and self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Seal everything queued with one native call and write it with one
        ``write``. Never raises: a failure closes the connection."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out:
            return
        messages = self._out
        self._out = []
        self._out_bytes = 0
        if self._transport.is_closing():
            return
        try:
            if len(messages) == 1:  # the batch call's setup costs more than it saves
                data = encode_records([self.session.seal(messages[0])])
                sealed = 1
            else:
                # One native call: messages grouped into CONTAINER records (TCP
                # is ordered) and sealed straight into the frames written.
                session = self.session
                session.before_send(len(messages))
                data, sealed, _flags = seal_frames(session.record_layer, messages,
                                                   self._container_max)
                session.count_sealed(sealed, sum(map(len, messages)))
        except RolewireError as exc:  # KeyExhausted, RecordLayerClosed
            self.fail(exc)
            return
        self._writer.write(data)
        self._count_sealed(sealed)
        rekeys = self.session.counters.rekeys
        if rekeys != self._rekeys:
            self._rekeys = rekeys
            log.info("rekey", extra={"event": "rekey", "peer": self.peer, "side": self.side,
                                     "direction": "send", "epoch": self.session.send_epoch})

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            try:
                await self._writer.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise ConnectionClosed("the connection was lost") from exc

    def fail(self, exc: BaseException) -> None:
        """Record the first fatal error and close the transport at once."""
        if self._failure is None:
            self._failure = exc
        self._out = []
        self._out_bytes = 0
        self._transport.abort()

    # -- receiving ----------------------------------------------------------------
    async def read_frames(self) -> list[Frame] | None:
        """The frames of the next chunk; None at end of stream. Raises
        ProtocolViolation on garbage."""
        try:
            data = await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return None
        if not data:
            return None
        self.last_activity = self._loop.time()
        return self._decoder.feed(data)

    def open_records(self, records: list[bytes]) -> list[bytes]:
        """Open a chunk's records with one native call; returns the good
        plaintexts in order. Bad records are dropped and counted; too many
        raise ProtocolViolation (the caller closes the connection)."""
        results: list[bytes | RecordError]
        if len(records) == 1:
            try:
                results = [self.session.open(records[0])]
            except RecordError as exc:
                results = [exc]
        else:
            results = self.session.open_many(records)
        good: list[bytes] = []
        errors: list[RecordError] = []
        for item in results:
            if isinstance(item, RecordError):
                errors.append(item)
            elif item[:1] == b"\x08":  # a CONTAINER: its messages, in order
                good.extend(decode_container(item))
            else:
                good.append(item)
        self._count_opened(len(results) - len(errors), errors)
        if errors:
            self._bad(errors)
        epoch = self.session.recv_epoch
        if epoch != self._recv_epoch:
            self._recv_epoch = epoch
            log.info("rekey", extra={"event": "rekey", "peer": self.peer, "side": self.side,
                                     "direction": "receive", "epoch": epoch})
        return good

    def _bad(self, errors: list[RecordError]) -> None:
        self.bad_records += len(errors)
        now = time.monotonic()
        if now - self._bad_logged_at >= BAD_RECORD_LOG_INTERVAL:
            log.debug("bad records dropped", extra={
                "event": "bad_record", "peer": self.peer, "side": self.side,
                "error": type(errors[0]).__name__,
                "replay": isinstance(errors[0], ReplayDetected),
                "count": len(errors) + self._bad_suppressed, "total": self.bad_records})
            self._bad_logged_at = now
            self._bad_suppressed = 0
        else:
            self._bad_suppressed += len(errors)
        if self.bad_records > MAX_BAD_RECORDS:
            raise ProtocolViolation("too many bad records on this connection")

    def log_closed(self, reason: str) -> None:
        c = self.session.counters
        log.info("session closed", extra={
            "event": "session_closed", "peer": self.peer, "side": self.side,
            "reason": reason, "duration": round(time.monotonic() - self._started, 3),
            "records_sealed": c.records_sealed, "records_opened": c.records_opened,
            "bad_records": self.bad_records, "rekeys": c.rekeys})


def log_handshake_complete(ev: HandshakeComplete, *, peer: str, side: str) -> None:
    log.info("handshake complete", extra={
        "event": "handshake_complete", "peer": peer, "side": side,
        "suite": ev.suite.wire_name, "peer_roles": sorted(ev.peer_roles),
        "transcript": transcript_prefix(ev.transcript_hash)})


def log_handshake_failed(reason: str, *, peer: str, side: str, remote: bool = False,
                         error: BaseException | None = None) -> None:
    log.info("handshake failed", extra={
        "event": "handshake_failed", "peer": peer, "side": side, "reason": reason,
        "remote": remote, "error": type(error).__name__ if error is not None else ""})

