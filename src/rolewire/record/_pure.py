"""Pure-Python twin of the C record layer: the same format, limits, checks
and status codes, built on ``cryptography`` (ChaCha20-Poly1305) and PyNaCl
(AEGIS-256). Tests run every record test against both backends and compare
the bytes. Slower, and its keys are Python ``bytes`` that cannot be wiped;
use it for testing and for platforms without a compiler."""

from __future__ import annotations

from array import array
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from rolewire.errors import ConfigurationError, RecordError
from rolewire.record._base import (
    Buffer,
    Offsets,
    PackedOpenResult,
    PackedRecords,
    RecordLayer,
    as_offsets,
)
from rolewire.record._format import (
    DEFAULT_PAST_EPOCHS,
    DEFAULT_WINDOW,
    EPOCH_ADVANCED,
    ERR_ARG,
    ERR_AUTH,
    ERR_CLOSED,
    ERR_COUNTER,
    ERR_EXHAUSTED,
    ERR_MALFORMED,
    ERR_SUITE,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_EPOCH,
    ERR_VERSION,
    HEADER_SIZE,
    MAX_EPOCH_SKIP,
    OK,
    VERSION,
    RecordLimits,
    Suite,
    check_keys,
    check_past_epochs,
    check_window,
    error_for,
    make_nonce,
    pack_header,
    ratchet,
    unpack_header,
)
from rolewire.record._window import ReplayWindow

_Seal = Callable[[bytes, bytes, bytes], bytes]  # (nonce, plaintext, ad) -> ct||tag
_Open = Callable[[bytes, bytes, bytes], bytes]  # (nonce, ct||tag, ad) -> plaintext


