"""The wire layer shared by the baselines (private).

Frames are ``length u32 (big-endian) | payload`` over asyncio streams; the
payload is one :mod:`rolewire.rpc` call message, optionally preceded by a
per-request credential (the JWT baseline's ``token_len u16 | token``).
Frames longer than ``max_frame`` (16 MiB by default) are a
:class:`~rolewire.errors.ProtocolViolation`: the connection is closed before
the frame is buffered.

After accepting a connection (and completing TLS, where used) the server
sends one greeting frame, :data:`HELLO`. A client's ``connect`` returns only
after it has read it. With TLS 1.3 this matters: the client finishes its side
of the handshake before the server has checked the client certificate, so a
server that refuses the certificate is only noticed on the first read. The
greeting turns that into an error of ``connect`` instead of the first call.

:class:`BaselineServer` and :class:`BaselineClient` implement the common
``serve``/``connect`` shape; :mod:`rolewire.baselines.mtls` and
:mod:`rolewire.baselines.jwt` add TLS contexts and authentication hooks.
:func:`serve_plain` / :func:`connect_plain` use no security at all (the
benchmark's ceiling).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import shutil
import ssl
import struct
import tempfile
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rolewire import pki
from rolewire.errors import (
    CertificateRejected,
    ConfigurationError,
    ConnectionClosed,
    HandshakeError,
    ProtocolViolation,
    RolewireError,
)
from rolewire.protocol.wire import (
    CallDecoder,
    CallMessage,
    ErrorCode,
    MessageType,
    encode,
    error_message,
    remote_error,
)
from rolewire.services import Service

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "HELLO",
    "MAX_FRAME",
    "Authorized",
    "BaselineClient",
    "BaselineServer",
    "FrameDecoder",
    "Opening",
    "Peer",
    "Refused",
    "TLSCertificateRejected",
    "TLSHandshakeFailed",
    "client_context",
    "connect_plain",
    "current_authorization",
    "encode_frame",
    "open_client",
    "serve_plain",
    "server_context",
]

log = logging.getLogger("rolewire.baselines")

PathLike = str | os.PathLike[str]
#: A certificate with its key: PEM paths, or an :class:`~rolewire.pki.Issued`.
CertSource = PathLike | pki.Issued
#: A trust anchor: PEM path, certificate, or the CA's :class:`~rolewire.pki.Issued`.
AnchorSource = PathLike | pki.Issued | x509.Certificate

#: Largest frame payload accepted by default.
MAX_FRAME = 16 << 20
#: The server's greeting, the first frame on every connection.
HELLO = b"rolewire-baseline/1"
_LEN = struct.Struct(">I")
#: Senders wait for the transport when its buffer passes this many bytes.
WRITE_HIGH_WATER = 512 * 1024
_READ_CHUNK = 64 * 1024
_CLOSE = CallMessage(MessageType.CLOSE, 0, "")
_CLOSE_FRAME = _LEN.pack(len(encode(_CLOSE))) + encode(_CLOSE)
#: StreamWriter.start_tls exists (3.11+): the server runs TLS per connection
#: and sees handshake failures; on 3.10 asyncio runs it (failures unseen).
_STARTTLS = hasattr(asyncio.StreamWriter, "start_tls")

#: The authorization context of the request being dispatched (set by the
#: server around ``Service.dispatch``; the JWT baseline stores its verified
#: request here).
_current: contextvars.ContextVar[object] = contextvars.ContextVar("rolewire_baseline_auth")


def current_authorization() -> object:
    """The context object the server's authorize hook attached to the request
    being handled (``None`` if it attached none); raises :class:`LookupError`
    outside a request handler."""
    return _current.get()


# --- errors -------------------------------------------------------------------------


class TLSHandshakeFailed(HandshakeError):
    """The TLS handshake (or the server greeting right after it) failed.

    ``reason`` is OpenSSL's short reason code (e.g.
    ``"TLSV13_ALERT_CERTIFICATE_REQUIRED"``) or a short description; it never
    contains key material."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class TLSCertificateRejected(TLSHandshakeFailed, CertificateRejected):
    """A certificate was refused: ours by the server (its alert names why:
    unknown CA, expired, missing...) or the server's by us (untrusted,
    expired, wrong name)."""


