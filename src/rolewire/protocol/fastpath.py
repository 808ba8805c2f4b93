"""The native fast path: one call per read chunk, one call per flush.

Receiving (:class:`FastReceiver`): one native call takes a read chunk,
splits its frames, opens every record into one plaintext buffer and parses
the call header of every message (expanding CONTAINER records), returning
parallel arrays (:class:`Received`): status, type, call id, operation index
(in an :class:`OperationTable`), and the offsets of each operation name and
body in the buffer. No ``bytes`` object or tuple is made per message until
the caller asks for one (:meth:`Received.body`).

Sending (:func:`seal_frames`): queued call messages are sealed straight into
record frames in one buffer (one native call), optionally grouped into
CONTAINER records (docs/PROTOCOL.md, "Containers") so a burst of small
messages pays the per-record cost once per container, as TLS does per TLS
record. Use containers on ordered transports only.

Every native path has a pure-Python twin here, selected with ``native=False``,
by ``ROLEWIRE_PURE=1``, or automatically for a pure record layer; the twins
produce byte-identical buffers and arrays (tests/test_fastpath.py).

Sans-IO: bytes in, bytes and arrays out; no clock is read here (the record
layer notes when a receive epoch advanced, as it does for every open).
"""

from __future__ import annotations

import os
import struct
import threading
from array import array
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

from rolewire.errors import ConfigurationError, ProtocolViolation, RecordError
from rolewire.protocol.wire import (
    DEFAULT_MAX_FRAME,
    HEAD_SIZE,
    ITEM_HEAD_SIZE,
    MAX_OPERATION_NAME,
    FrameKind,
    MessageType,
)
from rolewire.record import EPOCH_ADVANCED, RecordLayer, error_for, native_library, status_of

__all__ = [
    "EPOCH_ADVANCED",
    "MSG",
    "SLOW",
    "STOP_END",
    "STOP_FULL",
    "STOP_HANDSHAKE",
    "FastReceiver",
    "OperationTable",
    "Received",
    "native_available",
    "seal_frames",
]

#: Entry status: the header was parsed (type, call id, operation, body valid).
MSG = 0
#: Entry status: decode ``plaintext(i)`` with the full decoder
#: (:func:`rolewire.protocol.wire.decode` / ``decode_container``): metadata,
#: an unknown or unusual type, truncation, a malformed container.
SLOW = 1
#: Why a feed stopped: everything handled (a partial frame stays buffered).
STOP_END = 0
#: A handshake frame is next: take it with :meth:`FastReceiver.take_frame`.
STOP_HANDSHAKE = 1
#: Internal: the arrays were full (feed continues by itself).
STOP_FULL = 2
#: Internal: a large record for OpenSSL (feed opens it and goes on).
STOP_EXTERNAL = 3

_LEN = struct.Struct(">I")
_ID = struct.Struct(">Q")
_PLAIN_TYPES = frozenset(range(int(MessageType.REQUEST), int(MessageType.CLOSE) + 1))
_CONTAINER = int(MessageType.CONTAINER)
_RECORD = int(FrameKind.RECORD)
_HANDSHAKE = int(FrameKind.HANDSHAKE)
# (EPOCH_ADVANCED, imported: the record layer's open status bit, which
# ``Received.flags`` carries for a record opened under a newer epoch.)
_ERR_FRAME = -101
_ERR_KIND = -102
_MIN_ITEM = HEAD_SIZE + ITEM_HEAD_SIZE
#: Records of one run for OpenSSL, reserved by one native call.
_RUN = 64
_CONTAINER_HEAD = bytes((_CONTAINER,)) + bytes(HEAD_SIZE - 1)

_NATIVE = native_library()
_ffi: Any = _NATIVE[0] if _NATIVE else None
_lib: Any = _NATIVE[1] if _NATIVE else None
_HAVE_NATIVE = _lib is not None and hasattr(_lib, "rw_fp_recv")
# An extension built from older sources opens every record in C (libsodium):
# the same bytes, only slower for large ChaCha20-Poly1305 records.
_HAVE_EXTERNAL = _HAVE_NATIVE and hasattr(_lib, "rw_fp_recv_resume")
_HAVE_SEAL_EXTERNAL = _HAVE_NATIVE and hasattr(_lib, "rw_fp_seal_frames_ext")
# Output buffers need no zeroing first (a pass over every byte of a flush).
_new_uncleared: Any = _ffi.new_allocator(should_clear_after_alloc=False) if _ffi else None


