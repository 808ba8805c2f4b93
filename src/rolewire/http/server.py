"""Sans-IO server side of the HTTP binding.

:class:`ServerEndpoint` holds the sessions and half-open handshakes of one
server process. Adapters (the ASGI middleware) hand it what arrived — the
method, target, headers, body bytes and the current time — and get back
replies, events and bytes to send. No sockets, no event loop, no clock: time
comes in as ``now`` (seconds, monotonic).

::

    endpoint = ServerEndpoint(HandshakeConfig(roles=[...]))
    reply = endpoint.handshake(session_header, body, now=t)        # POST handshake
    opener = endpoint.begin_request(b"POST", b"/charge", b"", headers, now=t)
    for event in opener.feed(body_bytes): ...                      # RequestVerified, BodyData
    sealer = opener.response_sealer()
    outer_headers = sealer.start(200, app_headers)
    wire = sealer.seal(b"...", final=True)
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from rolewire.errors import RecordError
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    RejectReason,
    Responder,
    busy_reject,
)
from rolewire.http.errors import (
    BodyTooLarge,
    BodyTruncated,
    HTTPBindingError,
    MalformedBody,
    NotSealed,
    RecordRejected,
    SessionExpired,
    SessionIdInUse,
    UnknownSession,
)
from rolewire.http.wire import (
    CONTENT_TYPE_HANDSHAKE,
    CONTENT_TYPE_SEALED,
    DEFAULT_CHUNK_SIZE,
    HEADER_ERROR,
    HEADER_REJECT,
    HEADER_SESSION,
    HEADER_SESSION_LIFETIME,
    HIDDEN_TARGET_PATH,
    KIND_REQUEST,
    KIND_RESPONSE,
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
    "BodyData",
    "PeerIdentity",
    "Reply",
    "RequestOpener",
    "RequestVerified",
    "ResponseSealer",
    "ServerEndpoint",
    "ServerOptions",
    "error_reply",
    "status_for_reject",
]

Headers = list[tuple[bytes, bytes]]

_REJECT_STATUS = {
    RejectReason.DECODE_ERROR: 400,
    RejectReason.UNEXPECTED_MESSAGE: 400,
    RejectReason.UNSUPPORTED_VERSION: 400,
    RejectReason.NO_COMMON_SUITE: 400,
    RejectReason.ILLEGAL_PARAMETER: 400,
    RejectReason.DECRYPT_ERROR: 403,
    RejectReason.AUTH_FAILED: 403,
    RejectReason.CERTIFICATE_REJECTED: 403,
    RejectReason.NO_SHARED_ROLE: 403,
    RejectReason.RATE_LIMITED: 429,
    RejectReason.TIMEOUT: 408,
    RejectReason.BUSY: 503,
    RejectReason.MESSAGE_TOO_LARGE: 413,
    RejectReason.INTERNAL_ERROR: 500,
}


def status_for_reject(code: int) -> int:
    """The HTTP status of a handshake response that carries a Reject."""
    try:
        return _REJECT_STATUS[RejectReason(code)]
    except ValueError:
        return 500


@dataclass(frozen=True)
class ServerOptions:
    """Policy of a :class:`ServerEndpoint`.

    Args:
        bound_headers: request headers every sealed request must bind (the
            client may bind more; each bound header is checked).
        response_headers: response headers the server binds into every
            sealed response (when the application sets them).
        session_lifetime: seconds a session lives after its handshake; then
            requests get 401 ``session-expired`` and the client re-handshakes.
        max_sessions: sessions held at most (least recently used evicted).
        max_pending_handshakes: half-open handshakes held at most (503 BUSY
            beyond).
        max_body: bytes of one sealed request body, checked before decryption
            (413 beyond).
        chunk_size: plaintext bytes per record when sealing responses.
        verify_before_app: a request body up to this many bytes is opened
            and verified completely (final record included) before the app
            is called, so a cut or forged body never reaches a handler;
            beyond it the body streams to the app record by record (with
            back-pressure) and a bad record ends it with ``http.disconnect``.
    """

    bound_headers: tuple[str, ...] = ()
    response_headers: tuple[str, ...] = ()
    session_lifetime: float = 3600.0
    max_sessions: int = 10_000
    max_pending_handshakes: int = 256
    max_body: int = 16 * 1024 * 1024
    chunk_size: int = DEFAULT_CHUNK_SIZE
    verify_before_app: int = 1024 * 1024

    def __post_init__(self) -> None:
        from rolewire.errors import ConfigurationError

        if (self.session_lifetime <= 0 or self.max_sessions < 1
                or self.max_pending_handshakes < 1 or self.max_body < 1
                or not 1 <= self.chunk_size <= 1 << 20):
            raise ConfigurationError("HTTP server options out of range")
        object.__setattr__(self, "bound_headers",
                           tuple(sorted({h.lower() for h in self.bound_headers})))
        object.__setattr__(self, "response_headers",
                           tuple(sorted({h.lower() for h in self.response_headers})))


@dataclass(frozen=True)
class Reply:
    """A complete HTTP response the adapter sends as is (handshake steps and
    the binding's own error replies; never sealed)."""

    status: int
    headers: Headers
    body: bytes = b""


def error_reply(exc: HTTPBindingError) -> Reply:
    """The unsealed reply for a refused request: status, ``Rolewire-Error``
    token, no detail beyond the token."""
    headers: Headers = [(HEADER_ERROR.encode(), exc.code.encode()),
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"cache-control", b"no-store")]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Rolewire"))
    return Reply(exc.status, headers, exc.code.encode() + b"\n")