def tls_error(exc: BaseException) -> TLSHandshakeFailed:
    """Map an exception raised while connecting over TLS to a typed error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or "verification failed"
        return TLSCertificateRejected(f"server certificate rejected: {detail}",
                                      reason=str(exc.reason or "CERTIFICATE_VERIFY_FAILED"))
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or type(exc).__name__)
        if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
            return TLSCertificateRejected(f"the server refused our certificate ({reason})",
                                          reason=reason)
        return TLSHandshakeFailed(f"TLS handshake failed ({reason})", reason=reason)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return TLSHandshakeFailed("TLS handshake timed out", reason="TIMEOUT")
    return TLSHandshakeFailed(
        "the server closed the connection during the TLS handshake "
        "(it may have refused our certificate)", reason="CONNECTION_CLOSED")


# --- frames -------------------------------------------------------------------------


def encode_frame(payload: bytes) -> bytes:
    """``length u32 | payload``."""
    return _LEN.pack(len(payload)) + payload


class FrameDecoder:
    """Feed bytes, get complete frame payloads back (sans-IO)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data``; raises
        :class:`ProtocolViolation` when a frame announces more than
        ``max_frame`` bytes (before buffering it)."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        size = len(buffer)
        position = 0
        unpack = _LEN.unpack_from
        while size - position >= 4:
            (length,) = unpack(buffer, position)
            if length > self.max_frame:
                raise ProtocolViolation("frame longer than the allowed maximum")
            end = position + 4 + length
            if end > size:
                break
            frames.append(bytes(buffer[position + 4 : end]))
            position = end
        if position:
            del buffer[:position]
        return frames


# --- TLS contexts -------------------------------------------------------------------


def _load_chain(context: ssl.SSLContext, cert: CertSource, key: PathLike | None) -> None:
    """``load_cert_chain`` from paths or from an :class:`~rolewire.pki.Issued`
    (written to a private temporary directory, removed right after)."""
    if isinstance(cert, pki.Issued):
        if key is not None:
            raise ConfigurationError("pass key=None with an Issued certificate")
        directory = tempfile.mkdtemp(prefix="rolewire-tls-")
        try:
            cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
            cert_path.write_bytes(cert.certificate_pem())
            pki.write_private_key(key_path, cert.private_key)
            context.load_cert_chain(cert_path, key_path)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    if key is None:
        raise ConfigurationError("a certificate path needs its key path")
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"cannot load certificate {os.fspath(cert)}: "
                                 f"{getattr(exc, 'reason', None) or exc.strerror}") from None


