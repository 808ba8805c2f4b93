"""The client side: :func:`connect` runs the handshake as initiator and
returns a :class:`Channel` for calls and notifications."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rolewire.aio._base import (
    STREAM_LIMIT,
    HandshakeAborted,
    RecordConnection,
    close_writer,
    log,
    log_handshake_complete,
    log_handshake_failed,
    reason_name,
    run_handshake,
)
from rolewire.enduser.context import has_current, propagation_metadata
from rolewire.errors import (
    ConnectionClosed,
    HandshakeError,
    ProtocolViolation,
    RolewireError,
)
from rolewire.handshake import HandshakeConfig, HandshakeSuite, Initiator, parse_late_reject
from rolewire.protocol.wire import (
    CallMessage,
    ErrorCode,
    FrameDecoder,
    FrameKind,
    MessageType,
    call_header,
    default_max_frame,
    encode,
    error_message,
    remote_error,
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


class Channel(RecordConnection):
    """A secure channel to one server (built by :func:`connect`).

    Calls and notifications may be issued concurrently from many tasks;
    they are sealed and written in the order they were issued. Small
    messages issued in the same loop iteration leave in one write.

    Attributes:
        session: the :class:`~rolewire.session.Session` (counters, epochs).
        peer: ``"host:port"`` of the server.
    """

    side = "initiator"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session: Session, decoder: FrameDecoder, *, peer: str,
                 suite: HandshakeSuite, leftover: Sequence[tuple[FrameKind, bytes]] = ()) -> None:
        super().__init__(reader, writer, session, decoder, peer=peer)
        self.suite = suite
        self._leftover = list(leftover)
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 1
        self._notify_heads: dict[str, bytes] = {}
        self._close_sent = False
        self._remote_closed = False
        self._closing = False
        #: Hooks that may add metadata to every outgoing call (see OutgoingHook).
        self.outgoing_hooks: list[OutgoingHook] = []
        self._reader_task = self._loop.create_task(self._read_loop())

    # -- properties ----------------------------------------------------------------
    @property
    def peer_roles(self) -> frozenset[str]:
        """The roles the server proved and this side verified."""
        return self.session.peer_roles

    @property
    def closed(self) -> bool:
        """True once the channel is closed (or closing)."""
        return self._reader_task.done() or self._closing or self._remote_closed

    @property
    def pending_calls(self) -> int:
        return len(self._calls)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure_error()
        if self._closing or self._remote_closed or self._reader_task.done():
            raise ConnectionClosed("the channel is closed")

    def _failure_error(self) -> BaseException:
        exc = self._failure
        if isinstance(exc, RolewireError):
            return exc
        return ConnectionClosed(f"the connection failed: {type(exc).__name__}")

    # -- calls -------------------------------------------------------------------------
    def _message(self, kind: MessageType, call_id: int, operation: str, body: bytes,
                 metadata: Mapping[str, bytes] | None) -> bytes:
        """The plaintext of one outgoing call message (with ``metadata``, the
        end-user context of the handler we run in, and whatever the outgoing
        hooks add)."""
        meta: Mapping[str, bytes] = propagation_metadata(metadata or {})
        for hook in self.outgoing_hooks:
            meta = hook(self, kind, call_id, operation, body, meta)
        if not meta:
            return call_header(kind, call_id, operation) + body
        return encode(CallMessage(kind, call_id, operation, body, meta))

    async def call(self, operation: str, body: bytes = b"", *,
                   timeout: float | None = None,
                   metadata: Mapping[str, bytes] | None = None) -> bytes:
        """Call ``operation`` and return the response body. ``metadata``:
        ``{key: bytes}`` sent in the call's metadata section (docs/PROTOCOL.md,
        "Call metadata"); handlers see it as ``call.metadata``.

        Raises:
            Forbidden, UnknownOperation, ServiceUnavailable, RemoteCallError:
                the server answered with an error (typed, see
                :func:`rolewire.rpc.remote_error`).
            RecordTooLarge: the message exceeds the session's record size;
                nothing was sent.
            ConnectionClosed: the channel closed before the reply came.
            HandshakeRejected: the server rejected our last handshake message.
            TimeoutError: no reply within ``timeout`` seconds.
        """
        self._check_open()
        call_id = self._next_id
        self._next_id += 1
        if metadata or self.outgoing_hooks or has_current():
            self.queue(self._message(MessageType.REQUEST, call_id, operation, bytes(body),
                                     metadata))
        else:
            self.queue(call_header(MessageType.REQUEST, call_id, operation) + bytes(body))
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._calls[call_id] = future
        try:
            await self.drain()
            if timeout is None:
                return await future
            return await asyncio.wait_for(future, timeout)
        finally:
            self._calls.pop(call_id, None)

    def _notify_head(self, operation: str) -> bytes:
        head = self._notify_heads.get(operation)
        if head is None:
            head = call_header(MessageType.NOTIFY, 0, operation)
            if len(self._notify_heads) < 256:
                self._notify_heads[operation] = head
        return head

    async def notify(self, operation: str, body: bytes = b"", *,
                     metadata: Mapping[str, bytes] | None = None) -> None:
        """Send a one-way notification. It is queued and leaves with the
        other messages of this loop iteration (or at once past 64 KiB);
        waits only when the transport's buffer is full."""
        self._check_open()
        if metadata or self.outgoing_hooks or has_current():
            self.queue(self._message(MessageType.NOTIFY, 0, operation, bytes(body), metadata))
        else:
            self.queue(self._notify_head(operation) + bytes(body))
        await self.drain()

    async def send_many(self, operation: str, bodies: Iterable[bytes], *,
                        metadata: Mapping[str, bytes] | None = None) -> None:
        """Send many notifications of one operation now: sealed by one native
        call per batch (up to 4096 messages / ~64 KiB) and written with one
        ``write`` per batch, in order. Waits for the transport buffer to
        drain below its high-water mark. ``metadata`` goes with each."""
        self._check_open()
        if metadata or self.outgoing_hooks or has_current():
            messages = [self._message(MessageType.NOTIFY, 0, operation, bytes(body), metadata)
                        for body in bodies]
        else:
            head = self._notify_head(operation)
            messages = [head + body for body in bodies]
        limit = self._max_plaintext
        for message in messages:  # all or nothing
            if len(message) > limit:
                self._check_size(message)
        self.queue_many(messages)
        self.flush()
        await self.drain()

    async def flush_now(self) -> None:
        """Write everything queued now and wait for the transport buffer."""
        self._check_open()
        self.flush()
        await self.drain()

    # -- receiving -------------------------------------------------------------------
    async def _read_loop(self) -> None:
        reason = "eof"
        try:
            while True:
                frames: list[tuple[FrameKind, bytes]] | None
                if self._leftover:
                    frames, self._leftover = self._leftover, []
                else:
                    frames = await self.read_frames()
                if frames is None:
                    break
                records: list[bytes] = []
                for kind, payload in frames:
                    if kind is FrameKind.RECORD:
                        records.append(payload)
                        continue
                    if records:
                        self._handle(self.open_records(records))
                        records = []
                    # A handshake frame after completion: the responder
                    # rejected our last handshake message.
                    raise parse_late_reject(payload)
                if records:
                    self._handle(self.open_records(records))
                if self._remote_closed and not self._calls:
                    reason = "closed"
                    break
        except HandshakeError as exc:
            reason = "rejected"
            code = getattr(exc, "reason_code", None)
            log_handshake_failed(reason_name(code) if code is not None else type(exc).__name__,
                                 peer=self.peer, side=self.side, remote=True, error=exc)
            if self._failure is None:
                self._failure = exc
        except ProtocolViolation as exc:
            reason = "protocol_violation"
            log.warning("protocol violation", extra={
                "event": "protocol_violation", "peer": self.peer, "side": self.side,
                "error": str(exc)})
            if self._failure is None:
                self._failure = exc
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            self._finish(reason)

    def _handle(self, plaintexts: list[bytes]) -> None:
        calls = self._calls
        decode = self.calls.decode
        for plaintext in plaintexts:
            message = decode(plaintext)
            kind = message.type
            if kind is MessageType.RESPONSE or kind is MessageType.ERROR:
                future = calls.pop(message.call_id, None)
                if future is None or future.done():
                    continue  # late reply to a call that timed out or was cancelled
                if kind is MessageType.RESPONSE:
                    future.set_result(message.body)
                else:
                    future.set_exception(remote_error(message))
            elif kind is MessageType.CLOSE:
                self._remote_closed = True
            elif kind is MessageType.REQUEST:
                # This channel serves nothing.
                self.queue(encode(error_message(message.call_id, message.operation,
                                                ErrorCode.UNKNOWN_OPERATION,
                                                "the client serves no operations")))
            # NOTIFY from the server: nothing listens on a client; dropped.

    def _finish(self, reason: str) -> None:
        """Final cleanup (runs once, in the read task)."""
        if not self._transport.is_closing():
            if not self._close_sent and self._failure is None:
                self._close_sent = True
                self.queue(encode(CallMessage(MessageType.CLOSE, 0, "")))
            self.flush()
            self._transport.close()
        error = self._failure_error() if self._failure is not None else ConnectionClosed(
            "the channel closed before the reply arrived")
        for future in self._calls.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: the caller may be gone
        self._calls.clear()
        self.log_closed(reason)
        self.session.close()

    # -- closing -------------------------------------------------------------------------
    async def close(self, timeout: float = 5.0) -> None:
        """Close gracefully: send CLOSE after everything queued, let pending
        calls get their replies (up to ``timeout`` seconds), wait for the
        server's CLOSE, then close the connection. Idempotent."""
        if not self._reader_task.done():
            self._closing = True
            if not self._close_sent and not self._transport.is_closing():
                self._close_sent = True
                self.queue(encode(CallMessage(MessageType.CLOSE, 0, "")))
                self.flush()
            try:
                await asyncio.wait_for(asyncio.shield(self._reader_task), timeout)
            except asyncio.TimeoutError:
                self._transport.abort()
        try:
            await self._reader_task
        except asyncio.CancelledError:
            pass
        await close_writer(self._writer)

    def abort(self) -> None:
        """Close at once; pending calls fail with ConnectionClosed."""
        self._closing = True
        self._transport.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"<Channel to {self.peer} peer_roles={sorted(self.peer_roles)} "
                f"pending={len(self._calls)} closed={self.closed}>")


