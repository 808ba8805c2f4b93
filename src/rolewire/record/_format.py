"""Record format constants, suites, limits and the status-code table shared
by the C backend and its pure-Python twin (docs/PROTOCOL.md, "Records")."""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from rolewire.errors import (
    AuthenticationFailed,
    ConcurrentUseError,
    ConfigurationError,
    KeyExhausted,
    MalformedRecord,
    RecordLayerClosed,
    RecordTooLarge,
    RecordTooOld,
    ReplayDetected,
    RolewireError,
    UnknownEpoch,
)

VERSION = 1
HEADER_SIZE = 14
KEY_SIZE = 32
#: Largest plaintext the format allows in one record.
PROTOCOL_MAX_PLAINTEXT = 1 << 24
#: Replay window bounds (counters).
WINDOW_MIN = 64
WINDOW_MAX = 1 << 20
DEFAULT_WINDOW = 8192
#: How many epochs ahead a record may be and still advance the receiver.
MAX_EPOCH_SKIP = 4
#: Past receive epochs kept open by default, and the most a layer may keep.
DEFAULT_PAST_EPOCHS = 4
MAX_PAST_EPOCHS = 64
MAX_EPOCH = 0xFFFFFFFF
#: C backend, ChaCha20-Poly1305 suite: records of the current epoch with at
#: least this many plaintext bytes are sealed and opened by OpenSSL (through
#: `cryptography`: the same RFC 8439 AEAD, so the same bytes) instead of
#: libsodium, which is about half as fast on large messages. The C core
#: still checks and keeps counters, limits, epochs and the replay window.
#: Why not lower: going through Python and `cryptography` costs about 1 us
#: more per record than one C call, which only the faster cipher repays -
#: measured break-even about 5 KiB (1 KiB records were 0.57x as fast through
#: OpenSSL, 8 KiB 1.24x, 16 KiB 1.55x). Trade-off: OpenSSL holds its own
#: copy of the current key of each direction, which rolewire cannot wipe
#: (SECURITY.md, "Secrets in Python memory"). The pure twin uses
#: `cryptography` for every size.
OPENSSL_CHACHA_THRESHOLD = 6144

_HEADER = struct.Struct(">BBIQ")
assert _HEADER.size == HEADER_SIZE


class Suite(enum.IntEnum):
    """Record protection suites; the value is the wire id in the header."""

    #: ChaCha20-Poly1305 (IETF, RFC 8439): the paper's choice, fast everywhere.
    CHACHA20_POLY1305 = 1
    #: AEGIS-256 (libsodium): much faster where AES instructions exist.
    AEGIS_256 = 2

    @property
    def key_size(self) -> int:
        return KEY_SIZE

    @property
    def iv_size(self) -> int:
        return 12 if self is Suite.CHACHA20_POLY1305 else 32

    @property
    def tag_size(self) -> int:
        return 16 if self is Suite.CHACHA20_POLY1305 else 32

    @property
    def overhead(self) -> int:
        """Bytes a record adds to its plaintext (header and tag)."""
        return HEADER_SIZE + self.tag_size

    @property
    def wire_name(self) -> str:
        return "CHACHA20-POLY1305" if self is Suite.CHACHA20_POLY1305 else "AEGIS-256"


