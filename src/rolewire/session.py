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

The receiver follows automatically when it sees a record of the next epoch
and keeps the previous epoch open for ``grace_period`` seconds so late,
reordered records of the old epoch still open; after that the old key is
wiped (checked on every open and seal).

For a full new handshake instead of the ratchet (fresh ephemeral key
exchange), run a new :class:`~rolewire.handshake.Initiator` over the same
transport and switch to its session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rolewire.errors import AuthenticationFailed, RecordError, RecordTooOld, ReplayDetected
from rolewire.record import Buffer, RecordLayer, RecordLimits, Suite

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Session", "SessionCounters"]


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
        "_layer",
        "_rekey_interval",
        "_send_key_since",
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
                 clock: Callable[[], float] = time.monotonic) -> None:
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
        self._send_key_since = clock()
        self._closed = False

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

    def _before_send(self) -> None:
        self._retire_if_due()
        if self._layer.rekey_due or self._clock() - self._send_key_since >= self._rekey_interval:
            self.rekey()

    def _retire_if_due(self) -> None:
        layer = self._layer
        if layer.has_previous_epoch:
            since = layer.recv_epoch_advanced_at
            if since is None or time.monotonic() - since >= self._grace_period:
                layer.retire_previous_epoch()

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
        self._before_send()
        records = self._layer.seal_many(messages)
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
        subclass (and changes nothing) if it is forged, replayed or too old."""
        self._retire_if_due()
        try:
            plaintext = self._layer.open(record)
        except RecordError as exc:
            self._count_error(exc)
            raise
        self.counters.records_opened += 1
        self.counters.bytes_opened += len(plaintext)
        return plaintext

    def open_many(self, records: Iterable[Buffer]) -> list[bytes | RecordError]:
        """Open several records in one native call: per record the plaintext
        or the (unraised) RecordError."""
        self._retire_if_due()
        results = self._layer.open_many(records)
        for item in results:
            if isinstance(item, RecordError):
                self._count_error(item)
            else:
                self.counters.records_opened += 1
                self.counters.bytes_opened += len(item)
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
                  grace_period: float = 30.0,
                  clock: Callable[[], float] = time.monotonic) -> Session:
        """Builds a session from raw direction keys (used by the handshake;
        hazmat otherwise)."""
        kwargs: dict[str, int] = {}
        if window is not None:
            kwargs["window"] = window
        layer = RecordLayer(suite, send_key=send_key, send_iv=send_iv, recv_key=recv_key,
                            recv_iv=recv_iv, limits=limits, backend=backend, **kwargs)
        return cls(layer=layer, peer_roles=frozenset(peer_roles), suite=handshake_suite,
                   transcript_hash=transcript_hash, is_initiator=is_initiator,
                   rekey_interval=rekey_interval, grace_period=grace_period, clock=clock)
