"""The public record layer type, its batch result types, and the parts both
backends share. ``RecordLayer(...)`` returns the C backend unless the pure
twin is asked for (``backend="pure"`` or ``ROLEWIRE_PURE=1``)."""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any, Union, cast

from rolewire.errors import ConfigurationError, RecordError
from rolewire.record._format import DEFAULT_PAST_EPOCHS, DEFAULT_WINDOW, RecordLimits, Suite

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self
else:
    Buffer = Any

# Buffer is listed so that the backends and rolewire.session may import it
# (mypy --strict: no implicit re-export).
__all__ = [
    "BACKENDS",
    "Buffer",
    "Offsets",
    "PackedOpenResult",
    "PackedRecords",
    "RecordLayer",
    "as_offsets",
    "default_backend",
    "pack",
]

#: Offsets of a packed batch: ``n + 1`` ascending byte offsets; item ``i`` is
#: ``buffer[offsets[i]:offsets[i + 1]]``. An ``array('Q')`` is used as is.
Offsets = Union[Sequence[int], "array[int]"]

BACKENDS = ("c", "pure")


def default_backend() -> str:
    """``"pure"`` when the environment sets ``ROLEWIRE_PURE=1``, else ``"c"``."""
    return "pure" if os.environ.get("ROLEWIRE_PURE", "") not in ("", "0") else "c"


@dataclass(frozen=True)
class PackedRecords:
    """Records (or plaintexts) packed into one buffer.

    Item ``i`` is ``buffer[offsets[i]:offsets[i + 1]]`` (a ``memoryview``, no
    copy). ``len()`` is the number of items.
    """

    buffer: memoryview
    offsets: array[int]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> memoryview:
        if not -len(self) <= index < len(self):
            raise IndexError("batch index out of range")
        index %= len(self)
        return self.buffer[self.offsets[index] : self.offsets[index + 1]]

    def __iter__(self) -> Iterator[memoryview]:
        return (self[i] for i in range(len(self)))

    def to_list(self) -> list[bytes]:
        """Every item as ``bytes``."""
        data = self.buffer.tobytes()
        bounds = self.offsets.tolist()
        return [data[a:b] for a, b in pairwise(bounds)]


@dataclass(frozen=True)
class PackedOpenResult(PackedRecords):
    """Plaintexts of a batch open. Records that failed have an empty slice and
    an entry in ``errors``; indexing one raises its error. The good ones are
    all there."""

    errors: Mapping[int, RecordError] = field(default_factory=dict)

    def __getitem__(self, index: int) -> memoryview:
        if not -len(self) <= index < len(self):
            raise IndexError("batch index out of range")
        index %= len(self)
        error = self.errors.get(index)
        if error is not None:
            raise error
        return super().__getitem__(index)

    @property
    def ok(self) -> bool:
        """True when every record opened."""
        return not self.errors

    def results(self) -> list[bytes | RecordError]:
        """Per record: the plaintext, or the error instance (not raised)."""
        # One copy of the whole buffer, then bytes slices: about 3x faster
        # per item than converting each memoryview slice.
        data = self.buffer.tobytes()
        bounds = self.offsets.tolist()
        if not self.errors:
            return [data[a:b] for a, b in pairwise(bounds)]
        errors = self.errors
        return [errors.get(i) or data[bounds[i] : bounds[i + 1]]
                for i in range(len(bounds) - 1)]


def as_offsets(offsets: Offsets) -> array[int]:
    if isinstance(offsets, array) and offsets.typecode == "Q":
        return offsets
    try:
        return array("Q", offsets)
    except (TypeError, OverflowError) as exc:
        raise ConfigurationError("offsets must be non-negative integers") from exc


def pack(messages: Iterable[Buffer]) -> tuple[bytes, array[int]]:
    """Join messages into one buffer with offsets (one C-level copy)."""
    items = [m if isinstance(m, bytes) else bytes(m) for m in messages]
    offsets = array("Q", [0])
    offsets.extend(accumulate(map(len, items)))
    return b"".join(items), offsets