def _aead(suite: Suite, key: bytes) -> tuple[_Seal, _Open]:
    if suite is Suite.CHACHA20_POLY1305:
        aead = ChaCha20Poly1305(key)
        return aead.encrypt, aead.decrypt

    def seal(nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
        return sodium.crypto_aead_aegis256_encrypt(plaintext, ad, nonce, key)

    def open_(nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        return sodium.crypto_aead_aegis256_decrypt(ciphertext, ad, nonce, key)

    return seal, open_


def _refuse(nonce: bytes, data: bytes, ad: bytes) -> bytes:
    raise error_for(ERR_CLOSED)


class _Epoch:
    """One receive epoch: key, IV, cipher and replay window."""

    __slots__ = ("iv", "key", "number", "open", "window")

    def __init__(self, suite: Suite, key: bytes, iv: bytes, number: int, window: int) -> None:
        self.key, self.iv, self.number = key, iv, number
        self.open = _aead(suite, key)[1]
        self.window = ReplayWindow(window)


class PureRecordLayer(RecordLayer):
    backend = "pure"

    def __init__(
        self,
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
    ) -> None:
        self.suite = Suite(suite)
        self.limits = limits if limits is not None else RecordLimits()
        self.window = check_window(window)
        self.max_past_epochs = check_past_epochs(past_epochs)
        check_keys(self.suite, send_key, send_iv, "send")
        check_keys(self.suite, recv_key, recv_iv, "receive")
        if recv_epoch is None:
            recv_epoch = epoch
        for value in (epoch, recv_epoch):
            if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
                raise ConfigurationError("epoch must be a 32-bit unsigned integer")
        self._closed = False
        self._send_key, self._send_iv, self._send_epoch = bytes(send_key), bytes(send_iv), epoch
        self._seal = _aead(self.suite, self._send_key)[0]
        self._counter = 0
        self._bytes = 0
        self._current: _Epoch | None = _Epoch(self.suite, bytes(recv_key), bytes(recv_iv),
                                              recv_epoch, window)
        # Past epochs still open, newest first (csrc/record.c: past[]).
        self._past: list[_Epoch] = []
        self.recv_epoch_advances = 0

    # -- sealing -----------------------------------------------------------
    def _seal_check(self, sizes: list[int]) -> int:
        if self._closed:
            return ERR_CLOSED
        limits = self.limits
        if any(size > limits.max_plaintext for size in sizes):
            return ERR_TOO_LARGE
        if (
            self._counter >= limits.hard_messages
            or limits.hard_messages - self._counter < len(sizes)
            or limits.hard_bytes - self._bytes < sum(sizes)
        ):
            return ERR_EXHAUSTED
        return OK

    def _seal_one(self, plaintext: bytes) -> bytes:
        header = pack_header(self.suite, self._send_epoch, self._counter)
        record = header + self._seal(make_nonce(self._send_iv, self._counter), plaintext, header)
        self._counter += 1
        self._bytes += len(plaintext)
        return record

    def seal(self, plaintext: Buffer) -> bytes:
        data = bytes(plaintext)
        rc = self._seal_check([len(data)])
        if rc:
            raise error_for(rc)
        return self._seal_one(data)

    def seal_packed(
        self, data: Buffer, offsets: Offsets, out: Buffer | None = None
    ) -> PackedRecords:
        source = memoryview(data).cast("B")
        in_off = as_offsets(offsets)
        count = len(in_off) - 1
        if count < 0:
            raise ConfigurationError("offsets need at least one entry")
        if any(in_off[i] > in_off[i + 1] for i in range(count)) or (
            count and in_off[count] > len(source)
        ):
            raise error_for(ERR_ARG)
        sizes = [in_off[i + 1] - in_off[i] for i in range(count)]
        need = sum(sizes) + count * self.suite.overhead
        target = memoryview(bytearray(need) if out is None else out).cast("B")
        if target.readonly:
            raise TypeError("out must be a writable, C-contiguous buffer")
        if len(target) < need:
            raise ConfigurationError(f"out buffer too small: {need} bytes needed")
        rc = self._seal_check(sizes)
        if rc:
            raise error_for(rc)
        out_off = array("Q", [0])
        position = 0
        for i in range(count):
            record = self._seal_one(bytes(source[in_off[i] : in_off[i + 1]]))
            target[position : position + len(record)] = record
            position += len(record)
            out_off.append(position)
        return PackedRecords(target, out_off)

    # -- opening -----------------------------------------------------------
    def _open_one(self, record: bytes) -> tuple[int, bytes]:
        """(status, plaintext); mirrors open_one() in csrc/record.c check for check."""
        if self._closed:
            return ERR_CLOSED, b""
        suite = self.suite
        if len(record) < HEADER_SIZE + suite.tag_size:
            return ERR_MALFORMED, b""
        version, suite_id, epoch, counter = unpack_header(record)
        if version != VERSION:
            return ERR_VERSION, b""
        if suite_id != suite:
            return ERR_SUITE, b""
        if len(record) - suite.overhead > self.limits.max_plaintext:
            return ERR_TOO_LARGE, b""
        if counter >= self.limits.hard_messages:
            return ERR_COUNTER, b""
        current = self._current
        assert current is not None
        candidate: _Epoch | None = None
        skipped: list[tuple[bytes, bytes, int]] = []
        past = next((p for p in self._past if p.number == epoch), None)
        if epoch == current.number:
            target = current
        elif epoch < current.number and past is not None:
            target = past
        elif current.number < epoch <= current.number + MAX_EPOCH_SKIP:
            key, iv, number = current.key, current.iv, current.number
            while number < epoch:
                key, iv, number = ratchet(key, iv, number)
                if number < epoch:
                    skipped.append((key, iv, number))
            candidate = target = _Epoch(suite, key, iv, number, self.window)
        else:
            return ERR_UNKNOWN_EPOCH, b""
        if candidate is None:
            rc = target.window.check(counter)
            if rc:
                return rc, b""
        header = record[:HEADER_SIZE]
        try:
            plaintext = target.open(make_nonce(target.iv, counter), record[HEADER_SIZE:], header)
        except (InvalidTag, CryptoError):
            return ERR_AUTH, b""
        target.window.update(counter)
        if candidate is not None:
            # The current epoch and every skipped one become past epochs,
            # newest first; the oldest beyond the bound are dropped.
            pushed = [current] + [_Epoch(suite, k, v, n, self.window) for k, v, n in skipped]
            self._past = (pushed[::-1] + self._past)[: self.max_past_epochs]
            self._current = candidate
            return EPOCH_ADVANCED, plaintext
        return OK, plaintext

    def open(self, record: Buffer) -> bytes:
        rc, plaintext = self._open_one(bytes(record))
        if rc:
            if rc < 0:
                raise error_for(rc)
            self.recv_epoch_advances += 1
        return plaintext

    def open_packed(
        self, data: Buffer, offsets: Offsets, out: Buffer | None = None
    ) -> PackedOpenResult:
        source = memoryview(data).cast("B")
        in_off = as_offsets(offsets)
        count = len(in_off) - 1
        if count < 0:
            raise ConfigurationError("offsets need at least one entry")
        if any(in_off[i] > in_off[i + 1] for i in range(count)) or (
            count and in_off[count] > len(source)
        ):
            raise error_for(ERR_ARG)
        need = in_off[count] - in_off[0] if count else 0
        target = memoryview(bytearray(need) if out is None else out).cast("B")
        if target.readonly:
            raise TypeError("out must be a writable, C-contiguous buffer")
        if len(target) < need:
            raise ConfigurationError(f"out buffer too small: {need} bytes needed")
        out_off = array("Q", [0])
        errors: dict[int, RecordError] = {}
        position = 0
        flags = OK  # OR of the records' non-negative statuses (C: status[n])
        for i in range(count):
            rc, plaintext = self._open_one(bytes(source[in_off[i] : in_off[i + 1]]))
            if rc < 0:
                error = error_for(rc)
                assert isinstance(error, RecordError)
                errors[i] = error
            else:
                flags |= rc
                target[position : position + len(plaintext)] = plaintext
                position += len(plaintext)
            out_off.append(position)
        # Once per batch, however many of its records advanced (as C counts).
        if flags & EPOCH_ADVANCED:
            self.recv_epoch_advances += 1
        return PackedOpenResult(target, out_off, errors)

    # -- keys and state ------------------------------------------------------
    def update_send_key(self) -> int:
        if self._closed:
            raise error_for(ERR_CLOSED)
        self._send_key, self._send_iv, self._send_epoch = ratchet(
            self._send_key, self._send_iv, self._send_epoch
        )
        self._seal = _aead(self.suite, self._send_key)[0]
        self._counter = 0
        self._bytes = 0
        return self._send_epoch

    def retire_previous_epoch(self) -> None:
        self._past = []

    def retire_epoch(self, epoch: int) -> None:
        self._past = [p for p in self._past if p.number != epoch]

    @property
    def past_epochs(self) -> tuple[int, ...]:
        return tuple(p.number for p in self._past)

    def close(self) -> None:
        self._closed = True
        self._past = []
        # Drop the AEAD objects (and with them cryptography's key copies);
        # every call checks _closed before it could reach these.
        self._seal = _refuse
        if self._current is not None:
            self._current.open = _refuse
            self._current.key = b""

    @property
    def send_epoch(self) -> int:
        return self._send_epoch

    @property
    def recv_epoch(self) -> int:
        assert self._current is not None
        return self._current.number

    @property
    def messages_sealed(self) -> int:
        return self._counter

    @property
    def bytes_sealed(self) -> int:
        return self._bytes
