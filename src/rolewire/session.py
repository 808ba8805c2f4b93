"""A session: the record layer of one completed handshake, plus its peer's
verified roles and the rekeying policy (docs/PROTOCOL.md, "Rekeying").

Sans-IO like the rest of the core: :meth:`Session.seal` returns record bytes,
:meth:`Session.open` takes record bytes; adapters move them.

Rekeying. Before every seal the session checks two triggers and, if either
fired, ratchets its *sending* key one epoch forward (a one-way BLAKE2b
ratchet; the old key is wiped, so records sealed earlier stay safe if the
new key leaks):

- the record layer's soft limit (messages or bytes under the current key);
- the time limit, ``rekey_interval`` seconds (default 600) since the current
  sending key was installed. It is enforced on send, so a sender never seals
  under a key older than the interval (the original implementation checked
  lazily and could be minutes late).

The receiver follows automatically when it sees a record of a later epoch
and keeps up to ``past_epochs`` past epochs open (default 4), each for
``grace_period`` seconds from the moment it was superseded, so late,
reordered records of older epochs still open; after that each old key is
wiped (checked on every open and seal), and the oldest beyond the bound are
wiped at once.

Minimum epoch lifetime. The automatic triggers (soft limit, time limit) do
not rekey before the current sending epoch has lived ``min_epoch_lifetime``
seconds (default 0), and the soft limit waits until it has sealed
``min_epoch_records`` records (default 64):
a receiver keeping ``P`` past epochs then opens any record that is late by
fewer than ``P * min_epoch_records`` records. The hard limit is never
delayed, and an explicit :meth:`Session.rekey` is not either.

For a full new handshake instead of the ratchet (fresh ephemeral key
exchange), run a new :class:`~rolewire.handshake.Initiator` over the same
transport and switch to its session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rolewire.errors import (
    AuthenticationFailed,
    ConfigurationError,
    IntegrityLimitExceeded,
    RecordError,
    RecordTooOld,
    ReplayDetected,
)
from rolewire.record import Buffer, RecordLayer, RecordLimits, Suite

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_MIN_EPOCH_RECORDS", "INTEGRITY_LIMIT", "Session", "SessionCounters"]

#: Records a sending epoch seals at least before an automatic rekey.
DEFAULT_MIN_EPOCH_RECORDS = 64
#: Records that may fail to authenticate before a session closes itself
#: (issue 11 s.4, the idea of RFC 9001's integrity limit: a legitimate peer
#: over a reliable transport sends none; an attacker gets this many
#: forgery attempts per session, far below the AEAD's own bound).
INTEGRITY_LIMIT = 100


@dataclass
class SessionCounters:
    """Monotonic counters of one session (read them for metrics)."""

    records_sealed: int = 0
    records_opened: int = 0
    bytes_sealed: int = 0
    bytes_opened: int = 0
    replays_rejected: int = 0
    auth_failures: int = 0
    other_rejections: int = 0
    rekeys: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Session:
    """The secure channel after a handshake. Usually built by the handshake
    (``HandshakeComplete.session``), not by hand.

    Attributes:
        peer_roles: names of the roles the peer proved and this side verified.
        suite: the negotiated :class:`~rolewire.handshake.HandshakeSuite`.
        transcript_hash: the handshake's final transcript hash (64 bytes),
            equal on both sides; use it for channel binding.
        is_initiator: this side started the handshake.
        counters: :class:`SessionCounters`.
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_grace_period",
        "_integrity_limit",
        "_known_recv_epoch",
        "_layer",
        "_min_epoch_lifetime",
        "_min_epoch_records",
        "_rekey_interval",
        "_send_key_since",
        "_superseded",
        "counters",
        "is_initiator",
        "peer_role_kinds",
        "peer_roles",
        "suite",
        "transcript_hash",
    )

    def __init__(self, *, layer: RecordLayer, peer_roles: frozenset[str], suite: object,
                 transcript_hash: bytes, is_initiator: bool,
                 peer_role_kinds: frozenset[tuple[int, str]] = frozenset(),
                 rekey_interval: float = 600.0, grace_period: float = 30.0,
                 min_epoch_records: int = DEFAULT_MIN_EPOCH_RECORDS,
                 min_epoch_lifetime: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 integrity_limit: int | None = None) -> None:
        if (not isinstance(min_epoch_records, int) or min_epoch_records < 0
                or min_epoch_lifetime < 0 or grace_period < 0 or rekey_interval <= 0):
            raise ConfigurationError("min_epoch_records, min_epoch_lifetime and grace_period "
                                     "must be >= 0, rekey_interval > 0")
        self._layer = layer
        self.peer_roles = frozenset(peer_roles)
        self.peer_role_kinds = frozenset(peer_role_kinds)
        self.suite = suite
        self.transcript_hash = transcript_hash
        self.is_initiator = is_initiator
        self.counters = SessionCounters()
        self._rekey_interval = rekey_interval
        self._grace_period = grace_period
        self._clock = clock
        self._min_epoch_records = min_epoch_records
        self._min_epoch_lifetime = min_epoch_lifetime
        self._send_key_since = clock()
        self._closed = False
        self._integrity_limit = INTEGRITY_LIMIT if integrity_limit is None else integrity_limit
        self._known_recv_epoch = layer.recv_epoch
        # past receive epoch -> clock() when it was superseded (grace start)
        self._superseded: dict[int, float] = {}

    # -- properties ----------------------------------------------------------
    @property
    def record_suite(self) -> Suite:
        """The record AEAD."""
        return self._layer.suite

    @property
    def overhead(self) -> int:
        """Bytes a record adds to its plaintext (header + tag)."""
        return int(self._layer.suite.overhead)

    @property
    def max_plaintext(self) -> int:
        return self._layer.limits.max_plaintext

    @property
    def send_epoch(self) -> int:
        return self._layer.send_epoch

    @property
    def recv_epoch(self) -> int:
        return self._layer.recv_epoch

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def record_layer(self) -> RecordLayer:
        """The underlying record layer (hazmat: sealing through it skips the
        rekeying policy)."""
        return self._layer

    # -- rekeying ------------------------------------------------------------
    def rekey(self) -> int:
        """Ratchet the sending key now; returns the new epoch."""
        epoch = self._layer.update_send_key()
        self._send_key_since = self._clock()
        self.counters.rekeys += 1
        return epoch

    def _before_send(self, count: int = 1) -> None:
        if self._superseded:
            self._retire_if_due()
        layer = self._layer
        sealed = layer.messages_sealed
        if layer.limits.hard_messages - sealed < count:
            # The minimum lifetime never delays past the hard limit.
            if sealed:
                self.rekey()
            return
        age = self._clock() - self._send_key_since
        if age < self._min_epoch_lifetime:
            return
        if age >= self._rekey_interval or (
                layer.rekey_due and sealed >= self._min_epoch_records):
            self.rekey()

    def _note_recv_epoch(self) -> None:
        """After an open: start the grace period of newly superseded epochs."""
        layer = self._layer
        epoch = layer.recv_epoch
        if epoch != self._known_recv_epoch:
            self._known_recv_epoch = epoch
            now = self._clock()
            superseded = self._superseded
            for past in layer.past_epochs:
                superseded.setdefault(past, now)

    def _retire_if_due(self) -> None:
        layer = self._layer
        now = self._clock()
        grace = self._grace_period
        open_epochs = set(layer.past_epochs)
        for epoch, since in list(self._superseded.items()):
            if epoch not in open_epochs:
                del self._superseded[epoch]  # evicted by the bound
            elif now - since >= grace:
                layer.retire_epoch(epoch)
                del self._superseded[epoch]

    # -- records ---------------------------------------------------------------
    def seal(self, plaintext: Buffer) -> bytes:
        """Seal one message (rekeying first if a trigger fired)."""
        self._before_send()
        record = self._layer.seal(plaintext)
        self.counters.records_sealed += 1
        self.counters.bytes_sealed += len(record) - self.overhead
        return record

    def before_send(self) -> None:
        """Apply the rekeying policy now (ratchet if a trigger fired). For
        callers that seal through :attr:`record_layer` directly, as the
        native fast path does (:func:`rolewire.protocol.fastpath.seal_frames`);
        they count what they sealed in :attr:`counters`."""
        self._before_send()

    def seal_many(self, messages: Iterable[Buffer]) -> list[bytes]:
        """Seal several messages in one native call."""
        batch = messages if isinstance(messages, list) else list(messages)
        self._before_send(len(batch))
        records = self._layer.seal_many(batch)
        self.counters.records_sealed += len(records)
        self.counters.bytes_sealed += sum(len(r) for r in records) - len(records) * self.overhead
        return records

    def _count_error(self, exc: RecordError) -> None:
        if isinstance(exc, (ReplayDetected, RecordTooOld)):
            self.counters.replays_rejected += 1
        elif isinstance(exc, AuthenticationFailed):
            self.counters.auth_failures += 1
        else:
            self.counters.other_rejections += 1

    def open(self, record: Buffer) -> bytes:
        """Open one record; raises a :class:`~rolewire.errors.RecordError`
        subclass (and changes nothing) if it is forged, replayed or too old.

        Integrity limit: once more than ``integrity_limit`` records (default
        :data:`INTEGRITY_LIMIT`) have failed to authenticate, the session
        closes itself and this raises
        :class:`~rolewire.errors.IntegrityLimitExceeded`; :meth:`open_many`
        closes it after the batch (check :attr:`closed`)."""
        if self._superseded:
            self._retire_if_due()
        try:
            plaintext = self._layer.open(record)
        except RecordError as exc:
            self._count_error(exc)
            if self.counters.auth_failures > self._integrity_limit:
                self.close()
                raise IntegrityLimitExceeded(
                    "too many records failed to authenticate; the session is closed") from exc
            raise
        self._note_recv_epoch()
        self.counters.records_opened += 1
        self.counters.bytes_opened += len(plaintext)
        return plaintext

    def open_many(self, records: Iterable[Buffer]) -> list[bytes | RecordError]:
        """Open several records in one native call: per record the plaintext
        or the (unraised) RecordError."""
        if self._superseded:
            self._retire_if_due()
        results = self._layer.open_many(records)
        self._note_recv_epoch()
        for item in results:
            if isinstance(item, RecordError):
                self._count_error(item)
            else:
                self.counters.records_opened += 1
                self.counters.bytes_opened += len(item)
        if self.counters.auth_failures > self._integrity_limit:
            self.close()  # later opens and seals raise RecordLayerClosed
        return results

    def close(self) -> None:
        """Wipe every key of the session."""
        if not self._closed:
            self._closed = True
            self._layer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        side = "initiator" if self.is_initiator else "responder"
        return (f"<Session {side} peer_roles={sorted(self.peer_roles)} "
                f"send_epoch={self.send_epoch}>")

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_keys(cls, *, suite: Suite, send_key: bytes, send_iv: bytes, recv_key: bytes,
                  recv_iv: bytes, peer_roles: Iterable[str] = (), handshake_suite: object = None,
                  transcript_hash: bytes = b"", is_initiator: bool = True,
                  limits: RecordLimits | None = None, window: int | None = None,
                  backend: str | None = None, rekey_interval: float = 600.0,
                  grace_period: float = 30.0, past_epochs: int | None = None,
                  min_epoch_records: int = DEFAULT_MIN_EPOCH_RECORDS,
                  min_epoch_lifetime: float = 0.0,
                  clock: Callable[[], float] = time.monotonic) -> Session:
        """Builds a session from raw direction keys (used by the handshake;
        hazmat otherwise)."""
        kwargs: dict[str, int] = {}
        if window is not None:
            kwargs["window"] = window
        if past_epochs is not None:
            kwargs["past_epochs"] = past_epochs
        layer = RecordLayer(suite, send_key=send_key, send_iv=send_iv, recv_key=recv_key,
                            recv_iv=recv_iv, limits=limits, backend=backend, **kwargs)
        return cls(layer=layer, peer_roles=frozenset(peer_roles), suite=handshake_suite,
                   transcript_hash=transcript_hash, is_initiator=is_initiator,
                   rekey_interval=rekey_interval, grace_period=grace_period,
                   min_epoch_records=min_epoch_records,
                   min_epoch_lifetime=min_epoch_lifetime, clock=clock)
