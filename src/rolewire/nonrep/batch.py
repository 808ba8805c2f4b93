"""Signed calls in batches, sans-IO: the caller's :class:`BatchSigner` and
the receiver's :class:`BatchVerifier` (docs/nonrep.md, docs/PROTOCOL.md
"Signed calls").

Each signed call carries its position (metadata ``rw-nr``: ``batch u64 |
index u16 | time_ms u64``). Its **call digest** is::

    SHA-256("rolewire-nonrep-call/1\\0" || u8<transcript_hash> || type u8 ||
            call_id u64 || time_ms u64 || u8<operation> || SHA-256(body) ||
            SHA-256(rw-user value) or 32 zero bytes)

A batch's **head** is signed once::

    "rolewire-nonrep-batch/1\\0" || alg u8 || u8<role> || u8<transcript_hash> ||
    batch u64 || count u16 || merkle_root(call digests)[32] || chain_digest[32]

and travels in a ``SIGNED_BATCH`` message after the batch's calls::

    alg u8 | u8<role> | batch u64 | count u16 | n u8 | n x u24<DER cert> | u16<signature>

(``n = 0``: the chain of this connection's previous batch). The receiver
holds a batch's calls until its head arrives, verifies the signature once,
and releases them with the proof attached; a batch that fails is released
*unverified* (operations that require signatures then refuse its calls).
Nothing here reads a clock: times are passed in.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cryptography import x509

from rolewire.callstate import VerifiedMetadata
from rolewire.errors import RolewireError
from rolewire.nonrep.merkle import merkle_root
from rolewire.nonrep.signing import (
    MAX_CHAIN,
    Algorithm,
    SignatureInvalid,
    Signer,
    SignerKey,
    SignerNotTrusted,
    chain_digest,
    validate_chain,
    verify_signature,
)
from rolewire.protocol.wire import CallMessage, MessageType

__all__ = [
    "MAX_BATCH_CALLS",
    "POSITION_KEY",
    "BatchError",
    "BatchHead",
    "BatchIncomplete",
    "BatchMalformed",
    "BatchSignatureInvalid",
    "BatchSigner",
    "BatchVerifier",
    "SignedCall",
    "call_digest",
    "call_digest_from_hashes",
    "head_bytes",
    "position_of",
]

#: Metadata key of a signed call's position.
POSITION_KEY = "rw-nr"
#: Most calls in one batch (u16 count).
MAX_BATCH_CALLS = 4096
#: Most calls a receiver holds while waiting for heads.
MAX_PENDING_CALLS = 8192

_CALL_LABEL = b"rolewire-nonrep-call/1\x00"
_HEAD_LABEL = b"rolewire-nonrep-batch/1\x00"
_POSITION = struct.Struct(">QHQ")
_NO_USER = bytes(32)


class BatchError(RolewireError):
    """A signed batch does not prove its calls. Subclasses say why."""


class BatchMalformed(BatchError):
    """A position or head that does not parse, a call out of order, a batch
    number going backwards, a time too far from the receiver's clock, or
    too many calls held."""


class BatchIncomplete(BatchError):
    """The head counts more (or fewer) calls than arrived: a call was dropped
    or added."""


class BatchSignatureInvalid(BatchError, SignatureInvalid):
    """The head's signature does not verify over the calls received: one was
    altered, reordered or replaced, or another key signed."""


def _u8(data: bytes) -> bytes:
    if len(data) > 255:
        raise BatchMalformed("field longer than 255 bytes")
    return bytes((len(data),)) + data


def call_digest(transcript_hash: bytes, kind: int, call_id: int, operation: str,
                body: bytes, time_ms: int, end_user: bytes | None) -> bytes:
    """The digest a signed call contributes to its batch (module docs)."""
    return _Digester(transcript_hash).digest(
        kind, call_id, operation, body, time_ms,
        hashlib.sha256(end_user).digest() if end_user is not None else None)


def call_digest_from_hashes(transcript_hash: bytes, kind: int, call_id: int, operation: str,
                            body_sha256: bytes, time_ms: int,
                            end_user_sha256: bytes | None) -> bytes:
    """:func:`call_digest` from the SHA-256 of the body and of the end-user
    token (what the audit log stores)."""
    return _Digester(transcript_hash).from_hashes(kind, call_id, operation, body_sha256,
                                                  time_ms, end_user_sha256)


_KIND_ID_TIME = struct.Struct(">BQQ")


class _Digester:
    """:func:`call_digest` for one session, with the constant prefix and the
    encoded operation names precomputed (the per-call hot path)."""

    __slots__ = ("_ops", "_prefix")

    def __init__(self, transcript_hash: bytes) -> None:
        self._prefix = _CALL_LABEL + _u8(transcript_hash)
        self._ops: dict[str, bytes] = {}

    def _op(self, operation: str) -> bytes:
        encoded = self._ops.get(operation)
        if encoded is None:
            encoded = _u8(operation.encode("utf-8"))
            if len(self._ops) < 1024:
                self._ops[operation] = encoded
        return encoded

    def from_hashes(self, kind: int, call_id: int, operation: str, body_sha256: bytes,
                    time_ms: int, end_user_sha256: bytes | None) -> bytes:
        return hashlib.sha256(
            self._prefix + _KIND_ID_TIME.pack(kind, call_id, time_ms) + self._op(operation)
            + body_sha256 + (end_user_sha256 if end_user_sha256 is not None else _NO_USER)
        ).digest()

    def digest(self, kind: int, call_id: int, operation: str, body: bytes, time_ms: int,
               end_user_sha256: bytes | None) -> bytes:
        return self.from_hashes(kind, call_id, operation, hashlib.sha256(body).digest(),
                                time_ms, end_user_sha256)


def head_bytes(algorithm: int, role: str, transcript_hash: bytes, batch: int, count: int,
               root: bytes, chain: bytes) -> bytes:
    """The bytes a batch signature covers (module docs)."""
    return b"".join((_HEAD_LABEL, bytes((int(algorithm),)), _u8(role.encode("utf-8")),
                     _u8(transcript_hash), batch.to_bytes(8, "big"), count.to_bytes(2, "big"),
                     root, chain))


@dataclass(frozen=True)
class BatchHead:
    """A parsed ``SIGNED_BATCH`` body."""

    algorithm: Algorithm
    role: str
    batch: int
    count: int
    chain: tuple[bytes, ...]
    signature: bytes = field(repr=False)

    def encode(self, *, include_chain: bool = True) -> bytes:
        certs = self.chain if include_chain else ()
        out = [bytes((int(self.algorithm),)), _u8(self.role.encode("utf-8")),
               self.batch.to_bytes(8, "big"), self.count.to_bytes(2, "big"),
               bytes((len(certs),))]
        out.extend(len(der).to_bytes(3, "big") + der for der in certs)
        out.append(len(self.signature).to_bytes(2, "big") + self.signature)
        return b"".join(out)

    @classmethod
    def decode(cls, data: bytes) -> BatchHead:
        try:
            algorithm = Algorithm(data[0])
            role_len = data[1]
            role = bytes(data[2:2 + role_len]).decode("utf-8")
            pos = 2 + role_len
            batch = int.from_bytes(data[pos:pos + 8], "big")
            count = int.from_bytes(data[pos + 8:pos + 10], "big")
            n = data[pos + 10]
            pos += 11
            if n > MAX_CHAIN:
                raise BatchMalformed("signer chain too long")
            chain = []
            for _ in range(n):
                length = int.from_bytes(data[pos:pos + 3], "big")
                der = bytes(data[pos + 3:pos + 3 + length])
                if len(der) != length:
                    raise BatchMalformed("certificate truncated")
                chain.append(der)
                pos += 3 + length
            sig_len = int.from_bytes(data[pos:pos + 2], "big")
            signature = bytes(data[pos + 2:pos + 2 + sig_len])
            if len(signature) != sig_len or pos + 2 + sig_len != len(data) or \
                    len(data[pos:pos + 2]) != 2:
                raise BatchMalformed("signature truncated or trailing bytes")
        except (IndexError, ValueError, UnicodeDecodeError):
            raise BatchMalformed("signed batch head does not parse") from None
        return cls(algorithm, role, batch, count, tuple(chain), signature)


class SignedCall(NamedTuple):
    """The proof attached to a verified call (``call.signed``): the role and
    signer (certificate subject) that signed, the algorithm, the call's
    batch, its position in it and the batch's size, the signed time, its call digest and the
    digest of its end-user token (empty: none). A named tuple: one is built
    per signed call."""

    role: str
    signer: str
    algorithm: Algorithm
    batch: int
    position: int
    batch_size: int
    time_ms: int
    digest: bytes
    end_user_digest: bytes = b""


def position_of(metadata: Mapping[str, bytes]) -> tuple[int, int, int] | None:
    """``(batch, index, time_ms)`` of a signed call's metadata (None if
    unsigned); raises :class:`BatchMalformed`."""
    raw = metadata.get(POSITION_KEY)
    if raw is None:
        return None
    if len(raw) != _POSITION.size:
        raise BatchMalformed("rw-nr position has the wrong size")
    batch, index, time_ms = _POSITION.unpack(raw)
    return batch, index, time_ms


class BatchSigner:
    """The caller's side: stamps each outgoing call with its position and
    signs one head per batch.

    Args:
        signer: the certificate role's signing key and chain.
        transcript_hash: the session's (binds the signatures to it).
        max_calls: calls per batch at most (a full batch is closed and the
            next call starts a new one).
    """

    def __init__(self, signer: Signer, transcript_hash: bytes, *, max_calls: int = 256) -> None:
        if not 1 <= max_calls <= MAX_BATCH_CALLS:
            raise BatchMalformed(f"max_calls must be 1..{MAX_BATCH_CALLS}")
        self.signer = signer
        self.transcript_hash = transcript_hash
        self.max_calls = max_calls
        self._chain_der = signer.chain_der
        self._chain_digest = chain_digest(self._chain_der)
        self._algorithm = signer.algorithm
        self._batch = 0
        self._digests: list[bytes] = []
        self._full: list[tuple[int, list[bytes]]] = []
        self._chain_sent = False
        self._digester = _Digester(transcript_hash)
        self._users: dict[bytes, bytes] = {}
        #: Signatures made (one per batch).
        self.signatures = 0

    @property
    def open_calls(self) -> int:
        return len(self._digests) + sum(len(d) for _, d in self._full)

    def stamp(self, kind: MessageType, call_id: int, operation: str, body: bytes,
              metadata: Mapping[str, bytes], time_ms: int) -> dict[str, bytes]:
        """``metadata`` plus this call's position; the call joins the open batch."""
        if len(self._digests) >= self.max_calls:
            self._full.append((self._batch, self._digests))
            self._batch += 1
            self._digests = []
        self._digests.append(self._digester.digest(kind, call_id, operation, body, time_ms,
                                                   self._user_digest(metadata)))
        out = dict(metadata)
        out[POSITION_KEY] = _POSITION.pack(self._batch, len(self._digests) - 1, time_ms)
        return out

    def _user_digest(self, metadata: Mapping[str, bytes]) -> bytes | None:
        user = metadata.get("rw-user")
        if user is None:
            return None
        digest = self._users.get(user)
        if digest is None:
            digest = hashlib.sha256(user).digest()
            if len(self._users) >= 64:
                self._users.clear()
            self._users[user] = digest
        return digest

    def _head(self, batch: int, digests: list[bytes]) -> bytes:
        signed = head_bytes(self._algorithm, self.signer.role, self.transcript_hash, batch,
                            len(digests), merkle_root(digests), self._chain_digest)
        self.signatures += 1
        head = BatchHead(self._algorithm, self.signer.role, batch, len(digests),
                         self._chain_der, self.signer.sign(signed))
        encoded = head.encode(include_chain=not self._chain_sent)
        self._chain_sent = True
        return encoded

    def close(self) -> list[bytes]:
        """The ``SIGNED_BATCH`` bodies of every batch not yet closed (empty if
        there is none), in order."""
        bodies = [self._head(batch, digests) for batch, digests in self._full]
        self._full = []
        if self._digests:
            bodies.append(self._head(self._batch, self._digests))
            self._batch += 1
            self._digests = []
        return bodies