def native_available() -> bool:
    """True if the C fast path is built and not disabled by ROLEWIRE_PURE."""
    return _HAVE_NATIVE and os.environ.get("ROLEWIRE_PURE", "") in ("", "0")


def _use_native(layer: RecordLayer, native: bool | None) -> bool:
    can = native_available() and getattr(layer, "backend", "") == "c"
    if native and not can:
        raise ConfigurationError("the native fast path needs the C record backend")
    return can if native is None else native


class OperationTable:
    """Operation names mapped to small indexes (one table per service, shared
    by its connections). Built from names the application registered, never
    from names a peer sends: an unknown name gets index -1 and the caller
    decodes it itself."""

    def __init__(self, names: Iterable[str] = (), capacity: int = 1024) -> None:
        if not 1 <= capacity <= 4096:
            raise ConfigurationError("capacity must be 1..4096")
        self.capacity = capacity
        self.names: list[str] = []
        self._index: dict[bytes, int] = {}
        self._by_name: dict[str, int] = {}
        self._native: Any = None
        if _HAVE_NATIVE:
            table = _lib.rw_optable_new(capacity)
            if table == _ffi.NULL:
                raise MemoryError("cannot allocate an operation table")
            self._native = _ffi.gc(table, _lib.rw_optable_free)
        for name in names:
            self.add(name)

    def add(self, name: str) -> int:
        """The index of ``name`` (added if new)."""
        encoded = name.encode("utf-8")
        if len(encoded) > MAX_OPERATION_NAME:
            raise ConfigurationError("operation name longer than 255 bytes")
        found = self._index.get(encoded)
        if found is not None:
            return found
        if len(self.names) >= self.capacity:
            raise ConfigurationError("operation table is full")
        index = len(self.names)
        if self._native is not None:
            rc = _lib.rw_optable_add(self._native, encoded, len(encoded))
            if rc != index:
                raise ConfigurationError("native operation table out of step")
        self._index[encoded] = index
        self._by_name[name] = index
        self.names.append(name)
        return index

    def __contains__(self, name: object) -> bool:
        """``name`` (a str) has an index."""
        return name in self._by_name

    def find(self, encoded: bytes | bytearray) -> int:
        """Index of an encoded name, or -1."""
        return self._index.get(bytes(encoded), -1)

    def __len__(self) -> int:
        return len(self.names)


class Received:
    """The messages of one :meth:`FastReceiver.feed`, as parallel arrays
    (valid until the next feed). Entry ``i`` has ``status[i]``: :data:`MSG`,
    :data:`SLOW`, or a negative record status (a record that did not open:
    :meth:`error`)."""

    __slots__ = ("body_len", "body_off", "buffer", "call_ids", "count", "flags", "native_views",
                 "op_index", "op_len", "op_off", "opened", "out_used", "records", "status",
                 "types")

    def __init__(self, cap: int, buffer_size: int) -> None:
        self.buffer = bytearray(buffer_size)
        self.status = array("i", bytes(4 * cap))
        self.types = array("B", bytes(cap))
        self.call_ids = array("Q", bytes(8 * cap))
        self.op_index = array("i", bytes(4 * cap))
        self.op_off = array("I", bytes(4 * cap))
        self.op_len = array("I", bytes(4 * cap))
        self.body_off = array("I", bytes(4 * cap))
        self.body_len = array("I", bytes(4 * cap))
        self.count = self.records = self.opened = self.flags = self.out_used = 0
        #: The arrays as C pointers, made once per batch (``from_buffer``
        #: costs as much as a small record's open; a batch is reused).
        self.native_views: tuple[Any, ...] | None = None

    def views(self) -> tuple[Any, ...]:
        """The buffer and arrays as the pointer arguments of ``rw_fp_recv``."""
        views = self.native_views
        if views is None:
            fb = _ffi.from_buffer
            views = self.native_views = (
                fb(self.buffer, require_writable=True), len(self.buffer), len(self.status),
                fb("int32_t[]", self.status, require_writable=True),
                fb("uint8_t[]", self.types, require_writable=True),
                fb("uint64_t[]", self.call_ids, require_writable=True),
                fb("int32_t[]", self.op_index, require_writable=True),
                fb("uint32_t[]", self.op_off, require_writable=True),
                fb("uint32_t[]", self.op_len, require_writable=True),
                fb("uint32_t[]", self.body_off, require_writable=True),
                fb("uint32_t[]", self.body_len, require_writable=True))
        return views

    def message_bytes(self, i: int) -> bytes:
        """The whole call message of a MSG entry (header, name, body)."""
        start = self.op_off[i] - HEAD_SIZE
        return bytes(self.buffer[start:self.body_off[i] + self.body_len[i]])

    @property
    def capacity(self) -> int:
        return len(self.status)

    def body(self, i: int) -> bytes:
        """The body of entry ``i`` (for a SLOW entry: its whole plaintext)."""
        start = self.body_off[i]
        return bytes(self.buffer[start:start + self.body_len[i]])

    plaintext = body

    def operation(self, i: int) -> bytes:
        """The encoded operation name of a MSG entry."""
        start = self.op_off[i]
        return bytes(self.buffer[start:start + self.op_len[i]])

    def error(self, i: int) -> RecordError:
        """The RecordError of an entry whose record did not open."""
        err = error_for(self.status[i])
        assert isinstance(err, RecordError)
        return err


