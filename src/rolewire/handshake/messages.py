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
from rolewire.handshake.suites import MLKEM768_CT_SIZE, HandshakeSuite, KexGroup
from rolewire.roles.base import HINT_SIZE, MAX_ROLES, RoleKind

__all__ = [
    "FRAME_HEADER_SIZE",
    "HINT_SIZE",
    "MAX_CHAIN",
    "MAX_MESSAGE_SIZE",
    "MAX_ROLES",
    "MAX_SUITES",
    "PROTOCOL_VERSION",
    "RANDOM_SIZE",
    "Flag",
    "Hello",
    "HelloRetry",
    "InitiatorAuth",
    "MsgType",
    "ProofEntry",
    "Reject",
    "ResponderAuth",
    "ResponderHello",
    "RoleEntry",
    "RoleKind",
    "RoleOffer",
    "encode_chain",
    "encode_password_data",
    "encode_proofs",
    "encode_role_entries",
    "frame",
    "parse_chain",
    "parse_frame_header",
    "parse_message",
    "parse_password_data",
    "parse_proofs",
    "parse_role_entries",
]

PROTOCOL_VERSION = 2
FRAME_HEADER_SIZE = 4
#: Default bound on one handshake message, header included.
MAX_MESSAGE_SIZE = 64 * 1024
#: Most certificates in one chain (leaf first).
MAX_CHAIN = 8
MAX_SUITES = 32
RANDOM_SIZE = 32


class MsgType(enum.IntEnum):
    HELLO = 0x01
    HELLO_RETRY = 0x02
    RESPONDER_HELLO = 0x03
    INITIATOR_AUTH = 0x04
    RESPONDER_AUTH = 0x05
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


def parse_frame_header(header: bytes, max_size: int = MAX_MESSAGE_SIZE) -> tuple[int, int]:
    """``(type, body_length)`` from 4 header bytes; checks the size bound."""
    msg_type = header[0]
    length = int.from_bytes(header[1:4], "big")
    if FRAME_HEADER_SIZE + length > max_size:
        raise HandshakeMessageTooLarge(
            f"handshake message of {FRAME_HEADER_SIZE + length} bytes exceeds {max_size}")
    return msg_type, length


# --- messages ----------------------------------------------------------------


@dataclass(frozen=True)
class RoleOffer:
    """One role the initiator knows, as a handshake-bound keyed hash."""

    kind: int
    flags: int
    hint: bytes
    #: Kind-specific data: J-PAKE round 1 for password roles, else empty.
    data: bytes = b""

    def encode(self) -> bytes:
        return bytes((self.kind, self.flags)) + self.hint + _u16(len(self.data)) + self.data


@dataclass(frozen=True)
class Hello:
    """Message 1, initiator -> responder, in the clear::

        version u8 | random[32] | suites: u8 n, n x u8 (preference order)
        | key share: group u8, u16<ecdh_public || mlkem_ek>
        | offers: u8 n (<= 64), n x (kind u8 | flags u8 | hint[16] | u16<data>)
    """

    version: int
    random: bytes
    suites: tuple[int, ...]
    group: int
    share: bytes
    offers: tuple[RoleOffer, ...]

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        if not 1 <= len(self.suites) <= MAX_SUITES:
            raise MalformedHandshakeMessage("Hello: 1..32 suites")
        if len(self.offers) > MAX_ROLES:
            raise HandshakeMessageTooLarge(f"Hello: more than {MAX_ROLES} roles")
        parts = [bytes((self.version,)), self.random, bytes((len(self.suites), *self.suites)),
                 bytes((self.group,)), _u16(len(self.share)), self.share,
                 bytes((len(self.offers),))]
        parts.extend(o.encode() for o in self.offers)
        return frame(MsgType.HELLO, b"".join(parts), max_size)

    def same_except_share(self, other: Hello) -> bool:
        return (self.version, self.random, self.suites, self.offers) == (
            other.version, other.random, other.suites, other.offers)


def _parse_hello(body: bytes) -> Hello:
    r = _Reader(body, "Hello")
    version = r.u8()
    random = r.take(RANDOM_SIZE)
    n = r.u8()
    if not 1 <= n <= MAX_SUITES:
        raise r.fail("suite count out of range")
    suites = tuple(r.take(n))
    if len(set(suites)) != n:
        raise r.fail("duplicate suite")
    group = r.u8()
    share = r.vec16()
    n = r.u8()
    if n > MAX_ROLES:
        raise HandshakeMessageTooLarge(f"Hello: more than {MAX_ROLES} roles")
    offers = []
    seen = set()
    for _ in range(n):
        kind = r.u8()
        flags = r.u8()
        hint = r.take(HINT_SIZE)
        data = r.vec16()
        if flags & ~_FLAGS_ALL or not flags:
            raise r.fail("invalid role flags")
        if kind in (RoleKind.KEY, RoleKind.CERTIFICATE) and data:
            raise r.fail("unexpected role data")
        if kind == RoleKind.PASSWORD and not data:
            raise r.fail("password role without J-PAKE data")
        if (kind, hint) in seen:
            raise r.fail("duplicate role hint")
        seen.add((kind, hint))
        offers.append(RoleOffer(kind, flags, hint, data))
    r.done()
    return Hello(version, random, suites, group, share, tuple(offers))


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


