"""In-band re-handshake: fresh keys for a running session (post-compromise
security; docs/PROTOCOL.md, "Re-handshake").

The key update of the record layer is a one-way hash ratchet: it protects
*earlier* records if a key leaks, not later ones. A re-handshake runs a new
hybrid key exchange and new role proofs *inside* the session (every
handshake message travels in a record sealed under the current keys) and
then switches both directions to the new keys, without losing, duplicating
or reordering a message that was in flight: late records of the old keys
still open during the grace period.

Sans-IO like the rest of the core. The adapter

- passes every opened plaintext to :meth:`Rehandshake.handle` first (it
  returns True for the re-handshake's own control messages, which are not
  application data);
- calls :meth:`Rehandshake.poll` before it sends (the interval triggers:
  by default every hour or every 2^20 records sealed, whichever comes
  first) or :meth:`Rehandshake.start` on demand;
- sends :meth:`Rehandshake.records_to_send` like any other record;
- reads :meth:`Rehandshake.next_event` (:class:`RehandshakeComplete`,
  :class:`RehandshakeFailed`; a failed re-handshake should close the
  connection: the peer could not prove its roles again).

Control message (the plaintext of one record; type 7 of the message layer,
call id 0, empty operation name, so a message-layer parser can tell it from
calls)::

    0x07 | call_id u64 = 0 | op_len u8 = 0 | kind u8 | next_epoch u32 | data

``kind`` 1 FLIGHT carries handshake bytes (``data``: one or more handshake
messages with their own framing); ``next_epoch`` is the epoch at which the
sender's new keys will start (its send epoch + 1 when it began; the same in
every flight of one re-handshake). ``kind`` 2 SWITCH (``data`` empty) is the
first record a side seals under its new keys.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from rolewire.errors import ConfigurationError, ProtocolViolation
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeFailed,
    Initiator,
    Responder,
    parse_late_reject,
)
from rolewire.handshake.messages import MsgType
from rolewire.handshake.suites import HandshakeSuite
from rolewire.protocol.wire import MessageType
from rolewire.record import RecordLayer
from rolewire.session import Session

__all__ = [
    "DEFAULT_REHANDSHAKE_INTERVAL",
    "DEFAULT_REHANDSHAKE_RECORDS",
    "ControlKind",
    "Rehandshake",
    "RehandshakeComplete",
    "RehandshakeFailed",
    "encode_control",
    "parse_control",
]

#: Seconds between re-handshakes (from the last one, or the handshake).
DEFAULT_REHANDSHAKE_INTERVAL = 3600.0
#: Records this side seals under one key generation before a re-handshake.
DEFAULT_REHANDSHAKE_RECORDS = 1 << 20

_PREFIX = struct.pack(">BQB", MessageType.REHANDSHAKE, 0, 0)
_BODY = struct.Struct(">BI")
CONTROL_HEADER_SIZE = len(_PREFIX) + _BODY.size  # 15


class ControlKind:
    """``kind`` of a re-handshake control message."""

    FLIGHT = 1
    SWITCH = 2


def encode_control(kind: int, next_epoch: int, data: bytes = b"") -> bytes:
    """One control message (the plaintext of one record)."""
    return _PREFIX + _BODY.pack(kind, next_epoch) + data


def parse_control(plaintext: bytes) -> tuple[int, int, bytes] | None:
    """``(kind, next_epoch, data)`` of a control message, or None if the
    plaintext is not one (application data). A message of type 7 that is
    not a well-formed control message raises :class:`ProtocolViolation`."""
    if not plaintext or plaintext[0] != MessageType.REHANDSHAKE:
        return None
    if len(plaintext) < CONTROL_HEADER_SIZE or plaintext[: len(_PREFIX)] != _PREFIX:
        raise ProtocolViolation("malformed re-handshake control message")
    kind, next_epoch = _BODY.unpack_from(plaintext, len(_PREFIX))
    data = bytes(plaintext[CONTROL_HEADER_SIZE:])
    if kind == ControlKind.FLIGHT and data:
        return kind, next_epoch, data
    if kind == ControlKind.SWITCH and not data:
        return kind, next_epoch, data
    raise ProtocolViolation("malformed re-handshake control message")


@dataclass(frozen=True)
class RehandshakeComplete:
    """Both directions run on new keys from a fresh key exchange (this side
    seals under them; the peer's first new records may still be on the way).
    ``peer_roles`` are the roles the peer proved *again*; the session's
    ``peer_roles`` are replaced by them."""

    peer_roles: frozenset[str]
    transcript_hash: bytes
    generation: int


@dataclass(frozen=True)
class RehandshakeFailed:
    """The re-handshake failed (``reason``: the handshake reject code); the
    session still runs on the old keys. Close the connection: the peer did
    not prove its roles again."""

    reason: int
    error: Exception
    remote: bool


RehandshakeEvent = RehandshakeComplete | RehandshakeFailed


class Rehandshake:
    """Runs re-handshakes over one :class:`~rolewire.session.Session`.

    Args:
        session: the running session (from the first handshake).
        config: this side's handshake configuration (roles, policy): the
            re-handshake proves and verifies roles exactly like a first
            handshake, with the session's suite only.
        peer: the peer's identity for rate limiting and logs.
        interval: seconds between re-handshakes (default 3600; None: never
            by time).
        max_records: records sealed under one key generation before a
            re-handshake (default 2^20; None: never by count).

    Either side may start one. If both start at once, the one started by the
    side that initiated the *first* handshake wins; the other side answers it.
    """

    def __init__(self, session: Session, config: HandshakeConfig, *, peer: Hashable = None,
                 interval: float | None = DEFAULT_REHANDSHAKE_INTERVAL,
                 max_records: int | None = DEFAULT_REHANDSHAKE_RECORDS) -> None:
        if not isinstance(config, HandshakeConfig):
            raise ConfigurationError("config must be a HandshakeConfig")
        if (interval is not None and interval <= 0) or (
                max_records is not None and max_records < 1):
            raise ConfigurationError("interval must be > 0 and max_records >= 1")
        self.session = session
        self.config = config
        self.peer = peer
        self.interval = interval
        self.max_records = max_records
        self._binding = session.transcript_hash
        self._machine: Initiator | Responder | None = None
        self._peer_next: int | None = None
        #: First epoch of the peer's newest key generation (stale Hellos).
        self._last_peer_first: int | None = None
        self._out: list[bytes] = []
        # A list, not a deque: at most a few events, and one per connection.
        self._events: list[RehandshakeEvent] = []
        self._switch_notice = False

    # -- public API ----------------------------------------------------------
    @property
    def in_progress(self) -> bool:
        """True from the start of a re-handshake until both directions
        switched (or it failed)."""
        return self._machine is not None or self.session.switch_pending

    @property
    def wants_flush(self) -> bool:
        """Records or events are waiting (:meth:`records_to_send`,
        :meth:`next_event`); also right after the session switched to the
        new keys by itself (the SWITCH is due)."""
        return bool(self._out or self._events) or (
            self._switch_notice and not self.session.switch_pending)

    def wanted_before_send(self, now: float) -> bool:
        """``in_progress or due()`` in one call, for a sender whose ``now``
        is the session's clock (the connection's): it runs per batch."""
        return self._machine is not None or self.session.switch_pending or self.due(now)

    def due(self, now: float | None = None) -> bool:
        """True if an interval trigger fired (time or record count).
        ``now``: the session clock's time, if the caller has it."""
        session = self.session
        age = session.generation_age if now is None else now - session.generation_started
        return (
            (self.interval is not None and age >= self.interval)
            or (self.max_records is not None
                and session.records_in_generation >= self.max_records)
        )

    def poll(self) -> None:
        """Start a re-handshake if one is due; fail one that timed out. Call
        it before sending (and from a timer on idle connections)."""
        machine = self._machine
        if machine is not None:
            machine.check_timeout()
            self._drive()
        elif self.due() and not self.in_progress:
            self.start()

    def start(self) -> None:
        """Start a re-handshake now (on demand). Does nothing while one runs."""
        if self.in_progress or self.session.closed:
            return
        self._machine = Initiator(self._handshake_config(), peer=self.peer)
        self._peer_next = None
        self._drive()

    def handle(self, plaintext: bytes) -> bool:
        """Offer an opened plaintext. Returns True if it was a re-handshake
        control message (consumed), False for application data. Raises
        :class:`ProtocolViolation` for a malformed control message or one
        that breaks the re-handshake's rules."""
        control = parse_control(plaintext)
        if control is None:
            self._check_switch()
            return False
        kind, next_epoch, data = control
        if kind == ControlKind.SWITCH:
            # Sealed under the peer's new keys: the session already switched
            # (the record opened in the new generation) or never had them.
            self._check_switch()
            return True
        self._on_flight(next_epoch, data)
        return True

    def records_to_send(self) -> list[bytes]:
        """Sealed control records to send now (in this order)."""
        self._check_switch()
        out, self._out = self._out, []
        return out

    def next_event(self) -> RehandshakeEvent | None:
        """The next :class:`RehandshakeComplete` / :class:`RehandshakeFailed`,
        or None."""
        return self._events.pop(0) if self._events else None

    # -- internals -------------------------------------------------------------
    def _handshake_config(self) -> HandshakeConfig:
        session = self.session
        suite = session.suite
        suites = (suite,) if isinstance(suite, HandshakeSuite) else self.config.suites
        return dataclasses.replace(
            self.config, suites=suites, channel_binding=self._binding,
            session_factory=self._new_session)

    def _new_session(self, **kwargs: Any) -> Session:
        """Session factory for the handshake machine: the new keys, with each
        direction starting at the epoch its sender announced."""
        session = self.session
        assert self._peer_next is not None
        old = session.record_layer
        layer = RecordLayer(
            old.suite, send_key=kwargs["send_key"], send_iv=kwargs["send_iv"],
            recv_key=kwargs["recv_key"], recv_iv=kwargs["recv_iv"],
            epoch=session.announce_next_epoch(), recv_epoch=self._peer_next,
            limits=old.limits, window=old.window, past_epochs=old.max_past_epochs,
            backend=old.backend)
        return Session(layer=layer, peer_roles=frozenset(kwargs["peer_roles"]),
                       suite=kwargs.get("handshake_suite"),
                       transcript_hash=kwargs["transcript_hash"],
                       is_initiator=bool(kwargs["is_initiator"]))

    def _on_flight(self, next_epoch: int, data: bytes) -> None:
        session = self.session
        machine = self._machine
        if data[0] == MsgType.HELLO and not isinstance(machine, Responder):
            if self._last_peer_first is not None and next_epoch <= self._last_peer_first:
                return  # the losing side of a collision that has been settled
            if machine is not None:
                # Both sides started: the first handshake's initiator wins.
                if session.is_initiator:
                    return
                self._machine = None
            if session.switch_pending:
                raise ProtocolViolation("re-handshake started before the last one switched")
            machine = self._machine = Responder(self._handshake_config(), peer=self.peer)
            self._peer_next = None
        elif machine is None:
            self._late_flight(data)
            return
        if self._peer_next is None:
            if next_epoch <= session.recv_epoch:
                raise ProtocolViolation("re-handshake keys must start at a later epoch")
            self._peer_next = next_epoch
        elif next_epoch != self._peer_next:
            raise ProtocolViolation("re-handshake flights announce different epochs")
        machine.receive_data(data)
        self._drive()

    def _late_flight(self, data: bytes) -> None:
        """A flight after our machine finished: only a Reject of our last
        flight (we completed on sending it) is legal."""
        if self.session.switch_pending and data[:1] == bytes((MsgType.REJECT,)):
            error = parse_late_reject(data)
            self.session.discard_generation()
            self._events.append(RehandshakeFailed(error.reason_code, error, remote=True))
            return
        raise ProtocolViolation("unexpected re-handshake flight")

    def _drive(self) -> None:
        machine = self._machine
        if machine is None:
            return
        session = self.session
        while True:
            event = machine.next_event()
            out = machine.data_to_send()
            if out:
                # Flights always travel under the current (old) send keys.
                self._out.append(session.seal(encode_control(
                    ControlKind.FLIGHT, session.announce_next_epoch(), out)))
            if event is NEED_DATA:
                return
            self._machine = None
            if isinstance(event, HandshakeComplete):
                self._complete(event, completed_on_send=bool(out))
            else:
                assert isinstance(event, HandshakeFailed)
                session.discard_generation()
                self._events.append(RehandshakeFailed(event.reason_code, event.error,
                                                      remote=event.remote))
            return

    def _complete(self, event: HandshakeComplete, *, completed_on_send: bool) -> None:
        session = self.session
        assert self._peer_next is not None
        session.install_generation(event.session.record_layer, self._peer_next)
        session.peer_roles = event.peer_roles
        session.peer_role_kinds = frozenset(event.peer_role_kinds)
        self._binding = event.transcript_hash
        self._switch_notice = True
        if not completed_on_send:
            # The peer completed when it sent the flight we just read, so it
            # already opens records under the new keys.
            session.switch_send()
        # Otherwise the peer may still reject our last flight: we keep
        # sealing under the old keys until a record opens under the new ones
        # (its SWITCH), which the session notices by itself.
        self._check_switch()
        self._last_peer_first = self._peer_next
        self._events.append(RehandshakeComplete(
            event.peer_roles, event.transcript_hash,
            session.generation + (1 if session.switch_pending else 0)))

    def _check_switch(self) -> None:
        """Once this side seals under the new keys, the first such record is
        a SWITCH (it starts the peer's grace period for the old keys)."""
        session = self.session
        if self._switch_notice and not session.switch_pending:
            self._switch_notice = False
            self._out.append(session.seal(encode_control(ControlKind.SWITCH,
                                                         session.send_epoch)))
