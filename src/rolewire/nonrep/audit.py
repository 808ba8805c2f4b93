"""The receiver's audit log of signed calls: SQLite, append-only, its own
rows hash-chained (docs/nonrep.md).

One table, one row per fact, in the order they were learnt::

    nonrep_log(seq INTEGER PRIMARY KEY, kind TEXT, payload TEXT, prev BLOB, row_hash BLOB)

``kind`` is ``chain`` (a signer's certificate chain, once per distinct
chain), ``batch`` (a verified head: role, algorithm, transcript hash, batch
number, count, Merkle root, chain digest, signature) or ``call`` (one call
of the batch before it: index, type, call id, operation, time, end-user
digest, call digest and either the body (base64) or, without
``store_bodies``, only its SHA-256; a JSON array in :data:`CALL_FIELDS`
order). ``payload``
is JSON without spaces (objects with sorted keys) and::

    row_hash = SHA-256("rolewire-audit-row/1\\0" || seq u64 || u8<kind> || payload || prev)

with ``prev`` the previous row's hash (32 zero bytes for row 1). Triggers
refuse UPDATE and DELETE; anyone with the file can still drop them, which is
what the chain is for: :func:`verify` finds an edited row (its hash), a
deleted one (a gap or a broken ``prev``), and an inserted one (a broken
chain, or a call no verified batch signature covers). Truncating the newest
rows is only caught against a head hash recorded elsewhere (``head=``; the
``rolewire audit show`` output prints it).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from rolewire.errors import RolewireError
from rolewire.nonrep.batch import (
    BatchHead,
    BatchSignatureInvalid,
    call_digest_from_hashes,
    head_bytes,
    position_of,
)
from rolewire.nonrep.merkle import merkle_root
from rolewire.nonrep.signing import (
    Algorithm,
    SignatureInvalid,
    SignerNotTrusted,
    chain_digest,
    validate_chain,
    verify_signature,
)
from rolewire.protocol.wire import CallMessage

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CALL_FIELDS",
    "AuditLog",
    "AuditLogError",
    "AuditLogTampered",
    "LogRowDeleted",
    "LogRowEdited",
    "LogRowInserted",
    "ProvenCall",
    "load_anchors",
    "show",
    "verify",
]

_LABEL = b"rolewire-audit-row/1\x00"
_ZERO = bytes(32)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonrep_log (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev BLOB NOT NULL,
    row_hash BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS nonrep_log_no_update BEFORE UPDATE ON nonrep_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS nonrep_log_no_delete BEFORE DELETE ON nonrep_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class AuditLogError(RolewireError):
    """The audit log cannot be opened, written or read."""


class AuditLogTampered(AuditLogError):
    """The log does not prove what it claims. ``seq`` is the first row at
    fault (0 if the whole log)."""

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(f"row {seq}: {message}" if seq else message)
        self.seq = seq


class LogRowEdited(AuditLogTampered):
    """A row's content does not match its hash, or the next row's ``prev``
    does not match it: the row was changed after it was written."""


class LogRowDeleted(AuditLogTampered):
    """A sequence number is missing (a row was removed), or the log ends
    before the recorded head."""


class LogRowInserted(AuditLogTampered):
    """A row that was not written in order: a call no verified batch covers,
    a duplicate or out-of-range position, a row after the recorded head."""


def _row_hash(seq: int, kind: str, payload: str, prev: bytes) -> bytes:
    k = kind.encode("ascii")
    return hashlib.sha256(_LABEL + seq.to_bytes(8, "big") + bytes((len(k),)) + k
                          + payload.encode("utf-8") + prev).digest()


def _canonical(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
#: The fields of a call row's JSON array, in order.
CALL_FIELDS = ("index", "type", "call_id", "operation", "time_ms", "body_sha256",
               "user_sha256", "digest", "body")


def _call_entry(data: Any) -> dict[str, Any]:
    """A call row as a dict; ``body_sha256`` filled in from the body where
    the body is stored (then the row holds only the body)."""
    if not isinstance(data, list) or len(data) != len(CALL_FIELDS):
        raise ValueError("not a call row")
    entry = dict(zip(CALL_FIELDS, data))
    if entry["body"] is None:
        del entry["body"]
        if not isinstance(entry["body_sha256"], str):
            raise ValueError("call row has neither body nor body digest")
    else:
        if entry["body_sha256"] is not None:
            raise ValueError("call row has both body and body digest")
        entry["body_sha256"] = hashlib.sha256(base64.b64decode(entry["body"])).hexdigest()
    return entry


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class AuditLog:
    """The append-only log a receiving service writes (one per service or
    per server; safe to share between its connections in one thread).

    ``store_bodies``: keep each call's body (else only its SHA-256: the log
    then proves a call with that body digest, keep bodies elsewhere).
    ``clock``: seconds, for ``received_at``."""

    def __init__(self, path: str | os.PathLike[str], *, store_bodies: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.store_bodies = store_bodies
        self.clock = clock
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute(
                "SELECT seq, row_hash FROM nonrep_log ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise AuditLogError(f"cannot open the audit log {os.fspath(path)}: {exc}") from None
        self._seq, self._head = (int(row[0]), bytes(row[1])) if row else (0, _ZERO)
        self._chains: set[str] = {
            json.loads(p)["digest"] for (p,) in self._db.execute(
                "SELECT payload FROM nonrep_log WHERE kind = 'chain'")}

    @property
    def head(self) -> bytes:
        """The newest row's hash (record it elsewhere to detect truncation)."""
        return self._head

    def __len__(self) -> int:
        return self._seq

    def _rows(self, kind: str, payload: Mapping[str, Any],
              out: list[tuple[int, str, str, bytes, bytes]]) -> None:
        self._row(kind, _canonical(payload), out)

    def _row(self, kind: str, text: str, out: list[tuple[int, str, str, bytes, bytes]]) -> None:
        seq = self._seq + len(out) + 1
        prev = out[-1][4] if out else self._head
        out.append((seq, kind, text, prev, _row_hash(seq, kind, text, prev)))

    def record_batch(self, head: BatchHead, chain: Sequence[bytes],
                     calls: Sequence[CallMessage], digests: Sequence[bytes], root: bytes,
                     times: Sequence[int] | None = None,
                     user_digests: Sequence[bytes | None] | None = None,
                     *, transcript_hash: bytes, peer: str = "") -> None:
        """Append one verified batch (its chain first if new), in one
        transaction. Raises :class:`AuditLogError` if it cannot be written."""
        rows: list[tuple[int, str, str, bytes, bytes]] = []
        dumps, sha256, b64, store = _dumps, hashlib.sha256, base64.b64encode, self.store_bodies
        cdigest = chain_digest(chain).hex()
        if cdigest not in self._chains:
            self._rows("chain", {"digest": cdigest, "certs": [_b64(d) for d in chain]}, rows)
        self._rows("batch", {
            "role": head.role, "alg": int(head.algorithm), "transcript": transcript_hash.hex(),
            "batch": head.batch, "count": head.count, "root": root.hex(), "chain": cdigest,
            "signature": _b64(head.signature), "received_at": self.clock(), "peer": peer,
        }, rows)
        for index, (message, digest) in enumerate(zip(calls, digests)):
            if times is None or user_digests is None:
                position = position_of(message.metadata)
                assert position is not None
                time_ms = position[2]
                user = message.metadata.get("rw-user")
                user_digest = hashlib.sha256(user).digest() if user is not None else None
            else:
                time_ms, user_digest = times[index], user_digests[index]
            # A call row is a JSON array in CALL_FIELDS order (a few
            # microseconds cheaper per call than an object with sorted keys).
            # With the body stored, its digest is not (the verifier hashes it).
            self._row("call", dumps([
                index, int(message.type), message.call_id, message.operation, time_ms,
                None if store else sha256(message.body).hexdigest(),
                user_digest.hex() if user_digest is not None else None, digest.hex(),
                b64(message.body).decode("ascii") if store else None]), rows)
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO nonrep_log (seq, kind, payload, prev, row_hash) "
                    "VALUES (?,?,?,?,?)", rows)
        except sqlite3.Error as exc:
            raise AuditLogError(f"cannot write the audit log: {type(exc).__name__}") from None
        self._seq += len(rows)
        self._head = rows[-1][4]
        self._chains.add(cdigest)

    def recorder(self, transcript_hash: bytes, peer: str = "") -> Callable[..., None]:
        """The ``record`` callback of a :class:`~rolewire.nonrep.batch.BatchVerifier`."""
        def record(head: BatchHead, chain: Sequence[bytes], calls: Sequence[CallMessage],
                   digests: Sequence[bytes], root: bytes, times: Sequence[int] | None = None,
                   user_digests: Sequence[bytes | None] | None = None) -> None:
            self.record_batch(head, chain, calls, digests, root, times, user_digests,
                              transcript_hash=transcript_hash, peer=peer)
        return record

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- third-party verification ------------------------------------------------------