def _parse_responder_hello(body: bytes) -> ResponderHello:
    r = _Reader(body, "ResponderHello")
    version = r.u8()
    random = r.take(RANDOM_SIZE)
    suite = r.u8()
    try:
        group = HandshakeSuite(suite).group
    except ValueError:
        raise r.fail("unknown suite") from None
    ecdh = r.take(group.ecdh_size)
    ct = r.take(MLKEM768_CT_SIZE)
    data_ct = r.vec24()
    proof_ct = r.vec24()
    r.done()
    return ResponderHello(version, random, suite, ecdh, ct, data_ct, proof_ct)


@dataclass(frozen=True)
class InitiatorAuth:
    """Message 3, initiator -> responder: ``u24<role data ct> | u24<proofs ct>``."""

    data_ct: bytes
    proof_ct: bytes

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        body = _u24(len(self.data_ct)) + self.data_ct + _u24(len(self.proof_ct)) + self.proof_ct
        return frame(MsgType.INITIATOR_AUTH, body, max_size)


def _parse_initiator_auth(body: bytes) -> InitiatorAuth:
    r = _Reader(body, "InitiatorAuth")
    out = InitiatorAuth(r.vec24(), r.vec24())
    r.done()
    return out


@dataclass(frozen=True)
class ResponderAuth:
    """Message 4 (password roles only), responder -> initiator:
    ``u24<proofs ct>``."""

    proof_ct: bytes

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        return frame(MsgType.RESPONDER_AUTH, _u24(len(self.proof_ct)) + self.proof_ct, max_size)


def _parse_responder_auth(body: bytes) -> ResponderAuth:
    r = _Reader(body, "ResponderAuth")
    out = ResponderAuth(r.vec24())
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


Message = Hello | HelloRetry | ResponderHello | InitiatorAuth | ResponderAuth | Reject

_PARSERS = {
    MsgType.HELLO: _parse_hello,
    MsgType.HELLO_RETRY: _parse_retry,
    MsgType.RESPONDER_HELLO: _parse_responder_hello,
    MsgType.INITIATOR_AUTH: _parse_initiator_auth,
    MsgType.RESPONDER_AUTH: _parse_responder_auth,
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


def parse_role_entries(data: bytes) -> list[RoleEntry]:
    r = _Reader(data, "role data")
    n = r.u8()
    if n > MAX_ROLES:
        raise HandshakeMessageTooLarge("too many role entries")
    out = []
    last = -1
    for _ in range(n):
        index, flags = r.u8(), r.u8()
        if index <= last:
            raise r.fail("role entries not in increasing order")
        if flags & ~_FLAGS_ALL:
            raise r.fail("invalid role flags")
        last = index
        out.append(RoleEntry(index, flags, r.vec24()))
    r.done()
    return out


def encode_proofs(proofs: list[ProofEntry]) -> bytes:
    parts = [bytes((len(proofs),))]
    for p in proofs:
        parts.append(bytes((p.index,)) + _u16(len(p.proof)) + p.proof)
    return b"".join(parts)


def parse_proofs(data: bytes) -> list[ProofEntry]:
    r = _Reader(data, "role proofs")
    n = r.u8()
    if n > MAX_ROLES:
        raise HandshakeMessageTooLarge("too many role proofs")
    out = []
    last = -1
    for _ in range(n):
        index = r.u8()
        if index <= last:
            raise r.fail("proofs not in increasing order")
        last = index
        proof = r.vec16()
        if not proof:
            raise r.fail("empty proof")
        out.append(ProofEntry(index, proof))
    r.done()
    return out


def encode_chain(chain: tuple[bytes, ...]) -> bytes:
    """``u8 n (1..8) | n x u24<DER certificate>``, leaf first."""
    if not 1 <= len(chain) <= MAX_CHAIN:
        raise HandshakeMessageTooLarge(f"certificate chain must hold 1..{MAX_CHAIN} certificates")
    return bytes((len(chain),)) + b"".join(_u24(len(c)) + c for c in chain)


def parse_chain(data: bytes) -> tuple[bytes, ...]:
    r = _Reader(data, "certificate chain")
    n = r.u8()
    if n == 0:
        raise r.fail("empty certificate chain")
    if n > MAX_CHAIN:
        raise HandshakeMessageTooLarge(f"certificate chain longer than {MAX_CHAIN}")
    out = []
    for _ in range(n):
        der = r.vec24()
        if not der:
            raise r.fail("empty certificate")
        out.append(der)
    r.done()
    return tuple(out)


def encode_password_data(*rounds: bytes) -> bytes:
    """``u16<round>`` for each J-PAKE round carried."""
    return b"".join(_u16(len(x)) + x for x in rounds)


def parse_password_data(data: bytes, count: int) -> tuple[bytes, ...]:
    r = _Reader(data, "J-PAKE data")
    out = []
    for _ in range(count):
        x = r.vec16()
        if not x:
            raise r.fail("empty J-PAKE message")
        out.append(x)
    r.done()
    return tuple(out)


def _group_of(suite: int) -> KexGroup:  # pragma: no cover - helper for callers
    return HandshakeSuite(suite).group
