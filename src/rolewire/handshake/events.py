"""Events a handshake reports from ``next_event()`` (h11 style)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rolewire.errors import HandshakeError
from rolewire.handshake.reasons import RejectReason
from rolewire.handshake.suites import HandshakeSuite
from rolewire.roles.base import RoleKind

if TYPE_CHECKING:
    from rolewire.session import Session

__all__ = ["NEED_DATA", "Event", "HandshakeComplete", "HandshakeFailed", "NeedData"]


class NeedData:
    """Sentinel: feed more bytes (``receive_data``) before the next event."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:  # noqa: PYI034 - a singleton, never a subclass
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True)
class HandshakeComplete:
    """Both sides agree on keys and transcript; ``session`` is ready.

    ``peer_roles`` holds the names of the roles the peer proved *and* this
    side could verify; ``peer_role_kinds`` says how each was proven.
    ``transcript_hash`` is the final ``h`` (64 bytes; equal on both sides;
    usable for channel binding). ``dropped_roles`` holds ``(role name,
    reason)`` for roles the peer offered and this side holds but left out of
    this handshake (``"rate_limited"``: the password budget of that role
    refused the run); the other roles proceeded."""

    peer_roles: frozenset[str]
    suite: HandshakeSuite
    transcript_hash: bytes
    session: Session = field(repr=False)
    peer_role_kinds: frozenset[tuple[RoleKind, str]] = frozenset()
    dropped_roles: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class HandshakeFailed:
    """The handshake ended without a session.

    ``remote`` is True when the peer sent a Reject (``reason_code`` is the
    code it sent); otherwise this side detected the failure, ``reason_code``
    is the precise local reason, and (unless ``reject_sent`` is False) a
    Reject carrying ``sent_code`` was queued: every authentication failure
    (no such role, wrong proof, rejected certificate, password budget) goes
    on the wire as AUTH_FAILED. ``error`` is the typed exception describing
    the cause."""

    reason_code: int
    error: HandshakeError
    remote: bool = False
    reject_sent: bool = True
    sent_code: int | None = None
    #: As in :class:`HandshakeComplete` (e.g. a password role the budget
    #: refused, which the peer cannot tell from a wrong password).
    dropped_roles: frozenset[tuple[str, str]] = frozenset()

    @property
    def reason(self) -> RejectReason | None:
        try:
            return RejectReason(self.reason_code)
        except ValueError:
            return None


Event = NeedData | HandshakeComplete | HandshakeFailed