@dataclass(frozen=True)
class RecordLimits:
    """When a sending key must be replaced.

    At a *soft* limit the layer reports ``rekey_due`` (the session should call
    ``update_send_key``); at a *hard* limit it refuses to seal
    (:class:`~rolewire.errors.KeyExhausted`). Receivers refuse counters at or
    above ``hard_messages``. ``max_plaintext`` bounds one record's plaintext
    on both sides.
    """

    soft_messages: int = 1 << 31
    soft_bytes: int = 1 << 37
    hard_messages: int = 1 << 60
    hard_bytes: int = 1 << 62
    max_plaintext: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("soft_messages", "soft_bytes", "hard_messages", "hard_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 1 << 64:
                raise ConfigurationError(f"{name} must be an integer in [0, 2**64)")
        if self.hard_messages < 1:
            raise ConfigurationError("hard_messages must be at least 1")
        if self.soft_messages > self.hard_messages or self.soft_bytes > self.hard_bytes:
            raise ConfigurationError("a soft limit must not exceed its hard limit")
        if not isinstance(self.max_plaintext, int) or not (
            1 <= self.max_plaintext <= PROTOCOL_MAX_PLAINTEXT
        ):
            raise ConfigurationError(
                f"max_plaintext must be between 1 and {PROTOCOL_MAX_PLAINTEXT}"
            )


# Status codes: identical to the RW_* values in csrc/rolewire.h (checked by a
# test), so both backends report failures through the same table.
OK = 0
REKEY_DUE = 1
#: Open status bit: the record was opened under a newer receive epoch (the
#: native fast path reports it in ``Received.flags``).
EPOCH_ADVANCED = 2
ERR_MALFORMED = -1
ERR_VERSION = -2
ERR_SUITE = -3
ERR_TOO_LARGE = -4
ERR_COUNTER = -5
ERR_UNKNOWN_EPOCH = -6
ERR_REPLAY = -7
ERR_TOO_OLD = -8
ERR_AUTH = -9
ERR_EXHAUSTED = -10
ERR_CLOSED = -11
ERR_BUSY = -12
ERR_BUFFER = -13
ERR_ARG = -14
ERR_NOT_READY = -15
ERR_EPOCH_LIMIT = -16

_ERRORS: dict[int, tuple[type[RolewireError], str]] = {
    ERR_MALFORMED: (MalformedRecord, "record is truncated or its header is malformed"),
    ERR_VERSION: (MalformedRecord, "record has an unsupported version"),
    ERR_SUITE: (MalformedRecord, "record names a suite this session does not use"),
    ERR_TOO_LARGE: (RecordTooLarge, "record exceeds the maximum record size"),
    ERR_COUNTER: (MalformedRecord, "record counter is beyond the permitted range"),
    ERR_UNKNOWN_EPOCH: (UnknownEpoch, "record names a key epoch this receiver does not hold"),
    ERR_REPLAY: (ReplayDetected, "record was already received (replay)"),
    ERR_TOO_OLD: (RecordTooOld, "record is older than the replay window"),
    ERR_AUTH: (AuthenticationFailed, "record authentication failed"),
    ERR_EXHAUSTED: (KeyExhausted, "sending key reached its hard limit; rekey first"),
    ERR_CLOSED: (RecordLayerClosed, "record layer is closed"),
    ERR_BUSY: (ConcurrentUseError, "record layer direction used from two threads at once"),
    ERR_BUFFER: (ConfigurationError, "output buffer is too small"),
    ERR_ARG: (ConfigurationError, "invalid offsets or arguments"),
    ERR_NOT_READY: (RolewireError, "native core is not initialised"),
    ERR_EPOCH_LIMIT: (KeyExhausted, "key epoch counter is exhausted; run a new handshake"),
}


def error_for(code: int) -> RolewireError:
    """The exception instance for a negative status code."""
    cls, message = _ERRORS.get(code, (RolewireError, f"unexpected native status {code}"))
    return cls(message)


# Keyed by any exception's type: status_of() looks up whatever it is given.
_CODES: dict[tuple[type[BaseException], str], int] = {
    (cls, message): code for code, (cls, message) in _ERRORS.items()}


def status_of(error: BaseException) -> int:
    """The negative status code of an exception made by :func:`error_for`
    (the inverse, for twins that report codes); ERR_ARG if unknown."""
    return _CODES.get((type(error), str(error)), ERR_ARG)


def pack_header(suite: int, epoch: int, counter: int) -> bytes:
    return _HEADER.pack(VERSION, suite, epoch, counter)


def unpack_header(record: bytes) -> tuple[int, int, int, int]:
    """(version, suite, epoch, counter) of a record at least HEADER_SIZE long."""
    return _HEADER.unpack_from(record)


@dataclass(frozen=True)
class RecordHeader:
    """The clear part of a record: all an intermediary can read."""

    version: int
    suite: int
    epoch: int
    counter: int
    length: int
    """Total record length (header, ciphertext and tag)."""


def parse_header(record: bytes) -> RecordHeader:
    """Parse the 14-byte clear header of a record (``version u8 | suite u8 |
    epoch u32 | counter u64``). Raises
    :class:`~rolewire.errors.MalformedRecord` if it is shorter."""
    if len(record) < HEADER_SIZE:
        raise MalformedRecord("record shorter than its header")
    version, suite, epoch, counter = _HEADER.unpack_from(record)
    return RecordHeader(version, suite, epoch, counter, len(record))


def make_nonce(iv: bytes, counter: int) -> bytes:
    """Per-direction IV XOR the big-endian counter in its last eight bytes."""
    tail = int.from_bytes(iv[-8:], "big") ^ counter
    return iv[:-8] + tail.to_bytes(8, "big")


KUPDATE_PERSONAL = b"rolewire kupdate"


def ratchet(key: bytes, iv: bytes, epoch: int) -> tuple[bytes, bytes, int]:
    """One key update step (mirrors ``ratchet`` in csrc/record.c)."""
    if epoch >= MAX_EPOCH:
        raise error_for(ERR_EPOCH_LIMIT)
    okm = hashlib.blake2b(
        iv + (epoch + 1).to_bytes(4, "big"),
        digest_size=64,
        key=key,
        salt=bytes(16),
        person=KUPDATE_PERSONAL,
    ).digest()
    return okm[:KEY_SIZE], okm[KEY_SIZE : KEY_SIZE + len(iv)], epoch + 1


def check_keys(suite: Suite, key: object, iv: object, what: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise ConfigurationError(f"{what} key must be {KEY_SIZE} bytes")
    if not isinstance(iv, (bytes, bytearray)) or len(iv) != suite.iv_size:
        raise ConfigurationError(f"{what} IV must be {suite.iv_size} bytes for {suite.wire_name}")


def check_past_epochs(past_epochs: int) -> int:
    """Validates the number of past receive epochs a layer keeps open."""
    if (not isinstance(past_epochs, int) or isinstance(past_epochs, bool)
            or not 0 <= past_epochs <= MAX_PAST_EPOCHS):
        raise ConfigurationError(f"past_epochs must be an integer in [0, {MAX_PAST_EPOCHS}]")
    return past_epochs


def check_window(window: object) -> int:
    if (
        not isinstance(window, int)
        or isinstance(window, bool)
        or not WINDOW_MIN <= window <= WINDOW_MAX
        or window % 64
    ):
        raise ConfigurationError(
            f"window must be a multiple of 64 between {WINDOW_MIN} and {WINDOW_MAX}"
        )
    return window