@dataclass(frozen=True)
class PeerIdentity:
    """Who sent a verified request: the roles the peer proved in its
    handshake (and how), and the session id."""

    roles: frozenset[str]
    role_kinds: frozenset[tuple[int, str]] = frozenset()
    session_id: str = ""

    def has_any(self, roles: Iterable[str]) -> bool:
        return not self.roles.isdisjoint(roles)


@dataclass
class _Entry:
    session: Session
    peer: PeerIdentity
    session_id: bytes
    created: float


@dataclass
class _Pending:
    responder: Responder
    started: float


@dataclass(frozen=True)
class RequestVerified:
    """The first record opened and its bound metadata matched: ``target`` is
    the real target (from inside the record when the outer path was the
    fixed hidden-target path) and ``content_type`` the real content type."""

    peer: PeerIdentity
    method: bytes
    target: bytes
    content_type: bytes
    exchange: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class BodyData:
    """A verified piece of the request body; ``final`` on the last one."""

    data: bytes
    final: bool


class ServerEndpoint:
    """Sessions and half-open handshakes of one server (see module doc).

    Args:
        config: the handshake configuration (roles, policy).
        options: :class:`ServerOptions`.
    """

    def __init__(self, config: HandshakeConfig, options: ServerOptions | None = None) -> None:
        self.config = config
        self.options = options or ServerOptions()
        self._sessions: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self._pending: collections.OrderedDict[bytes, _Pending] = collections.OrderedDict()
        #: Counters for metrics and tests.
        self.stats: collections.Counter[str] = collections.Counter()

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # -- handshake -------------------------------------------------------------
    def handshake(self, session_header: bytes | None, content_type: bytes | None, body: bytes,
                  *, now: float, peer: Hashable = None) -> Reply:
        """One handshake POST: feed its body (whole handshake messages) to the
        handshake under ``session_header`` (starting one if needed); the
        reply carries the responder's next messages, or a Reject with the
        status of its reason (``Rolewire-Reject: <code>``)."""
        sid = decode_session_id(session_header)
        if sid is None or content_type is None or \
                content_type.split(b";")[0].strip().lower() != CONTENT_TYPE_HANDSHAKE.encode():
            return error_reply(MalformedBody("not a handshake message"))
        if len(body) > 2 * self.config.max_message_size:
            return error_reply(BodyTooLarge("handshake message too large"))
        self._sweep_pending(now)
        if sid in self._sessions:
            return error_reply(SessionIdInUse("session id in use"))
        pending = self._pending.get(sid)
        if pending is None:
            if len(self._pending) >= self.options.max_pending_handshakes:
                self.stats["handshakes_busy"] += 1
                return self._reject_reply(sid, int(RejectReason.BUSY), busy_reject())
            pending = _Pending(Responder(self.config, peer=peer), now)
            self._pending[sid] = pending
        responder = pending.responder
        responder.receive_data(body)
        out = bytearray()
        while True:
            event = responder.next_event()
            out += responder.data_to_send()
            if event is NEED_DATA:
                break
            del self._pending[sid]
            if isinstance(event, HandshakeComplete):
                return self._established(sid, event, bytes(out), now)
            assert isinstance(event, HandshakeFailed)
            self.stats["handshakes_failed"] += 1
            # The code the Reject carried (sent_code), never the precise local
            # reason: the peer must not tell "no such role" from "wrong proof".
            sent = event.sent_code if event.sent_code is not None else event.reason_code
            return self._reject_reply(sid, sent, bytes(out))
        if not out:
            # A handshake POST carries whole messages; half a message is an error.
            del self._pending[sid]
            return error_reply(MalformedBody("incomplete handshake message"))
        return Reply(200, self._handshake_headers(sid), bytes(out))

    def _handshake_headers(self, sid: bytes) -> Headers:
        return [(b"content-type", CONTENT_TYPE_HANDSHAKE.encode()),
                (HEADER_SESSION.encode(), encode_session_id(sid).encode()),
                (b"cache-control", b"no-store")]

    def _reject_reply(self, sid: bytes, code: int, body: bytes) -> Reply:
        headers = self._handshake_headers(sid)
        headers.append((HEADER_REJECT.encode(), str(code).encode()))
        return Reply(status_for_reject(code), headers, body)

    def _established(self, sid: bytes, event: HandshakeComplete, body: bytes,
                     now: float) -> Reply:
        peer = PeerIdentity(event.peer_roles,
                            frozenset((int(k), n) for k, n in event.peer_role_kinds),
                            encode_session_id(sid))
        while len(self._sessions) >= self.options.max_sessions:
            _, old = self._sessions.popitem(last=False)
            old.session.close()
            self.stats["sessions_evicted"] += 1
        self._sessions[sid] = _Entry(event.session, peer, sid, now)
        self.stats["handshakes_completed"] += 1
        headers = self._handshake_headers(sid)
        headers.append((HEADER_SESSION_LIFETIME.encode(),
                        str(int(self.options.session_lifetime)).encode()))
        return Reply(200, headers, body)

    def _sweep_pending(self, now: float) -> None:
        limit = self.config.timeout
        while self._pending:
            sid, pending = next(iter(self._pending.items()))
            if now - pending.started <= limit:
                break
            del self._pending[sid]
            pending.responder.check_timeout()  # releases what the handshake holds

    def close_session(self, session_id: bytes) -> None:
        """Forget a session and wipe its keys."""
        entry = self._sessions.pop(session_id, None)
        if entry is not None:
            entry.session.close()

    def close(self) -> None:
        """Wipe every session."""
        for entry in self._sessions.values():
            entry.session.close()
        self._sessions.clear()
        self._pending.clear()

    # -- sealed requests ---------------------------------------------------------
    def begin_request(self, method: bytes, raw_path: bytes, query: bytes, headers: Headers,
                      *, now: float) -> RequestOpener:
        """Checks the outer request (sealed content type, a live session, the
        declared length) and returns the :class:`RequestOpener` for its body.
        Raises an :class:`HTTPBindingError` (see :func:`error_reply`)."""
        content_type = header_value(headers, b"content-type")
        sid = decode_session_id(header_value(headers, HEADER_SESSION.encode()))
        if sid is None or content_type is None or \
                content_type.split(b";")[0].strip().lower() != CONTENT_TYPE_SEALED.encode():
            self.stats["not_sealed"] += 1
            raise NotSealed("the request is not sealed")
        entry = self._sessions.get(sid)
        if entry is None:
            self.stats["session_unknown"] += 1
            raise UnknownSession("unknown session")
        if now - entry.created >= self.options.session_lifetime:
            self.close_session(sid)
            self.stats["session_expired"] += 1
            raise SessionExpired("session expired")
        length = header_value(headers, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise MalformedBody("bad content-length") from None
            if declared > self.options.max_body:
                raise BodyTooLarge("the sealed body exceeds the size limit")
        self._sessions.move_to_end(sid)
        target = raw_path + (b"?" + query if query else b"")
        return RequestOpener(self, entry, method.upper(), target, headers)


class RequestOpener:
    """Opens the records of one sealed request body as they arrive.

    :meth:`feed` returns events: first :class:`RequestVerified` (only after
    the first record opened and its metadata matched), then
    :class:`BodyData`. :meth:`end` is called when the HTTP body ended.
    Every failure raises an :class:`HTTPBindingError`; after one, drop the
    request."""

    def __init__(self, endpoint: ServerEndpoint, entry: _Entry, method: bytes, target: bytes,
                 headers: Headers) -> None:
        self._endpoint = endpoint
        self._entry = entry
        self._method = method
        self._target = target
        self._headers = headers
        session = entry.session
        self._decoder = FrameDecoder(max_record=session.max_plaintext + session.overhead,
                                     max_body=endpoint.options.max_body)
        self._sequence = 0
        self._done = False
        self.exchange = b""
        self.verified: RequestVerified | None = None

    @property
    def done(self) -> bool:
        """The final record was opened."""
        return self._done

    def feed(self, data: bytes) -> list[RequestVerified | BodyData]:
        events: list[RequestVerified | BodyData] = []
        for record in self._decoder.feed(data):
            if self._done:
                raise MalformedBody("data after the final record")
            try:
                plaintext = self._entry.session.open(record)
            except RecordError:
                self._endpoint.stats["records_rejected"] += 1
                raise RecordRejected("a sealed record was rejected") from None
            header, meta, chunk = parse_chunk(plaintext)
            if header.kind != KIND_REQUEST or header.sequence != self._sequence:
                raise RecordRejected("a sealed record is out of place")
            if self._sequence == 0:
                assert meta is not None
                events.append(self._verify(meta, header.exchange))
            elif header.exchange != self.exchange:
                raise RecordRejected("a sealed record of another request")
            self._sequence += 1
            self._done = header.final
            events.append(BodyData(chunk, header.final))
        return events

    def _verify(self, sealed: bytes, exchange: bytes) -> RequestVerified:
        try:
            meta = RequestMeta.parse(sealed)
        except MalformedBody:
            raise RecordRejected("bad bound metadata") from None
        names = {name for name, _ in meta.headers}
        required = {h.encode() for h in self._endpoint.options.bound_headers}
        path = self._target.split(b"?", 1)[0]
        if meta.hidden_target:
            if self._target != HIDDEN_TARGET_PATH.encode() or not meta.target.startswith(b"/"):
                raise RecordRejected("hidden target outside the fixed path")
            target = meta.target
        else:
            if path == HIDDEN_TARGET_PATH.encode():
                raise RecordRejected("the fixed path without a hidden target")
            target = self._target
        content_type = meta.content_type
        expected = RequestMeta(self._method, target, self._entry.session_id, content_type,
                               bound_headers(self._headers, names), meta.hidden_target)
        if not required <= names or not metadata_equal(expected.encode(), sealed):
            self._endpoint.stats["metadata_mismatch"] += 1
            raise RecordRejected("bound metadata does not match the request")
        self.exchange = exchange
        self.verified = RequestVerified(self._entry.peer, meta.method, target, content_type,
                                        exchange)
        return self.verified

    def end(self) -> None:
        """The HTTP body ended: raises :class:`BodyTruncated` if the final
        record never came."""
        if not self._done:
            raise BodyTruncated("the sealed body ended before its final record")

    def response_sealer(self) -> ResponseSealer:
        """The sealer for this request's response (after RequestVerified)."""
        if self.verified is None:
            raise RecordRejected("no verified request to answer")
        return ResponseSealer(self._entry.session, self._entry.session_id, self.exchange,
                              self._endpoint.options)


#: Statuses that allow no body; sealed, they travel as 200.
BODYLESS_STATUSES = frozenset({204, 304})

# Replaced by the sealed body's own framing (content-encoding stays: it is the
# application's, visible, and bindable through ``response_headers``).
_HOP_BY_HOP = {b"content-length", b"content-type", b"transfer-encoding"}


class ResponseSealer:
    """Seals one response: :meth:`start` with the application's status and
    headers returns the outer headers; :meth:`seal` returns framed records."""

    def __init__(self, session: Session, session_id: bytes, exchange: bytes,
                 options: ServerOptions) -> None:
        self._session = session
        self._sid = session_id
        self._exchange = exchange
        self._options = options
        self._meta: bytes | None = None
        self._sequence = 0
        self._finished = False
        self.status = 0
        self.outer_status = 0

    def start(self, status: int, headers: Headers) -> Headers:
        headers = [(k.lower(), v) for k, v in headers]
        content_type = header_value(headers, b"content-type") or b""
        names = [n.encode() for n in self._options.response_headers]
        names.append(HEADER_ERROR.encode())  # a 403 of the role policy is authentic
        present = {k for k, _ in headers}
        meta = ResponseMeta(status, self._sid, content_type,
                            bound_headers(headers, [n for n in names if n in present]))
        self._meta = meta.encode()
        self.status = status
        #: The status on the wire: 204 and 304 allow no body, so they travel
        #: as 200 and the sealed status is the real one (PROTOCOL.md).
        self.outer_status = 200 if status in BODYLESS_STATUSES else status
        outer = [(k, v) for k, v in headers if k not in _HOP_BY_HOP]
        outer.append((b"content-type", CONTENT_TYPE_SEALED.encode()))
        outer.append((HEADER_SESSION.encode(), encode_session_id(self._sid).encode()))
        return outer

    def seal(self, data: bytes, final: bool) -> bytes:
        """Framed records carrying ``data`` (split into chunks); ``final``
        marks the end of the response body."""
        if self._meta is None or self._finished:
            raise RuntimeError("seal() before start() or after the final record")
        size = self._options.chunk_size
        pieces = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        out = []
        for index, piece in enumerate(pieces):
            last = final and index == len(pieces) - 1
            plaintext = encode_chunk(KIND_RESPONSE, self._exchange, self._sequence, last, piece,
                                     self._meta if self._sequence == 0 else None)
            out.append(frame(self._session.seal(plaintext)))
            self._sequence += 1
        self._finished = final
        return b"".join(out)

    def sealed_length(self, data_length: int) -> int:
        """The framed size of a whole response body of ``data_length`` bytes
        sealed in one :meth:`seal` call (for Content-Length)."""
        assert self._meta is not None
        size = self._options.chunk_size
        n = max(1, -(-data_length // size))
        overhead = self._session.overhead + 4 + 22  # record + frame + chunk header
        return data_length + n * overhead + 4 + len(self._meta)
