"""Sans-IO client side of the HTTP binding.

:class:`ClientHandshake` drives one handshake as a series of POST bodies;
:class:`ClientChannel` (its result) seals requests and opens their responses.
Adapters (the httpx transports) move the bytes and pass in the time.

::

    hs = ClientHandshake(config)
    body = hs.next_body()
    while body is not None:
        status, headers, reply = post(HANDSHAKE_PATH, hs.headers(), body)
        body = hs.receive(status, headers, reply)
    channel = hs.channel(now=t)
    sealer = channel.seal_request(b"POST", b"/charge", headers)
    wire = sealer.seal(b'{"amount": 1}', final=True)
    opener = sealer.open_response(status, response_headers)
    events = opener.feed(response_bytes); opener.end()
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from dataclasses import dataclass

from rolewire.errors import HandshakeError, MalformedHandshakeMessage, RecordError
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    Initiator,
    parse_late_reject,
)
from rolewire.http.errors import (
    HTTPBindingError,
    MalformedBody,
    ResponseForged,
    ResponseTruncated,
    error_for,
)
from rolewire.http.wire import (
    CONTENT_TYPE_HANDSHAKE,
    CONTENT_TYPE_SEALED,
    DEFAULT_CHUNK_SIZE,
    EXCHANGE_ID_SIZE,
    HEADER_ERROR,
    HEADER_REJECT,
    HEADER_SESSION,
    HEADER_SESSION_LIFETIME,
    HIDDEN_TARGET_PATH,
    KIND_REQUEST,
    KIND_RESPONSE,
    SESSION_ID_SIZE,
    FrameDecoder,
    RequestMeta,
    ResponseMeta,
    bound_headers,
    decode_session_id,
    encode_chunk,
    encode_session_id,
    frame,
    header_value,
    metadata_equal,
    parse_chunk,
)
from rolewire.session import Session

__all__ = [
    "ChannelOptions",
    "ClientChannel",
    "ClientHandshake",
    "ResponseData",
    "ResponseOpener",
    "ResponseVerified",
    "SealedRequest",
    "reply_error",
]

Headers = list[tuple[bytes, bytes]]


def reply_error(status: int, headers: Headers) -> HTTPBindingError | None:
    """The binding error an unsealed server reply stands for, if any."""
    code = header_value(headers, HEADER_ERROR.encode())
    return error_for(status, code.decode("ascii", "replace") if code is not None else None)


class ClientHandshake:
    """One handshake over HTTP, as a sequence of POST bodies.

    Args:
        config: roles and policy of this client.
        peer: the origin (for password rate limiting and logs).
        session_id: 16 bytes naming the handshake and then the session
            (random by default; the server refuses one in use).
    """

    def __init__(self, config: HandshakeConfig, *, peer: Hashable = None,
                 session_id: bytes | None = None) -> None:
        self.session_id = session_id if session_id is not None else os.urandom(SESSION_ID_SIZE)
        if len(self.session_id) != SESSION_ID_SIZE:
            raise ValueError("session_id must be 16 bytes")
        self._initiator = Initiator(config, peer=peer)
        self._next: bytes | None = self._initiator.data_to_send()
        self._complete: HandshakeComplete | None = None
        self._established = False
        self.lifetime: float | None = None
        #: After a local failure: the Reject to POST (best effort), else b"".
        self.pending_reject = b""

    def headers(self) -> Headers:
        """Headers of every handshake POST."""
        return [(b"content-type", CONTENT_TYPE_HANDSHAKE.encode()),
                (HEADER_SESSION.encode(), encode_session_id(self.session_id).encode())]

    def next_body(self) -> bytes | None:
        """The body of the next POST, or None once established."""
        body, self._next = self._next, None
        return body

    def receive(self, status: int, headers: Headers, body: bytes) -> bytes | None:
        """Feed the reply to the last POST; returns the next body to POST, or
        None once the session is established. Raises a
        :class:`~rolewire.errors.HandshakeError` (``HandshakeRejected`` for a
        Reject, with its ``reason_code``) or an :class:`HTTPBindingError`."""
        content_type = (header_value(headers, b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != CONTENT_TYPE_HANDSHAKE.encode():
            err = reply_error(status, headers)
            if err is not None:
                raise err
            raise MalformedHandshakeMessage(f"not a handshake reply (HTTP {status})")
        if decode_session_id(header_value(headers, HEADER_SESSION.encode())) != self.session_id:
            raise MalformedHandshakeMessage("handshake reply for another session id")
        if self._initiator.finished:
            # Our last message completed the handshake on our side; the server
            # confirms it (200, empty body) or rejects it (a Reject).
            if status == 200 and not body:
                self._establish(headers)
                return None
            raise parse_late_reject(body)
        if status != 200 and header_value(headers, HEADER_REJECT.encode()) is None:
            raise MalformedHandshakeMessage(f"handshake reply HTTP {status} without a Reject")
        self._initiator.receive_data(body)
        while True:
            event = self._initiator.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, HandshakeFailed):
                # Our Reject, for the adapter to POST (so the server drops
                # its half of the handshake at once).
                self.pending_reject = self._initiator.data_to_send()
                raise event.error
            assert isinstance(event, HandshakeComplete)
            self._complete = event
            break
        out = self._initiator.data_to_send()
        if self._complete is not None and not out:
            self._establish(headers)  # 4-message flow: the server spoke last
            return None
        if not out:
            raise MalformedHandshakeMessage("incomplete handshake reply")
        self._next = out
        return out

    def _establish(self, headers: Headers) -> None:
        if self._complete is None:
            raise MalformedHandshakeMessage("handshake confirmed before it completed")
        lifetime = header_value(headers, HEADER_SESSION_LIFETIME.encode())
        try:
            self.lifetime = float(lifetime) if lifetime is not None else None
        except ValueError:
            self.lifetime = None
        self._established = True

    @property
    def established(self) -> bool:
        return self._established

    def channel(self, *, now: float, options: ChannelOptions | None = None) -> ClientChannel:
        """The established channel (after :meth:`receive` returned None)."""
        if not self._established or self._complete is None:
            raise HandshakeError("the handshake is not established")
        return ClientChannel(self._complete.session, self.session_id,
                             self._complete.peer_roles, established_at=now,
                             lifetime=self.lifetime, options=options)


@dataclass(frozen=True)
class ChannelOptions:
    """Client policy for sealed requests.

    Args:
        bound_headers: request headers bound into every request's metadata.
        response_headers: response headers the client requires bound.
        hide_target: send path and query inside the record; the outer
            target is the fixed ``/.well-known/rolewire/request``.
        chunk_size: plaintext bytes per record.
        max_response: bytes of one sealed response body.
        expiry_margin: re-handshake this many seconds before the server's
            announced lifetime ends.
    """

    bound_headers: tuple[str, ...] = ()
    response_headers: tuple[str, ...] = ()
    hide_target: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_response: int = 256 * 1024 * 1024
    expiry_margin: float = 5.0


class ClientChannel:
    """An established HTTP session with one origin. Thread-safe: sealing and
    opening are serialised by a lock (the record layer refuses concurrent
    use of one direction)."""

    def __init__(self, session: Session, session_id: bytes, peer_roles: frozenset[str], *,
                 established_at: float, lifetime: float | None,
                 options: ChannelOptions | None = None) -> None:
        self.session = session
        self.session_id = session_id
        self.peer_roles = peer_roles
        self.established_at = established_at
        self.lifetime = lifetime
        self.options = options or ChannelOptions()
        self.lock = threading.Lock()
        self.header = encode_session_id(session_id).encode()

    def expired(self, now: float) -> bool:
        """True when the server's announced lifetime is (nearly) over."""
        if self.lifetime is None:
            return False
        return now - self.established_at >= self.lifetime - self.options.expiry_margin

    def seal_request(self, method: bytes, target: bytes, headers: Headers) -> SealedRequest:
        """Start sealing a request: ``target`` is the raw path and query."""
        return SealedRequest(self, method.upper(), target, [(k.lower(), v) for k, v in headers])

    def close(self) -> None:
        with self.lock:
            self.session.close()


