"""The sans-IO connection over a channel its transport secures (TLS, or
nothing at all on a trusted network): the baselines of
:mod:`rolewire.baselines` drive it.

:class:`TransportSecuredConnection` is a
:class:`~rolewire.protocol.connection.Connection` without rolewire's
handshake and record layer: the transport already authenticated the peer
and protects the bytes, so each frame's payload is a call message in the
clear (``length u32 | kind u8 | call message``, the stream framing of
docs/PROTOCOL.md with plaintext RECORD frames). Everything above the
records is the core's, unchanged: the call codec, dispatch and reply
matching, authorization by the same :class:`~rolewire.services.Service`
(or another :class:`~rolewire.protocol.connection.Authorizer`), the
refused-call budget, call timeouts (:meth:`get_timer` /
:meth:`handle_timer`), liveness probes, the CLOSE exchange and the events.

In place of the handshake there is a **greeting**: the server queues one
HANDSHAKE frame (``greeting``) as soon as it is built, and the client's
connection opens (:class:`~rolewire.protocol.events.HandshakeDone`) when
that frame arrives; if it does not arrive within
``settings.handshake_timeout`` the client fails with
:class:`~rolewire.errors.HandshakeTimeout`. Over TLS 1.3 this matters: the
client finishes its side of the TLS handshake before the server has
checked the client certificate, so without the greeting a refused
certificate would only show on the first call.

The peer's roles are the transport's word: ``peer_roles`` at construction
(mTLS: the roles of the verified client certificate). Credentials that
come per request (a JWT in the call metadata) are checked by the
Authorizer, e.g. through its ``connection_state`` admission hook (see
:class:`rolewire.callstate.ConnectionState`).

There is no in-band re-handshake and no rekey (the transport owns the
keys): :meth:`rehandshake` and :meth:`rekey` raise, and a REHANDSHAKE
message from the peer is a protocol violation.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rolewire.errors import (
    ConfigurationError,
    HandshakeError,
    HandshakeStateError,
    HandshakeTimeout,
    ProtocolViolation,
)
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    RejectReason,
)
from rolewire.protocol.connection import Authorizer, Connection, ConnectionSettings
from rolewire.protocol.wire import FrameKind, encode_frame, encode_records
from rolewire.session import SessionCounters

if TYPE_CHECKING:
    from rolewire.handshake import CookieChecker

__all__ = [
    "DEFAULT_GREETING",
    "TransportSecuredConnection",
    "TransportSecurity",
    "TransportSession",
]

#: The greeting a server sends when none is given.
DEFAULT_GREETING = b"rolewire-transport-secured/1"

# The handshake config the core is built with: nothing of it is used but its
# limits (the greeting's deadline is ``settings.handshake_timeout``).
_CONFIG = HandshakeConfig(timeout=1e9)


@dataclass(frozen=True)
class TransportSecurity:
    """What secures the channel (stands where a handshake suite is reported:
    :attr:`HandshakeDone.suite <rolewire.protocol.events.HandshakeDone>`,
    the ``handshake complete`` log line)."""

    name: str = "tls"

    @property
    def wire_name(self) -> str:
        return self.name


class TransportSession:
    """Stands where a :class:`~rolewire.session.Session` is once the
    connection is open: the peer's roles (as the transport established
    them), the largest call message, and counters of the frames sent and
    received (``records_sealed``/``records_opened``). It holds no keys."""

    send_epoch = 0
    send_key_changes = 0
    recv_epoch = 0
    switch_pending = False

    def __init__(self, peer_roles: frozenset[str], *, max_plaintext: int,
                 transcript_hash: bytes = b"") -> None:
        self.peer_roles = peer_roles
        self.max_plaintext = max_plaintext
        #: Empty unless the transport gives a channel binding.
        self.transcript_hash = transcript_hash
        self.counters = SessionCounters()
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Greeting:
    """The handshake driver the core runs before the connection opens (the
    interface of :class:`~rolewire.handshake.Initiator`: data_to_send,
    receive_data, next_event, check_timeout, finished). The server side
    sends the greeting and is done; the client side is done when the
    greeting arrives."""

    def __init__(self, client: bool, greeting: bytes, complete: HandshakeComplete) -> None:
        self._greeting = greeting
        self._complete = complete
        self._out = b"" if client else greeting
        self._event: HandshakeComplete | HandshakeFailed | None = None if client else complete
        self.finished = not client
        self._taken = False

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def receive_data(self, payload: bytes) -> None:
        if self.finished:
            return
        self.finished = True
        if payload == self._greeting:
            self._event = self._complete
        else:
            self._event = HandshakeFailed(RejectReason.UNEXPECTED_MESSAGE, HandshakeError(
                "the server did not send the expected greeting"), reject_sent=False)

    def check_timeout(self) -> None:
        if not self.finished:
            self.finished = True
            self._event = HandshakeFailed(RejectReason.TIMEOUT, HandshakeTimeout(
                "no greeting from the server in time"), reject_sent=False)

    def next_event(self) -> object:
        if self._event is None:
            return NEED_DATA
        if self._taken:
            raise HandshakeStateError("the greeting is over")
        self._taken = True
        return self._event


class TransportSecuredConnection(Connection):
    """A :class:`~rolewire.protocol.connection.Connection` whose channel
    security comes from the transport (see the module docs). Build it with
    :meth:`client` or :meth:`server`.

    Args:
        service: what authorizes and serves the peer's calls (server side).
        client: the side.
        now: the transport's monotonic time.
        peer_roles: the roles the transport established for the peer
            (server: the client certificate's; client: the server's).
        greeting: the greeting frame's payload (both sides must agree).
        security: what secures the channel (for events and logs).
        transcript_hash: a channel binding from the transport, if any
            (``ConnectionState.transcript_hash``).
        settings: limits and timeouts; ``max_frame`` bounds a frame's
            payload and so the largest call message.
    """

    def __init__(self, service: Authorizer | None = None, *, client: bool, now: float,
                 peer_roles: frozenset[str] = frozenset(), peer: str = "",
                 greeting: bytes = DEFAULT_GREETING,
                 security: TransportSecurity = TransportSecurity(),
                 transcript_hash: bytes = b"", settings: ConnectionSettings | None = None,
                 logger: logging.Logger | None = None) -> None:
        if not greeting:
            raise ConfigurationError("the greeting must not be empty")
        s = settings or ConnectionSettings()
        #: What secures the channel.
        self.security = security
        max_plaintext = s.max_frame or (1 << 20)
        self.transport_session = TransportSession(frozenset(peer_roles),
                                                  max_plaintext=max_plaintext,
                                                  transcript_hash=transcript_hash)
        # (read by _new_handshake, which the base constructor calls). The
        # ignores: TransportSecurity and TransportSession stand where a
        # handshake suite and a Session are (see their docstrings).
        self._greeting = _Greeting(client, bytes(greeting), HandshakeComplete(
            frozenset(peer_roles), security,  # type: ignore[arg-type]
            transcript_hash, self.transport_session))  # type: ignore[arg-type]
        if s.max_frame is None:
            s = dataclasses.replace(s, max_frame=max_plaintext)
        # Frames carry plaintext call messages, not records: never the
        # native receive path (it opens records).
        s = dataclasses.replace(s, fast_receive=False)
        super().__init__(_CONFIG, client=client, now=now, service=service, peer=peer,
                         settings=s, framing="stream", logger=logger)
        if not client:
            self._drive_handshake()  # the server side is open once its greeting is queued

    @classmethod
    def client(cls, *, now: float, peer_roles: frozenset[str] = frozenset(),  # type: ignore[override]
               peer: str = "", greeting: bytes = DEFAULT_GREETING,
               security: TransportSecurity = TransportSecurity(),
               settings: ConnectionSettings | None = None,
               logger: logging.Logger | None = None) -> TransportSecuredConnection:
        """The client's side: it opens when the server's greeting arrives.
        ``peer_roles``: the server's roles as the transport proved them."""
        return cls(client=True, now=now, peer_roles=peer_roles, peer=peer, greeting=greeting,
                   security=security, settings=settings, logger=logger)

    @classmethod
    def server(cls, service: Authorizer, *, now: float,  # type: ignore[override]
               peer_roles: frozenset[str] = frozenset(), peer: str = "",
               greeting: bytes = DEFAULT_GREETING,
               security: TransportSecurity = TransportSecurity(),
               transcript_hash: bytes = b"", settings: ConnectionSettings | None = None,
               logger: logging.Logger | None = None) -> TransportSecuredConnection:
        """The server's side, open at once (its greeting is in
        :meth:`data_to_send`), serving ``service`` to a peer holding
        ``peer_roles``."""
        return cls(service, client=False, now=now, peer_roles=peer_roles, peer=peer,
                   greeting=greeting, security=security, transcript_hash=transcript_hash,
                   settings=settings, logger=logger)

    # -- what differs from the core ------------------------------------------------------
    _PRE_AUTH_TOO_LARGE = "frame larger than a greeting before the greeting"

    def _new_handshake(self, config: HandshakeConfig, peer: object,  # type: ignore[override]
                       cookies: CookieChecker | None, under_load: bool) -> _Greeting:
        return self._greeting

    def _established(self, event: HandshakeComplete) -> None:
        super()._established(event)
        self._rehandshake = None  # the transport owns the keys
        self._confirmed = True    # the greeting confirmed the channel

    def _open(self, records: list[bytes]) -> None:
        # The transport authenticated and decrypted them: each payload is a
        # call message.
        self.transport_session.counters.records_opened += len(records)
        self._last_recv = self._last_activity = self._now
        self._ping_deadline = None
        self._sent_since_recv = False
        self._messages(records)

    def _seal_out(self) -> None:
        messages = self._out
        if not messages:
            return
        self._out = []
        self._out_bytes = 0
        if not self.established:
            return
        # (the frames of rolewire's stream framing, with the messages as
        # they are for payloads)
        data = (encode_frame(FrameKind.RECORD, messages[0]) if len(messages) == 1
                else encode_records(messages))
        self._wire.append(data)
        self._wire_bytes += len(data)
        self.transport_session.counters.records_sealed += len(messages)

    def _rehandshake_message(self, plaintext: bytes) -> bool:
        self._fail(ProtocolViolation("re-handshake message on a transport-secured channel"),
                   "protocol_violation")
        return False

    def rehandshake(self) -> None:
        """Not available: the transport owns the keys."""
        raise ConfigurationError("a transport-secured connection has no in-band re-handshake")

    def rekey(self) -> None:
        """Not available: the transport owns the keys."""
        raise ConfigurationError("a transport-secured connection has no rekey of its own")