@dataclass(frozen=True)
class ProvenCall:
    """One call proven to have been signed: ``signer`` (the certificate
    subject) holding a certificate of ``role`` (chaining to its anchors)
    signed the batch containing the call with this ``digest`` (operation,
    call id, time, body digest, end-user digest), in session
    ``transcript``."""

    seq: int
    role: str
    signer: str
    algorithm: str
    batch: int
    index: int
    operation: str
    call_id: int
    time: str
    digest: str
    body_sha256: str
    body_verified: bool
    user_sha256: str | None
    transcript: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_anchors(directory: str | os.PathLike[str]) -> dict[str, list[x509.Certificate]]:
    """``{role: anchors}`` from ``DIR/<role>.pem`` files (PEM certificates)."""
    path = Path(directory)
    if not path.is_dir():
        raise AuditLogError(f"{os.fspath(path)} is not a directory of <role>.pem anchors")
    anchors: dict[str, list[x509.Certificate]] = {}
    for pem in sorted(path.glob("*.pem")):
        try:
            anchors[pem.name[:-4]] = x509.load_pem_x509_certificates(pem.read_bytes())
        except ValueError:
            raise AuditLogError(f"cannot parse the anchors in {pem}") from None
    return anchors


def _open_ro(db_path: str | os.PathLike[str]) -> sqlite3.Connection:
    path = Path(db_path)
    if not path.is_file():
        raise AuditLogError(f"no audit log at {os.fspath(path)}")
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise AuditLogError(f"cannot open {os.fspath(path)}: {exc}") from None