def _load_anchor(context: ssl.SSLContext, ca: AnchorSource) -> None:
    if isinstance(ca, pki.Issued):
        ca = ca.certificate
    if isinstance(ca, x509.Certificate):
        context.load_verify_locations(
            cadata=ca.public_bytes(serialization.Encoding.PEM).decode("ascii"))
        return
    try:
        context.load_verify_locations(cafile=os.fspath(ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"cannot load trust anchor {os.fspath(ca)}") from exc


def _tls13(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def server_context(cert: CertSource, key: PathLike | None = None, *,
                   ca: AnchorSource | None, require_client_certificate: bool = True
                   ) -> ssl.SSLContext:
    """TLS 1.3 server context presenting ``cert``. With
    ``require_client_certificate`` (the mTLS baseline) clients must present a
    certificate that chains to ``ca``; without it (the JWT baseline's
    transport) the server authenticates itself only."""
    context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, cert, key)
    if require_client_certificate:
        if ca is None:
            raise ConfigurationError("mTLS needs a trust anchor (ca=...)")
        context.verify_mode = ssl.CERT_REQUIRED
        _load_anchor(context, ca)
    return context


def client_context(cert: CertSource | None, key: PathLike | None = None, *,
                   ca: AnchorSource, check_hostname: bool = False) -> ssl.SSLContext:
    """TLS 1.3 client context: verifies the server against ``ca`` (and its
    name if ``check_hostname``), presents ``cert`` if given."""
    context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    _load_anchor(context, ca)
    if cert is not None:
        _load_chain(context, cert, key)
    return context


def reload_chain(context: ssl.SSLContext, cert: CertSource, key: PathLike | None) -> None:
    """Replace the certificate a live context presents (new handshakes use
    it; established connections keep theirs). Loads into a scratch context
    first, so a bad file raises :class:`ConfigurationError` and never
    half-replaces the working certificate."""
    _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
    _load_chain(context, cert, key)


# --- server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """What the server knows about a connection before any request: its
    address, the roles proven for the whole connection (mTLS: from the client
    certificate) and an identity string for logs (certificate name)."""

    address: str
    roles: frozenset[str] = frozenset()
    identity: str = ""


@dataclass(frozen=True)
class Authorized:
    """One authenticated request: the call message, the caller's roles for
    this request, and a context object for :func:`current_authorization`."""

    message: CallMessage
    roles: frozenset[str]
    context: object = None


class Refused(Exception):
    """Raised by an authorize hook: the request is refused (answered with an
    ERROR reply of ``code`` if it expects one; the connection stays open)."""

    def __init__(self, message: CallMessage | None, error: RolewireError,
                 code: ErrorCode = ErrorCode.FORBIDDEN) -> None:
        super().__init__(str(error))
        self.message = message
        self.error = error
        self.code = code


Identify = Callable[[asyncio.StreamWriter], Peer]
Authorize = Callable[[bytes, Peer], Authorized]


def peer_address(writer: asyncio.StreamWriter) -> str:
    """``host:port`` of the connection's peer (for logs)."""
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


@dataclass
class BaselineStats:
    """Counters of one baseline server."""

    connections_total: int = 0
    connections_open: int = 0
    requests: int = 0
    notifications: int = 0
    refused: int = 0
    protocol_errors: int = 0
    handshakes_failed: int = 0


class BaselineServer:
    """A server of one :class:`~rolewire.services.Service` over framed
    streams (built by the baselines' ``serve``).

    Requests whose handler is a coroutine function run as tasks (at most
    ``max_inflight`` per connection, then the server stops reading); other
    requests and all notifications run inline, in order. Replies produced
    while handling one received chunk leave in one write.
    """

    system = "plain"

    def __init__(self, service: Service, *, ssl_context: ssl.SSLContext | None = None,
                 identify: Identify | None = None, authorize: Authorize | None = None,
                 max_frame: int = MAX_FRAME, max_inflight: int = 64,
                 handshake_timeout: float = 10.0) -> None:
        self.service = service
        self.ssl_context = ssl_context
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.handshake_timeout = handshake_timeout
        self.stats = BaselineStats()
        self._identify = identify or (lambda writer: Peer(peer_address(writer)))
        self._authorize = authorize
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
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
                                                  limit=_READ_CHUNK, **kwargs)

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
        """Stop accepting; tell every connected client (a ``CLOSE`` message)
        and close its connection."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            try:
                writer.write(_CLOSE_FRAME)
                writer.close()
            except (OSError, RuntimeError):
                pass

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
    def _handler_is_async(self, operation: str) -> bool:
        cached = self._is_async.get(operation)
        if cached is None:
            op = self.service.operations.get(operation)
            cached = op is not None and inspect.iscoroutinefunction(op.handler)
            self._is_async[operation] = cached
        return cached

    async def _run_task(self, message: CallMessage, roles: frozenset[str], context: object,
                        who: str, writer: asyncio.StreamWriter) -> None:
        token = _current.set(context)  # (a task has its own copy of the context)
        try:
            reply = await self.service.dispatch(message, roles, who)
        finally:
            _current.reset(token)
        if reply is not None and not writer.is_closing():
            writer.write(encode_frame(encode(reply)))

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        tasks: set[asyncio.Task[None]] = set()
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
            writer.write(encode_frame(HELLO))
            await self._serve_connection(reader, writer, peer, tasks)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
                for pending in tasks:
                    pending.cancel()
            self.stats.connections_open -= 1
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (OSError, RuntimeError, ssl.SSLError, asyncio.TimeoutError, TimeoutError):
                pass

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, peer: Peer,
                                tasks: set[asyncio.Task[None]]) -> None:
        decoder = FrameDecoder(self.max_frame)
        stats = self.stats
        transport = writer.transport
        authorize = self._authorize
        dispatch = self.service.dispatch
        dispatch_nowait = self.service.dispatch_nowait
        decode_call = CallDecoder().decode
        who = peer.identity or peer.address
        while not self._closing:
            data = await reader.read(_READ_CHUNK)
            if not data:
                return
            try:
                payloads = decoder.feed(data)
            except ProtocolViolation:
                stats.protocol_errors += 1
                log.warning("protocol violation", extra={
                    "event": "protocol_violation", "system": self.system,
                    "peer": peer.address, "reason": "frame too long"})
                return
            out: list[bytes] = []
            for payload in payloads:
                context: object = None
                try:
                    if authorize is None:  # connection-level roles (plain, mTLS)
                        message = decode_call(payload)
                        roles = peer.roles
                    else:
                        auth = authorize(payload, peer)
                        message, roles, context = auth.message, auth.roles, auth.context
                except Refused as refused:
                    stats.refused += 1
                    self._log_refused(refused, peer)
                    msg = refused.message
                    if msg is not None and msg.type is MessageType.REQUEST:
                        out.append(encode_frame(encode(error_message(
                            msg.call_id, msg.operation, refused.code,
                            f"request refused: {refused.error}"))))
                    continue
                except ProtocolViolation as exc:
                    stats.protocol_errors += 1
                    log.warning("protocol violation", extra={
                        "event": "protocol_violation", "system": self.system,
                        "peer": peer.address, "reason": str(exc)})
                    if out:
                        writer.write(b"".join(out))
                    return
                kind = message.type
                if kind is MessageType.NOTIFY:
                    stats.notifications += 1
                elif kind is MessageType.REQUEST:
                    stats.requests += 1
                    if self._handler_is_async(message.operation):
                        if out:  # keep replies in order with what precedes the task
                            writer.write(b"".join(out))
                            out = []
                        running = asyncio.ensure_future(
                            self._run_task(message, roles, context, who, writer))
                        tasks.add(running)
                        running.add_done_callback(tasks.discard)
                        if len(tasks) >= self.max_inflight:
                            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                        continue
                elif kind is MessageType.CLOSE:
                    out.append(_CLOSE_FRAME)
                    writer.write(b"".join(out))
                    if tasks:
                        await asyncio.wait(tasks, timeout=5.0)
                    return
                else:
                    stats.protocol_errors += 1
                    return
                if context is None:
                    reply = dispatch_nowait(message, roles, who)
                    if reply is not None and not isinstance(reply, CallMessage):
                        reply = await reply
                else:
                    token = _current.set(context)
                    try:
                        reply = await dispatch(message, roles, who)
                    finally:
                        _current.reset(token)
                if reply is not None:
                    out.append(encode_frame(encode(reply)))
            if out:
                writer.write(b"".join(out))
            if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await writer.drain()

    def _log_refused(self, refused: Refused, peer: Peer) -> None:
        message = refused.message
        log.warning("request refused", extra={
            "event": "request_refused", "system": self.system, "peer": peer.address,
            "operation": message.operation if message is not None else "",
            "reason": type(refused.error).__name__})


# --- client -------------------------------------------------------------------------


class BaselineClient:
    """One client connection (built by the baselines' ``connect``).

    ``call`` may be used from many tasks at once: requests are pipelined and
    replies matched by call id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 peer_roles: frozenset[str] = frozenset(), peer: str = "",
                 max_frame: int = MAX_FRAME) -> None:
        self.peer_roles = peer_roles
        self.peer = peer
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._decoder = FrameDecoder(max_frame)
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 1
        self._closed = False
        self._remote_closed = False
        self._reader_task = asyncio.ensure_future(self._read_loop())

    @property
    def closed(self) -> bool:
        return self._closed or self._remote_closed or self._reader_task.done()

    @property
    def pending_calls(self) -> int:
        return len(self._calls)

    # -- payload hooks (the JWT client adds a token) ----------------------------------
    def _payload(self, message: CallMessage, auth: Any) -> bytes:
        return encode(message)

    def _check_open(self) -> None:
        if self.closed:
            raise ConnectionClosed("the connection is closed")

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        if self._transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            try:
                await self._writer.drain()
            except (ConnectionError, ssl.SSLError) as exc:
                raise ConnectionClosed("the connection closed while sending") from exc

    async def _request(self, operation: str, body: bytes, timeout: float | None,
                       auth: Any) -> bytes:
        self._check_open()
        call_id = self._next_id
        self._next_id += 1
        message = CallMessage(MessageType.REQUEST, call_id, operation, bytes(body))
        payload = self._payload(message, auth)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        try:
            await self._write(encode_frame(payload))
            if timeout is None:
                return await future
            return await asyncio.wait_for(future, timeout)
        finally:
            self._calls.pop(call_id, None)

    async def _notify_many(self, operation: str, bodies: Iterable[bytes], auth: Any) -> None:
        self._check_open()
        if type(self)._payload is BaselineClient._payload:
            # Bare call messages: encode the header once for the batch.
            head = encode(CallMessage(MessageType.NOTIFY, 0, operation))
            size, pack = len(head), _LEN.pack
            data = b"".join(pack(size + len(body)) + head + body for body in bodies)
        else:
            payload = self._payload
            data = b"".join(encode_frame(payload(CallMessage(
                MessageType.NOTIFY, 0, operation, bytes(body)), auth)) for body in bodies)
        await self._write(data)

    # -- public API -----------------------------------------------------------------
    async def call(self, operation: str, body: bytes = b"", *,
                   timeout: float | None = 10.0) -> bytes:
        """Request/response. Raises the typed error of an ERROR reply
        (:func:`rolewire.rpc.remote_error`), :class:`ConnectionClosed` if the
        connection drops, :class:`TimeoutError` after ``timeout`` seconds."""
        return await self._request(operation, body, timeout, None)

    async def notify(self, operation: str, body: bytes = b"") -> None:
        """One-way message; waits only when the transport buffer is full."""
        await self._notify_many(operation, (body,), None)

    async def send_many(self, operation: str, bodies: Iterable[bytes]) -> None:
        """Many notifications in one write."""
        await self._notify_many(operation, bodies, None)

    async def close(self, timeout: float = 5.0) -> None:
        """Let pending calls finish (up to ``timeout``), send ``CLOSE`` and
        close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._calls:
            await asyncio.wait(list(self._calls.values()), timeout=timeout)
        if not self._writer.is_closing() and not self._remote_closed:
            try:
                self._writer.write(encode_frame(self._payload(_CLOSE, None)))
            except (OSError, RuntimeError):
                pass
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout)
        except (OSError, RuntimeError, ssl.SSLError, asyncio.TimeoutError, TimeoutError):
            pass
        self._reader_task.cancel()
        # Closing anyway: whatever the reader task ended with is not reported.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader_task
        self._fail_pending("the connection was closed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail_pending(self, why: str) -> None:
        for future in self._calls.values():
            if not future.done():
                future.set_exception(ConnectionClosed(why))

    async def _read_loop(self) -> None:
        calls = self._calls
        decode_call = CallDecoder().decode
        try:
            while True:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    break
                for payload in self._decoder.feed(data):
                    message = decode_call(payload)
                    kind = message.type
                    if kind is MessageType.RESPONSE or kind is MessageType.ERROR:
                        future = calls.get(message.call_id)
                        if future is None or future.done():
                            continue
                        if kind is MessageType.RESPONSE:
                            future.set_result(message.body)
                        else:
                            future.set_exception(remote_error(message))
                    elif kind is MessageType.CLOSE:
                        self._remote_closed = True
                        self._fail_pending("the server closed the connection")
                        return
                    else:
                        raise ProtocolViolation("unexpected message type from the server")
        except (ConnectionError, ssl.SSLError, ProtocolViolation) as exc:
            log.debug("connection lost", extra={"event": "connection_lost",
                                                "reason": type(exc).__name__})
        finally:
            self._remote_closed = True
            self._fail_pending("the connection closed")


# --- awaitable or async context manager -------------------------------------------

class _AsyncClosable(Protocol):
    async def __aexit__(self, *exc: object) -> None: ...


T = TypeVar("T", bound=_AsyncClosable)


class Opening(Generic[T]):
    """What ``serve``/``connect`` return: ``await`` it for the object, or
    use ``async with`` to close it on exit."""

    def __init__(self, factory: Callable[[], Awaitable[T]]) -> None:
        self._factory = factory
        self._obj: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        return self._factory().__await__()

    async def __aenter__(self) -> T:
        self._obj = await self._factory()
        return self._obj

    async def __aexit__(self, *exc: object) -> None:
        assert self._obj is not None
        await self._obj.__aexit__(*exc)


async def open_client(cls: Callable[..., T], host: str, port: int, *,
                      ssl_context: ssl.SSLContext | None = None,
                      server_hostname: str | None = None, timeout: float | None = 10.0,
                      max_frame: int = MAX_FRAME,
                      peer_roles: Callable[[asyncio.StreamWriter], frozenset[str]] | None = None,
                      **kwargs: Any) -> T:
    """Connect (TLS if ``ssl_context``), read the server greeting, build the
    client object. TLS failures become :class:`TLSHandshakeFailed` /
    :class:`TLSCertificateRejected`; a server that hangs up without TLS gives
    :class:`ConnectionClosed`; nothing listening gives :class:`OSError`."""

    async def establish() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        extra: dict[str, Any] = {}
        if ssl_context is not None:
            extra.update(ssl=ssl_context, server_hostname=server_hostname or host,
                         ssl_handshake_timeout=timeout)
        reader, writer = await asyncio.open_connection(host, port, limit=_READ_CHUNK, **extra)
        try:
            head = await reader.readexactly(4 + len(HELLO))
        except BaseException:
            writer.close()
            raise
        if head != encode_frame(HELLO):
            writer.close()
            raise ProtocolViolation("the server did not greet as a rolewire baseline")
        return reader, writer

    try:
        reader, writer = await asyncio.wait_for(establish(), timeout)
    except ssl.SSLError as exc:
        raise tls_error(exc) from None
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError,
            asyncio.TimeoutError, TimeoutError) as exc:
        if ssl_context is not None:
            raise tls_error(exc) from None
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            raise
        raise ConnectionClosed("the server closed the connection before greeting") from None
    roles = peer_roles(writer) if peer_roles is not None else frozenset()
    return cls(reader, writer, peer_roles=roles, peer=f"{host}:{port}", max_frame=max_frame,
               **kwargs)


# --- plain TCP (no security: the benchmark ceiling) --------------------------------


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


def connect_plain(host: str, port: int, *, timeout: float | None = 10.0,
                  max_frame: int = MAX_FRAME) -> Opening[BaselineClient]:
    """Connect over plain TCP (no security). Benchmarks only."""
    return Opening(lambda: open_client(BaselineClient, host, port, timeout=timeout,
                                       max_frame=max_frame))

