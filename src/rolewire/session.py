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
    KeyExhausted,
    RecordError,
    RecordLayerClosed,
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
#: The record limits of a session built without any: immutable, so one
#: instance serves every session (building and checking a RecordLimits per
#: record layer cost ~4 us, two layers per handshake).
_DEFAULT_LIMITS = RecordLimits()


class _Generation:
    """Receive keys of one (re)handshake: records of epochs from
    ``first_epoch`` on open here (newer generations take higher epochs)."""

    __slots__ = ("advances", "first_epoch", "known_epoch", "layer", "retire_at", "used")

    def __init__(self, first_epoch: int, layer: RecordLayer, *, used: bool = True) -> None:
        self.first_epoch = first_epoch
        self.layer = layer
        self.known_epoch = layer.recv_epoch
        #: The layer's recv_epoch_advances when last looked at (cheap
        #: test for "did the epoch move?" on the hot path).
        self.advances = layer.recv_epoch_advances
        self.retire_at: float | None = None
        #: A record opened here (for a pending generation: not yet).
        self.used = used


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
        generation_started: session-clock time the sending keys came from a
            (re)handshake (read-only; ``generation_age`` counts from it).
        generation_base: ``counters.records_sealed`` at that moment
            (read-only; ``records_in_generation`` counts from it).
        send_key_changes: how often the sending key changed (rekeys and
            re-handshake switches; read-only).
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_generation",
        "_gens",
        "_grace_period",
        "_integrity_limit",
        "_layer",
        "_min_epoch_lifetime",
        "_min_epoch_records",
        "_pending_send",
        "_quiet_bytes",
        "_quiet_records",
        "_quiet_until",
        "_rekey_interval",
        "_send_cap",
        "_send_key_since",
        "_superseded",
        "counters",
        "generation_base",
        "generation_started",
        "is_initiator",
        "peer_role_kinds",
        "peer_roles",
        "send_key_changes",
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
        # past receive epoch -> clock() when it was superseded (grace start);
        # epochs are unique across key generations of one direction
        self._superseded: dict[int, float] = {}
        # Receive key generations, newest first (one until a re-handshake).
        self._gens: list[_Generation] = [_Generation(layer.recv_epoch, layer)]
        # Re-handshake state (rolewire.protocol.rehandshake drives it).
        self._generation = 0
        self.generation_started = self._send_key_since
        # counters.records_sealed when the sending keys came from a
        # (re)handshake (callers sealing through record_layer count there too)
        self.generation_base = 0
        self._pending_send: RecordLayer | None = None
        self._send_cap: int | None = None
        # The rekeying policy's quiet region (see _set_quiet): while
        # counters.records_sealed < _quiet_records, counters.bytes_sealed <
        # _quiet_bytes and clock() < _quiet_until, seal() needs no check.
        # _quiet_records = 0: check at the next seal.
        self._quiet_records = 0
        self._quiet_bytes = 0
        self._quiet_until = 0.0
        #: How often the sending key changed (rekeys and re-handshake
        #: switches): a sender compares it instead of reading send_epoch.
        self.send_key_changes = 0

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
        """Newest receive epoch of the newest key generation that opened a
        record (or the first one)."""
        for gen in self._gens:
            if gen.used or gen is self._gens[-1]:
                return gen.layer.recv_epoch
        return self._gens[-1].layer.recv_epoch  # pragma: no cover

    @property
    def generation(self) -> int:
        """How many re-handshakes replaced this session's sending keys."""
        return self._generation

    @property
    def records_in_generation(self) -> int:
        """Records sealed since the sending keys came from a (re)handshake."""
        return self.counters.records_sealed - self.generation_base

    @property
    def generation_age(self) -> float:
        """Seconds (session clock) since the sending keys came from a
        (re)handshake."""
        return self._clock() - self.generation_started

    @property
    def switch_pending(self) -> bool:
        """True while new keys from a re-handshake are installed for
        receiving but this side still seals under the old ones."""
        return self._pending_send is not None

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
        """Ratchet the sending key now; returns the new epoch. While a
        re-handshake announced the epoch its new keys start at, the old keys
        are not ratcheted up to it (the call returns the current epoch)."""
        if self._send_cap is not None and self._layer.send_epoch + 1 >= self._send_cap:
            return self._layer.send_epoch
        epoch = self._layer.update_send_key()
        self._send_key_since = self._clock()
        self.counters.rekeys += 1
        self.send_key_changes += 1
        self._quiet_records = 0
        return epoch

    def _before_send(self, count: int = 1) -> None:
        if self._superseded or len(self._gens) > 1:
            self._retire_if_due()
        layer = self._layer
        sealed = layer.messages_sealed
        limits = layer.limits
        if limits.hard_messages - sealed < count:
            # The minimum lifetime never delays past the hard limit.
            if sealed:
                self.rekey()
            return
        age = self._clock() - self._send_key_since
        soft = sealed >= self._min_epoch_records and (
            sealed >= limits.soft_messages or layer.bytes_sealed >= limits.soft_bytes)
        if age < self._min_epoch_lifetime:
            if count == 1:
                self._set_quiet(sealed, soft)
            return
        # (layer.rekey_due, with the counter read once)
        if age >= self._rekey_interval or soft:
            self.rekey()  # a no-op while a re-handshake holds the epoch
        elif count == 1:
            self._set_quiet(sealed, soft)

    def _set_quiet(self, sealed: int, soft: bool) -> None:
        """After a one-record check that found nothing to do: the region
        where the next ones would find nothing either, a bound on each of
        counts, bytes and time (conservative: leaving it only means the full
        check runs). While grace periods or a second key generation are
        pending, every seal checks (they retire on time)."""
        if self._superseded or len(self._gens) > 1:
            self._quiet_records = 0
            return
        layer = self._layer
        limits = layer.limits
        counters = self.counters
        since = self._send_key_since
        if soft:  # held back by the minimum lifetime only
            records, size = limits.hard_messages, 1 << 62
            until = since + self._min_epoch_lifetime
        else:
            records = min(limits.hard_messages,
                          max(limits.soft_messages, self._min_epoch_records))
            size = limits.soft_bytes
            until = since + max(self._rekey_interval, self._min_epoch_lifetime)
        # counters count every epoch, the layer the current one.
        self._quiet_records = counters.records_sealed - sealed + records
        self._quiet_bytes = counters.bytes_sealed - layer.bytes_sealed + size
        self._quiet_until = until

    def _note_recv_epoch(self, gen: _Generation) -> None:
        """After an open in ``gen``: start the grace period of newly
        superseded epochs; the first record of a newer key generation starts
        the grace period of the older generations (and lets this side seal
        under the new keys, since the peer evidently has them)."""
        layer = gen.layer
        gen.advances = layer.recv_epoch_advances
        epoch = layer.recv_epoch
        if epoch != gen.known_epoch:
            gen.known_epoch = epoch
            now = self._clock()
            superseded = self._superseded
            for past in layer.past_epochs:
                superseded.setdefault(past, now)
            self._quiet_records = 0  # grace periods to run out
        if not gen.used:
            gen.used = True
            now = self._clock()
            for older in self._gens[self._gens.index(gen) + 1:]:
                if older.retire_at is None:
                    older.retire_at = now + self._grace_period
            if layer is self._pending_send:
                self.switch_send()

    def _retire_if_due(self) -> None:
        now = self._clock()
        gens = self._gens
        if len(gens) > 1:
            for gen in gens[1:]:
                if gen.retire_at is not None and now >= gen.retire_at:
                    gens.remove(gen)
                    if gen.layer is not self._layer:
                        gen.layer.close()
        if not self._superseded:
            return
        grace = self._grace_period
        for epoch, since in list(self._superseded.items()):
            layer = self._gen_for(epoch).layer
            if epoch not in layer.past_epochs:
                del self._superseded[epoch]  # evicted by the bound, or retired
            elif now - since >= grace:
                layer.retire_epoch(epoch)
                del self._superseded[epoch]

    def _gen_for(self, epoch: int) -> _Generation:
        for gen in self._gens:
            if epoch >= gen.first_epoch:
                return gen
        return self._gens[-1]

    def _gen_of_record(self, record: Buffer) -> _Generation:
        gens = self._gens
        if len(gens) == 1:
            return gens[0]
        view = memoryview(record).cast("B")
        if len(view) < 6:
            return gens[0]
        return self._gen_for(int.from_bytes(view[2:6], "big"))

    # -- re-handshake (hazmat: driven by rolewire.protocol.rehandshake) ---------------------
    def announce_next_epoch(self) -> int:
        """The epoch this side's next key generation will start at (its
        current send epoch + 1); until the switch the old keys are not
        ratcheted up to it. Idempotent while a re-handshake runs."""
        if self._send_cap is None:
            if self._layer.send_epoch >= 0xFFFFFFFF:
                raise KeyExhausted("no epoch left for a new key generation")
            self._send_cap = self._layer.send_epoch + 1
        return self._send_cap

    def install_generation(self, layer: RecordLayer, peer_first_epoch: int) -> None:
        """Install the keys of a completed re-handshake: ``layer`` opens the
        peer's records from ``peer_first_epoch`` on (older ones still go to
        the old keys, during their grace period); this side keeps sealing
        under the old keys until :meth:`switch_send` (or the first record
        that opens under the new keys)."""
        if self._closed:
            raise RecordLayerClosed("session closed")
        if self._send_cap is None or layer.send_epoch != self._send_cap:
            raise ConfigurationError("the new keys must start at the announced epoch")
        if peer_first_epoch <= self._gens[0].first_epoch:
            raise ConfigurationError("the peer's new keys must start after its old ones")
        if self._pending_send is not None:
            self.discard_generation()
        # At most two generations open for receiving: the oldest goes now.
        while len(self._gens) > 1:
            old = self._gens.pop()
            if old.layer is not self._layer:
                old.layer.close()
        self._gens.insert(0, _Generation(peer_first_epoch, layer, used=False))
        self._quiet_records = 0
        self._pending_send = layer

    def switch_send(self) -> None:
        """Seal under the installed new keys from now on."""
        layer = self._pending_send
        if layer is None:
            return
        old = self._layer
        self._layer = layer
        self._pending_send = None
        self._quiet_records = 0
        self.send_key_changes += 1
        self._send_cap = None
        self._send_key_since = self.generation_started = self._clock()
        self._generation += 1
        self.generation_base = self.counters.records_sealed
        self.counters.extra["rehandshakes"] = self._generation
        if all(gen.layer is not old for gen in self._gens):
            old.close()

    def discard_generation(self) -> None:
        """Forget installed keys whose re-handshake failed (and the announced
        epoch): this side goes on with the old keys."""
        layer = self._pending_send
        if layer is not None:
            self._gens = [gen for gen in self._gens if gen.layer is not layer]
            layer.close()
            self._pending_send = None
        self._send_cap = None

    # -- records ---------------------------------------------------------------
    def seal(self, plaintext: Buffer) -> bytes:
        """Seal one message (rekeying first if a trigger fired)."""
        counters = self.counters
        if (counters.records_sealed >= self._quiet_records
                or counters.bytes_sealed >= self._quiet_bytes
                or self._clock() >= self._quiet_until):
            self._before_send()
        record = self._layer.seal(plaintext)
        counters.records_sealed += 1
        # (= len(record) - overhead; ignore: the Buffer protocol declares no
        # __len__, but every buffer seal() takes has one)
        counters.bytes_sealed += len(plaintext)  # type: ignore[arg-type]
        return record

    def before_send(self, records: int = 1) -> None:
        """Apply the rekeying policy now, for ``records`` records about to be
        sealed (ratchet if a trigger fired). For callers that seal through
        :attr:`record_layer` directly, as the native fast path does
        (:func:`rolewire.protocol.fastpath.seal_frames`); they report what
        they sealed with :meth:`count_sealed`."""
        self._before_send(records)

    def count_sealed(self, records: int, plaintext_bytes: int) -> None:
        """Account for records sealed through :attr:`record_layer` directly
        (see :meth:`before_send`): counters and the generation's record count
        that re-handshake triggers read."""
        self.counters.records_sealed += records
        self.counters.bytes_sealed += plaintext_bytes

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
        gens = self._gens
        if self._superseded or len(gens) > 1:
            self._retire_if_due()
            gens = self._gens
        gen = gens[0] if len(gens) == 1 else self._gen_of_record(record)
        layer = gen.layer
        try:
            plaintext = layer.open(record)
        except RecordError as exc:
            self._count_error(exc)
            if self.counters.auth_failures > self._integrity_limit:
                self.close()
                raise IntegrityLimitExceeded(
                    "too many records failed to authenticate; the session is closed") from exc
            raise
        if layer.recv_epoch_advances != gen.advances or not gen.used:
            self._note_recv_epoch(gen)
        self.counters.records_opened += 1
        self.counters.bytes_opened += len(plaintext)
        return plaintext

    def open_many(self, records: Iterable[Buffer]) -> list[bytes | RecordError]:
        """Open several records in one native call: per record the plaintext
        or the (unraised) RecordError."""
        if self._superseded or len(self._gens) > 1:
            self._retire_if_due()
        if len(self._gens) == 1:
            gen = self._gens[0]
            results = gen.layer.open_many(records)
            self._note_recv_epoch(gen)
        else:
            # During a key switch: one batch per generation, results in the
            # order given.
            batch = list(records)
            groups: dict[int, list[int]] = {}
            by_index = [self._gen_of_record(r) for r in batch]
            for i, gen in enumerate(by_index):
                groups.setdefault(id(gen), []).append(i)
            merged: list[bytes | RecordError] = [b""] * len(batch)
            for gen in self._gens[::-1]:  # oldest first: no early switch
                indices = groups.get(id(gen))
                if not indices:
                    continue
                opened = gen.layer.open_many([batch[i] for i in indices])
                for i, item in zip(indices, opened):
                    merged[i] = item
                if any(not isinstance(item, RecordError) for item in opened):
                    self._note_recv_epoch(gen)
            results = merged
        errors: list[RecordError] = []
        plaintext_bytes = 0
        for item in results:
            if isinstance(item, RecordError):
                errors.append(item)
            else:
                plaintext_bytes += len(item)
        self._account(len(results) - len(errors), plaintext_bytes, errors)
        return results

    def receive_layer(self) -> RecordLayer | None:
        """Hazmat, for the native fast path (:mod:`rolewire.protocol.fastpath`):
        the record layer that opens every incoming record now, or None while
        two key generations are open (records are then routed by epoch: use
        :meth:`open_many`) or once the session is closed. Epochs whose grace
        period ended are retired first, as :meth:`open_many` does. A caller
        that opens through this layer reports what it opened with
        :meth:`count_opened`."""
        if self._superseded or len(self._gens) > 1:
            self._retire_if_due()
        if self._closed or len(self._gens) != 1:
            return None
        return self._gens[0].layer

    def count_opened(self, opened: int, plaintext_bytes: int,
                     errors: Iterable[RecordError] = ()) -> None:
        """Account for records opened through :meth:`receive_layer` directly:
        counters, the receive epoch's grace periods, and the integrity limit
        (the session closes itself past it, as after :meth:`open_many`)."""
        gen = self._gens[0]
        if gen.layer.recv_epoch_advances != gen.advances or not gen.used:
            self._note_recv_epoch(gen)
        if errors:
            self._account(opened, plaintext_bytes, errors)
        else:  # (_account without errors: the integrity count did not move)
            counters = self.counters
            counters.records_opened += opened
            counters.bytes_opened += plaintext_bytes

    def _account(self, opened: int, plaintext_bytes: int,
                 errors: Iterable[RecordError]) -> None:
        """Counters of a batch opened, and the integrity limit: past it the
        session closes itself (later opens and seals raise RecordLayerClosed)."""
        counters = self.counters
        counters.records_opened += opened
        counters.bytes_opened += plaintext_bytes
        for error in errors:
            self._count_error(error)
        if counters.auth_failures > self._integrity_limit:
            self.close()

    def close(self) -> None:
        """Wipe every key of the session."""
        if not self._closed:
            self._closed = True
            self._layer.close()
            for gen in self._gens:
                gen.layer.close()
            self._gens = self._gens[:1]

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
                            recv_iv=recv_iv, limits=_DEFAULT_LIMITS if limits is None else limits,
                            backend=backend, **kwargs)
        return cls(layer=layer, peer_roles=frozenset(peer_roles), suite=handshake_suite,
                   transcript_hash=transcript_hash, is_initiator=is_initiator,
                   rekey_interval=rekey_interval, grace_period=grace_period,
                   min_epoch_records=min_epoch_records,
                   min_epoch_lifetime=min_epoch_lifetime, clock=clock)