def _read_rows(db: sqlite3.Connection) -> Iterator[tuple[int, str, str, bytes, bytes]]:
    try:
        yield from db.execute(
            "SELECT seq, kind, payload, prev, row_hash FROM nonrep_log ORDER BY seq")
    except sqlite3.Error as exc:
        raise AuditLogError(f"cannot read the audit log: {exc}") from None


def _check_chain(rows: Sequence[tuple[int, str, str, bytes, bytes]],
                 head: bytes | None) -> None:
    expected_seq, prev = 1, _ZERO
    for seq, kind, payload, row_prev, row_hash in rows:
        if seq > expected_seq:
            raise LogRowDeleted(f"rows {expected_seq}..{seq - 1} are missing", seq=expected_seq)
        if seq < expected_seq:  # cannot happen with a primary key; be safe
            raise LogRowInserted("row out of sequence", seq=seq)
        if bytes(row_hash) != _row_hash(seq, kind, payload, bytes(row_prev)):
            raise LogRowEdited("content does not match the row hash", seq=seq)
        if bytes(row_prev) != prev:
            # This row is intact but its predecessor is not the row it was
            # chained to: the predecessor was rewritten, or this was inserted.
            raise LogRowEdited("previous row does not match this row's prev", seq=seq - 1) \
                if seq > 1 else LogRowInserted("the first row is chained to something", seq=1)
        prev = bytes(row_hash)
        expected_seq = seq + 1
    if head is not None and prev != head:
        seen = {bytes(r[4]) for r in rows}
        if head in seen:
            raise LogRowInserted("rows after the recorded head", seq=0)
        raise LogRowDeleted("the log does not reach the recorded head", seq=0)


def verify(db_path: str | os.PathLike[str],
           anchors: Mapping[str, Sequence[x509.Certificate]] | str | os.PathLike[str], *,
           head: bytes | None = None) -> list[ProvenCall]:
    """Prove every call in the log at ``db_path`` with the roles' trust
    ``anchors`` (``{role: certs}`` or a directory of ``<role>.pem``). Checks
    the row chain (and, if given, that it ends at ``head``), every signer
    chain at the time of signing, every batch signature over the Merkle root
    of its calls' recomputed digests. Raises a :class:`AuditLogTampered`
    subclass, :class:`~rolewire.nonrep.batch.BatchSignatureInvalid` or
    :class:`~rolewire.nonrep.signing.SignerNotTrusted` on the first fault."""
    roots = anchors if isinstance(anchors, Mapping) else load_anchors(anchors)
    db = _open_ro(db_path)
    try:
        rows = list(_read_rows(db))
    finally:
        db.close()
    _check_chain(rows, head)
    chains: dict[str, tuple[bytes, ...]] = {}
    proven: list[ProvenCall] = []
    batch: dict[str, Any] | None = None
    batch_seq = 0
    calls: list[tuple[int, dict[str, Any]]] = []
    new_chain: int | None = None  # seq of a chain row not yet followed by its batch

    def finish() -> None:
        if batch is None:
            return
        if len(calls) != batch["count"]:
            raise LogRowDeleted(f"batch has {len(calls)} of its {batch['count']} calls",
                                seq=batch_seq)
        proven.extend(_prove_batch(batch_seq, batch, calls, chains, roots))

    for seq, kind, payload, _prev, _hash in rows:
        try:
            data = json.loads(payload)
        except ValueError:
            raise LogRowEdited("payload is not JSON", seq=seq) from None
        if new_chain is not None and kind != "batch":
            # The writer puts a new chain right before the batch it signs.
            raise LogRowInserted("a signer chain row no batch follows", seq=new_chain)
        if kind == "chain":
            finish()
            batch, calls = None, []
            try:
                certs = tuple(base64.b64decode(c) for c in data["certs"])
                digest = data["digest"]
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise LogRowEdited("chain row is not a chain", seq=seq) from None
            if chain_digest(certs).hex() != digest:
                raise LogRowEdited("chain digest does not match its certificates", seq=seq)
            if digest in chains:
                raise LogRowInserted("the same signer chain twice", seq=seq)
            chains[digest] = certs
            new_chain = seq
        elif kind == "batch":
            finish()
            if not isinstance(data, dict):
                raise LogRowEdited("batch row is not a batch", seq=seq)
            new_chain = None
            batch, batch_seq, calls = data, seq, []
        elif kind == "call":
            try:
                data = _call_entry(data)
            except (ValueError, TypeError, binascii.Error):
                raise LogRowEdited("call row is not a call", seq=seq) from None
            if batch is None:
                raise LogRowInserted("a call row outside any signed batch", seq=seq)
            if data.get("index") != len(calls) or len(calls) >= batch["count"]:
                raise LogRowInserted("call position out of order or beyond its batch",
                                     seq=seq)
            calls.append((seq, data))
        else:
            raise LogRowInserted(f"unknown row kind {kind!r}", seq=seq)
    if new_chain is not None:
        raise LogRowInserted("a signer chain row no batch follows", seq=new_chain)
    finish()
    return proven


