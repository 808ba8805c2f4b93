"""Stream framing for TCP (sans-IO).

Every frame is ``length u32 | kind u8 | payload`` where ``length`` counts
``kind`` and ``payload``. ``kind`` 1 carries handshake bytes, 2 one record.
Frames are bounded: a peer announcing a longer frame is cut off before any
of it is buffered.
"""

from __future__ import annotations

import enum
import struct

from rolewire.errors import ProtocolViolation

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "FrameKind",
    "default_max_frame",
    "encode_frame",
    "encode_records",
]

_LEN = struct.Struct(">I")
#: Largest frame accepted by default: a 1 MiB record plus its overhead.
DEFAULT_MAX_FRAME = (1 << 20) + 64


def default_max_frame(config: object = None) -> int:
    """The frame bound for a handshake config: its largest record (the
    record limits' ``max_plaintext`` plus the worst-case overhead of 46
    bytes, rounded up to 64) or its largest handshake message, whichever is
    larger."""
    limits = getattr(config, "record_limits", None)
    max_plaintext = getattr(limits, "max_plaintext", 1 << 20)
    max_message = getattr(config, "max_message_size", 64 * 1024)
    return max(max_plaintext + 64, max_message)


class FrameKind(enum.IntEnum):
    HANDSHAKE = 1
    RECORD = 2


def encode_frame(kind: FrameKind, payload: bytes) -> bytes:
    return _LEN.pack(len(payload) + 1) + bytes((kind,)) + payload


def encode_records(records: list[bytes]) -> bytes:
    """Many record frames as one buffer (one write on the socket)."""
    pack = _LEN.pack
    parts: list[bytes] = []
    append = parts.append
    for record in records:
        append(pack(len(record) + 1) + b"\x02")
        append(record)
    return b"".join(parts)


class FrameDecoder:
    """Feed bytes, get complete frames back; keeps partial data."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._need = 0  # bytes the buffered partial frame needs in total

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def pending_frame(self) -> int:
        """Size (length field included) that the partial frame being
        buffered announced in its header; 0 if there is none or its header
        is incomplete. Lets a caller refuse a frame it will not accept
        before its bytes arrive (e.g. a responder before authentication)."""
        return self._need if self._buffer else 0

    def feed(self, data: bytes) -> list[tuple[FrameKind, bytes]]:
        """Returns the frames completed by ``data``; raises
        :class:`ProtocolViolation` on an oversized or unknown frame."""
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return []  # still inside one large frame: no copy, no parse
            buffer: bytes = bytes(self._buffer)
        else:
            buffer = bytes(data)
        frames: list[tuple[FrameKind, bytes]] = []
        append = frames.append
        unpack = _LEN.unpack_from
        kinds = _KINDS
        limit = self.max_frame + 1
        size = len(buffer)
        position = 0
        self._need = 0
        while size - position >= 4:
            (length,) = unpack(buffer, position)
            if length < 1 or length > limit:
                raise ProtocolViolation("frame length out of range")
            end = position + 4 + length
            if end > size:
                self._need = end - position
                break
            kind = kinds.get(buffer[position + 4])
            if kind is None:
                raise ProtocolViolation("unknown frame kind")
            append((kind, buffer[position + 5 : end]))
            position = end
        if position < size:
            self._buffer = bytearray(buffer[position:]) if position else bytearray(buffer)
        else:
            self._buffer = bytearray()
        return frames


_KINDS = {int(k): k for k in FrameKind}