class RecordLayer:
    """Seals and opens records for one session (both directions).

    Construct it with the two direction keys and IVs the handshake derived
    (``send_*`` for what this side seals, ``recv_*`` for what it opens; the
    peer uses them crosswise). Keys are copied into C memory and wiped on
    :meth:`update_send_key`, when an epoch is retired, on :meth:`close` and
    when the object is garbage collected. The ``bytes`` objects you passed in
    are Python objects that rolewire cannot wipe: drop them promptly. With
    ChaCha20-Poly1305 the C backend also hands the current key of each
    direction to an OpenSSL object for records of at least
    ``OPENSSL_CHACHA_THRESHOLD`` bytes (faster there); that copy is dropped
    on key update and close but not wiped by rolewire (docs/PROTOCOL.md,
    "Key material in memory").

    Thread safety: each direction is serialised; concurrent use of one
    direction raises :class:`~rolewire.errors.ConcurrentUseError`.

    Constructor arguments (``RecordLayer(suite, *, ...)``):

    - ``suite``: the record AEAD;
    - ``send_key``, ``send_iv``, ``recv_key``, ``recv_iv``: 32-byte keys,
      ``suite.iv_size``-byte IVs;
    - ``epoch``: the key epoch both directions start in (``recv_epoch``, if
      given, is the receiving direction's: a re-handshake starts each
      direction's new keys at the epoch its sender announced);
    - ``limits``: soft/hard rekey limits and the maximum record size;
    - ``window``: replay window size in counters (multiple of 64, 64..2**20);
    - ``past_epochs``: how many past receive epochs stay open for late
      records (0..64, default 4); each epoch change pushes the old epoch and
      any skipped ones, the oldest beyond the bound are wiped. The session
      retires each one after its grace period (:meth:`retire_epoch`);
    - ``backend``: ``"c"`` (default), or ``"pure"`` for the pure-Python twin;
      ``None`` honours ``ROLEWIRE_PURE=1``.
    """

    backend: str = ""

    def __new__(
        cls,
        suite: Suite,
        *,
        send_key: bytes,
        send_iv: bytes,
        recv_key: bytes,
        recv_iv: bytes,
        epoch: int = 0,
        recv_epoch: int | None = None,
        limits: RecordLimits | None = None,
        window: int = DEFAULT_WINDOW,
        past_epochs: int = DEFAULT_PAST_EPOCHS,
        backend: str | None = None,
    ) -> Self:
        if cls is not RecordLayer:
            return super().__new__(cls)
        chosen = default_backend() if backend is None else backend
        if chosen == "c":
            from rolewire.record._c import CRecordLayer

            # cls is RecordLayer here, so a backend instance is a Self.
            return cast("Self", super().__new__(CRecordLayer))
        if chosen == "pure":
            from rolewire.record._pure import PureRecordLayer

            return cast("Self", super().__new__(PureRecordLayer))
        raise ConfigurationError(f"backend must be one of {BACKENDS}")

    # -- implemented by each backend --------------------------------------
    suite: Suite
    limits: RecordLimits
    window: int
    #: The bound on past receive epochs kept open (``past_epochs``).
    max_past_epochs: int

    def seal(self, plaintext: Buffer) -> bytes:
        """Seal one message into a record.

        Raises:
            RecordTooLarge: the plaintext exceeds ``limits.max_plaintext``.
            KeyExhausted: the hard limit is reached; nothing was sealed.
        """
        raise NotImplementedError

    def open(self, record: Buffer) -> bytes:
        """Authenticate, replay-check and decrypt one record.

        Returns the plaintext; on any failure raises a
        :class:`~rolewire.errors.RecordError` subclass and changes no state.
        """
        raise NotImplementedError

    def seal_packed(
        self, data: Buffer, offsets: Offsets, out: Buffer | None = None
    ) -> PackedRecords:
        """Seal every message of a packed batch in one call.

        ``data`` holds the messages back to back, ``offsets`` their ``n + 1``
        boundaries. Records are written into ``out`` (any writable buffer of at
        least ``total + n * suite.overhead`` bytes) or a new ``bytearray``.
        All or nothing: if any message is too large or the batch would cross a
        hard limit, nothing is sealed.
        """
        raise NotImplementedError

    def open_packed(
        self, data: Buffer, offsets: Offsets, out: Buffer | None = None
    ) -> PackedOpenResult:
        """Open every record of a packed batch in one call.

        Plaintexts go into ``out`` (writable, at least as large as the
        records' span) or a new ``bytearray``. Each record succeeds or fails
        on its own; failures are listed in ``errors`` of the result.
        """
        raise NotImplementedError

    def update_send_key(self) -> int:
        """Ratchet the sending key one epoch forward (one-way, so earlier
        records stay safe if this key leaks); the old key is wiped. The peer
        follows automatically. Returns the new epoch."""
        raise NotImplementedError

    def retire_previous_epoch(self) -> None:
        """Wipe the receive keys of every past epoch; their records are
        refused from now on."""
        raise NotImplementedError

    def retire_epoch(self, epoch: int) -> None:
        """Wipe the receive key of one past epoch (the end of its grace
        period); unknown or current epochs are ignored."""
        raise NotImplementedError

    @property
    def past_epochs(self) -> tuple[int, ...]:
        """The past receive epochs still open, newest first."""
        raise NotImplementedError

    def close(self) -> None:
        """Wipe every key. Further calls raise RecordLayerClosed."""
        raise NotImplementedError

    @property
    def send_epoch(self) -> int:
        """Epoch of the sending key."""
        raise NotImplementedError

    @property
    def recv_epoch(self) -> int:
        """Newest epoch this side has accepted a record in (or started with)."""
        raise NotImplementedError

    @property
    def has_previous_epoch(self) -> bool:
        """True while any past receive epoch is still open (grace period)."""
        return bool(self.past_epochs)

    @property
    def messages_sealed(self) -> int:
        """Records sealed under the current sending key (= next counter)."""
        raise NotImplementedError

    @property
    def bytes_sealed(self) -> int:
        """Plaintext bytes sealed under the current sending key."""
        raise NotImplementedError

    #: How many calls so far advanced the receive epoch automatically (a
    #: counter, not a time: the record layer reads no clock): +1 for each
    #: :meth:`open` that advanced, and +1 for each :meth:`open_packed` (or
    #: :meth:`open_many`) batch in which any record advanced, however many
    #: did. Both backends count alike. Sessions compare it with the value
    #: they saw last to notice an advance cheaply (not to count epochs: read
    #: :attr:`recv_epoch` for that), and time the grace period on their own
    #: clock.
    recv_epoch_advances: int = 0

    # -- shared ------------------------------------------------------------
    @property
    def rekey_due(self) -> bool:
        """True once a soft limit is reached: call :meth:`update_send_key`."""
        return (
            self.messages_sealed >= self.limits.soft_messages
            or self.bytes_sealed >= self.limits.soft_bytes
        )

    def seal_many(self, messages: Iterable[Buffer]) -> list[bytes]:
        """Seal several messages in one native call; returns their records."""
        data, offsets = pack(messages)
        return self.seal_packed(data, offsets).to_list()

    def open_many(self, records: Iterable[Buffer]) -> list[bytes | RecordError]:
        """Open several records in one native call. Per record: the plaintext,
        or the :class:`~rolewire.errors.RecordError` instance (not raised), in
        the order given - like ``asyncio.gather(..., return_exceptions=True)``."""
        data, offsets = pack(records)
        return self.open_packed(data, offsets).results()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never show keys.
        return (
            f"<{type(self).__name__} {self.suite.wire_name} send_epoch={self.send_epoch} "
            f"recv_epoch={self.recv_epoch}>"
        )