async def _connect(host: str, port: int, config: HandshakeConfig, *, timeout: float,
                   max_frame: int | None,
                   local_addr: tuple[str, int] | None = None) -> Channel:
    if not isinstance(config, HandshakeConfig):
        raise TypeError("config must be a HandshakeConfig")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(timeout, config.timeout)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, limit=STREAM_LIMIT, local_addr=local_addr), timeout)
    peername = writer.get_extra_info("peername")
    peer = f"{peername[0]}:{peername[1]}" if peername else f"{host}:{port}"
    decoder = FrameDecoder(max_frame or default_max_frame(config))
    try:
        hs = Initiator(config, peer=host)
        event, leftover = await run_handshake(hs, reader, writer, decoder,
                                              timeout=max(deadline - loop.time(), 0.001))
    except HandshakeAborted as aborted:
        log_handshake_failed(aborted.reason, peer=peer, side="initiator",
                             remote=aborted.remote, error=aborted.error)
        await close_writer(writer)
        raise aborted.error from None
    except BaseException:
        writer.transport.abort()
        raise
    log_handshake_complete(event, peer=peer, side="initiator")
    return Channel(reader, writer, event.session, decoder, peer=peer, suite=event.suite,
                   leftover=leftover)


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
            max_frame: int | None = None,
            local_addr: tuple[str, int] | None = None) -> _Connect:
    """Open a TCP connection, run the handshake as initiator, return a
    :class:`Channel`. Use as ``channel = await connect(...)`` or
    ``async with connect(...) as channel``.

    ``timeout`` bounds connecting plus the handshake (and so does
    ``config.timeout``). Raises the handshake's typed error
    (:class:`~rolewire.errors.HandshakeRejected` with the server's reason
    code, e.g. BUSY when the server is at its connection bound;
    :class:`~rolewire.errors.HandshakeTimeout`, ...),
    :class:`~rolewire.errors.ConnectionClosed` or ``OSError``.

    ``local_addr`` binds the local end (e.g. ``("127.0.0.2", 0)``: servers
    apply their per-peer limits by source address).
    """
    return _Connect(host, port, config, timeout=timeout, max_frame=max_frame,
                    local_addr=local_addr)
