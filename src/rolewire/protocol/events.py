"""Events a :class:`~rolewire.protocol.connection.Connection` reports from
``next_event()`` (h11 / aioquic style).

Named tuples, not dataclasses: one is built per message received on the hot
path, and a tuple is built in half the time. They are immutable all the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from rolewire.protocol.wire import CallMessage, ErrorCode

if TYPE_CHECKING:
    from rolewire.handshake.suites import HandshakeSuite
    from rolewire.services import CallContext, Operation
    from rolewire.session import Session

__all__ = [
    "CallFailed",
    "CallReceived",
    "CallRefused",
    "Closed",
    "Closing",
    "Event",
    "Failed",
    "HandshakeDone",
    "Notified",
    "NotifiedBatch",
    "OtherMessage",
    "Rehandshaked",
    "ReplyReceived",
]


class HandshakeDone(NamedTuple):
    """The handshake completed: ``session`` carries the records from now on;
    ``peer_roles`` are the roles the peer proved and this side verified."""

    peer_roles: frozenset[str]
    suite: HandshakeSuite
    transcript_hash: bytes
    session: Session


class CallReceived(NamedTuple):
    """An authorized REQUEST: run ``operation``'s handler with ``context``
    and ``body`` (e.g. ``service.invoke(...)``), then answer with
    :meth:`Connection.reply` (``call_id``, ``operation.name``)."""

    call_id: int
    operation: Operation
    context: CallContext
    body: bytes


class Notified(NamedTuple):
    """An authorized NOTIFY: run its handler; nothing is answered."""

    operation: Operation
    context: CallContext
    body: bytes


class NotifiedBatch(NamedTuple):
    """Several authorized NOTIFYs of one operation, received in a row (only
    with ``ConnectionSettings(batch_notifications=True)``): run the handler
    once per body, in order (:meth:`~rolewire.services.Service.invoke_many`)."""

    operation: Operation
    context: CallContext
    bodies: list[bytes]


class CallRefused(NamedTuple):
    """A REQUEST or NOTIFY the core refused itself (not authorized, unknown
    operation, bad call id, or the connection is closing). For a REQUEST the
    ERROR reply (``code``) is already queued; ``limit_reached`` says this
    refusal exhausted the connection's refused-call budget (the core then
    starts a graceful close, see :class:`Closing`)."""

    call_id: int
    operation: str
    code: ErrorCode
    notification: bool
    limit_reached: bool = False


class ReplyReceived(NamedTuple):
    """The RESPONSE to our request ``call_id``."""

    call_id: int
    body: bytes
    metadata: Mapping[str, bytes]


class CallFailed(NamedTuple):
    """Our request ``call_id`` ended without a RESPONSE: an ERROR reply
    (:class:`~rolewire.errors.RemoteCallError` subclass), its timeout
    (:class:`~rolewire.errors.CallTimeout`) or the connection's end
    (:class:`~rolewire.errors.ConnectionClosed` or the connection's
    failure)."""

    call_id: int
    error: BaseException


class OtherMessage(NamedTuple):
    """A well-formed call message the core does not act on itself (today
    ``SIGNED_BATCH``); layers above may."""

    message: CallMessage


class Rehandshaked(NamedTuple):
    """An in-band re-handshake completed (docs/PROTOCOL.md, "Re-handshake"):
    fresh keys in both directions; ``peer_roles`` are the roles the peer
    proved again (the connection authorizes with them from now on);
    ``generation`` counts re-handshakes. A failed re-handshake fails the
    connection (:class:`Failed`)."""

    peer_roles: frozenset[str]
    transcript_hash: bytes
    generation: int


class Closing(NamedTuple):
    """This side started a graceful close on its own (``reason``:
    ``"idle"``, ``"refused_calls"``; or ``"closed_by_peer"`` when the peer
    sent CLOSE): running calls finish, new requests get UNAVAILABLE, then
    CLOSE is sent."""

    reason: str


class Closed(NamedTuple):
    """The connection ended. ``graceful``: both sides sent CLOSE (or the
    handshake never started); otherwise the close deadline passed or the
    transport lost the connection. Send :meth:`Connection.data_to_send`
    once more, then close the transport."""

    reason: str
    graceful: bool


class Failed(NamedTuple):
    """The connection failed: ``error`` is the typed exception (handshake
    failure, protocol violation, too many bad records, liveness timeout...),
    ``reason`` a short name for logs (a Reject reason name where there is
    one), ``remote`` True if the peer reported the failure (a Reject).
    Whatever :meth:`Connection.data_to_send` still returns (a Reject) should
    be written before the transport is closed."""

    error: BaseException
    reason: str
    remote: bool = False


Event = (HandshakeDone | CallReceived | Notified | NotifiedBatch | CallRefused | ReplyReceived
         | CallFailed | OtherMessage | Rehandshaked | Closing | Closed | Failed)
