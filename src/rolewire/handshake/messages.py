"""Handshake message encoding and parsing (docs/PROTOCOL.md, "Handshake /
Messages"). Pure functions over bytes; every parser raises only
:class:`~rolewire.errors.MalformedHandshakeMessage` (or its subclass
:class:`~rolewire.errors.HandshakeMessageTooLarge`) on bad input.

Every handshake message is one frame::

    type u8 | length u24 (big-endian) | body[length]

All integers are big-endian. ``u16<...>``/``u24<...>`` below mean "a length of
that width, then that many bytes".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rolewire.errors import HandshakeMessageTooLarge, MalformedHandshakeMessage
from rolewire.handshake.cookie import COOKIE_SIZE, cookie_mac
from rolewire.handshake.suites import MLKEM768_CT_SIZE, HandshakeSuite, KexGroup
from rolewire.roles.base import HINT_SIZE, MAX_ROLES, RoleKind
from rolewire.roles.jpake import ROUND1_SIZE

__all__ = [
    "FRAME_HEADER_SIZE",
    "HINT_SIZE",
    "MAX_CHAIN",
    "MAX_MESSAGE_SIZE",
    "MAX_PASSWORD_SLOTS",
    "MAX_ROLES",
    "MAX_SUITES",
    "PAD_BUCKET",
    "PROTOCOL_VERSION",
    "RANDOM_SIZE",
    "CookieReply",
    "Flag",
    "Hello",
    "HelloRetry",
    "InitiatorAuth",
    "InitiatorFinish",
    "MsgType",
    "ProofEntry",
    "Reject",
    "ResponderAuth",
    "ResponderHello",
    "RoleEntry",
    "RoleKind",
    "cookie_mac",
    "encode_chain",
    "encode_proofs",
    "encode_role_data",
    "encode_role_entries",
    "frame",
    "pad",
    "parse_chain",
    "parse_frame_header",
    "parse_message",
    "parse_proofs",
    "parse_role_data",
    "parse_role_entries",
    "unpad",
]

PROTOCOL_VERSION = 2
FRAME_HEADER_SIZE = 4
#: Default bound on one handshake message, header included.
MAX_MESSAGE_SIZE = 64 * 1024
#: Most certificates in one chain (leaf first).
MAX_CHAIN = 8
MAX_SUITES = 32
RANDOM_SIZE = 32
#: Most J-PAKE slots in one Hello (each costs the responder a J-PAKE run).
MAX_PASSWORD_SLOTS = 8
#: Encrypted handshake fields are padded to a multiple of this many bytes.
PAD_BUCKET = 256


class MsgType(enum.IntEnum):
    HELLO = 0x01
    HELLO_RETRY = 0x02
    RESPONDER_HELLO = 0x03
    INITIATOR_AUTH = 0x04
    RESPONDER_AUTH = 0x05
    INITIATOR_FINISH = 0x06
    COOKIE_REPLY = 0x07
    REJECT = 0x0F


class Flag(enum.IntFlag):
    #: The sender can prove this role (holds the key / password / certificate).
    PROVE = 0x01
    #: The sender can verify this role (holds the key / password / anchors).
    VERIFY = 0x02


_FLAGS_ALL = int(Flag.PROVE | Flag.VERIFY)


class _Reader:
    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def fail(self, why: str) -> MalformedHandshakeMessage:
        return MalformedHandshakeMessage(f"{self.what}: {why}")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise self.fail("truncated")
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise self.fail("truncated")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def vec16(self) -> bytes:
        return self.take(self.u16())

    def vec24(self) -> bytes:
        return self.take(self.u24())

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail("trailing bytes")


def _truncated(what: str) -> MalformedHandshakeMessage:
    return MalformedHandshakeMessage(f"{what}: truncated")


def _vec24_at(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """``u24<...>`` at ``pos``: the field and the position after it (the
    parsers of every message below read their fields inline, with the
    checks of :class:`_Reader`: a method call per field costs more than the
    field's own work)."""
    end = pos + 3
    if end > len(buf):
        raise _truncated(what)
    stop = end + int.from_bytes(buf[pos:end], "big")
    if stop > len(buf):
        raise _truncated(what)
    return buf[end:stop], stop


def _two_vec24(body: bytes, what: str) -> tuple[bytes, bytes]:
    """``u24<a> | u24<b>`` and nothing after (messages 3 to 5)."""
    a, pos = _vec24_at(body, 0, what)
    b, pos = _vec24_at(body, pos, what)
    if pos != len(body):
        raise MalformedHandshakeMessage(f"{what}: trailing bytes")
    return a, b


def _u16(n: int) -> bytes:
    if n > 0xFFFF:
        raise HandshakeMessageTooLarge("field longer than 65535 bytes")
    return n.to_bytes(2, "big")


def _u24(n: int) -> bytes:
    if n > 0xFFFFFF:
        raise HandshakeMessageTooLarge("field longer than 2^24-1 bytes")
    return n.to_bytes(3, "big")


def frame(msg_type: int, body: bytes, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
    """``type u8 | length u24 | body``; refuses bodies over the bound."""
    if FRAME_HEADER_SIZE + len(body) > max_size:
        raise HandshakeMessageTooLarge(
            f"handshake message of {FRAME_HEADER_SIZE + len(body)} bytes exceeds {max_size}")
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


def parse_frame_header(header: bytes | bytearray,
                       max_size: int = MAX_MESSAGE_SIZE) -> tuple[int, int]:
    """``(type, body_length)`` from the first 4 bytes of ``header`` (a frame
    header, or a buffer that starts with one); checks the size bound."""
    msg_type = header[0]
    length = int.from_bytes(header[1:4], "big")
    if FRAME_HEADER_SIZE + length > max_size:
        raise HandshakeMessageTooLarge(
            f"handshake message of {FRAME_HEADER_SIZE + length} bytes exceeds {max_size}")
    return msg_type, length


# --- messages ----------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Message 1, initiator -> responder, in the clear::

        version u8 | random[32] | suites: u8 n, n x u8 (preference order)
        | key share: group u8, u16<ecdh_public || mlkem_ek>
        | hints: u8 n (<= 64), n x hint[16]
        | password slots: u8 m (<= 8), m x J-PAKE round 1 [192]
        | cookie: u8 c (0 or 16), cookie_mac[c]

    A hint names a key or certificate role with its kind and flags, keyed
    so that only holders of the role's key or anchor recognise it; the
    count is padded to a bucket with random hints. A password slot is an
    anonymous J-PAKE round 1 (the role is named only in message 3,
    encrypted), also padded to a bucket.
    """

    version: int
    random: bytes
    suites: tuple[int, ...]
    group: int
    share: bytes
    hints: tuple[bytes, ...]
    slots: tuple[bytes, ...] = ()
    #: ``cookie_mac(cookie, cookie_data())`` after a CookieReply, else empty.
    cookie_mac: bytes = b""

    def cookie_data(self) -> bytes:
        """The body bytes the cookie MAC covers: everything before the
        cookie field."""
        return b"".join([bytes((self.version,)), self.random,
                         bytes((len(self.suites), *self.suites)), bytes((self.group,)),
                         _u16(len(self.share)), self.share, bytes((len(self.hints),)),
                         *self.hints, bytes((len(self.slots),)), *self.slots])

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        if not 1 <= len(self.suites) <= MAX_SUITES:
            raise MalformedHandshakeMessage("Hello: 1..32 suites")
        if len(self.hints) > MAX_ROLES:
            raise HandshakeMessageTooLarge(f"Hello: more than {MAX_ROLES} roles")
        if len(self.slots) > MAX_PASSWORD_SLOTS:
            raise HandshakeMessageTooLarge(f"Hello: more than {MAX_PASSWORD_SLOTS} password slots")
        if any(len(h) != HINT_SIZE for h in self.hints):
            raise MalformedHandshakeMessage("Hello: hints are 16 bytes")
        if any(len(r) != ROUND1_SIZE for r in self.slots):
            raise MalformedHandshakeMessage("Hello: J-PAKE round 1 is 192 bytes")
        if len(self.cookie_mac) not in (0, COOKIE_SIZE):
            raise MalformedHandshakeMessage("Hello: a cookie MAC is 16 bytes")
        body = self.cookie_data() + bytes((len(self.cookie_mac),)) + self.cookie_mac
        return frame(MsgType.HELLO, body, max_size)

    def same_except_share(self, other: Hello) -> bool:
        return (self.version, self.random, self.suites, self.hints, self.slots) == (
            other.version, other.random, other.suites, other.hints, other.slots)


def _parse_hello(body: bytes) -> Hello:
    what = "Hello"
    size = len(body)
    pos = 2 + RANDOM_SIZE
    if pos > size:
        raise _truncated(what)
    version = body[0]
    random = body[1:pos - 1]
    n = body[pos - 1]
    if not 1 <= n <= MAX_SUITES:
        raise MalformedHandshakeMessage(f"{what}: suite count out of range")
    if pos + n > size:
        raise _truncated(what)
    suites = tuple(body[pos:pos + n])
    if len(set(suites)) != n:
        raise MalformedHandshakeMessage(f"{what}: duplicate suite")
    pos += n
    if pos + 3 > size:  # group u8, share length u16
        raise _truncated(what)
    group = body[pos]
    start = pos + 3
    pos = start + int.from_bytes(body[pos + 1:start], "big")
    if pos >= size:  # the share and the hint count
        raise _truncated(what)
    share = body[start:pos]
    n = body[pos]
    if n > MAX_ROLES:
        raise HandshakeMessageTooLarge(f"Hello: more than {MAX_ROLES} roles")
    start = pos + 1
    pos = start + HINT_SIZE * n
    if pos > size:
        raise _truncated(what)
    hints = tuple(body[i:i + HINT_SIZE] for i in range(start, pos, HINT_SIZE))
    if len(set(hints)) != n:
        raise MalformedHandshakeMessage(f"{what}: duplicate role hint")
    if pos >= size:  # the slot count
        raise _truncated(what)
    m = body[pos]
    if m > MAX_PASSWORD_SLOTS:
        raise HandshakeMessageTooLarge(f"Hello: more than {MAX_PASSWORD_SLOTS} password slots")
    start = pos + 1
    pos = start + ROUND1_SIZE * m
    if pos >= size:  # the slots and the cookie MAC length
        raise _truncated(what)
    slots = tuple(body[i:i + ROUND1_SIZE] for i in range(start, pos, ROUND1_SIZE))
    c = body[pos]
    if c not in (0, COOKIE_SIZE):
        raise MalformedHandshakeMessage(f"{what}: cookie MAC length must be 0 or 16")
    pos += 1
    if pos + c > size:
        raise _truncated(what)
    if pos + c != size:
        raise MalformedHandshakeMessage(f"{what}: trailing bytes")
    return Hello(version, random, suites, group, share, hints, slots, body[pos:pos + c])


@dataclass(frozen=True)
class HelloRetry:
    """Responder -> initiator, in the clear: ``version u8 | suite u8``. Asks
    for a new Hello with key shares for ``suite``."""

    version: int
    suite: int

    def encode(self) -> bytes:
        return frame(MsgType.HELLO_RETRY, bytes((self.version, self.suite)))


def _parse_retry(body: bytes) -> HelloRetry:
    r = _Reader(body, "HelloRetry")
    out = HelloRetry(r.u8(), r.u8())
    r.done()
    return out


@dataclass(frozen=True)
class ResponderHello:
    """Message 2, responder -> initiator::

        version u8 | random[32] | suite u8 | ecdh_public[56|32] | mlkem_ct[1088]
        | u24<role data ciphertext> | u24<role proofs ciphertext>

    The first five fields (the *clear part*) are hashed as
    ``type || clear``; each ciphertext is hashed after it is decrypted.
    """

    version: int
    random: bytes
    suite: int
    ecdh_public: bytes
    mlkem_ct: bytes
    data_ct: bytes
    proof_ct: bytes

    def clear(self) -> bytes:
        return (bytes((self.version,)) + self.random + bytes((self.suite,))
                + self.ecdh_public + self.mlkem_ct)

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        body = (self.clear() + _u24(len(self.data_ct)) + self.data_ct
                + _u24(len(self.proof_ct)) + self.proof_ct)
        return frame(MsgType.RESPONDER_HELLO, body, max_size)


_SUITE_GROUPS = {int(s): s.group for s in HandshakeSuite}


def _parse_responder_hello(body: bytes) -> ResponderHello:
    what = "ResponderHello"
    if len(body) < 2 + RANDOM_SIZE:
        raise _truncated(what)
    version = body[0]
    random = body[1:1 + RANDOM_SIZE]
    suite = body[1 + RANDOM_SIZE]
    group = _SUITE_GROUPS.get(suite)
    if group is None:
        raise MalformedHandshakeMessage(f"{what}: unknown suite")
    ecdh_start = 2 + RANDOM_SIZE
    ct_start = ecdh_start + group.ecdh_size
    ct_end = ct_start + MLKEM768_CT_SIZE
    if ct_end > len(body):
        raise _truncated(what)
    data_ct, pos = _vec24_at(body, ct_end, what)
    proof_ct, pos = _vec24_at(body, pos, what)
    if pos != len(body):
        raise MalformedHandshakeMessage(f"{what}: trailing bytes")
    return ResponderHello(version, random, suite, body[ecdh_start:ct_start],
                          body[ct_start:ct_end], data_ct, proof_ct)


@dataclass(frozen=True)
class InitiatorAuth:
    """Message 3, initiator -> responder: ``u24<role data ct> | u24<proofs ct>``."""

    data_ct: bytes
    proof_ct: bytes

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        body = _u24(len(self.data_ct)) + self.data_ct + _u24(len(self.proof_ct)) + self.proof_ct
        return frame(MsgType.INITIATOR_AUTH, body, max_size)


def _parse_initiator_auth(body: bytes) -> InitiatorAuth:
    return InitiatorAuth(*_two_vec24(body, "InitiatorAuth"))


@dataclass(frozen=True)
class ResponderAuth:
    """Message 4, responder -> initiator (password slots or withheld
    certificate proofs only): ``u24<role data ct> | u24<proofs ct>``."""

    data_ct: bytes
    proof_ct: bytes

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        body = _u24(len(self.data_ct)) + self.data_ct + _u24(len(self.proof_ct)) + self.proof_ct
        return frame(MsgType.RESPONDER_AUTH, body, max_size)


def _parse_responder_auth(body: bytes) -> ResponderAuth:
    return ResponderAuth(*_two_vec24(body, "ResponderAuth"))


@dataclass(frozen=True)
class InitiatorFinish:
    """Message 5, initiator -> responder (password slots, or certificate
    proofs deferred until the responder authenticated):
    ``u24<role data ct> | u24<proofs ct>``."""

    data_ct: bytes
    proof_ct: bytes

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        body = _u24(len(self.data_ct)) + self.data_ct + _u24(len(self.proof_ct)) + self.proof_ct
        return frame(MsgType.INITIATOR_FINISH, body, max_size)


def _parse_initiator_finish(body: bytes) -> InitiatorFinish:
    return InitiatorFinish(*_two_vec24(body, "InitiatorFinish"))


@dataclass(frozen=True)
class CookieReply:
    """Responder -> initiator, in the clear, instead of ResponderHello when
    the responder is under load and the Hello had no valid cookie MAC:
    ``version u8 | cookie[16]``. The responder keeps no state for it."""

    version: int
    cookie: bytes

    def encode(self) -> bytes:
        if len(self.cookie) != COOKIE_SIZE:
            raise MalformedHandshakeMessage("CookieReply: a cookie is 16 bytes")
        return frame(MsgType.COOKIE_REPLY, bytes((self.version,)) + self.cookie)


def _parse_cookie_reply(body: bytes) -> CookieReply:
    r = _Reader(body, "CookieReply")
    out = CookieReply(r.u8(), r.take(COOKIE_SIZE))
    r.done()
    return out


@dataclass(frozen=True)
class Reject:
    """Either side, in the clear: ``reason u8`` (rolewire.handshake.RejectReason)."""

    reason: int

    def encode(self) -> bytes:
        return frame(MsgType.REJECT, bytes((self.reason,)))


def _parse_reject(body: bytes) -> Reject:
    r = _Reader(body, "Reject")
    out = Reject(r.u8())
    r.done()
    return out


Message = (Hello | HelloRetry | ResponderHello | InitiatorAuth | ResponderAuth
           | InitiatorFinish | CookieReply | Reject)

_PARSERS = {
    MsgType.HELLO: _parse_hello,
    MsgType.HELLO_RETRY: _parse_retry,
    MsgType.RESPONDER_HELLO: _parse_responder_hello,
    MsgType.INITIATOR_AUTH: _parse_initiator_auth,
    MsgType.RESPONDER_AUTH: _parse_responder_auth,
    MsgType.INITIATOR_FINISH: _parse_initiator_finish,
    MsgType.COOKIE_REPLY: _parse_cookie_reply,
    MsgType.REJECT: _parse_reject,
}


def parse_message(msg_type: int, body: bytes) -> Message:
    """Parses the body of one frame."""
    parser = _PARSERS.get(msg_type)  # type: ignore[call-overload]
    if parser is None:
        raise MalformedHandshakeMessage(f"unknown handshake message type {msg_type}")
    return parser(body)  # type: ignore[no-any-return]


# --- encrypted contents ----------------------------------------------------------


@dataclass(frozen=True)
class RoleEntry:
    """One role in a role-data list: ``index u8 | flags u8 | u24<data>``.

    ``index`` points into the Hello's offers; entries are in strictly
    increasing index order."""

    index: int
    flags: int
    data: bytes = b""


@dataclass(frozen=True)
class ProofEntry:
    """One proof: ``index u8 | u16<proof>``; strictly increasing index."""

    index: int
    proof: bytes


def encode_role_entries(entries: list[RoleEntry]) -> bytes:
    if len(entries) > MAX_ROLES:
        raise HandshakeMessageTooLarge("too many role entries")
    parts = [bytes((len(entries),))]
    for e in entries:
        parts.append(bytes((e.index, e.flags)) + _u24(len(e.data)) + e.data)
    return b"".join(parts)


def _entries_at(data: bytes, what: str) -> tuple[list[RoleEntry], int]:
    """The role entries at the start of ``data`` and the position after them."""
    if not data:
        raise _truncated(what)
    n = data[0]
    if n > MAX_ROLES:
        raise HandshakeMessageTooLarge("too many role entries")
    out = []
    last = -1
    pos = 1
    for _ in range(n):
        if pos + 2 > len(data):
            raise _truncated(what)
        index = data[pos]
        flags = data[pos + 1]
        if index <= last:
            raise MalformedHandshakeMessage(f"{what}: role entries not in increasing order")
        if flags & ~_FLAGS_ALL:
            raise MalformedHandshakeMessage(f"{what}: invalid role flags")
        last = index
        entry, pos = _vec24_at(data, pos + 2, what)
        out.append(RoleEntry(index, flags, entry))
    return out, pos


def parse_role_entries(data: bytes) -> list[RoleEntry]:
    out, pos = _entries_at(data, "role data")
    if pos != len(data):
        raise MalformedHandshakeMessage("role data: trailing bytes")
    return out


def encode_role_data(entries: list[RoleEntry], slots: list[bytes]) -> bytes:
    """The plaintext of an encrypted role-data field: ``entries | slots``
    with ``slots`` = ``m u8 (<= 8) | m x u16<slot data>``, one per password
    slot of the Hello (or none)."""
    if len(slots) > MAX_PASSWORD_SLOTS:
        raise HandshakeMessageTooLarge("too many password slots")
    return (encode_role_entries(entries) + bytes((len(slots),))
            + b"".join(_u16(len(x)) + x for x in slots))


def parse_role_data(data: bytes) -> tuple[list[RoleEntry], list[bytes]]:
    what = "role data"
    entries, pos = _entries_at(data, what)
    size = len(data)
    if pos >= size:
        raise _truncated(what)
    m = data[pos]
    if m > MAX_PASSWORD_SLOTS:
        raise HandshakeMessageTooLarge("too many password slots")
    pos += 1
    slots = []
    for _ in range(m):
        start = pos + 2
        if start > size:
            raise _truncated(what)
        pos = start + int.from_bytes(data[start - 2:start], "big")
        if pos > size:
            raise _truncated(what)
        slots.append(data[start:pos])
    if pos != size:
        raise MalformedHandshakeMessage(f"{what}: trailing bytes")
    return entries, slots


def pad(plaintext: bytes, bucket: int = PAD_BUCKET) -> bytes:
    """``plaintext | zeros | u16 zero count``, to a multiple of ``bucket``
    bytes, so the length of an encrypted field tells an observer only its
    bucket."""
    n = (-(len(plaintext) + 2)) % bucket
    return plaintext + bytes(n) + n.to_bytes(2, "big")


def unpad(data: bytes) -> bytes:
    """Inverse of :func:`pad`; the padding must be zeros."""
    if len(data) < 2:
        raise MalformedHandshakeMessage("padded field: truncated")
    n = int.from_bytes(data[-2:], "big")
    if n > len(data) - 2:
        raise MalformedHandshakeMessage("padded field: padding longer than the field")
    body_end = len(data) - 2 - n
    if data[body_end:-2] != bytes(n):  # one C comparison, not a Python loop
        raise MalformedHandshakeMessage("padded field: non-zero padding")
    return data[:body_end]


def encode_proofs(proofs: list[ProofEntry]) -> bytes:
    parts = [bytes((len(proofs),))]
    for p in proofs:
        parts.append(bytes((p.index,)) + _u16(len(p.proof)) + p.proof)
    return b"".join(parts)


def parse_proofs(data: bytes) -> list[ProofEntry]:
    what = "role proofs"
    size = len(data)
    if not size:
        raise _truncated(what)
    n = data[0]
    if n > MAX_ROLES:
        raise HandshakeMessageTooLarge("too many role proofs")
    out = []
    last = -1
    pos = 1
    for _ in range(n):
        if pos >= size:
            raise _truncated(what)
        index = data[pos]
        if index <= last:
            raise MalformedHandshakeMessage(f"{what}: proofs not in increasing order")
        last = index
        start = pos + 3
        if start > size:
            raise _truncated(what)
        pos = start + int.from_bytes(data[start - 2:start], "big")
        if pos > size:
            raise _truncated(what)
        if pos == start:
            raise MalformedHandshakeMessage(f"{what}: empty proof")
        out.append(ProofEntry(index, data[start:pos]))
    if pos != size:
        raise MalformedHandshakeMessage(f"{what}: trailing bytes")
    return out


def encode_chain(chain: tuple[bytes, ...]) -> bytes:
    """``u8 n (1..8) | n x u24<DER certificate>``, leaf first."""
    if not 1 <= len(chain) <= MAX_CHAIN:
        raise HandshakeMessageTooLarge(f"certificate chain must hold 1..{MAX_CHAIN} certificates")
    return bytes((len(chain),)) + b"".join(_u24(len(c)) + c for c in chain)


def parse_chain(data: bytes) -> tuple[bytes, ...]:
    what = "certificate chain"
    if not data:
        raise _truncated(what)
    n = data[0]
    if n == 0:
        raise MalformedHandshakeMessage(f"{what}: empty certificate chain")
    if n > MAX_CHAIN:
        raise HandshakeMessageTooLarge(f"certificate chain longer than {MAX_CHAIN}")
    out = []
    pos = 1
    for _ in range(n):
        der, pos = _vec24_at(data, pos, what)
        if not der:
            raise MalformedHandshakeMessage(f"{what}: empty certificate")
        out.append(der)
    if pos != len(data):
        raise MalformedHandshakeMessage(f"{what}: trailing bytes")
    return tuple(out)


def _group_of(suite: int) -> KexGroup:  # pragma: no cover - helper for callers
    return HandshakeSuite(suite).group