def _prove_batch(seq: int, batch: Mapping[str, Any], calls: list[tuple[int, dict[str, Any]]],
                 chains: Mapping[str, tuple[bytes, ...]],
                 roots: Mapping[str, Sequence[x509.Certificate]]) -> list[ProvenCall]:
    transcript = bytes.fromhex(batch["transcript"])
    algorithm = Algorithm(batch["alg"])
    digests = []
    for call_seq, call in calls:
        user = call["user_sha256"]
        digest = _digest_from_row(transcript, call, user)
        if digest.hex() != call["digest"]:
            raise LogRowEdited("call fields do not give the stored call digest", seq=call_seq)
        digests.append(digest)
    root = merkle_root(digests)
    if root.hex() != batch["root"]:
        raise LogRowEdited("batch root is not the root of its calls", seq=seq)
    chain = chains.get(batch["chain"])
    if chain is None:
        raise LogRowDeleted("the batch's signer chain is not in the log", seq=seq)
    anchors = roots.get(batch["role"])
    if not anchors:
        raise SignerNotTrusted(f"row {seq}: no trust anchors for role {batch['role']!r}")
    at = datetime.datetime.fromtimestamp(max(c["time_ms"] for _, c in calls) / 1000,
                                         datetime.timezone.utc)
    key = validate_chain(chain, anchors, algorithm, at)
    signed = head_bytes(algorithm, batch["role"], transcript, batch["batch"], batch["count"],
                        root, bytes.fromhex(batch["chain"]))
    try:
        verify_signature(key, base64.b64decode(batch["signature"]), signed)
    except SignatureInvalid:
        raise BatchSignatureInvalid(f"row {seq}: batch signature does not verify") from None
    return [ProvenCall(call_seq, batch["role"], key.subject, algorithm.label, batch["batch"],
                       call["index"], call["operation"], call["call_id"],
                       datetime.datetime.fromtimestamp(
                           call["time_ms"] / 1000, datetime.timezone.utc).isoformat(),
                       call["digest"], call["body_sha256"], "body" in call,
                       call["user_sha256"], batch["transcript"][:16])
            for call_seq, call in calls]


def _digest_from_row(transcript: bytes, call: Mapping[str, Any], user: str | None) -> bytes:
    """The call digest recomputed from a row (which stores the SHA-256 of
    the body and of the end-user token, not the values)."""
    return call_digest_from_hashes(
        transcript, int(call["type"]), int(call["call_id"]), str(call["operation"]),
        bytes.fromhex(call["body_sha256"]), int(call["time_ms"]),
        bytes.fromhex(user) if user is not None else None)


def show(db_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row as ``{"seq", "kind", ...payload, "row_hash"}`` (bodies and
    signatures shortened), for ``rolewire audit show``. Does not verify."""
    db = _open_ro(db_path)
    try:
        out = []
        for seq, kind, payload, _prev, row_hash in _read_rows(db):
            data = json.loads(payload)
            if kind == "call":
                data = _call_entry(data)
            for long in ("body", "signature"):
                if long in data:
                    data[long] = f"<{len(base64.b64decode(data[long]))} bytes>"
            if "certs" in data:
                data["certs"] = [x509.load_der_x509_certificate(base64.b64decode(c))
                                 .subject.rfc4514_string() for c in data["certs"]]
            out.append({"seq": seq, "kind": kind, **data, "row_hash": bytes(row_hash).hex()})
        return out
    finally:
        db.close()
