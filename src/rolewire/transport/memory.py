"""An in-memory, adversarial transport for records (transport independence).

Records are self-contained (docs/PROTOCOL.md, "Records"): a transport may
deliver them late, out of order, twice, or over several paths, and the
session still delivers each message at most once. This module is the
harness that shows it, deterministically (a seeded ``random.Random``):

- :class:`ShufflingChannel` carries the records of one direction. Every
  :meth:`~ShufflingChannel.send` picks a path; each path has its own latency
  and jitter (in *ticks*: one tick per record sent), so records overtake each
  other; with probability ``duplicate`` a copy travels again, possibly on
  another path; with probability ``loss`` a record is dropped (off by
  default). :meth:`~ShufflingChannel.deliver` returns what is due, in
  shuffled order.
- :class:`Relay` is an intermediary's view: it sees every record that passes
  but holds no key, so it can parse only the 14-byte clear header
  (:func:`parse_header`) -- version, suite, epoch, counter.
- :class:`MemoryLink` ties two :class:`~rolewire.session.Session` objects
  together with one channel per direction.

Nothing here does I/O or uses a clock; it is meant for tests, fuzzing and
demonstrations, not for production traffic.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rolewire.errors import RecordError, ReplayDetected
from rolewire.record import RecordHeader, parse_header
from rolewire.session import Session

__all__ = [
    "ConnectionLink",
    "Endpoint",
    "MemoryLink",
    "Path",
    "RecordHeader",
    "Relay",
    "ShufflingChannel",
    "parse_header",
]

@dataclass(frozen=True)
class Path:
    """One route through the network: ``latency`` ticks plus a uniform
    ``jitter`` of 0..jitter ticks per record."""

    latency: int = 0
    jitter: int = 16


class Relay:
    """An intermediary that forwards records it cannot read.

    It records every header it saw (epochs, counters, sizes) and keeps the
    raw records so tests can show that no plaintext appears in them.
    """

    def __init__(self, *, keep_records: bool = True) -> None:
        self.headers: list[RecordHeader] = []
        self.records: list[bytes] = []
        self._keep = keep_records

    def observe(self, record: bytes) -> RecordHeader:
        header = parse_header(record)
        self.headers.append(header)
        if self._keep:
            self.records.append(record)
        return header

    @property
    def epochs(self) -> set[int]:
        return {h.epoch for h in self.headers}

    def contains(self, needle: bytes) -> bool:
        """True if ``needle`` occurs in any record the relay saw."""
        return any(needle in record for record in self.records)


class ShufflingChannel:
    """One direction of an unreliable, reordering, duplicating transport.

    Args:
        seed: seed of the private random generator (runs are reproducible).
        paths: the routes; each record takes one at random.
        duplicate: probability that a record is sent a second time.
        loss: probability that a record (or a duplicate) is dropped.
        relay: an optional :class:`Relay` that sees every record sent.
    """

    def __init__(self, *, seed: int = 0, paths: Iterable[Path] = (Path(),),
                 duplicate: float = 0.0, loss: float = 0.0, relay: Relay | None = None) -> None:
        self.paths = tuple(paths)
        if not self.paths:
            raise ValueError("at least one path is needed")
        if not (0.0 <= duplicate <= 1.0 and 0.0 <= loss < 1.0):
            raise ValueError("duplicate in [0, 1], loss in [0, 1)")
        self.duplicate = duplicate
        self.loss = loss
        self.relay = relay
        self._random = random.Random(seed)
        self._tick = 0
        self._seq = 0
        # (due tick, tie-breaker, record)
        self._in_flight: list[tuple[int, float, bytes]] = []
        self.sent = 0
        self.duplicated = 0
        self.dropped = 0

    @property
    def max_delay(self) -> int:
        """The largest number of ticks a record can be late."""
        return max(p.latency + p.jitter for p in self.paths)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _launch(self, record: bytes) -> None:
        rnd = self._random
        if self.loss and rnd.random() < self.loss:
            self.dropped += 1
            return
        path = self.paths[rnd.randrange(len(self.paths))]
        due = self._tick + path.latency + rnd.randint(0, path.jitter)
        self._in_flight.append((due, rnd.random(), record))

    def send(self, record: bytes) -> None:
        """Hand one record to the network (one tick passes)."""
        if self.relay is not None:
            self.relay.observe(record)
        self.sent += 1
        self._launch(record)
        if self.duplicate and self._random.random() < self.duplicate:
            self.duplicated += 1
            self._launch(record)
        self._tick += 1

    def send_many(self, records: Iterable[bytes]) -> None:
        for record in records:
            self.send(record)

    def deliver(self) -> list[bytes]:
        """Records due by now, in random order among themselves."""
        due = [item for item in self._in_flight if item[0] <= self._tick]
        if not due:
            return []
        self._in_flight = [item for item in self._in_flight if item[0] > self._tick]
        due.sort(key=lambda item: item[1])
        return [item[2] for item in due]

    def drain(self) -> list[bytes]:
        """Everything still in flight, in due order with shuffled ties (the
        network settles)."""
        items = sorted(self._in_flight, key=lambda item: (item[0], item[1]))
        self._in_flight = []
        return [item[2] for item in items]


@dataclass
class Endpoint:
    """One side of a :class:`MemoryLink`: its session, the channel it sends
    on, and what it received."""

    session: Session
    outgoing: ShufflingChannel
    received: list[bytes] = field(default_factory=list)
    rejected: list[RecordError] = field(default_factory=list)

    def send(self, message: bytes) -> None:
        self.outgoing.send(self.session.seal(message))

    def send_many(self, messages: Iterable[bytes]) -> None:
        """Seal a batch with one native call, then hand each record over."""
        self.outgoing.send_many(self.session.seal_many(messages))

    def receive(self, records: Iterable[bytes]) -> list[bytes]:
        """Open records with one native call; keeps the plaintexts and the
        rejections (duplicates come back as ReplayDetected)."""
        batch = list(records)
        if not batch:
            return []
        opened: list[bytes] = []
        for item in self.session.open_many(batch):
            if isinstance(item, RecordError):
                self.rejected.append(item)
            else:
                opened.append(item)
        self.received.extend(opened)
        return opened

    @property
    def replays_rejected(self) -> int:
        return sum(isinstance(e, ReplayDetected) for e in self.rejected)


class MemoryLink:
    """Two sessions joined by two :class:`ShufflingChannel` objects.

    ``a`` seals with the keys ``b`` opens with, and the reverse (build the
    pair with a handshake, or with ``Session.from_keys`` crosswise).
    :meth:`pump` moves whatever is due in both directions.
    """

    def __init__(self, a: Session, b: Session, *, seed: int = 0,
                 paths: Iterable[Path] = (Path(),), duplicate: float = 0.0,
                 loss: float = 0.0, relay: Relay | None = None) -> None:
        paths = tuple(paths)
        self.relay = relay
        self.a = Endpoint(a, ShufflingChannel(seed=seed, paths=paths, duplicate=duplicate,
                                              loss=loss, relay=relay))
        self.b = Endpoint(b, ShufflingChannel(seed=seed + 1, paths=paths, duplicate=duplicate,
                                              loss=loss, relay=relay))

    def pump(self) -> None:
        """Deliver what is due, both directions."""
        self.b.receive(self.a.outgoing.deliver())
        self.a.receive(self.b.outgoing.deliver())

    def settle(self) -> None:
        """Deliver everything still in flight."""
        self.b.receive(self.a.outgoing.drain())
        self.a.receive(self.b.outgoing.drain())


class ConnectionLink:
    """Two sans-IO :class:`~rolewire.protocol.Connection` objects (message
    framing) joined in memory: handshake messages are delivered in order,
    records travel over one :class:`ShufflingChannel` per direction (late,
    reordered, duplicated). The link only moves bytes; the connections do
    all protocol work. :meth:`pump` returns the events of both sides.
    """

    def __init__(self, a: Any, b: Any, *, seed: int = 0,
                 paths: Iterable[Path] = (Path(),), duplicate: float = 0.0,
                 relay: Relay | None = None) -> None:
        paths = tuple(paths)
        self.a, self.b = a, b
        self._to_b = ShufflingChannel(seed=seed, paths=paths, duplicate=duplicate, relay=relay)
        self._to_a = ShufflingChannel(seed=seed + 1, paths=paths, duplicate=duplicate,
                                      relay=relay)

    @staticmethod
    def _send(src: Any, dst: Any, channel: ShufflingChannel, now: float) -> None:
        for message in src.messages_to_send(now):
            if message[:1] == b"\x02":  # a record: through the unreliable network
                channel.send(message[1:])
            else:  # handshake bytes: in order
                dst.receive_message(message, now)

    def pump(self, now: float = 0.0, *, settle: bool = False) -> tuple[list[Any], list[Any]]:
        """Move what each side has to send and deliver what is due (with
        ``settle``: everything in flight). Returns ``(events of a, events of b)``."""
        self._send(self.a, self.b, self._to_b, now)
        self._send(self.b, self.a, self._to_a, now)
        for channel, dst in ((self._to_b, self.b), (self._to_a, self.a)):
            for record in (channel.drain() if settle else channel.deliver()):
                dst.receive_message(b"\x02" + record, now)
        return self.a.events(), self.b.events()