_DROP = {b"content-length", b"content-type", b"transfer-encoding"}


class SealedRequest:
    """One request being sealed: :attr:`outer_target` and
    :attr:`outer_headers` for the HTTP request, :meth:`seal` for its body,
    :meth:`open_response` for its answer."""

    def __init__(self, channel: ClientChannel, method: bytes, target: bytes,
                 headers: Headers) -> None:
        self.channel = channel
        self.exchange = os.urandom(EXCHANGE_ID_SIZE)
        opts = channel.options
        content_type = header_value(headers, b"content-type") or b""
        names = [n.lower().encode() for n in opts.bound_headers]
        self._meta = RequestMeta(method, target, channel.session_id, content_type,
                                 bound_headers(headers, names), opts.hide_target).encode()
        self.method = method
        self.outer_target = HIDDEN_TARGET_PATH.encode() if opts.hide_target else target
        outer = [(k, v) for k, v in headers if k not in _DROP]
        outer.append((b"content-type", CONTENT_TYPE_SEALED.encode()))
        outer.append((HEADER_SESSION.encode(), channel.header))
        self.outer_headers = outer
        self._sequence = 0
        self._finished = False

    def seal(self, data: bytes, final: bool) -> bytes:
        """Framed records carrying ``data``; ``final`` ends the body."""
        if self._finished:
            raise RuntimeError("the request body is already complete")
        size = self.channel.options.chunk_size
        pieces = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        out = []
        with self.channel.lock:
            for index, piece in enumerate(pieces):
                last = final and index == len(pieces) - 1
                plaintext = encode_chunk(KIND_REQUEST, self.exchange, self._sequence, last,
                                         piece, self._meta if self._sequence == 0 else None)
                out.append(frame(self.channel.session.seal(plaintext)))
                self._sequence += 1
        self._finished = final
        return b"".join(out)

    def open_response(self, status: int, headers: Headers) -> ResponseOpener:
        """Start opening the response. Raises the binding error an unsealed
        error reply stands for (401/400/409/413 with ``Rolewire-Error``), or
        :class:`ResponseForged` for any other unsealed response."""
        headers = [(k.lower(), v) for k, v in headers]
        content_type = (header_value(headers, b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != CONTENT_TYPE_SEALED.encode():
            err = reply_error(status, headers)
            if err is not None:
                raise err
            raise ResponseForged(f"unsealed response (HTTP {status})")
        return ResponseOpener(self, status, headers)


@dataclass(frozen=True)
class ResponseVerified:
    """The response's first record opened and matched: the real status,
    content type and the headers to hand to the caller."""

    status: int
    content_type: bytes
    headers: Headers


@dataclass(frozen=True)
class ResponseData:
    data: bytes
    final: bool


class ResponseOpener:
    """Opens the records of one sealed response; every record must belong
    to this request's exchange. Raises :class:`ResponseForged`."""

    def __init__(self, request: SealedRequest, status: int, headers: Headers) -> None:
        self._request = request
        self._status = status
        self._headers = headers
        session = request.channel.session
        self._decoder = FrameDecoder(max_record=session.max_plaintext + session.overhead,
                                     max_body=request.channel.options.max_response)
        self._sequence = 0
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> list[ResponseVerified | ResponseData]:
        events: list[ResponseVerified | ResponseData] = []
        channel = self._request.channel
        try:
            records = self._decoder.feed(data)
        except HTTPBindingError as exc:
            raise ResponseForged(f"bad sealed response: {exc.code}") from None
        for record in records:
            if self._done:
                raise ResponseForged("data after the final record of the response")
            try:
                with channel.lock:
                    plaintext = channel.session.open(record)
                header, meta, chunk = parse_chunk(plaintext)
            except (RecordError, MalformedBody):
                raise ResponseForged("a response record did not open") from None
            if (header.kind != KIND_RESPONSE or header.sequence != self._sequence
                    or header.exchange != self._request.exchange):
                raise ResponseForged("a response record is not bound to this request")
            if self._sequence == 0:
                assert meta is not None
                events.append(self._verify(meta))
            self._sequence += 1
            self._done = header.final
            events.append(ResponseData(chunk, header.final))
        return events

    def _verify(self, sealed: bytes) -> ResponseVerified:
        try:
            meta = ResponseMeta.parse(sealed)
        except MalformedBody:
            raise ResponseForged("bad response metadata") from None
        names = {name for name, _ in meta.headers}
        required = {h.lower().encode() for h in self._request.channel.options.response_headers}
        status = self._status
        if status == 200 and meta.status in (204, 304):
            status = meta.status  # bodyless statuses travel as 200 (PROTOCOL.md)
        expected = ResponseMeta(status, self._request.channel.session_id,
                                meta.content_type, bound_headers(self._headers, names))
        if not required <= names or not metadata_equal(expected.encode(), sealed):
            raise ResponseForged("response metadata does not match")
        headers = [(k, v) for k, v in self._headers
                   if k not in (b"content-type", b"content-length", b"transfer-encoding",
                                HEADER_SESSION.encode())]
        if meta.content_type:
            headers.append((b"content-type", meta.content_type))
        return ResponseVerified(meta.status, meta.content_type, headers)

    def end(self) -> None:
        """The HTTP body ended: raises if the final record never came."""
        if not self._done:
            raise ResponseTruncated("the sealed response ended before its final record")