@dataclass
class _Pending:
    messages: list[CallMessage] = field(default_factory=list)
    times: list[int] = field(default_factory=list)


class BatchVerifier:
    """The receiver's side for one connection.

    Args:
        anchors: ``{role: trust anchors}`` of the certificate roles whose
            signatures this service accepts.
        transcript_hash: the session's.
        peer_roles: the roles the caller proved in the handshake; a batch
            signed under a role it did not prove is refused.
        clock: wall-clock milliseconds (the signed times may differ from it
            by at most ``max_skew_ms``).
        record: called with ``(head, chain, calls, digests, root, times,
            user_digests)`` for each
            verified batch before its calls are released (the audit log);
            if it raises, the batch is released unverified.
    """

    def __init__(self, anchors: Mapping[str, Sequence[x509.Certificate]],
                 transcript_hash: bytes, peer_roles: frozenset[str], *,
                 clock: Callable[[], int], max_skew_ms: int = 300_000,
                 record: Callable[..., Any] | None = None) -> None:
        self.anchors = dict(anchors)
        self.transcript_hash = transcript_hash
        self.peer_roles = peer_roles
        self.clock = clock
        self.max_skew_ms = max_skew_ms
        self.record = record
        self._pending: dict[int, _Pending] = {}
        self._held = 0
        self._next_batch = 0
        self._chain: tuple[bytes, ...] = ()
        self._keys: dict[tuple[bytes, int], SignerKey] = {}
        self._digester = _Digester(transcript_hash)
        self._users: dict[bytes, bytes] = {}
        #: Batches verified / refused, and the last refusal (typed error).
        self.verified = 0
        self.refused = 0
        self.last_error: RolewireError | None = None

    def receive(self, message: CallMessage) -> list[CallMessage]:
        """Messages ready for dispatch after ``message`` arrived: ``[message]``
        for an unsigned one, ``[]`` while a batch is incomplete, the batch's
        calls (verified: :class:`~rolewire.callstate.VerifiedMetadata` with a
        :class:`SignedCall`) when its head arrived."""
        if message.type is MessageType.SIGNED_BATCH:
            try:
                head = BatchHead.decode(message.body)
            except BatchMalformed as exc:
                return self._refuse_all(exc)
            pending = self._pending.pop(head.batch, None)
            if pending is None:
                self._fail(BatchIncomplete("a signed head for a batch with no calls"))
                return []
            self._held -= len(pending.messages)
            try:
                return self.verify(head, pending.messages)
            except RolewireError as exc:
                self._fail(exc)
                return list(pending.messages)
        try:
            position = position_of(message.metadata)
        except BatchMalformed as exc:
            self._fail(exc)
            return [message]
        if position is None:
            return [message]
        batch, index, time_ms = position
        pending = self._pending.get(batch)
        problem = None
        if batch < self._next_batch:
            problem = BatchMalformed("a call for a batch already closed")
        elif pending is None and len(self._pending) >= 64:
            problem = BatchMalformed("too many open batches")
        elif index != (len(pending.messages) if pending is not None else 0):
            problem = BatchMalformed("signed calls out of order")
        elif self._held >= MAX_PENDING_CALLS:
            problem = BatchMalformed("too many signed calls waiting for their head")
        elif abs(time_ms - self.clock()) > self.max_skew_ms:
            problem = BatchMalformed("signed call time too far from the receiver's clock")
        if problem is not None:
            self._fail(problem)
            return [message]
        if pending is None:
            pending = self._pending[batch] = _Pending()
        pending.messages.append(message)
        pending.times.append(time_ms)
        self._held += 1
        return []

    def _fail(self, exc: RolewireError) -> None:
        self.refused += 1
        self.last_error = exc

    def _refuse_all(self, exc: RolewireError) -> list[CallMessage]:
        self._fail(exc)
        released = [m for p in self._pending.values() for m in p.messages]
        self._pending.clear()
        self._held = 0
        return released

    def verify(self, head: BatchHead, messages: Sequence[CallMessage]) -> list[CallMessage]:
        """Verify ``head`` over ``messages`` (the batch's calls in order);
        returns them with their proofs. Raises :class:`BatchIncomplete`,
        :class:`BatchSignatureInvalid`, :class:`BatchMalformed`,
        :class:`~rolewire.nonrep.signing.SignerNotTrusted`."""
        if head.batch < self._next_batch:
            raise BatchMalformed("batch number went backwards")
        if head.count != len(messages):
            raise BatchIncomplete(f"head counts {head.count} calls, {len(messages)} arrived")
        anchors = self.anchors.get(head.role)
        if anchors is None or head.role not in self.peer_roles:
            raise SignerNotTrusted("batch signed under a role this caller did not prove here")
        chain = head.chain or self._chain
        if not chain:
            raise BatchMalformed("first signed batch of a connection lacks the signer chain")
        digests = []
        times = []
        users: list[bytes | None] = []
        digest_of = self._digester.digest
        unpack = _POSITION.unpack
        for index, message in enumerate(messages):
            raw = message.metadata.get(POSITION_KEY)
            if raw is None or len(raw) != _POSITION.size:
                raise BatchMalformed("call position does not match its batch")
            batch, at_index, time_ms = unpack(raw)
            if batch != head.batch or at_index != index:
                raise BatchMalformed("call position does not match its batch")
            user = message.metadata.get("rw-user")
            user_digest = None
            if user is not None:
                user_digest = self._users.get(user)
                if user_digest is None:
                    user_digest = hashlib.sha256(user).digest()
                    if len(self._users) >= 64:
                        self._users.clear()
                    self._users[user] = user_digest
            users.append(user_digest)
            times.append(time_ms)
            digests.append(digest_of(message.type, message.call_id, message.operation,
                                     message.body, time_ms, user_digest))
        root = merkle_root(digests)
        cdigest = chain_digest(chain)
        key = self._keys.get((cdigest, head.algorithm))
        at = datetime.datetime.fromtimestamp(max(times) / 1000, datetime.timezone.utc)
        if key is None:
            key = validate_chain(chain, anchors, head.algorithm, at)
            if len(self._keys) < 8:
                self._keys[(cdigest, head.algorithm)] = key
        else:
            # cached for this connection: still check the validity window
            validate_window(chain[0], at)
        signed = head_bytes(head.algorithm, head.role, self.transcript_hash, head.batch,
                            head.count, root, cdigest)
        try:
            verify_signature(key, head.signature, signed)
        except SignatureInvalid:
            raise BatchSignatureInvalid(
                "batch signature does not verify over the calls received") from None
        if self.record is not None:
            self.record(head, chain, messages, digests, root, times, users)
        self._chain = chain
        self._next_batch = head.batch + 1
        self.verified += 1
        role, subject, algorithm, batch_no, count = (head.role, key.subject, head.algorithm,
                                                     head.batch, head.count)
        return [
            CallMessage(message.type, message.call_id, message.operation, message.body,
                        VerifiedMetadata(message.metadata, SignedCall(
                            role, subject, algorithm, batch_no, i, count, times[i],
                            digests[i], users[i] or b"")))
            for i, message in enumerate(messages)
        ]


def validate_window(leaf_der: bytes, at: datetime.datetime) -> None:
    """The leaf is valid at ``at`` (a cached chain's dates still apply)."""
    leaf = x509.load_der_x509_certificate(leaf_der)
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        raise SignerNotTrusted("signer certificate not valid at the time of signing")
