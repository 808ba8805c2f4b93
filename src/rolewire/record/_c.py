"""The C backend of :class:`~rolewire.record.RecordLayer`.

Every operation is one call into ``rolewire._native`` (cffi releases the GIL
around it); the Python side allocates output buffers and maps status codes
to exceptions. Except: ChaCha20-Poly1305 records of at least
``OPENSSL_CHACHA_THRESHOLD`` plaintext bytes in the current epoch are
encrypted by OpenSSL through ``cryptography`` (about twice libsodium's speed
there, and the same RFC 8439 bytes). For those the C core still checks and
reserves (limits, counter, epoch, replay window) in a *begin* call that
keeps the direction's lock held, Python runs the AEAD, and an *end* call
commits and releases (csrc/rolewire.h, "the caller's AEAD"): concurrency,
replay and error behaviour stay those of the C core. The OpenSSL object is
made once per key epoch and dropped on key update and close; it holds its
own copy of the key, which we cannot wipe (docs/PROTOCOL.md, "Key material
in memory").
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from rolewire._native_loader import ffi, lib
from rolewire.errors import ConfigurationError, RecordError, RolewireError
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
    ERR_AUTH,
    ERR_MALFORMED,
    ERR_NOT_READY,
    HEADER_SIZE,
    KEY_SIZE,
    OK,
    OPENSSL_CHACHA_THRESHOLD,
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
# An extension built from older sources lacks the caller's-AEAD entry points
# (a stale development build): then every record stays in libsodium - the
# same bytes, only slower for large ones. The casts (at import, not per
# call): these four are None only in such a build, where ``_large`` is
# ``_NEVER`` and no path calls them.
_EXTERNAL_AEAD = hasattr(lib, "rw_open_batch_step")
_rw_seal_begin = cast("Callable[..., int]", getattr(lib, "rw_seal_begin", None))
_rw_sender_end = cast("Callable[..., int]", getattr(lib, "rw_sender_end", None))
_rw_open_begin = cast("Callable[..., int]", getattr(lib, "rw_open_begin", None))
_rw_open_end = cast("Callable[..., int]", getattr(lib, "rw_open_end", None))
_OPEN_NATIVE = getattr(lib, "RW_OPEN_NATIVE", None)
#: "No record is large" for the C calls (no plaintext reaches 2**64 bytes).
_NEVER = (1 << 64) - 1
_NONCE = 12  # ChaCha20-Poly1305 (the only suite that goes to OpenSSL)
_BODY = HEADER_SIZE + _NONCE  # header and nonce, as a begin call writes them
_PROBE_NONCE = bytes(_NONCE)


def _openssl_aead(export: Callable[[Any, Any], int], handle: Any) -> ChaCha20Poly1305:
    """An OpenSSL ChaCha20-Poly1305 object for the current key of ``handle``
    (``export`` copies it out; the caller holds the direction's lock). The
    Python-side copy is wiped at once; OpenSSL keeps its own."""
    key = bytearray(KEY_SIZE)
    try:
        rc = export(handle, _from_buffer(key, require_writable=True))
        if rc < 0:
            raise error_for(rc)
        aead = ChaCha20Poly1305(key)
        # A tag computed with the key in place and again after wiping it:
        # equal only if the object works from its own copy (were the key
        # read later from our buffer, records would be sealed under zeros).
        # The probe never leaves this function, so its nonce is no reuse.
        before = aead.encrypt(_PROBE_NONCE, b"", None)
    finally:
        key[:] = bytes(KEY_SIZE)
    if aead.encrypt(_PROBE_NONCE, b"", None) != before:
        raise RolewireError("cryptography's ChaCha20Poly1305 does not copy its key")
    return aead


def _bytes_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


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
        #: Plaintext size from which records go to OpenSSL (ChaCha20 only).
        self._large = (OPENSSL_CHACHA_THRESHOLD
                       if self.suite is Suite.CHACHA20_POLY1305 and _EXTERNAL_AEAD else _NEVER)
        # One OpenSSL AEAD per direction, with the big-endian epoch (as in
        # the record header) of its key; used and replaced only while the
        # direction's C lock is held.
        self._send_aead: ChaCha20Poly1305 | None = None
        self._send_aead_epoch = b""
        self._recv_aead: ChaCha20Poly1305 | None = None
        self._recv_aead_epoch = b""
        # rw_seal_begin / rw_open_begin write these only with the lock held.
        self._scratch = ffi.new("char[]", _BODY)
        self._recv_nonce = ffi.new("char[]", _NONCE)

    def _sender_aead(self, epoch: bytes) -> ChaCha20Poly1305:
        """A new AEAD for the current send epoch; the caller holds the lock."""
        aead = self._send_aead = _openssl_aead(lib.rw_sender_export_key, self._sender)
        self._send_aead_epoch = epoch
        return aead

    def _receiver_aead(self, epoch: bytes) -> ChaCha20Poly1305:
        """A new AEAD for the current receive epoch; the caller holds the
        lock (a record is pending)."""
        aead = self._recv_aead = _openssl_aead(lib.rw_receiver_export_key, self._receiver)
        self._recv_aead_epoch = epoch
        return aead

    def _pending_recv_aead(self) -> ChaCha20Poly1305:
        epoch = int(lib.rw_receiver_epoch(self._receiver)).to_bytes(4, "big")
        aead = self._recv_aead
        if aead is None or epoch != self._recv_aead_epoch:
            aead = self._receiver_aead(epoch)
        return aead

    def _drop_stale_recv_aead(self) -> None:
        # The receive epoch moved on: the object holds a past epoch's key.
        if self._recv_aead is not None and self._recv_aead_epoch != \
                int(lib.rw_receiver_epoch(self._receiver)).to_bytes(4, "big"):
            self._recv_aead = None

    # -- single records ----------------------------------------------------
    def seal(self, plaintext: Buffer) -> bytes:
        src = plaintext if type(plaintext) is bytes else _from_buffer(plaintext)
        if len(src) >= self._large:
            return self._seal_openssl(plaintext, len(src))
        size = len(src) + self._overhead
        out = _alloc("char[]", size)
        rc = _rw_seal(self._sender, src, len(src), out, size, _NULL)
        if rc < 0:
            raise error_for(rc)
        return _unpack(out, size)

    def _seal_openssl(self, plaintext: Buffer, length: int) -> bytes:
        scratch = self._scratch
        rc = _rw_seal_begin(self._sender, length, scratch, _BODY)
        if rc < 0:
            raise error_for(rc)
        try:  # the sender's lock is held until rw_sender_end
            # The scratch buffer is written only with the lock held.
            start = _unpack(scratch, _BODY)
            header = start[:HEADER_SIZE]
            aead = self._send_aead
            if aead is None or header[2:6] != self._send_aead_epoch:
                aead = self._sender_aead(header[2:6])
            message = plaintext if type(plaintext) is bytes else _bytes_view(plaintext)
            sealed = aead.encrypt(start[HEADER_SIZE:], message, header)
        finally:
            _rw_sender_end(self._sender)
        return header + sealed

    def _open_openssl(self, record: Buffer, src: Any) -> bytes:
        rc = _rw_open_begin(self._receiver, src, len(src), self._recv_nonce)
        if rc == _OPEN_NATIVE:  # a past or newer epoch: libsodium, in one call
            return self._open_native(src, len(src) - self._overhead)
        if rc < 0:
            raise error_for(rc)
        authenticated = False
        try:  # the receiver's lock is held until rw_open_end
            view = _bytes_view(record)  # slices without copying the ciphertext
            # begin succeeded: the record is of the current epoch.
            epoch = view[2:6].tobytes()
            aead = self._recv_aead
            if aead is None or epoch != self._recv_aead_epoch:
                aead = self._receiver_aead(epoch)
            try:
                # decrypt(), not decrypt_into(): no plaintext exists on failure.
                plaintext = aead.decrypt(_unpack(self._recv_nonce, _NONCE),
                                         view[HEADER_SIZE:], view[:HEADER_SIZE])
                authenticated = True
            except InvalidTag:
                pass
        finally:
            _rw_open_end(self._receiver, authenticated)
        if not authenticated:
            raise error_for(ERR_AUTH)
        return plaintext

    def open(self, record: Buffer) -> bytes:
        src = record if type(record) is bytes else _from_buffer(record)
        size = len(src) - self._overhead
        if size >= self._large:
            return self._open_openssl(record, src)
        return self._open_native(src, size)

    def _open_native(self, src: Any, size: int) -> bytes:
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
            self._drop_stale_recv_aead()
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
        if self._large == _NEVER:  # AEGIS-256 (or a stale build): all in C
            rc = lib.rw_seal_batch(
                self._sender, src, len(src), _from_buffer("uint64_t[]", in_off), count,
                view, len(view), _from_buffer("uint64_t[]", out_off, require_writable=True),
            )
            if rc < 0:
                raise error_for(rc)
            return PackedRecords(memoryview(target).cast("B"), out_off)
        deferred = ffi.new("uint64_t[1]")
        rc = lib.rw_seal_batch_begin(
            self._sender, src, len(src), _from_buffer("uint64_t[]", in_off), count,
            view, len(view), _from_buffer("uint64_t[]", out_off, require_writable=True),
            self._large, deferred,
        )
        if rc < 0:
            raise error_for(rc)
        records = memoryview(target).cast("B")
        if deferred[0]:
            try:  # the sender's lock is held until rw_sender_end
                self._seal_deferred(data, in_off, records, out_off, int(deferred[0]))
            finally:
                _rw_sender_end(self._sender)
        return PackedRecords(records, out_off)

    def _seal_deferred(self, data: Buffer, in_off: array[int], records: memoryview,
                       out_off: array[int], deferred: int) -> None:
        """Seals the batch's large messages, whose header and nonce C wrote."""
        epoch = int(lib.rw_sender_epoch(self._sender)).to_bytes(4, "big")
        aead = self._send_aead
        if aead is None or epoch != self._send_aead_epoch:
            aead = self._sender_aead(epoch)
        messages = _bytes_view(data)
        large = self._large
        for i in range(len(in_off) - 1):
            start, end = in_off[i], in_off[i + 1]
            if end - start >= large:
                at = out_off[i]
                nonce = records[at + HEADER_SIZE : at + _BODY].tobytes()
                aead.encrypt_into(nonce, messages[start:end], records[at : at + HEADER_SIZE],
                                  records[at + HEADER_SIZE : out_off[i + 1]])
                deferred -= 1
                if not deferred:
                    return

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
        c_in_off = _from_buffer("uint64_t[]", in_off)
        c_out_off = _from_buffer("uint64_t[]", out_off, require_writable=True)
        c_status = _from_buffer("int32_t[]", status, require_writable=True)
        if self._large == _NEVER:  # AEGIS-256 (or a stale build): all in C
            opened = lib.rw_open_batch(self._receiver, src, len(src), c_in_off, count, view,
                                       len(view), c_out_off, c_status)
            if opened < 0:
                raise error_for(opened)
        else:
            opened = self._open_stepped(data, src, in_off, count, target, view, out_off,
                                        c_in_off, c_out_off, c_status)
        errors: dict[int, RecordError] = {}
        if status[count] & EPOCH_ADVANCED:
            self.recv_epoch_advances += 1
            self._drop_stale_recv_aead()
        if opened != count:
            for index in range(count):
                code = status[index]
                if code < 0:
                    error = error_for(code)
                    assert isinstance(error, RecordError)
                    errors[index] = error
        return PackedOpenResult(memoryview(target).cast("B"), out_off, errors)

    def _open_stepped(self, data: Buffer, src: Any, in_off: array[int], count: int,
                      target: Buffer, view: Any, out_off: array[int], c_in_off: Any,
                      c_out_off: Any, c_status: Any) -> int:
        """open_packed in C steps that stop before each large record of the
        current epoch, which OpenSSL opens with the C lock held."""
        stop = ffi.new("uint64_t[1]")
        nonce = ffi.new("char[]", _NONCE)

        def step(start: int, prev: int) -> int:
            return int(lib.rw_open_batch_step(
                self._receiver, src, len(src), c_in_off, count, view, len(view), c_out_off,
                c_status, self._large, start, prev, nonce, stop))

        opened = step(0, OK)
        if opened < 0:
            raise error_for(opened)
        if stop[0] < count:
            # Stopped before a large record of the current epoch, lock held.
            records = _bytes_view(data)
            plain = memoryview(target).cast("B")
            try:
                while stop[0] < count:
                    i = int(stop[0])
                    start, end = in_off[i], in_off[i + 1]
                    at = out_off[i]
                    out = plain[at : at + end - start - self._overhead]
                    prev = OK
                    try:
                        self._pending_recv_aead().decrypt_into(
                            _unpack(nonce, _NONCE), records[start + HEADER_SIZE : end],
                            records[start : start + HEADER_SIZE], out)
                    except InvalidTag:
                        # decrypt_into has written unauthenticated plaintext.
                        out[:] = bytes(len(out))
                        prev = ERR_AUTH
                    more = step(i + 1, prev)
                    if more < 0:
                        raise error_for(more)
                    opened += more
            except BaseException:
                if stop[0] < count:  # still pending: release the lock
                    _rw_open_end(self._receiver, 0)
                raise
        return opened

    @property
    def native_open_threshold(self) -> int | None:
        """Hazmat, for the native fast path: the plaintext size from which
        records of the current epoch are opened by OpenSSL
        (:meth:`open_reserved_run`) rather than in C; None if none are."""
        return None if self._large == _NEVER else self._large

    def open_reserved_run(self, nonces: bytes, stride: int, records: list[memoryview],
                          outs: list[memoryview], ok: Any) -> None:
        """Hazmat, for the native fast path: open ``records`` (each header,
        then ciphertext and tag), which begin calls of the C core reserved
        (record ``j``'s nonce at ``nonces[j * stride:]``; the receiver's lock
        is held until the matching end call), into ``outs`` with OpenSSL;
        ``ok[j]`` = 1 if record ``j`` authenticated, else 0 with ``outs[j]``
        wiped (decrypt_into has written unauthenticated plaintext)."""
        aead = self._pending_recv_aead()
        decrypt_into = aead.decrypt_into
        at = 0
        for j, record in enumerate(records):
            out = outs[j]
            try:
                decrypt_into(nonces[at:at + _NONCE], record[HEADER_SIZE:],
                             record[:HEADER_SIZE], out)
                ok[j] = 1
            except InvalidTag:
                out[:] = bytes(len(out))
                ok[j] = 0
            at += stride

    @property
    def native_seal_threshold(self) -> int | None:
        """Hazmat, for the native fast path: the plaintext size from which
        records are sealed by OpenSSL (:meth:`seal_reserved_run`) rather
        than in C; None if none are."""
        return None if self._large == _NEVER else self._large

    def seal_reserved_run(self, messages: memoryview, offsets: array[int], out: memoryview,
                          run: list[tuple[int, int]]) -> None:
        """Hazmat, for the native fast path: seal the records a C call
        reserved (the sender's lock is held): for each ``(i, at)`` of
        ``run``, message ``i`` (``messages[offsets[i]:offsets[i + 1]]``)
        into the record at ``out[at:]``, whose header and nonce C wrote.
        Then releases the lock (rw_sender_end), whatever happens."""
        try:
            epoch = int(lib.rw_sender_epoch(self._sender)).to_bytes(4, "big")
            aead = self._send_aead
            if aead is None or epoch != self._send_aead_epoch:
                aead = self._sender_aead(epoch)
            encrypt_into = aead.encrypt_into
            tag = self._overhead - HEADER_SIZE
            for i, at in run:
                start, end = offsets[i], offsets[i + 1]
                nonce = out[at + HEADER_SIZE:at + _BODY].tobytes()
                encrypt_into(nonce, messages[start:end], out[at:at + HEADER_SIZE],
                             out[at + HEADER_SIZE:at + HEADER_SIZE + end - start + tag])
        finally:
            _rw_sender_end(self._sender)

    def note_native_epoch_advance(self) -> None:
        """Hazmat, for the native fast path: a call through
        :meth:`native_handles` advanced the receive epoch (what :meth:`open`
        counts itself; the old epoch's OpenSSL object goes)."""
        self.recv_epoch_advances += 1
        self._drop_stale_recv_aead()

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
        self._send_aead = None  # the old key's OpenSSL copy goes with it
        return int(lib.rw_sender_epoch(self._sender))

    def retire_previous_epoch(self) -> None:
        rc = lib.rw_receiver_retire_previous(self._receiver)
        if rc < 0:
            raise error_for(rc)
        self._drop_stale_recv_aead()

    def close(self) -> None:
        for rc in (lib.rw_sender_close(self._sender), lib.rw_receiver_close(self._receiver)):
            if rc < 0:
                raise error_for(rc)
        self._send_aead = self._recv_aead = None

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
        self._drop_stale_recv_aead()

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
