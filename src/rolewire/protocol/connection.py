"""The sans-IO connection: the whole protocol above the record layer in one
object (the h11 / aioquic model).

Theory of operation. A transport owns a socket (or a message bus, or an
in-memory queue) and a clock; the :class:`Connection` owns everything else:

- it drives the handshake (:class:`~rolewire.handshake.Initiator` or
  :class:`~rolewire.handshake.Responder`) and then the
  :class:`~rolewire.session.Session`, framing both (``protocol.wire``);
- it opens received records in batches, counts bad ones against a budget,
  decodes call messages, authorizes requests and notifications against the
  :class:`~rolewire.services.Service` (with the connection's
  :class:`~rolewire.budgets.CallGuard`), answers liveness probes, matches
  replies to our requests, and runs the CLOSE exchange;
- it queues outgoing call messages and seals them in batches;
- it keeps every deadline (handshake, calls, keepalive/liveness, idle,
  close) and reports the earliest through :meth:`get_timer`.

The transport calls :meth:`receive_data` (streams) or
:meth:`receive_message` (message transports) with what arrived, then takes
events from :meth:`next_event` until it returns None, runs handlers for
:class:`~rolewire.protocol.events.CallReceived` and
:class:`~rolewire.protocol.events.Notified`, answers with :meth:`reply`, and
writes :meth:`data_to_send` (or :meth:`messages_to_send`). When
:meth:`get_timer` passes it calls :meth:`handle_timer`. Time is always
passed in (``now``, seconds on a monotonic origin, e.g. ``loop.time()``):
the connection never reads a clock; the handshake and the session it drives
see the same time through the config's ``clock``.

Nothing here does I/O. The connection does not run handlers: it does not
know about event loops or threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import logging
import math
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rolewire.budgets import CallGuard
from rolewire.callstate import ConnectionState
from rolewire.errors import (
    CallTimeout,
    ConfigurationError,
    ConnectionClosed,
    HandshakeError,
    HandshakeStateError,
    HandshakeTimeout,
    MalformedRecord,
    PeerUnresponsive,
    ProtocolViolation,
    RecordError,
    RecordTooLarge,
    ReplayDetected,
    RolewireError,
    ServiceUnavailable,
)
from rolewire.handshake import (
    NEED_DATA,
    CookieChecker,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    Initiator,
    RejectReason,
    Responder,
    busy_reject,
    parse_late_reject,
)
from rolewire.handshake.messages import Reject
from rolewire.protocol.events import (
    CallFailed,
    CallReceived,
    CallRefused,
    Closed,
    Closing,
    Event,
    Failed,
    HandshakeDone,
    Notified,
    NotifiedBatch,
    OtherMessage,
    Rehandshaked,
    ReplyReceived,
)
from rolewire.protocol.fastpath import (
    EPOCH_ADVANCED,
    MSG,
    SLOW,
    FastReceiver,
    OperationTable,
    Received,
    seal_frames,
)
from rolewire.protocol.rehandshake import (
    DEFAULT_REHANDSHAKE_INTERVAL,
    DEFAULT_REHANDSHAKE_RECORDS,
    Rehandshake,
    RehandshakeComplete,
)
from rolewire.protocol.wire import (
    NO_METADATA,
    PING_OPERATION,
    CallDecoder,
    CallMessage,
    ErrorCode,
    FrameDecoder,
    FrameKind,
    MessageType,
    call_header,
    decode_container,
    decode_message,
    decode_packet,
    default_max_frame,
    encode,
    encode_frame,
    encode_message,
    encode_record,
    encode_records,
    error_message,
    remote_error,
)

if TYPE_CHECKING:
    from rolewire.services import CallContext, Operation, Refusal
    from rolewire.session import Session

__all__ = [
    "Authorizer",
    "Connection",
    "ConnectionSettings",
    "busy_frame",
    "reason_name",
    "reject_frame",
]

log = logging.getLogger("rolewire.protocol")
audit_log = logging.getLogger("rolewire.audit")

_CLOSE = encode(CallMessage(MessageType.CLOSE, 0, ""))
_NOTIFY = int(MessageType.NOTIFY)
_REQUEST = int(MessageType.REQUEST)
_RESPONSE = int(MessageType.RESPONSE)
#: The fast-path route of a reply in Connection._fast_messages.
_REPLY = object()
#: Operation names a client connection's fast-path table holds (those of its
#: calls; replies to others are decoded the slow way).
CLIENT_OPERATIONS = 64
_TYPES = {int(t): t for t in MessageType}
#: Average plaintext per message of a fast-path batch from which bodies are
#: copied one by one from its buffer, not sliced from one copy of it.
_LARGE_BODIES = 4096
#: Operation tables of the services connections serve (protocol.fastpath),
#: by id: a Service is a dataclass, so unhashable. Each entry goes when its
#: service does (the weak reference's callback).
_OPERATION_TABLES: dict[int, tuple[weakref.ref[Any], OperationTable]] = {}


def _shared_operation_table(service: object) -> OperationTable | None:
    """The one table of ``service`` (None if it cannot be weakly referenced)."""
    key = id(service)
    found = _OPERATION_TABLES.get(key)
    if found is not None and found[0]() is service:
        return found[1]

    def forget(_ref: weakref.ref[Any], key: int = key) -> None:
        _OPERATION_TABLES.pop(key, None)

    try:
        ref = weakref.ref(service, forget)
    except TypeError:
        return None
    table = OperationTable()
    _OPERATION_TABLES[key] = (ref, table)
    return table


class Authorizer(Protocol):
    """What the connection needs of a :class:`~rolewire.services.Service`
    (a protocol, so that the core does not import the service layer's
    module at run time)."""

    def authorize(self, operation: str, peer_roles: frozenset[str], peer: str = "",
                  guard: CallGuard | None = None,
                  now: float = 0.0) -> Operation | Refusal: ...

    def call_context(self, operation: Operation, peer_roles: frozenset[str], peer: str = "",
                     call_id: int = 0, metadata: Mapping[str, bytes] = NO_METADATA, *,
                     state: ConnectionState | None = None, guard: CallGuard | None = None,
                     now: float = 0.0) -> CallContext | Refusal: ...

    def needs_call_checks(self, operation: Operation) -> bool: ...

    def request_context(self, operation: Operation, peer_roles: frozenset[str], peer: str,
                        call_id: int) -> CallContext: ...


@dataclass(frozen=True)
class ConnectionSettings:
    """Limits and timeouts of one connection (all seconds on the transport's
    monotonic clock). The defaults are the ones :func:`rolewire.aio.connect`
    and :func:`rolewire.aio.serve` use.

    Args:
        handshake_timeout: the whole handshake (also bounded by the
            handshake config's ``timeout``); a stalled peer gets a TIMEOUT
            Reject.
        call_timeout: default deadline of a request (``call(timeout=None)``);
            None: no deadline (liveness still ends a call on a dead path).
        keepalive_interval: client side: with a request outstanding or data
            sent since the peer was last heard, probe the peer (an empty
            REQUEST to the reserved operation ``""``) after this long without
            a record from it. None: no probes. The first data sent after the
            handshake is always followed by a probe: its answer confirms that
            the responder accepted the handshake.
        liveness_timeout: a probe unanswered this long fails the connection
            with :class:`~rolewire.errors.PeerUnresponsive` (the first one,
            confirming the handshake, with
            :class:`~rolewire.errors.HandshakeTimeout` after
            ``handshake_timeout``).
        idle_timeout: server side: no traffic and no call running for this
            long starts a graceful close (None: never).
        close_timeout: a graceful close that takes longer ends the connection
            anyway.
        max_inflight: requests received and not answered yet, past which
            :attr:`Connection.reading_paused` asks the transport to stop
            reading (back-pressure).
        max_bad_records: records that fail to open (forged, replayed, too
            old) before the connection is closed as a protocol violation.
        max_frame: largest frame accepted (default: the config's largest
            record or handshake message).
        call_guard: keyword arguments of the connection's
            :class:`~rolewire.budgets.CallGuard` (refused-call budget).
        coalesce_bytes, max_batch_messages: queued plaintext is sealed (one
            native call) when it reaches either bound.
        rehandshake_interval, rehandshake_records: an in-band re-handshake
            (fresh keys and role proofs, docs/PROTOCOL.md "Re-handshake")
            starts before a send once the sending keys are this old or
            sealed this many records (None: never by that trigger);
            :meth:`Connection.rehandshake` starts one on demand.
        container_bytes: stream framing (ordered transports): consecutive
            queued messages travel in CONTAINER records of at most this much
            plaintext (docs/PROTOCOL.md, "Containers"); 0: one record per
            message. Message framing always uses one record per message.
        fast_receive: stream framing: once the session is open, read chunks
            through the native fast path (:mod:`rolewire.protocol.fastpath`:
            one call splits the frames, opens the records and parses the
            call headers of a whole chunk; its pure-Python twin under
            ``ROLEWIRE_PURE=1``). False: the frame decoder and one open per
            batch, as before the handshake. Same events either way.
        batch_notifications: on the fast path, consecutive authorized
            notifications of one operation in a chunk come as one
            :class:`~rolewire.protocol.events.NotifiedBatch` event instead
            of one :class:`~rolewire.protocol.events.Notified` each (for a
            transport that runs them with
            :meth:`~rolewire.services.Service.invoke_many`).
    """

    handshake_timeout: float = 10.0
    call_timeout: float | None = 60.0
    keepalive_interval: float | None = 30.0
    liveness_timeout: float = 15.0
    idle_timeout: float | None = None
    close_timeout: float = 5.0
    max_inflight: int = 64
    max_bad_records: int = 100
    max_frame: int | None = None
    call_guard: Mapping[str, Any] | None = None
    coalesce_bytes: int = 64 * 1024
    max_batch_messages: int = 4096
    bad_record_log_interval: float = 1.0
    rehandshake_interval: float | None = DEFAULT_REHANDSHAKE_INTERVAL
    rehandshake_records: int | None = DEFAULT_REHANDSHAKE_RECORDS
    container_bytes: int = 16 * 1024
    fast_receive: bool = True
    batch_notifications: bool = False

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "liveness_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0")
        for name in ("call_timeout", "keepalive_interval", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(f"{name} must be > 0 or None")
        if self.container_bytes and self.container_bytes < 18:
            raise ConfigurationError("container_bytes must be 0 or >= 18")
        if self.max_inflight < 1 or self.max_bad_records < 0 or self.max_batch_messages < 1:
            raise ConfigurationError("max_inflight and max_batch_messages must be >= 1")
        CallGuard(**dict(self.call_guard or {}))  # bad settings fail here


def reason_name(code: int) -> str:
    """The name of a Reject reason code (``code-N`` if unknown)."""
    try:
        return RejectReason(code).name
    except ValueError:
        return f"code-{code}"


def busy_frame() -> bytes:
    """The frame a server writes to a connection it will not serve (a BUSY
    Reject), before closing it."""
    return encode_frame(FrameKind.HANDSHAKE, busy_reject())


def reject_frame(reason: RejectReason) -> bytes:
    """The frame of a Reject with ``reason``, for a transport that refuses a
    connection before a :class:`Connection` exists (e.g. no first byte in
    time: TIMEOUT)."""
    return encode_frame(FrameKind.HANDSHAKE, Reject(reason).encode())


_HANDSHAKE, _OPEN, _CLOSED, _FAILED = "handshake", "open", "closed", "failed"


class Connection:
    """One rolewire connection, sans-IO. Build it with :meth:`client` or
    :meth:`server`.

    Attributes:
        session: the :class:`~rolewire.session.Session` once the handshake
            completed (else None).
        peer: a description of the peer for logs (``"host:port"``).
        guard: the :class:`~rolewire.budgets.CallGuard` (refused calls).
        inflight: requests received and not answered yet.
        bad_records: records that failed to open.
    """

    # Slots, not a __dict__: a dict of this many attributes is ~3 KiB per
    # connection (instance key sharing stops at 30 keys); memory per
    # connection is a target (docs/architecture.md).
    __slots__ = (
        "__weakref__", "_allowed", "_bad_logged_at", "_bad_suppressed", "_calls",
        "_close_deadline", "_close_reason", "_close_received", "_close_sent", "_closing",
        "_confirmed", "_container_max", "_deadlines", "_decoder", "_default_deadlines",
        "_driven", "_events", "_fast", "_fast_enabled", "_fast_epoch_check", "_fast_notify",
        "_fast_request", "_hs", "_hs_deadline", "_hs_peer", "_last_activity", "_last_recv",
        "_log", "_max_plaintext", "_next_id", "_notify_contexts", "_notify_heads", "_now",
        "_ops", "_out", "_out_bytes", "_peer_roles", "_pending", "_ping_deadline", "_pings",
        "_pre_auth_frame", "_recv_epoch", "_rehandshake", "_send_epoch", "_send_key_changes",
        "_sent_since_recv", "_service", "_settings", "_started", "_state", "_stream", "_wire",
        "_wire_bytes", "bad_records", "config", "ended", "failure", "guard", "inflight",
        "is_client", "peer", "session", "side", "state",
    )

    #: Why a frame too large for the handshake is refused before it (a
    #: subclass whose opening is not a handshake says what it is instead).
    _PRE_AUTH_TOO_LARGE = "frame larger than the largest handshake message before authentication"

    def __init__(self, config: HandshakeConfig, *, client: bool, now: float,
                 service: Authorizer | None = None, peer: str = "",
                 handshake_peer: object = None, settings: ConnectionSettings | None = None,
                 framing: str = "stream", logger: logging.Logger | None = None,
                 cookies: CookieChecker | None = None, under_load: bool = False) -> None:
        if not isinstance(config, HandshakeConfig):
            raise ConfigurationError("config must be a HandshakeConfig")
        if framing not in ("stream", "message"):
            raise ConfigurationError("framing must be 'stream' or 'message'")
        self._settings = s = settings or ConnectionSettings()
        self._now = now
        self.config = config
        self.is_client = client
        self.side = "initiator" if client else "responder"
        self.peer = peer
        self._service = service
        self._log = logger or log
        self._stream = framing == "stream"
        self._decoder = FrameDecoder(s.max_frame or default_max_frame(config))
        # Before authentication the frame a peer may send is a handshake
        # message: bound partial frames by the largest one (+ length, kind),
        # not by the record limit (issue 11 s.4).
        self._pre_auth_frame = config.max_message_size + 5
        self._state = _HANDSHAKE
        self._started = now
        self._hs_deadline = now + min(s.handshake_timeout, config.timeout)
        # The handshake and its session read the time this connection was given.
        driven = dataclasses.replace(config, clock=self._clock)
        self._driven = driven
        hs_peer = handshake_peer if handshake_peer is not None else peer
        self._hs_peer = hs_peer
        self._rehandshake: Rehandshake | None = None
        self._hs: Initiator | Responder | None = self._new_handshake(
            driven, hs_peer, cookies, under_load)
        self.session: Session | None = None
        self._peer_roles: frozenset[str] = frozenset()
        # A list (a deque holds a 0.5 KiB block even empty): events() hands
        # it over whole; next_event pops from the front (a few at most).
        self._events: list[Event] = []
        self._wire: list[bytes] = []       # frames (or messages) ready to send
        self._out: list[bytes] = []        # plaintexts to seal
        self._out_bytes = 0
        self._wire_bytes = 0
        self._max_plaintext = 0
        self._container_max = 0
        self._calls = CallDecoder()
        # The native receive path (stream framing, open session): made on
        # the first chunk after the handshake, remade after a key switch.
        self._fast: FastReceiver | None = None
        self._fast_enabled = self._stream and s.fast_receive
        self._ops: OperationTable | None = None
        #: operation index -> (operation, context) of notifications whose
        #: authorization and context are cached (the notification fast path).
        self._fast_notify: dict[int, tuple[Operation, CallContext]] = {}
        #: operation index -> operation of requests authorized (cached) that
        #: need no check beyond roles (the request fast path).
        self._fast_request: dict[int, Operation] = {}
        # our requests
        self._next_id = 1
        self._pending: dict[int, str] = {}  # call id -> operation
        # Made by the first call (a deque is ~0.7 KiB; servers never call).
        self._default_deadlines: deque[tuple[float, int]] | None = None
        self._deadlines: list[tuple[float, int]] = []
        self._notify_heads: dict[str, bytes] = {}
        self._pings: set[int] = set()
        self._ping_deadline: float | None = None
        self._confirmed = not client
        self._sent_since_recv = False
        self._last_recv = now
        self._last_activity = now
        # requests of the peer
        self.inflight = 0
        self.guard = CallGuard(**dict(s.call_guard or {}))
        self._allowed: dict[str, Operation] = {}
        #: Per-connection state of the layers above the codec (end-user
        #: token cache, signed-call state), set when the handshake completes.
        self.state: ConnectionState | None = None
        self._notify_contexts: dict[str, CallContext] = {}
        # closing
        self._closing = False
        self._close_sent = False
        self._close_received = False
        self._close_reason = ""
        self._close_deadline: float | None = None
        self.failure: BaseException | None = None
        #: The connection is closed or failed (terminal). An attribute, not a
        #: property: the drivers read it after every flush.
        self.ended = False
        # bad records, rekeys
        self.bad_records = 0
        self._bad_logged_at = -math.inf
        self._bad_suppressed = 0
        self._send_epoch = 0
        self._send_key_changes = 0
        self._recv_epoch = 0
        self._fast_epoch_check = True
        self._flush_handshake()

    # -- construction ----------------------------------------------------------------
    @classmethod
    def client(cls, config: HandshakeConfig, *, now: float, peer: str = "",
               handshake_peer: object = None, settings: ConnectionSettings | None = None,
               framing: str = "stream", logger: logging.Logger | None = None) -> Connection:
        """The initiator's side; its Hello is ready in :meth:`data_to_send`."""
        return cls(config, client=True, now=now, peer=peer, handshake_peer=handshake_peer,
                   settings=settings, framing=framing, logger=logger)

    @classmethod
    def server(cls, config: HandshakeConfig, service: Authorizer, *, now: float,
               peer: str = "", handshake_peer: object = None,
               settings: ConnectionSettings | None = None, framing: str = "stream",
               logger: logging.Logger | None = None, cookies: CookieChecker | None = None,
               under_load: bool = False) -> Connection:
        """The responder's side, serving ``service`` (its
        :meth:`~rolewire.services.Service.authorize` decides every call).
        ``cookies``/``under_load``: the stateless cookie round trip
        (docs/PROTOCOL.md, "Cookie") is demanded when ``under_load``."""
        return cls(config, client=False, now=now, service=service, peer=peer,
                   handshake_peer=handshake_peer, settings=settings, framing=framing,
                   logger=logger, cookies=cookies, under_load=under_load)

    def _clock(self) -> float:
        return self._now

    def _new_handshake(self, config: HandshakeConfig, peer: object,
                       cookies: CookieChecker | None, under_load: bool) -> Initiator | Responder:
        """The handshake this connection drives before it opens. A hook:
        :class:`~rolewire.protocol.transport_secured.TransportSecuredConnection`
        (a channel its transport secures, e.g. TLS) replaces it with the
        transport's greeting."""
        if self.is_client:
            return Initiator(config, peer=peer)
        return Responder(config, peer=peer, cookies=cookies, under_load=under_load)

    # -- state -------------------------------------------------------------------------
    @property
    def settings(self) -> ConnectionSettings:
        return self._settings

    @property
    def handshake_done(self) -> bool:
        """True once the handshake completed (also after the connection ended)."""
        return self.session is not None

    @property
    def established(self) -> bool:
        """The handshake completed and the connection has not ended."""
        return self._state is _OPEN

    @property
    def closing(self) -> bool:
        """A graceful close is under way (or the connection ended)."""
        return self._closing or self._close_sent or self._close_received or self.ended

    @property
    def peer_roles(self) -> frozenset[str]:
        """The roles the peer proved and this side verified."""
        return self._peer_roles

    @property
    def cached_notifications(self) -> frozenset[str]:
        """Operations whose notifications take the fast path on this
        connection: permission and context cached (roles checked once, the
        peer's roles are fixed); never a forbidden one, nor one with
        end-user or signature checks per call."""
        return frozenset(self._notify_contexts)

    @property
    def pending_calls(self) -> int:
        """Our requests without a reply yet."""
        return len(self._pending)

    @property
    def reading_paused(self) -> bool:
        """Stop reading: ``max_inflight`` requests are unanswered, or the
        peer sent CLOSE (nothing more is read)."""
        return self.inflight >= self._settings.max_inflight or self._close_received

    @property
    def wants_flush(self) -> bool:
        """Sealed output is waiting (a batch bound was reached, or handshake
        bytes): write :meth:`data_to_send` now rather than at the end of the
        loop iteration."""
        return bool(self._wire)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not taken by :meth:`data_to_send` yet (plaintext
        not sealed yet plus records sealed and waiting)."""
        return self._out_bytes + self._wire_bytes

    @property
    def has_output(self) -> bool:
        """:meth:`data_to_send` would return something."""
        return bool(self._wire or self._out)

    # -- input ---------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Bytes from a stream transport (any split)."""
        if now is not None:
            self._now = now
        if self._state is _CLOSED or self._state is _FAILED or not data:
            return
        if self._state is _OPEN and self._fast_enabled:
            data = self._receive_fast(data)
            if not data:
                return
        decoder = self._decoder
        try:
            frames = decoder.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc, "protocol_violation")
            return
        if frames:
            self._frames(frames)
        if self._state is _HANDSHAKE and decoder.pending_frame > self._pre_auth_frame:
            # Before authentication only handshake messages may come: refuse
            # a larger frame at its header, before it is buffered.
            self._fail(ProtocolViolation(self._PRE_AUTH_TOO_LARGE), "protocol_violation")

    def receive_message(self, message: bytes, now: float | None = None) -> None:
        """One message of a message transport (``kind u8 | payload``, see
        :func:`~rolewire.protocol.wire.encode_message`)."""
        if now is not None:
            self._now = now
        if self._state is _CLOSED or self._state is _FAILED:
            return
        try:
            frame = decode_message(message)
        except ProtocolViolation as exc:
            self._fail(exc, "protocol_violation")
            return
        self._frames([frame])

    def receive_packet(self, packet: bytes, now: float | None = None) -> None:
        """One message of a message transport that carries whole stream
        frames (``framing="stream"``; e.g. a NATS message with the records
        of one flush, :func:`~rolewire.protocol.wire.decode_packet`).
        Packets are independent: one that does not split into whole frames
        (truncated or padded in transit) is dropped and counted against the
        bad-record budget, and the next packet is read afresh."""
        self.receive_packets((packet,), now)

    def receive_packets(self, packets: Iterable[bytes], now: float | None = None) -> None:
        """Several packets (see :meth:`receive_packet`) at once: their records
        are opened together, with one native call."""
        if now is not None:
            self._now = now
        if self._state is _CLOSED or self._state is _FAILED:
            return
        frames: list[tuple[FrameKind, bytes]] = []
        malformed = 0
        max_frame = self._decoder.max_frame
        for packet in packets:
            try:
                frames += decode_packet(packet, max_frame)
            except ProtocolViolation:
                malformed += 1
        if malformed and self._state is _OPEN:
            self._bad([MalformedRecord("packet does not hold whole frames")] * malformed)
            if self._state is not _OPEN:
                return
        if frames:
            self._frames(frames)

    def connection_lost(self, error: BaseException | None = None,
                        now: float | None = None) -> None:
        """The transport lost the connection (``error``) or the peer closed
        it (None). Pending requests fail; a :class:`Closed` or
        :class:`Failed` event follows."""
        if now is not None:
            self._now = now
        if self.ended:
            return
        if self._state is _HANDSHAKE:
            self._fail(ConnectionClosed("the peer closed the connection during the handshake"),
                       "ConnectionClosed")
            return
        reason = "connection_lost" if error is not None else (self._close_reason or "eof")
        if self._close_received and self._close_sent:
            self._finish(self._close_reason or "closed", graceful=True)
        else:
            self._finish(reason, graceful=False)

    def _frames(self, frames: list[tuple[FrameKind, bytes]]) -> None:
        records: list[bytes] = []
        for kind, payload in frames:
            state = self._state
            if state is _OPEN:
                if kind is FrameKind.RECORD:
                    records.append(payload)
                    continue
                if records:
                    self._open(records)
                    records = []
                    if self._state is not _OPEN:
                        return
                if self.is_client:
                    # A handshake frame after completion: the responder
                    # rejected our last handshake message.
                    rejected = parse_late_reject(payload)
                    code = getattr(rejected, "reason_code", None)
                    self._fail(rejected, reason_name(code) if code is not None
                               else type(rejected).__name__, remote=True)
                else:
                    self._fail(ProtocolViolation(
                        "handshake frame after the handshake completed"), "protocol_violation")
                return
            if state is not _HANDSHAKE:
                return
            if kind is not FrameKind.HANDSHAKE:
                self._fail(ProtocolViolation("record frame before the handshake completed"),
                           "protocol_violation")
                return
            assert self._hs is not None
            self._hs.receive_data(payload)
            self._drive_handshake()
        if records and self._state is _OPEN:
            self._open(records)

    # -- handshake ---------------------------------------------------------------------
    def _flush_handshake(self) -> None:
        hs = self._hs
        if hs is None:
            return
        out = hs.data_to_send()
        if out:
            self._wire.append(encode_frame(FrameKind.HANDSHAKE, out) if self._stream
                              else encode_message(FrameKind.HANDSHAKE, out))

    def _drive_handshake(self) -> None:
        hs = self._hs
        assert hs is not None
        while True:
            try:
                event = hs.next_event()
            except HandshakeStateError:  # ended, and its last event was taken
                return
            self._flush_handshake()
            if event is NEED_DATA:
                return
            if isinstance(event, HandshakeComplete):
                self._established(event)
                return
            if isinstance(event, HandshakeFailed):
                self._fail(event.error, reason_name(event.reason_code), remote=event.remote)
                return

    def _established(self, event: HandshakeComplete) -> None:
        session = event.session
        self.session = session
        self._hs = None
        self._state = _OPEN
        self._peer_roles = session.peer_roles
        service = self._service
        make_state = getattr(service, "connection_state", None)
        self.state = (make_state(session.transcript_hash, session.peer_roles, self.peer)
                      if make_state is not None else ConnectionState(session.transcript_hash))
        self._max_plaintext = session.max_plaintext
        container = self._settings.container_bytes
        self._container_max = min(container, session.max_plaintext) if container else 0
        self._send_epoch = session.send_epoch
        self._send_key_changes = session.send_key_changes
        self._recv_epoch = session.recv_epoch
        s = self._settings
        self._rehandshake = Rehandshake(session, self._driven, peer=self._hs_peer,
                                        interval=s.rehandshake_interval,
                                        max_records=s.rehandshake_records)
        self._last_recv = self._last_activity = self._now
        self._events.append(HandshakeDone(event.peer_roles, event.suite,
                                          event.transcript_hash, session))
        self._log.info("handshake complete", extra={
            "event": "handshake_complete", "peer": self.peer, "side": self.side,
            "suite": event.suite.wire_name, "peer_roles": sorted(event.peer_roles),
            "transcript": event.transcript_hash[:4].hex()})

    # -- records in ----------------------------------------------------------------------
    def _open(self, records: list[bytes]) -> None:
        session = self.session
        assert session is not None
        results: list[bytes | RecordError]
        if len(records) == 1:
            try:
                results = [session.open(records[0])]
            except RecordError as exc:
                results = [exc]
        else:
            results = session.open_many(records)
        good: list[bytes] = []
        errors: list[RecordError] | None = None
        for item in results:
            if item.__class__ is bytes:
                if item[:1] == b"\x08":  # CONTAINER
                    try:
                        good.extend(decode_container(item))
                    except ProtocolViolation as exc:
                        self._fail(exc, "protocol_violation")
                        return
                else:
                    good.append(item)
            elif isinstance(item, RecordError):
                if errors is None:
                    errors = []
                errors.append(item)
            else:
                good.append(bytes(item))
        self._note_recv_epoch(session.recv_epoch)
        if errors is not None:
            self._bad(errors)
            if self._state is not _OPEN:
                return
        if good:
            now = self._now
            self._last_recv = self._last_activity = now
            self._confirmed = True
            self._ping_deadline = None
            self._sent_since_recv = False
            self._messages(good)
        if self._rehandshake is not None and self._rehandshake.wants_flush:
            self._flush_rehandshake()  # e.g. the SWITCH after the first new-key record

    # -- records in: the native fast path ----------------------------------------------
    def _receive_fast(self, data: bytes) -> bytes:
        """Take a chunk through the fast path; returns what is left for the
        frame decoder (nothing, unless two key generations are open: their
        records are routed by epoch, see Session.receive_layer)."""
        session = self.session
        assert session is not None
        layer = session.receive_layer()
        fast = self._fast
        if fast is None or fast.layer is not layer:
            if fast is not None:  # a key switch began or ended: hand its bytes on
                data = fast.take_buffered() + data
                self._fast = fast = None
            if layer is None:
                return data
            data = self._decoder.take_buffered() + data
            fast = self._fast = FastReceiver(layer, self._operation_table(),
                                             max_frame=self._decoder.max_frame,
                                             shared_batch=True)
            self._fast_epoch_check = True  # the epoch may differ from the last one seen
        try:
            batch = fast.feed(data)
        except ProtocolViolation as exc:
            self._fail(exc, "protocol_violation")
            return b""
        except RolewireError as exc:  # RecordLayerClosed
            self._fail(exc, type(exc).__name__)
            return b""
        if batch.records:
            self._opened(session, batch)
        if fast.handshake_pending and self._state is _OPEN:
            frame = fast.take_frame()
            assert frame is not None
            self._frames([frame])  # a late Reject (client) or a violation
        return b""

    def _client_table(self) -> OperationTable:
        ops = self._ops
        if ops is None:
            ops = self._ops = OperationTable(capacity=CLIENT_OPERATIONS)
        return ops

    def _client_operation(self, operation: str) -> None:
        """A client's table holds the names it called: the fast path then
        parses their replies' headers itself (a small table of its own)."""
        ops = self._ops
        if ops is not None and operation in ops:
            return  # (per call: the common case first)
        ops = self._client_table()
        if len(ops) < ops.capacity:
            with contextlib.suppress(ConfigurationError):  # too long: slow path
                ops.add(operation)

    def _operation_table(self) -> OperationTable | None:
        """The service's operation names as a fast-path table (one per
        service, shared by its connections: a table is ~25 KiB of C memory;
        names it cannot hold are decoded the slow way)."""
        ops = self._ops
        if self._service is None:  # a client (see _client_operation)
            return self._client_table()
        operations = getattr(self._service, "operations", None)
        if not operations:
            return ops
        if ops is None:
            ops = _shared_operation_table(self._service)
            if ops is None:  # (not `or`: an empty table is falsy)
                ops = OperationTable()
            self._ops = ops
        if len(ops) < len(operations) and len(ops) < ops.capacity:
            for name in operations:
                with contextlib.suppress(ConfigurationError):  # too long: slow path
                    ops.add(name)
                if len(ops) >= ops.capacity:
                    break
        return ops

    def _opened(self, session: Session, batch: Received) -> None:
        """The records of one fast-path feed opened: account, then dispatch."""
        errors: list[RecordError] | None = None
        if batch.opened != batch.records:
            status = batch.status
            errors = [batch.error(i) for i in range(batch.count) if status[i] < 0]
        session.count_opened(batch.opened, batch.out_used, errors or ())
        # The receive epoch moves only when the feed says so (or on the
        # first feed of a new receiver): not read per chunk.
        if batch.flags & EPOCH_ADVANCED or self._fast_epoch_check:
            self._fast_epoch_check = False
            self._note_recv_epoch(session.recv_epoch)
        if errors:
            self._bad(errors)
            if self._state is not _OPEN:
                return
        if batch.opened:
            self._last_recv = self._last_activity = self._now
            self._confirmed = True
            self._ping_deadline = None
            self._sent_since_recv = False
            try:
                # One request or reply (sequential calls): no batch loop.
                if not (batch.count == 1 and batch.status[0] == MSG
                        and batch.op_index[0] >= 0 and self._single(batch)):
                    self._fast_messages(batch)
            except ProtocolViolation as exc:
                self._fail(exc, "protocol_violation")
                return
        if self._rehandshake is not None and self._rehandshake.wants_flush:
            self._flush_rehandshake()

    def _fast_messages(self, batch: Received) -> None:
        """Dispatch the messages of a batch in order: cached notifications
        straight to events (a run of one operation as one
        :class:`NotifiedBatch` when the settings ask for it), everything else
        as call messages through :meth:`_dispatch`. Raises ProtocolViolation
        for a bad message, after dispatching those before it."""
        count = batch.count
        status, types, op_index = batch.status, batch.types, batch.op_index
        body_off, body_len = batch.body_off, batch.body_len
        view = memoryview(batch.buffer)
        used = batch.out_used
        # Small messages: one copy of the plaintexts (a memoryview slice: a
        # bytearray slice would be a second); the bodies are slices of it.
        # Large ones: each notification body is copied once, straight from
        # the buffer (a bytes() of a view costs ~0.2 us more than a slice,
        # a copy of the whole ~1 us per 16 KiB); `plain` is made only if
        # another message needs it.
        plain = bytes(view[:used]) if used < _LARGE_BODIES * count else None
        state = self.state
        admit = state is not None and state.admit is not None
        ops = self._ops
        names = ops.names if ops is not None else []
        fast_notify = self._fast_notify
        append = self._events.append
        decode = self._calls.decode
        runs = self._settings.batch_notifications
        close_before = self._close_received
        can_notify = (not admit and not (self._closing or close_before)
                      and self._service is not None)
        pending: list[CallMessage] = []
        undecided: set[int] = set()  # not cacheable in this batch: the slow path
        fast_request = self._fast_request
        i = 0
        try:
            while i < count:
                st = status[i]
                if st == MSG:
                    kind = types[i]
                    index = op_index[i]
                    # The fast way this message takes, if any: a cached
                    # notification entry, a request's Operation, or a reply.
                    route: Any = None
                    if index < 0:
                        pass
                    elif kind == _NOTIFY and can_notify:
                        route = fast_notify.get(index)
                        if route is None and index not in undecided:
                            # Not decided yet: this one goes the slow way (in
                            # order), which decides and caches; later ones of
                            # the batch may then take the fast way.
                            at = body_off[i]
                            if plain is None:
                                plain = bytes(view[:used])
                            pending.append(CallMessage(
                                MessageType.NOTIFY, batch.call_ids[i], names[index],
                                plain[at:at + body_len[i]]))
                            if not self._drain_pending(pending, admit, close_before):
                                return
                            pending = []
                            can_notify = not self._closing
                            if self._fast_notify_entry(index, names[index]) is None:
                                undecided.add(index)
                            i += 1
                            continue
                    elif kind == _REQUEST and can_notify and batch.call_ids[i]:
                        route = fast_request.get(index)
                        if route is None:
                            route = self._fast_request_entry(index, names[index])
                    elif kind == _RESPONSE and not admit:
                        route = _REPLY  # (pipelined calls): no CallMessage
                    if route is not None:
                        if pending:  # what came before goes first, in order
                            if not self._drain_pending(pending, admit, close_before):
                                return
                            pending = []
                            can_notify = (not (self._closing or close_before)
                                          and self._service is not None)
                        if kind == _RESPONSE:
                            at = body_off[i]
                            if not self._reply_received(batch.call_ids[i],
                                                        plain[at:at + body_len[i]]
                                                        if plain is not None else
                                                        bytes(view[at:at + body_len[i]])):
                                return
                            i += 1
                            continue
                        if can_notify and kind == _NOTIFY:
                            j = i + 1
                            if runs:
                                while j < count and op_index[j] == index and \
                                        types[j] == _NOTIFY and status[j] == MSG:
                                    j += 1
                            if j - i > 1:
                                append(NotifiedBatch(route[0], route[1], [
                                    plain[at:at + n]
                                    for at, n in zip(body_off[i:j], body_len[i:j])]
                                    if plain is not None else [
                                    bytes(view[at:at + n])
                                    for at, n in zip(body_off[i:j], body_len[i:j])]))
                            else:
                                at = body_off[i]
                                append(Notified(route[0], route[1],
                                                plain[at:at + body_len[i]]
                                                if plain is not None else
                                                bytes(view[at:at + body_len[i]])))
                            i = j
                            continue
                        if can_notify:  # a request
                            at = body_off[i]
                            self._call_received(route, batch.call_ids[i],
                                                plain[at:at + body_len[i]]
                                                if plain is not None else
                                                bytes(view[at:at + body_len[i]]))
                            i += 1
                            continue
                        # The drain began closing: the slow way refuses it.
                    if plain is None:
                        plain = bytes(view[:used])
                    if index >= 0:
                        at = body_off[i]
                        pending.append(CallMessage(_TYPES[kind], batch.call_ids[i], names[index],
                                                   plain[at:at + body_len[i]]))
                    else:
                        pending.append(decode(batch.message_bytes(i)))
                elif st == SLOW:
                    at = body_off[i]
                    if plain is None:
                        plain = bytes(view[:used])
                    plaintext = plain[at:at + body_len[i]]
                    if plaintext[:1] == b"\x08":  # CONTAINER the native parser refused
                        pending.extend(map(decode, decode_container(plaintext)))
                    else:
                        pending.append(decode(plaintext))
                i += 1
        except ProtocolViolation:
            if pending and self._state is _OPEN:
                self._messages_now(pending, admit)
            raise
        if pending:
            self._messages_now(pending, admit)

    def _single(self, batch: Received) -> bool:
        """A chunk of one request or one reply of a known operation (what
        sequential calls bring): handled without the batch loop's set-up.
        False if it is not that simple case (the loop takes it)."""
        state = self.state
        if state is not None and state.admit is not None:
            return False
        kind = batch.types[0]
        call_id = batch.call_ids[0]
        if kind == _RESPONSE:
            at = batch.body_off[0]
            self._reply_received(
                call_id, bytes(memoryview(batch.buffer)[at:at + batch.body_len[0]]))
            return True
        if kind != _REQUEST or not call_id or self._closing or self._close_received:
            return False
        service = self._service
        if service is None:
            return False
        index = batch.op_index[0]
        operation = self._fast_request.get(index)
        if operation is None:
            assert self._ops is not None
            operation = self._fast_request_entry(index, self._ops.names[index])
            if operation is None:
                return False
        at = batch.body_off[0]
        self._call_received(operation, call_id,
                            bytes(memoryview(batch.buffer)[at:at + batch.body_len[0]]))
        return True

    def _call_received(self, operation: Operation, call_id: int, body: bytes) -> None:
        """What :meth:`_request` does for a request of a cached operation
        with no metadata and no check beyond roles (the fast paths)."""
        service = self._service
        assert service is not None
        context = service.request_context(operation, self._peer_roles, self.peer, call_id)
        self.inflight += 1
        self._events.append(CallReceived(call_id, operation, context, body))

    def _drain_pending(self, pending: list[CallMessage], admit: bool,
                       close_before: bool) -> bool:
        """Dispatch the messages queued by :meth:`_fast_messages`; False if
        nothing more of the batch may be read (the connection failed, or the
        peer's CLOSE came)."""
        self._messages_now(pending, admit)
        return self._state is _OPEN and self._close_received is close_before

    def _messages_now(self, messages: list[CallMessage], admit: bool) -> None:
        state = self.state
        if admit:
            assert state is not None and state.admit is not None
            self._dispatch(state.admit(messages))
        else:
            self._dispatch(messages)

    def _fast_request_entry(self, index: int, name: str) -> Operation | None:
        operation = self._allowed.get(name)
        service = self._service
        if operation is None or service is None or service.needs_call_checks(operation):
            return None  # not decided yet, or checked per call: the slow path
        self._fast_request[index] = operation
        return operation

    def _fast_notify_entry(self, index: int, name: str) -> tuple[Operation, CallContext] | None:
        operation = self._allowed.get(name)
        context = self._notify_contexts.get(name)
        if operation is None or context is None:
            return None  # not decided yet: the slow path decides (and caches)
        entry = self._fast_notify[index] = (operation, context)
        return entry

    def _bad(self, errors: list[RecordError]) -> None:
        self.bad_records += len(errors)
        now = self._now
        if now - self._bad_logged_at >= self._settings.bad_record_log_interval:
            self._log.debug("bad records dropped", extra={
                "event": "bad_record", "peer": self.peer, "side": self.side,
                "error": type(errors[0]).__name__,
                "replay": isinstance(errors[0], ReplayDetected),
                "count": len(errors) + self._bad_suppressed, "total": self.bad_records})
            self._bad_logged_at = now
            self._bad_suppressed = 0
        else:
            self._bad_suppressed += len(errors)
        if self.bad_records > self._settings.max_bad_records:
            self._fail(ProtocolViolation("too many bad records on this connection"),
                       "protocol_violation")

    # -- call messages in -------------------------------------------------------------
    def _messages(self, plaintexts: list[bytes]) -> None:
        decode = self._calls.decode
        messages: Iterable[CallMessage] = map(decode, plaintexts)
        state = self.state
        if state is not None and state.admit is not None:
            # A connection-level check (signed calls wait for their batch).
            messages = state.admit(messages)
        try:
            self._dispatch(messages)
        except ProtocolViolation as exc:
            self._fail(exc, "protocol_violation")

    def _dispatch(self, messages: Iterable[CallMessage]) -> None:
        append = self._events.append
        service = self._service
        allowed = self._allowed
        contexts = self._notify_contexts
        notify = MessageType.NOTIFY
        for message in messages:
            # One unpacking instead of four attribute look-ups on the named
            # tuple: this loop runs once per message received.
            kind, _, name, body, metadata = message
            if kind is notify:
                if self._closing or self._close_received or service is None:
                    continue  # a client serves nothing; a closing server runs nothing new
                operation = allowed.get(name)
                if operation is None:
                    operation = self._authorize(message)
                    if operation is None:
                        continue
                context = None if metadata else contexts.get(name)
                if context is None:
                    context = self._context(operation, message)
                    if context is None:
                        continue
                    if not metadata and len(contexts) < 1024 and \
                            not service.needs_call_checks(operation):
                        contexts[name] = context
                append(Notified(operation, context, body))
            elif kind is MessageType.REQUEST:
                self._request(message)
            elif kind is MessageType.RESPONSE or kind is MessageType.ERROR:
                if not self._reply_received(message.call_id, message.body, message):
                    return
            elif kind is MessageType.CLOSE:
                self._peer_close()
                return  # nothing after CLOSE is read
            elif kind is MessageType.REHANDSHAKE:
                # (re-encoded: the control message's bytes are its plaintext)
                if not self._rehandshake_message(encode(message)):
                    return
            else:
                append(OtherMessage(message))

    def _request(self, message: CallMessage) -> None:
        call_id = message.call_id
        name = message.operation
        if name == PING_OPERATION and call_id:
            # Liveness probe: answered at once, never authorized or counted.
            if not self._close_sent:
                self._queue(call_header(MessageType.RESPONSE, call_id, ""))
            return
        if call_id == 0:
            self._refuse(message, ErrorCode.BAD_REQUEST, "a request needs a call id other than 0")
            return
        if self._closing or self._close_received:
            self._refuse(message, ErrorCode.UNAVAILABLE, "the server is closing this connection")
            return
        service = self._service
        if service is None:
            self._refuse(message, ErrorCode.UNKNOWN_OPERATION, "the client serves no operations")
            return
        operation = self._allowed.get(name)
        if operation is None:
            operation = self._authorize(message)
            if operation is None:
                return
        context = self._context(operation, message)
        if context is None:
            return
        self.inflight += 1
        self._events.append(CallReceived(call_id, operation, context, message.body))

    def _authorize(self, message: CallMessage) -> Operation | None:
        """The Operation, or None after refusing the call."""
        service = self._service
        assert service is not None
        result = service.authorize(message.operation, self._peer_roles, self.peer, self.guard,
                                   self._now)
        if isinstance(result, tuple):  # a Refusal
            self._refuse(message, result.code, result.text)
            return None
        if len(self._allowed) < 1024:
            self._allowed[message.operation] = result
        return result

    def _context(self, operation: Operation, message: CallMessage) -> CallContext | None:
        """The handler's context, or None after refusing the call (its
        end-user or signature requirement is not met)."""
        service = self._service
        assert service is not None
        context = service.call_context(operation, self._peer_roles, self.peer,
                                       message.call_id, message.metadata, state=self.state,
                                       guard=self.guard, now=self._now)
        if isinstance(context, tuple):  # a Refusal
            self._refuse(message, context.code, context.text)
            return None
        return context

    def _refuse(self, message: CallMessage, code: ErrorCode, text: str) -> None:
        notification = message.type is MessageType.NOTIFY
        if not notification and not self._close_sent:  # nothing follows our CLOSE
            self._queue(encode(error_message(message.call_id, message.operation, code, text)))
        guard = self.guard
        limit = guard.exhausted and not self._closing and code in (
            ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_OPERATION)
        self._events.append(CallRefused(message.call_id, message.operation, code,
                                        notification, limit))
        if limit:
            audit_log.warning("too many refused calls: closing the connection", extra={
                "event": "refused_calls_limit", "peer": self.peer, "refused": guard.refused})
            self._events.append(Closing("refused_calls"))
            self.begin_close("refused_calls")

    def _reply_received(self, call_id: int, body: bytes,
                        message: CallMessage | None = None) -> bool:
        """Match a reply to our request; False if the connection failed.
        ``message``: the decoded reply, None for a RESPONSE without metadata
        (the fast path: ``body`` is all of it)."""
        if call_id in self._pings:
            self._pings.discard(call_id)
            return True
        if self._pending.pop(call_id, None) is None:
            if self._next_id == 1:
                self._fail(ProtocolViolation("unexpected reply message from the peer"),
                           "protocol_violation")
                return False
            return True  # late reply to a call that timed out or was cancelled
        if message is None:
            self._events.append(ReplyReceived(call_id, body, NO_METADATA))
        elif message.type is MessageType.RESPONSE:
            self._events.append(ReplyReceived(call_id, body, message.metadata))
        else:
            try:
                error = remote_error(message)
            except ProtocolViolation as exc:
                self._fail(exc, "protocol_violation")
                return False
            self._events.append(CallFailed(call_id, error))
        if self._close_received:
            self._check_close()
        return True

    def _peer_close(self) -> None:
        self._close_received = True
        if self._close_deadline is None:  # running calls get close_timeout to finish
            self._close_deadline = self._now + self._settings.close_timeout
        if not self._close_reason:
            self._close_reason = "closed_by_peer" if not self.is_client else "closed"
            if not self.is_client:
                self._events.append(Closing("closed_by_peer"))
        self._check_close()

    # -- re-handshake ----------------------------------------------------------------------
    def rehandshake(self) -> None:
        """Start an in-band re-handshake now (fresh hybrid key exchange and
        role proofs; docs/PROTOCOL.md, "Re-handshake"). Nothing happens if
        one is running. :class:`~rolewire.protocol.events.Rehandshaked`
        reports its completion."""
        if self.session is None or self._rehandshake is None:
            raise HandshakeStateError("the handshake has not completed")
        if self._state is not _OPEN:
            return
        self._seal_out()
        self._rehandshake.start()
        self._flush_rehandshake()

    def _rehandshake_message(self, plaintext: bytes) -> bool:
        """A control message of the re-handshake; False if the connection
        failed."""
        rehandshake = self._rehandshake
        assert rehandshake is not None
        self._seal_out()  # what was queued goes out first, under the current keys
        try:
            rehandshake.handle(plaintext)
        except ProtocolViolation as exc:
            self._fail(exc, "protocol_violation")
            return False
        return self._flush_rehandshake()

    def _flush_rehandshake(self) -> bool:
        """Queue the re-handshake's sealed records, act on its events;
        False if the connection failed."""
        rehandshake = self._rehandshake
        if rehandshake is None or self._state is not _OPEN:
            return self._state is _OPEN
        records = rehandshake.records_to_send()
        if records:
            self._append_records(records)
        while (event := rehandshake.next_event()) is not None:
            if isinstance(event, RehandshakeComplete):
                session = self.session
                assert session is not None
                self._peer_roles = session.peer_roles
                self._allowed.clear()  # authorization decisions used the old roles
                self._notify_contexts.clear()
                self._fast_notify.clear()
                self._fast_request.clear()
                self._events.append(Rehandshaked(event.peer_roles, event.transcript_hash,
                                                 event.generation))
                self._log.info("re-handshake complete", extra={
                    "event": "rehandshake_complete", "peer": self.peer, "side": self.side,
                    "peer_roles": sorted(event.peer_roles), "generation": event.generation,
                    "transcript": event.transcript_hash[:4].hex()})
            else:
                self._fail(event.error, "rehandshake_" + reason_name(event.reason),
                           remote=event.remote)
                return False
        return True

    # -- sending -----------------------------------------------------------------------------
    def check_open(self) -> None:
        """Raise the error a call would get now (the failure, or
        ConnectionClosed when closing or closed); nothing if calls may be
        sent."""
        if self._state is _OPEN and not (self._closing or self._close_sent
                                         or self._close_received):
            return
        if self.failure is not None:
            raise self.failure_error()
        if self._state is _HANDSHAKE:
            raise HandshakeStateError("the handshake has not completed")
        raise ConnectionClosed("the channel is closed")

    def failure_error(self) -> RolewireError:
        """The typed error calls get after a failure (ConnectionClosed if the
        cause was not a rolewire error)."""
        exc = self.failure
        if isinstance(exc, RolewireError):
            return exc
        return ConnectionClosed(f"the connection failed: {type(exc).__name__}")

    def _check_size(self, plaintext: bytes) -> None:
        if len(plaintext) > self._max_plaintext:
            raise RecordTooLarge(
                f"message of {len(plaintext)} bytes exceeds the session's maximum record "
                f"plaintext ({self._max_plaintext} bytes)")

    def _queue(self, plaintext: bytes) -> None:
        self._out.append(plaintext)
        self._out_bytes += len(plaintext)
        if (self._out_bytes >= self._settings.coalesce_bytes
                or len(self._out) >= self._settings.max_batch_messages):
            self._seal_out()

    def _note_send(self) -> None:
        self._sent_since_recv = True
        if not self._confirmed and not self._pings and self._settings.keepalive_interval:
            # The first data after the handshake: confirm that the responder
            # accepted our last handshake message (a swallowed InitiatorAuth
            # otherwise leaves us sending into the void).
            self._send_ping(self._now + min(self._settings.handshake_timeout,
                                            self.config.timeout))

    def _send_ping(self, deadline: float) -> None:
        call_id = self._next_id
        self._next_id += 1
        self._pings.add(call_id)
        self._ping_deadline = deadline
        self._queue(call_header(MessageType.REQUEST, call_id, PING_OPERATION))

    @property
    def next_call_id(self) -> int:
        """The call id the next :meth:`call` will use (for hooks that stamp
        a call before it is queued)."""
        return self._next_id

    def queue_message(self, plaintext: bytes) -> None:
        """Queue one encoded call message as it is (e.g. a ``SIGNED_BATCH``
        head built by :mod:`rolewire.nonrep`); sealed with the next batch."""
        self.check_open()
        self._check_size(plaintext)
        self._queue(bytes(plaintext))

    def _message(self, kind: MessageType, call_id: int, operation: str, body: bytes,
                 metadata: Mapping[str, bytes] | None) -> bytes:
        if metadata:
            return encode(CallMessage(kind, call_id, operation, bytes(body), metadata))
        if kind is MessageType.NOTIFY:
            head = self._notify_heads.get(operation)
            if head is None:
                head = call_header(MessageType.NOTIFY, 0, operation)
                if len(self._notify_heads) < 256:
                    self._notify_heads[operation] = head
            return head + body
        return call_header(kind, call_id, operation) + body

    def call(self, operation: str, body: bytes = b"", *, timeout: float | None = None,
             metadata: Mapping[str, bytes] | None = None) -> int:
        """Queue a REQUEST; returns its call id. Its outcome is a
        :class:`ReplyReceived` or :class:`CallFailed` event with that id.
        ``timeout`` (seconds; default ``settings.call_timeout``, ``math.inf``
        for none) makes it fail with :class:`~rolewire.errors.CallTimeout`.
        Raises :class:`~rolewire.errors.RecordTooLarge` (nothing queued) or
        the connection's error if it is not open."""
        call_id, message = self._register_call(operation, body, timeout, metadata)
        self._queue(message)
        if self._confirmed:
            self._sent_since_recv = True  # (_note_send's common case)
        else:
            self._note_send()
        return call_id

    def send_call(self, operation: str, body: bytes = b"", *, now: float,
                  timeout: float | None = None) -> tuple[int, bytes]:
        """:meth:`call` (no metadata) and then :meth:`data_to_send` in one:
        the call id and everything to write now (stream framing). When
        nothing else is queued, the request is sealed and framed at once,
        without the queue (what sequential calls do: one call per write).
        Raises like :meth:`call`."""
        self._now = now
        call_id, message = self._register_call(operation, body, timeout, None)
        rehandshake = self._rehandshake
        if (self._out or self._wire or not self._confirmed or not self._stream
                or (rehandshake is not None and rehandshake.wanted_before_send(now))):
            self._queue(message)
            self._note_send()
            return call_id, self.data_to_send()
        self._sent_since_recv = True
        session = self.session
        assert session is not None  # (open: checked by _register_call)
        data = self._seal_single(session, message)
        return call_id, data if data is not None else self.data_to_send()

    def _register_call(self, operation: str, body: bytes, timeout: float | None,
                       metadata: Mapping[str, bytes] | None) -> tuple[int, bytes]:
        """A new request's call id and message, pending with its deadline
        (what :meth:`call` and :meth:`send_call` share; not queued yet)."""
        self.check_open()
        call_id = self._next_id
        message = self._message(MessageType.REQUEST, call_id, operation, body, metadata)
        if len(message) > self._max_plaintext:
            self._check_size(message)  # raises
        self._next_id = call_id + 1
        self._pending[call_id] = operation
        if self._service is None:
            self._client_operation(operation)
        if timeout is None:
            default = self._settings.call_timeout
            if default is not None:
                queue = self._default_deadlines
                if queue is None:
                    queue = self._default_deadlines = deque()
                queue.append((self._now + default, call_id))
        elif timeout != math.inf:
            heapq.heappush(self._deadlines, (self._now + timeout, call_id))
        return call_id, message

    def cancel(self, call_id: int) -> None:
        """Forget our request ``call_id`` (its reply, if one comes, is dropped)."""
        self._pending.pop(call_id, None)

    def notify(self, operation: str, body: bytes = b"", *,
               metadata: Mapping[str, bytes] | None = None) -> None:
        """Queue a NOTIFY (one-way). Raises like :meth:`call`."""
        self.check_open()
        message = self._message(MessageType.NOTIFY, 0, operation, body, metadata)
        if len(message) > self._max_plaintext:
            self._check_size(message)
        self._queue(message)
        self._note_send()

    def notify_many(self, operation: str, bodies: Iterable[bytes], *,
                    metadata: Mapping[str, bytes] | None = None,
                    sink: Callable[[bytes], object] | None = None) -> None:
        """Queue many NOTIFYs of one operation, all or nothing (every size is
        checked first); sealed in batches.

        ``sink`` (stream framing): called with the frames to write, in
        order, each time a batch is sealed (what :meth:`data_to_send` would
        return then), e.g. a transport's ``write``. A large burst is then
        never held whole, as messages or as records: each batch's buffers
        are freed (and reused by the next) at once. Same bytes, same
        batches as without it; what is left queued leaves with the next
        :meth:`data_to_send`."""
        self.check_open()
        if metadata:
            messages: list[bytes] | tuple[bytes, ...] = [
                self._message(MessageType.NOTIFY, 0, operation, body, metadata)
                for body in bodies]
            head = b""
        else:
            # Messages are built batch by batch below (head + body): a burst
            # of 16 KiB bodies as whole messages at once is megabytes of
            # fresh memory, page faults on every page (measured: a quarter
            # of the sender's CPU).
            head = self._message(MessageType.NOTIFY, 0, operation, b"", None)
            messages = bodies if isinstance(bodies, (list, tuple)) else list(bodies)
        limit = self._max_plaintext - len(head)
        for message in messages:
            if len(message) > limit:
                self._check_size(head + message)
        if not messages:
            return
        if sink is not None and self._stream:
            if self._wire:  # sealed before: first, in order
                sink(self._take_wire())
        else:
            sink = None
        out = self._out
        coalesce = self._settings.coalesce_bytes
        batch = self._settings.max_batch_messages
        for message in messages:
            if head:
                message = head + message
            out.append(message)
            self._out_bytes += len(message)
            if self._out_bytes >= coalesce or len(out) >= batch:
                self._seal_out()
                out = self._out
                if sink is not None and self._wire:
                    sink(self._take_wire())
        self._note_send()

    def reply(self, call_id: int, operation: str, result: bytes | Refusal,
              now: float | None = None) -> None:
        """Answer the peer's request ``call_id`` (from a :class:`CallReceived`):
        ``result`` is the body, or a :class:`~rolewire.services.Refusal`
        (what :meth:`~rolewire.services.Service.invoke` returns for a failed
        handler) for an ERROR reply. A reply too large for one record is
        replaced by a HANDLER_FAILED error."""
        if now is not None:
            self._now = now
        self.inflight -= 1
        self._last_activity = self._now
        if self._state is not _OPEN or self._close_sent:
            return
        if isinstance(result, (bytes, bytearray, memoryview)):
            message = call_header(MessageType.RESPONSE, call_id, operation) + result
            if len(message) > self._max_plaintext:
                message = encode(error_message(call_id, operation, ErrorCode.HANDLER_FAILED,
                                               "the reply exceeds the maximum record size"))
        else:
            message = encode(error_message(call_id, operation, result.code, result.text))
        self._queue(message)
        if self._closing or self._close_received:
            self._check_close()

    def rekey(self) -> None:
        """Ratchet our sending key now (the next record uses the new epoch)."""
        if self.session is None:
            raise HandshakeStateError("the handshake has not completed")
        self._seal_out()
        self.session.rekey()

    def _seal_out(self) -> None:
        messages = self._out
        if not messages:
            return
        self._out = []
        self._out_bytes = 0
        session = self.session
        if self._state is not _OPEN or session is None:
            return
        rehandshake = self._rehandshake
        if rehandshake is not None and rehandshake.wanted_before_send(self._now):
            rehandshake.poll()
            if not self._flush_rehandshake():
                return
        if len(messages) == 1:  # the batch call's setup costs more than it saves
            data = self._seal_single(session, messages[0])
            if data is not None:
                self._wire.append(data)
                self._wire_bytes += len(data)
            return
        try:
            if self._stream and self._container_max:
                # Ordered transport: one native call seals the messages into
                # CONTAINER records, straight into the frames written
                # (protocol.fastpath; docs/PROTOCOL.md, "Containers").
                # Containers make fewer records; the policy sees the most.
                session.before_send(len(messages))
                data, sealed, _ = seal_frames(session.record_layer, messages,
                                              self._container_max)
                session.count_sealed(sealed, sum(map(len, messages)))
                self._wire.append(data)
                self._wire_bytes += len(data)
                records = None
            else:
                records = session.seal_many(messages)
        except RolewireError as exc:  # KeyExhausted, RecordLayerClosed
            self._fail(exc, type(exc).__name__)
            return
        if records is not None:
            self._append_records(records)
        if session.send_key_changes != self._send_key_changes:
            self._sent_under_new_key(session)

    def _seal_single(self, session: Session, message: bytes) -> bytes | None:
        """One message sealed and framed for the wire (not queued), or None
        if the connection failed (the key is used up or the layer closed).
        For :meth:`_seal_out` and :meth:`send_call`, after their checks."""
        try:
            record = session.seal(message)
        except RolewireError as exc:  # KeyExhausted, RecordLayerClosed
            self._fail(exc, type(exc).__name__)
            return None
        if session.send_key_changes != self._send_key_changes:
            self._sent_under_new_key(session)
        return (encode_record(record) if self._stream
                else encode_message(FrameKind.RECORD, record))

    def _sent_under_new_key(self, session: Session) -> None:
        # Not send_epoch per batch: send_key_changes is one attribute read.
        self._send_key_changes = session.send_key_changes
        epoch = session.send_epoch
        if epoch != self._send_epoch:
            self._send_epoch = epoch
            self._log_rekey("send", epoch)

    def _append_records(self, records: list[bytes]) -> None:
        """Sealed records, framed for the transport, queued to be written
        (counted in ``_wire_bytes``, as everything in ``_wire`` is)."""
        if self._stream:
            data = encode_records(records)
            self._wire.append(data)
            self._wire_bytes += len(data)
        else:
            framed = [encode_message(FrameKind.RECORD, record) for record in records]
            self._wire.extend(framed)
            self._wire_bytes += sum(map(len, framed))

    def _note_recv_epoch(self, epoch: int) -> None:
        if epoch != self._recv_epoch:
            self._recv_epoch = epoch
            self._log_rekey("receive", epoch)

    def _log_rekey(self, direction: str, epoch: int) -> None:
        self._log.info("rekey", extra={"event": "rekey", "peer": self.peer, "side": self.side,
                                       "direction": direction, "epoch": epoch})

    # -- output ---------------------------------------------------------------------------
    def data_to_send(self, now: float | None = None) -> bytes:
        """Everything to write to a stream now (frames), sealing what is
        queued; possibly empty."""
        if now is not None:
            self._now = now
        if self._out:
            self._seal_out()
        return self._take_wire() if self._wire else b""

    def _take_wire(self) -> bytes:
        """The frames sealed so far (not what is still queued), taken."""
        wire = self._wire
        self._wire = []
        self._wire_bytes = 0
        return wire[0] if len(wire) == 1 else b"".join(wire)

    def messages_to_send(self, now: float | None = None) -> list[bytes]:
        """For a message transport (``framing="message"``): the messages to
        send now, in order (``kind u8 | payload`` each)."""
        if now is not None:
            self._now = now
        if self._out:
            self._seal_out()
        wire, self._wire = self._wire, []
        self._wire_bytes = 0
        return wire

    # -- events -------------------------------------------------------------------------
    def next_event(self) -> Event | None:
        """The next event, or None when there is none until more input (or
        a timer)."""
        events = self._events
        return events.pop(0) if events else None

    def events(self) -> list[Event]:
        """All pending events at once (what repeated :meth:`next_event`
        would return)."""
        events = self._events
        self._events = []
        return events

    # -- closing -------------------------------------------------------------------------
    def close(self, now: float | None = None, timeout: float | None = None) -> None:
        """Close gracefully from our side: CLOSE goes out after everything
        queued; replies to our pending requests are still accepted; the
        connection is :class:`Closed` when the peer's CLOSE arrived (or
        after ``timeout``, default ``settings.close_timeout``). Idempotent.
        Before the handshake completed it just ends the connection."""
        if now is not None:
            self._now = now
        if self.ended:
            return
        if self._state is _HANDSHAKE:
            self._finish("closed", graceful=True)
            return
        if not self._close_reason:
            self._close_reason = "closed"
        self._closing = True
        if self._close_deadline is None:
            self._close_deadline = self._now + (timeout if timeout is not None
                                                else self._settings.close_timeout)
        if not self._close_sent:
            self._close_sent = True
            self._queue(_CLOSE)
        self._check_close()

    def begin_close(self, reason: str, now: float | None = None) -> None:
        """Start a graceful close as a server does (``reason`` for logs):
        requests already running finish and are answered, new ones get
        UNAVAILABLE, then CLOSE is sent; the connection ends when the peer
        closes too, or after ``settings.close_timeout``."""
        if now is not None:
            self._now = now
        if self.ended or self._closing:
            return
        if self._state is _HANDSHAKE:
            self._finish(reason, graceful=True)
            return
        self._closing = True
        if not self._close_reason:
            self._close_reason = reason
        self._close_deadline = self._now + self._settings.close_timeout
        self._check_close()

    def abort(self, error: BaseException | None = None, reason: str = "aborted") -> None:
        """End the connection at once (pending requests fail). With
        ``error`` it is a :class:`Failed`, else a non-graceful
        :class:`Closed`."""
        if self.ended:
            return
        if error is not None:
            self._fail(error, reason)
        else:
            self._out = []
            self._finish(reason, graceful=False)

    def _check_close(self) -> None:
        if self._state is not _OPEN:
            return
        if self.inflight > 0:
            return
        if self._close_received:
            if self._pending:
                # The peer answers every request it ran before its CLOSE and
                # runs nothing after it: these were not run.
                append = self._events.append
                for call_id, operation in self._pending.items():
                    append(CallFailed(call_id, ServiceUnavailable(
                        "the peer closed the connection; the request was not run",
                        operation=operation, code=ErrorCode.UNAVAILABLE)))
                self._pending.clear()
            if not self._close_sent:
                self._close_sent = True
                self._queue(_CLOSE)
            self._finish(self._close_reason or "closed", graceful=True)
        elif self._closing and not self._close_sent:
            self._close_sent = True
            self._queue(_CLOSE)

    def _fail_pending(self, error: BaseException) -> None:
        if self._pending:
            append = self._events.append
            for call_id in self._pending:
                append(CallFailed(call_id, error))
            self._pending.clear()
        if self._default_deadlines is not None:
            self._default_deadlines.clear()
        self._deadlines.clear()

    def _finish(self, reason: str, *, graceful: bool) -> None:
        """The end: seal what is queued (a final CLOSE), wipe the keys."""
        if self.ended:
            return
        if self._out and self.session is not None:
            self._seal_out()
            if self.ended:
                return
        self._state = _CLOSED
        self.ended = True
        self._fail_pending(ConnectionClosed("the channel closed before the reply arrived"))
        self._events.append(Closed(reason, graceful))
        self._ended(reason)

    def _fail(self, error: BaseException, reason: str, *, remote: bool = False) -> None:
        if self.ended:
            return
        handshaking = self._state is _HANDSHAKE
        self._state = _FAILED
        self.ended = True
        self.failure = error
        self._out = []
        self._out_bytes = 0
        self._fail_pending(self.failure_error())
        self._events.append(Failed(error, reason, remote))
        if handshaking:
            self._log.info("handshake failed", extra={
                "event": "handshake_failed", "peer": self.peer, "side": self.side,
                "reason": reason, "remote": remote, "error": type(error).__name__})
            self._hs = None
            return
        if isinstance(error, HandshakeError):
            self._log.info("handshake failed", extra={
                "event": "handshake_failed", "peer": self.peer, "side": self.side,
                "reason": reason, "remote": remote, "error": type(error).__name__})
        elif isinstance(error, ProtocolViolation):
            self._log.warning("protocol violation", extra={
                "event": "protocol_violation", "peer": self.peer, "side": self.side,
                "error": str(error)})
        self._ended(reason)

    def _ended(self, reason: str) -> None:
        session = self.session
        if session is None:
            return
        c = session.counters
        if self.guard.suppressed_total:
            audit_log.warning("audit lines suppressed", extra={
                "event": "audit_suppressed", "peer": self.peer,
                "suppressed": self.guard.suppressed_total, "refused": self.guard.refused})
        self._log.info("session closed", extra={
            "event": "session_closed", "peer": self.peer, "side": self.side,
            "reason": reason, "duration": round(self._now - self._started, 3),
            "records_sealed": c.records_sealed, "records_opened": c.records_opened,
            "bad_records": self.bad_records, "rekeys": c.rekeys})
        session.close()

    # -- timers -----------------------------------------------------------------------------
    def _earliest_call_deadline(self) -> float | None:
        pending = self._pending
        queue = self._default_deadlines
        while queue and queue[0][1] not in pending:
            queue.popleft()
        heap = self._deadlines
        while heap and heap[0][1] not in pending:
            heapq.heappop(heap)
        if queue and heap:
            return min(queue[0][0], heap[0][0])
        if queue:
            return queue[0][0]
        return heap[0][0] if heap else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (same clock as
        ``now``), or None."""
        state = self._state
        if state is _HANDSHAKE:
            return self._hs_deadline
        if state is not _OPEN:
            return None
        s = self._settings
        # The earliest of the deadlines that apply (per flush: no list).
        when = self._close_deadline
        if self._pending:
            deadline = self._earliest_call_deadline()
            if deadline is not None and (when is None or deadline < when):
                when = deadline
        deadline = self._ping_deadline
        if deadline is None and self.is_client and s.keepalive_interval is not None and (
                self._pending or self._sent_since_recv):
            deadline = self._last_recv + s.keepalive_interval
        if deadline is not None and (when is None or deadline < when):
            when = deadline
        if (not self.is_client and s.idle_timeout is not None and not self._closing
                and self.inflight == 0):
            deadline = self._last_activity + s.idle_timeout
            if when is None or deadline < when:
                when = deadline
        return when

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed by ``now``."""
        self._now = now
        state = self._state
        if state is _HANDSHAKE:
            if now >= self._hs_deadline:
                hs = self._hs
                assert hs is not None
                hs.check_timeout()
                if hs.finished:
                    self._drive_handshake()
                    return
                # The connection's limit is shorter than the config's: reject
                # ourselves.
                self._wire.append(encode_frame(FrameKind.HANDSHAKE,
                                               Reject(RejectReason.TIMEOUT).encode())
                                  if self._stream else
                                  encode_message(FrameKind.HANDSHAKE,
                                                 Reject(RejectReason.TIMEOUT).encode()))
                self._fail(HandshakeTimeout("the handshake did not finish in time"),
                           RejectReason.TIMEOUT.name)
            return
        if state is not _OPEN:
            return
        s = self._settings
        if self._close_deadline is not None and now >= self._close_deadline:
            self._finish(self._close_reason or "closed", graceful=False)
            return
        if self._pending:
            self._expire_calls(now)
        rehandshake = self._rehandshake
        if rehandshake is not None and rehandshake.in_progress:
            rehandshake.poll()  # its handshake timeout
            if not self._flush_rehandshake():
                return
        if self._ping_deadline is not None:
            if now >= self._ping_deadline:
                if not self._confirmed:
                    self._fail(HandshakeTimeout(
                        "the responder never confirmed the handshake (no record arrived)"),
                        "unconfirmed")
                else:
                    self._fail(PeerUnresponsive(
                        f"no answer from the peer for {s.liveness_timeout:g} s"), "unresponsive")
                return
        elif self.is_client and s.keepalive_interval is not None and (
                self._pending or self._sent_since_recv) and (
                now >= self._last_recv + s.keepalive_interval):
            self._send_ping(now + s.liveness_timeout)
        if (not self.is_client and s.idle_timeout is not None and not self._closing
                and self.inflight == 0 and now >= self._last_activity + s.idle_timeout):
            self._log.info("idle timeout", extra={
                "event": "idle_timeout", "peer": self.peer,
                "idle": round(now - self._last_activity, 3)})
            self._events.append(Closing("idle"))
            self.begin_close("idle")

    def _expire_calls(self, now: float) -> None:
        pending = self._pending
        expired: list[int] = []
        queue = self._default_deadlines
        while queue and (queue[0][1] not in pending or queue[0][0] <= now):
            _, call_id = queue.popleft()
            if call_id in pending:
                expired.append(call_id)
        heap = self._deadlines
        while heap and (heap[0][1] not in pending or heap[0][0] <= now):
            _, call_id = heapq.heappop(heap)
            if call_id in pending:
                expired.append(call_id)
        for call_id in expired:
            if pending.pop(call_id, None) is not None:
                self._events.append(CallFailed(call_id, CallTimeout(
                    "no reply within the call's timeout")))
        if expired and self._close_received:
            self._check_close()

    def __repr__(self) -> str:
        return (f"<Connection {self.side} {self._state} peer={self.peer!r} "
                f"peer_roles={sorted(self._peer_roles)} pending={len(self._pending)}>")

