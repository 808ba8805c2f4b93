"""The C backend of :class:`~rolewire.record.RecordLayer`.

Every operation is exactly one call into ``rolewire._native`` (cffi releases
the GIL around it). The Python side only allocates output buffers and maps
status codes to exceptions.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

from rolewire._native_loader import ffi, lib
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
    ERR_MALFORMED,
    ERR_NOT_READY,
    RecordLimits,
    Suite,
    check_keys,
    check_past_epochs,
    check_window,
    error_for,
)

# Output buffers need no zero-fill: C writes every byte we hand back.
_alloc = ffi.new_allocator(should_clear_after_alloc=False)
#: ``ffi.unpack`` of a ``char[]``: bytes.
_unpack: Callable[[Any, int], bytes] = ffi.unpack
_from_buffer = ffi.from_buffer
_NULL = ffi.NULL
_rw_seal = lib.rw_seal
_rw_open = lib.rw_open


def _limits_struct(limits: RecordLimits) -> Any:
    struct = ffi.new("rw_limits *")
    struct.soft_messages = limits.soft_messages
    struct.soft_bytes = limits.soft_bytes
    struct.hard_messages = limits.hard_messages
    struct.hard_bytes = limits.hard_bytes
    struct.max_plaintext = limits.max_plaintext
    return struct


def _writable(out: Buffer, need: int) -> Any:
    try:
        view = _from_buffer(out, require_writable=True)
    except (TypeError, BufferError) as exc:
        raise TypeError("out must be a writable, C-contiguous buffer") from exc
    if len(view) < need:
        raise ConfigurationError(f"out buffer too small: {need} bytes needed")
    return view


class CRecordLayer(RecordLayer):
    backend = "c"

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
        limits_struct = _limits_struct(self.limits)
        sender = lib.rw_sender_new(self.suite, bytes(send_key), bytes(send_iv), epoch,
                                   limits_struct)
        receiver = lib.rw_receiver_new(self.suite, bytes(recv_key), bytes(recv_iv), recv_epoch,
                                       limits_struct, window)
        if sender == _NULL or receiver == _NULL:
            if sender != _NULL:
                lib.rw_sender_free(sender)
            if receiver != _NULL:
                lib.rw_receiver_free(receiver)
            raise error_for(ERR_NOT_READY)
        # ffi.gc wipes and frees the C state when the layer is collected.
        self._sender = ffi.gc(sender, lib.rw_sender_free)
        self._receiver = ffi.gc(receiver, lib.rw_receiver_free)
        rc = lib.rw_receiver_set_max_past(self._receiver, past_epochs)
        if rc < 0:
            raise error_for(rc)
        self._overhead = self.suite.overhead
        self.recv_epoch_advances = 0

    # -- single records ----------------------------------------------------
    def seal(self, plaintext: Buffer) -> bytes:
        src = plaintext if type(plaintext) is bytes else _from_buffer(plaintext)
        size = len(src) + self._overhead
        out = _alloc("char[]", size)
        rc = _rw_seal(self._sender, src, len(src), out, size, _NULL)
        if rc < 0:
            raise error_for(rc)
        return _unpack(out, size)

    def open(self, record: Buffer) -> bytes:
        src = record if type(record) is bytes else _from_buffer(record)
        size = len(src) - self._overhead
        if size < 0:
            # Let C classify it: a closed layer reports "closed" before
            # "malformed", as the pure twin does.
            rc = _rw_open(self._receiver, src, len(src), _alloc("char[]", 1), 0, _NULL)
            raise error_for(rc if rc < 0 else ERR_MALFORMED)
        out = _alloc("char[]", size or 1)
        rc = _rw_open(self._receiver, src, len(src), out, size, _NULL)
        if rc:
            if rc < 0:
                raise error_for(rc)
            self.recv_epoch_advances += 1
        return _unpack(out, size)

    # -- batches -----------------------------------------------------------
    def seal_packed(
        self, data: Buffer, offsets: Offsets, out: Buffer | None = None
    ) -> PackedRecords:
        src = data if type(data) is bytes else _from_buffer(data)
        in_off = as_offsets(offsets)
        count = len(in_off) - 1
        if count < 0:
            raise ConfigurationError("offsets need at least one entry")
        # Bad offsets may make this negative; C rejects them (RW_ERR_ARG).
        span = max(in_off[count] - in_off[0], 0) if count else 0
        need = span + count * self._overhead
        target = bytearray(need) if out is None else out
        view = _writable(target, need)
        out_off = array("Q", bytes(8 * (count + 1)))
        rc = lib.rw_seal_batch(
            self._sender, src, len(src), _from_buffer("uint64_t[]", in_off), count,
            view, len(view), _from_buffer("uint64_t[]", out_off, require_writable=True),
        )
        if rc < 0:
            raise error_for(rc)
        return PackedRecords(memoryview(target).cast("B"), out_off)

    def open_packed(
        self, data: Buffer, offsets: Offsets, out: Buffer | None = None
    ) -> PackedOpenResult:
        src = data if type(data) is bytes else _from_buffer(data)
        in_off = as_offsets(offsets)
        count = len(in_off) - 1
        if count < 0:
            raise ConfigurationError("offsets need at least one entry")
        need = max(in_off[count] - in_off[0], 0) if count else 0
        target = bytearray(need) if out is None else out
        view = _writable(target, need)
        out_off = array("Q", bytes(8 * (count + 1)))
        status = array("i", bytes(4 * (count + 1)))  # status[count]: OR of flags
        opened = lib.rw_open_batch(
            self._receiver, src, len(src), _from_buffer("uint64_t[]", in_off), count,
            view, len(view), _from_buffer("uint64_t[]", out_off, require_writable=True),
            _from_buffer("int32_t[]", status, require_writable=True),
        )
        if opened < 0:
            raise error_for(opened)
        errors: dict[int, RecordError] = {}
        if status[count]:
            self.recv_epoch_advances += 1
        if opened != count:
            for index in range(count):
                code = status[index]
                if code < 0:
                    error = error_for(code)
                    assert isinstance(error, RecordError)
                    errors[index] = error
        return PackedOpenResult(memoryview(target).cast("B"), out_off, errors)

    def native_handles(self) -> tuple[Any, Any]:
        """Hazmat, for the native fast path (rolewire.protocol.fastpath): the
        cffi ``rw_sender *`` and ``rw_receiver *`` of this layer. Calls
        through them skip nothing the layer checks (the C side enforces
        limits, replay and epochs), but the caller must keep the layer alive."""
        return self._sender, self._receiver

    # -- keys and state ------------------------------------------------------
    def update_send_key(self) -> int:
        rc = lib.rw_sender_update_key(self._sender)
        if rc < 0:
            raise error_for(rc)
        return int(lib.rw_sender_epoch(self._sender))

    def retire_previous_epoch(self) -> None:
        rc = lib.rw_receiver_retire_previous(self._receiver)
        if rc < 0:
            raise error_for(rc)

    def close(self) -> None:
        for rc in (lib.rw_sender_close(self._sender), lib.rw_receiver_close(self._receiver)):
            if rc < 0:
                raise error_for(rc)

    @property
    def send_epoch(self) -> int:
        return int(lib.rw_sender_epoch(self._sender))

    @property
    def recv_epoch(self) -> int:
        return int(lib.rw_receiver_epoch(self._receiver))

    def retire_epoch(self, epoch: int) -> None:
        rc = lib.rw_receiver_retire_epoch(self._receiver, epoch & 0xFFFFFFFF)
        if rc < 0:
            raise error_for(rc)

    @property
    def past_epochs(self) -> tuple[int, ...]:
        receiver = self._receiver
        return tuple(int(lib.rw_receiver_past_epoch(receiver, i))
                     for i in range(lib.rw_receiver_past_count(receiver)))

    @property
    def has_previous_epoch(self) -> bool:
        return bool(lib.rw_receiver_has_previous(self._receiver))

    @property
    def messages_sealed(self) -> int:
        return int(lib.rw_sender_next_counter(self._sender))

    @property
    def bytes_sealed(self) -> int:
        return int(lib.rw_sender_bytes(self._sender))


def raw_loop(suite: Suite, size: int, iterations: int) -> None:
    """Benchmark only: libsodium seal+open in a C loop, no record layer."""
    rc = lib.rw_bench_raw_loop(int(suite), size, iterations)
    if rc < 0:
        raise error_for(rc)


def aead_seal(suite: Suite, key: bytes, nonce: bytes, ad: bytes, plaintext: bytes) -> bytes:
    """Test hook: the suite's raw AEAD through the exact libsodium pointers
    records use (for known-answer vectors). Returns ct||tag."""
    suite = Suite(suite)
    if len(key) != suite.key_size or len(nonce) != suite.iv_size:
        raise ConfigurationError("wrong key or nonce size")
    out = ffi.new("uint8_t[]", len(plaintext) + suite.tag_size)
    rc = lib.rw_aead_seal(suite, key, nonce, ad, len(ad), plaintext, len(plaintext), out)
    if rc < 0:
        raise error_for(rc)
    return bytes(ffi.buffer(out))


def aead_open(suite: Suite, key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes:
    """Test hook: inverse of :func:`aead_seal`; raises AuthenticationFailed."""
    suite = Suite(suite)
    if len(key) != suite.key_size or len(nonce) != suite.iv_size:
        raise ConfigurationError("wrong key or nonce size")
    out = ffi.new("uint8_t[]", max(len(ciphertext) - suite.tag_size, 1))
    rc = lib.rw_aead_open(suite, key, nonce, ad, len(ad), ciphertext, len(ciphertext), out)
    if rc < 0:
        raise error_for(rc)
    return bytes(ffi.buffer(out, len(ciphertext) - suite.tag_size))
