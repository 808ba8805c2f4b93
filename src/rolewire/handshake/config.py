"""Handshake configuration: the roles this process holds, suites, policy,
limits and the session parameters handed to the record layer."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rolewire.errors import ConfigurationError
from rolewire.handshake.messages import FRAME_HEADER_SIZE, MAX_MESSAGE_SIZE
from rolewire.handshake.suites import DEFAULT_SUITES, HandshakeSuite
from rolewire.record import default_backend
from rolewire.roles.base import Role, RoleSet

__all__ = ["HandshakeConfig", "utc_now"]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class HandshakeConfig:
    """Everything one side needs to run handshakes; build it once and share
    it between handshakes (it is immutable).

    Args:
        roles: the roles this process holds or can verify (any iterable of
            :class:`~rolewire.roles.base.Role`; stored as a :class:`RoleSet`).
        suites: enabled suites, most preferred first. The initiator proposes
            them in this order and sends key shares for the first; the
            responder picks the first of *its* list that the initiator
            proposed, preferring one that needs no HelloRetry.
        allow_anonymous: accept a handshake that verified no role of the peer
            (encryption only). Off by default.
        required_peer_roles: names the peer must prove, or the handshake fails.
        abort_on_bad_proof: a role proof that does not verify aborts the
            handshake (default); if False the role is just not attached.
        withhold_certificates: as responder, send our certificate chains and
            signatures only after the initiator authenticated with another
            role in message 3 (in message 4, one more message); by default
            they go in message 2, encrypted against passive observers but
            readable by an unauthenticated initiator.
        timeout: seconds from the start until the handshake must be done.
        clock: monotonic clock (seconds) for timeouts and session rekeying.
        wall_clock: UTC time for certificate validity.
        max_message_size: bound on one handshake message, header included.
        rekey_interval: the session ratchets its send key at least this often
            (seconds, checked on every send).
        grace_period: how long each past receive epoch stays open after
            the peer moved past it.
        record_past_epochs: how many past receive epochs stay open at most
            (RecordLayer ``past_epochs``; None = its default, 4).
        min_epoch_records: an automatic rekey waits until the sending epoch
            sealed this many records (see :class:`~rolewire.session.Session`).
        min_epoch_lifetime: ... and until it lived this many seconds.
        channel_binding: for a re-handshake (:mod:`rolewire.protocol.rehandshake`):
            the transcript hash of the session it re-keys, mixed into the
            new transcript first (docs/PROTOCOL.md, "Re-handshake"); empty
            for a first handshake.
        session_factory: builds the session from the derived keys (the
            keyword arguments of ``Session.from_keys``); None = that. Used
            by the re-handshake to start the new keys at announced epochs.
        record_limits: the sessions' record limits (RecordLayer ``limits``).
        record_window: their replay window size (RecordLayer ``window``).
        record_backend: ``"c"``, ``"pure"`` or None (RecordLayer ``backend``):
            None is the default when the config is built (``"pure"`` under
            ``ROLEWIRE_PURE=1``, else ``"c"``), read once here rather than
            from the environment in every handshake.
    """

    roles: Any = ()
    suites: tuple[HandshakeSuite, ...] = DEFAULT_SUITES
    allow_anonymous: bool = False
    required_peer_roles: frozenset[str] = frozenset()
    abort_on_bad_proof: bool = True
    withhold_certificates: bool = False
    timeout: float = 10.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], datetime.datetime] = utc_now
    max_message_size: int = MAX_MESSAGE_SIZE
    rekey_interval: float = 600.0
    grace_period: float = 30.0
    record_past_epochs: int | None = None
    min_epoch_records: int = 64
    min_epoch_lifetime: float = 0.0
    channel_binding: bytes = b""
    session_factory: Callable[..., Any] | None = None
    record_limits: Any = None
    record_window: int | None = None
    record_backend: str | None = None
    #: record_backend, or the default when the config was built.
    _backend: str = field(default="", init=False, repr=False, compare=False)

    def session_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Session.from_keys`` this config sets
        (rekeying, grace periods, record layer)."""
        return {
            "limits": self.record_limits, "window": self.record_window,
            "backend": self._backend, "rekey_interval": self.rekey_interval,
            "grace_period": self.grace_period, "past_epochs": self.record_past_epochs,
            "min_epoch_records": self.min_epoch_records,
            "min_epoch_lifetime": self.min_epoch_lifetime, "clock": self.clock,
        }

    def __post_init__(self) -> None:
        roles = self.roles
        if not isinstance(roles, RoleSet):
            if isinstance(roles, Role):
                roles = (roles,)
            roles = RoleSet(roles if isinstance(roles, Iterable) else ())
            object.__setattr__(self, "roles", roles)
        suites = tuple(HandshakeSuite.from_name(s) if isinstance(s, str) else HandshakeSuite(s)
                       for s in self.suites)
        if not suites or len(set(suites)) != len(suites):
            raise ConfigurationError("suites must be a non-empty list without duplicates")
        object.__setattr__(self, "suites", suites)
        object.__setattr__(self, "required_peer_roles", frozenset(self.required_peer_roles))
        object.__setattr__(self, "_backend", self.record_backend or default_backend())
        if self.timeout <= 0 or self.rekey_interval <= 0 or self.grace_period < 0:
            raise ConfigurationError("timeout, rekey_interval must be > 0; grace_period >= 0")
        if not 4096 <= self.max_message_size <= FRAME_HEADER_SIZE + 0xFFFFFF:
            raise ConfigurationError("max_message_size out of range (4096 .. 2^24+3)")