class FastReceiver:
    """Turns a stream of chunks into :class:`Received` batches for one
    record layer (one per connection). Partial frames are kept across feeds;
    a handshake frame stops the batch (:attr:`handshake_pending`) until the
    caller takes it with :meth:`take_frame`."""

    def __init__(self, layer: RecordLayer, ops: OperationTable | None = None, *,
                 max_frame: int = DEFAULT_MAX_FRAME, native: bool | None = None,
                 shared_batch: bool = False) -> None:
        self.layer = layer
        self.ops = ops
        self.max_frame = max_frame
        self.native = _use_native(layer, native)
        self._tail: bytes | bytearray = b""
        self._need = 0  # size of the partial frame at the start of _tail (0: unknown)
        self._batch: Received | None = None
        # A shared batch: one per thread, for callers that consume every
        # feed before the next one on that thread (a connection does, inside
        # receive_data); idle connections then hold no batch memory.
        self._shared = shared_batch
        self.handshake_pending = False
        if self.native:
            self._receiver = layer.native_handles()[1]  # type: ignore[attr-defined]
            self._res = _ffi.new("rw_fp_result *")
            self._ops_c = ops._native if ops is not None else _ffi.NULL
            # Large ChaCha20-Poly1305 records go to OpenSSL, as the record
            # layer's own open does (about twice libsodium's speed there):
            # the C loop stops before a run of them (consecutive ones,
            # reserved with the receiver's lock held), Python opens them,
            # one more C call commits them and goes on. One stop per run,
            # not per record: a stop costs ~4 us of Python and cffi.
            threshold = getattr(layer, "native_open_threshold", None)
            self._ext: Any = None
            if threshold is not None and _HAVE_EXTERNAL:
                ext = self._ext = _ffi.new("rw_fp_ext *")
                ext.min_record = threshold + layer.suite.overhead
                ext.overhead = layer.suite.overhead
                ext.max = _RUN
                self._ext_arrays = (_ffi.new("uint64_t[]", _RUN), _ffi.new("uint64_t[]", _RUN),
                                    _ffi.new("uint64_t[]", _RUN),
                                    _ffi.new("uint8_t[]", _RUN * _lib.RW_FP_EXT_NONCE),
                                    _ffi.new("int32_t[]", _RUN))
                (ext.frame_off, ext.rec_len, ext.out_off, ext.nonces,
                 ext.ok) = self._ext_arrays

    @property
    def buffered(self) -> int:
        """Bytes kept of an incomplete frame (or behind a handshake frame)."""
        return len(self._tail)

    def take_buffered(self) -> bytes:
        """Hand back the bytes kept (a partial frame, or everything behind a
        pending handshake frame, that frame included) and forget them; for a
        caller that goes on with another decoder."""
        tail = bytes(self._tail)
        self._tail = b""
        self._need = 0
        self.handshake_pending = False
        return tail

    def _new_batch(self, size: int) -> Received:
        """A batch large enough for a chunk of ``size`` bytes (the one kept is
        smaller: it replaces it)."""
        batch = Received(max(size // _MIN_ITEM + 2, 64), max(size, 1024))
        if self._shared:
            _shared_batches.batch = batch
        else:
            self._batch = batch
        return batch

    def feed(self, data: bytes = b"") -> Received:
        """Handle ``data`` (appended to what is buffered): every complete
        record frame up to the end or the next handshake frame. Raises
        :class:`ProtocolViolation` for a frame of bad length or kind (the
        connection is unusable)."""
        tail = self._tail
        if tail and self._need and len(tail) + len(data) < self._need:
            # Still inside one large frame: append, no copy of what is kept.
            if not isinstance(tail, bytearray):
                tail = self._tail = bytearray(tail)
            tail += data
            return _EMPTY
        if not tail:
            buf = bytes(data)
        elif isinstance(tail, bytearray):
            tail += data
            buf = bytes(tail)
        else:
            buf = tail + data
        if self.handshake_pending:
            self._tail = buf
            return _EMPTY
        batch = _shared_batches.batch if self._shared else self._batch
        if batch is None or len(batch.buffer) < len(buf) or \
                len(batch.status) < len(buf) // _MIN_ITEM + 2:
            batch = self._new_batch(len(buf))
        if self.native:
            consumed, stop = self._feed_native(buf, batch)
        else:
            consumed, stop = self._feed_pure(buf, batch)
        if batch.flags & EPOCH_ADVANCED and self.native:
            # What CRecordLayer.open counts for the session's grace period.
            self.layer.note_native_epoch_advance()  # type: ignore[attr-defined]
        self.handshake_pending = stop == STOP_HANDSHAKE
        if consumed < len(buf):
            self._tail = buf[consumed:]
            self._need = (4 + _LEN.unpack_from(buf, consumed)[0]
                          if stop == STOP_END and len(buf) - consumed >= 4 else 0)
        else:
            self._tail = b""
            self._need = 0
        return batch

    def take_frame(self) -> tuple[FrameKind, bytes] | None:
        """The buffered handshake frame that stopped the last feed (or None)."""
        if not self.handshake_pending:
            return None
        buf = self._tail
        (length,) = _LEN.unpack_from(buf)
        frame = bytes(buf[5:4 + length])
        self._tail = buf[4 + length:]
        self._need = 0
        self.handshake_pending = False
        return FrameKind.HANDSHAKE, frame

    # -- native ---------------------------------------------------------------
    def _feed_native(self, buf: bytes, batch: Received) -> tuple[int, int]:
        res = self._res
        ext = self._ext
        if ext is not None:
            views = batch.views()
            rc = _lib.rw_fp_recv_ext(self._receiver, self._ops_c, buf, len(buf),
                                     self.max_frame, *views, res, ext)
            while rc == 0 and res.stop == STOP_EXTERNAL:
                rc = self._open_run(buf, batch, views)
        else:
            rc = _lib.rw_fp_recv(self._receiver, self._ops_c, buf, len(buf), self.max_frame,
                                 *batch.views(), res)
        if rc == _ERR_FRAME:
            raise ProtocolViolation("frame length out of range")
        if rc == _ERR_KIND:
            raise ProtocolViolation("unknown frame kind")
        if rc < 0:
            raise error_for(rc)
        batch.count, batch.records, batch.opened = res.count, res.records, res.opened
        batch.flags, batch.out_used = res.flags, res.out_used
        # Capacity is sized so the batch never fills (STOP_FULL cannot occur).
        return int(res.consumed), int(res.stop)

    def _open_run(self, buf: bytes, batch: Received, views: tuple[Any, ...]) -> int:
        """Open the run of records the C loop stopped before (OpenSSL,
        straight into the batch buffer), then let it go on; its code."""
        ext = self._ext
        frame_off, rec_len, out_off, nonces, ok = self._ext_arrays
        count = ext.count
        overhead = ext.overhead
        data = memoryview(buf)
        plain = memoryview(batch.buffer)
        records = []
        outs = []
        for j in range(count):
            at = frame_off[j] + 5
            end = at + rec_len[j]
            records.append(data[at:end])
            start = out_off[j]
            outs.append(plain[start:start + rec_len[j] - overhead])
        try:
            self.layer.open_reserved_run(  # type: ignore[attr-defined]
                _ffi.buffer(nonces, count * _lib.RW_FP_EXT_NONCE)[:], _lib.RW_FP_EXT_NONCE,
                records, outs, ok)
        except BaseException:
            _lib.rw_open_end(self._receiver, 0)  # release the lock; the batch is void
            raise
        return int(_lib.rw_fp_recv_resume(self._receiver, self._ops_c, buf, len(buf),
                                          self.max_frame, *views, self._res, ext))

    # -- pure twin --------------------------------------------------------------
    def _feed_pure(self, buf: bytes, batch: Received) -> tuple[int, int]:
        layer, ops = self.layer, self.ops
        out = batch.buffer
        size, pos, used, count = len(buf), 0, 0, 0
        records = opened = flags = 0
        stop = STOP_END
        limit = self.max_frame + 1
        cap = batch.capacity

        def entry(status: int, kind: int, call_id: int, op: int, op_off: int, op_len: int,
                  body_off: int, body_len: int) -> None:
            nonlocal count
            batch.status[count] = status
            batch.types[count] = kind
            batch.call_ids[count] = call_id
            batch.op_index[count] = op
            batch.op_off[count] = op_off
            batch.op_len[count] = op_len
            batch.body_off[count] = body_off
            batch.body_len[count] = body_len
            count += 1

        def message(base: int, length: int) -> None:
            kind = out[base] if length else 0
            if length >= HEAD_SIZE and kind in _PLAIN_TYPES and HEAD_SIZE + out[base + 9] <= length:
                op_len = out[base + 9]
                op_at = base + HEAD_SIZE
                index = ops.find(out[op_at:op_at + op_len]) if ops is not None else -1
                entry(MSG, kind, _ID.unpack_from(out, base + 1)[0], index, op_at, op_len,
                      op_at + op_len, length - HEAD_SIZE - op_len)
            else:
                entry(SLOW, kind, 0, -1, 0, 0, base, length)

        while size - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length < 1 or length > limit:
                raise ProtocolViolation("frame length out of range")
            if length > size - pos - 4:
                break
            kind = buf[pos + 4]
            if kind == _HANDSHAKE:
                stop = STOP_HANDSHAKE
                break
            if kind != _RECORD:
                raise ProtocolViolation("unknown frame kind")
            rec_len = length - 1
            if count + rec_len // _MIN_ITEM + 1 > cap or used + rec_len > len(out):
                stop = STOP_FULL
                break
            before = layer.recv_epoch
            records += 1
            try:
                plaintext = layer.open(buf[pos + 5:pos + 4 + length])
            except RecordError as exc:
                pos += 4 + length
                entry(status_of(exc), 0, 0, -1, 0, 0, 0, 0)
                continue
            pos += 4 + length
            opened += 1
            if layer.recv_epoch != before:
                flags |= EPOCH_ADVANCED
            n = len(plaintext)
            out[used:used + n] = plaintext
            items = _container_items(out, used, n)
            if items is not None:
                for item_at, item_len in items:
                    message(item_at, item_len)
            else:
                message(used, n)
            used += n
        batch.count, batch.records, batch.opened, batch.flags = count, records, opened, flags
        batch.out_used = used
        return pos, stop


class _SharedBatches(threading.local):
    batch: Received | None = None
    #: seal_frames' step state and arrays (_seal_stepped).
    seal_ext: tuple[Any, Any, Any] | None = None


_shared_batches = _SharedBatches()
#: What a feed that completes no frame returns (count 0; never written to).
_EMPTY = Received(1, 1)


def _container_items(out: bytearray, base: int, n: int) -> list[tuple[int, int]] | None:
    """(offset, length) of each item if out[base:base+n] is a well-formed
    container (the rules of wire.decode_container), else None."""
    if n < HEAD_SIZE or out[base] != _CONTAINER or any(out[base + 1:base + HEAD_SIZE]):
        return None
    items = []
    pos, end = base + HEAD_SIZE, base + n
    while pos < end:
        if end - pos < ITEM_HEAD_SIZE:
            return None
        (length,) = _LEN.unpack_from(out, pos)
        pos += ITEM_HEAD_SIZE
        if length < HEAD_SIZE or length > end - pos or out[pos] & 0x7F == _CONTAINER:
            return None
        items.append((pos, length))
        pos += length
    return items or None


def _groups(lengths: Sequence[int], container_max: int) -> list[tuple[int, int]]:
    """[start, end) runs of messages: greedy containers of at most
    ``container_max`` plaintext bytes; a run of one is sent as is (the rule
    rw_fp_seal_frames follows)."""
    runs = []
    i, n = 0, len(lengths)
    while i < n:
        j, size = i, HEAD_SIZE
        if container_max:
            while j < n and size + ITEM_HEAD_SIZE + lengths[j] <= container_max:
                size += ITEM_HEAD_SIZE + lengths[j]
                j += 1
        if j - i < 2:
            j = i + 1
        runs.append((i, j))
        i = j
    return runs


def seal_frames(layer: RecordLayer, messages: Sequence[bytes], container_max: int = 0, *,
                native: bool | None = None) -> tuple[bytes, int, int]:
    """Seal encoded call messages into record frames, in order; returns
    ``(frames, records, flags)`` (``flags`` has bit 1 when a soft limit was
    reached: rekey). With ``container_max`` (bytes, at most the layer's
    ``max_plaintext``) consecutive messages are grouped into CONTAINER
    records of at most that size. The caller applies the rekeying policy
    before (the session does)."""
    if not messages:
        return b"", 0, 0
    if container_max and not HEAD_SIZE + 2 * ITEM_HEAD_SIZE <= container_max \
            <= layer.limits.max_plaintext:
        raise ConfigurationError("container_max must be 18..max_plaintext bytes")
    if _use_native(layer, native):
        sender = layer.native_handles()[0]  # type: ignore[attr-defined]
        data = b"".join(messages)
        offsets = array("Q", accumulate(map(len, messages), initial=0))
        need = len(data) + len(messages) * (5 + layer.suite.overhead)
        out = _new_uncleared("char[]", need)  # every byte returned is written
        flags = _ffi.new("int32_t *")
        records = _ffi.new("uint32_t *")
        c_offsets = _ffi.from_buffer("uint64_t[]", offsets)
        threshold = getattr(layer, "native_seal_threshold", None)
        if threshold is not None and _HAVE_SEAL_EXTERNAL and len(data) >= threshold:
            written = _seal_stepped(layer, sender, data, offsets, c_offsets, container_max,
                                    out, need, flags, records, threshold)
        else:
            written = _lib.rw_fp_seal_frames(sender, data, len(data), c_offsets, len(messages),
                                             container_max, out, need, flags, records)
        if written < 0:
            raise error_for(written)
        return _ffi.unpack(out, written), int(records[0]), int(flags[0])
    parts: list[bytes] = []
    flags_pure = 0
    seal = layer.seal
    pack = _LEN.pack
    runs = _groups([len(m) for m in messages], container_max)
    for start, end in runs:
        if end - start == 1:
            plaintext = messages[start]
        else:  # the layout of wire.encode_container, unchecked like the C path
            items = [pack(len(m)) + m for m in messages[start:end]]
            plaintext = _CONTAINER_HEAD + b"".join(items)
        record = seal(plaintext)
        if layer.rekey_due:
            flags_pure |= 1
        parts.append(pack(len(record) + 1) + b"\x02")
        parts.append(record)
    return b"".join(parts), len(runs), flags_pure


def _seal_stepped(layer: RecordLayer, sender: Any, data: bytes, offsets: array[int],
                  c_offsets: Any, container_max: int, out: Any, need: int, flags: Any,
                  records: Any, threshold: int) -> int:
    """rw_fp_seal_frames in steps: each run of messages sealed as records of
    their own with at least ``threshold`` bytes is reserved by C and sealed
    by OpenSSL (the record layer's own choice for them), straight into
    ``out``. Returns the bytes written (or a negative code)."""
    scratch = _shared_batches.seal_ext
    if scratch is None:  # one per thread, reused (a call leaves nothing in it)
        scratch = _shared_batches.seal_ext = (_ffi.new("rw_fp_seal_ext *"),
                                              _ffi.new("uint64_t[]", _RUN),
                                              _ffi.new("uint64_t[]", _RUN))
        scratch[0].msg_index, scratch[0].rec_off = scratch[1], scratch[2]
    ext, msg_index, rec_off = scratch
    ext.min_plaintext = threshold
    ext.overhead = layer.suite.overhead
    ext.max = _RUN
    ext.next = ext.at = ext.count = 0
    count = len(offsets) - 1
    view = None
    while True:
        written = _lib.rw_fp_seal_frames_ext(sender, data, len(data), c_offsets, count,
                                             container_max, out, need, flags, records, ext)
        if written < 0 or not ext.count:
            return int(written)
        if view is None:
            view = memoryview(_ffi.buffer(out))
        # The sender's lock is held until rw_sender_end (in the layer).
        layer.seal_reserved_run(  # type: ignore[attr-defined]
            memoryview(data), offsets, view,
            [(int(msg_index[j]), int(rec_off[j])) for j in range(ext.count)])
