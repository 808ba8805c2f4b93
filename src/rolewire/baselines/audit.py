"""Non-repudiation for the JWT baseline: store every received token, prove
later who signed which request (thesis, section 5.2.1).

:class:`AuditStore` is a SQLite file a receiving service writes one row to
per accepted request (the JWT server does it before dispatching, and refuses
the request if the row cannot be written)::

    received_tokens(id, jti, iss, aud, sub, iat, exp, token, request_hash,
                    operation, body, received_at)   UNIQUE (iss, jti)

``body`` is stored unless ``store_bodies=False`` (then keep the bodies
elsewhere: the row alone proves only the request *hash*).

:func:`verify` re-checks rows for a third party holding only the signers'
**public** keys (a :class:`~rolewire.baselines.jwt.KeyRegistry` or its
directory): each token's signature with its issuer's key, that the row's
columns are the token's claims, that the token's ``rh`` equals the row's
request hash and, where the body is stored, that hashing the operation and
body gives that hash again. A changed token, issuer, audience, hash,
operation or body is refused with :class:`AuditRecordTampered`. Expiry is not
checked (stored tokens are old by design); the signature is what proves.

Stored tokens are bearer credentials only until they expire (60 s by
default), and only for the exact request they hash; the server also seeds its
replay cache from this store at start, so a token read from the file cannot
be replayed to the same service after a restart either.

Command line (``rolewire audit verify DB --anchors DIR``, ``rolewire audit
show DB``; the same interface as rolewire's own signed-call log):
:mod:`rolewire.auditcmd`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from rolewire.errors import ConfigurationError, ProtocolViolation, RolewireError

if TYPE_CHECKING:
    from typing_extensions import Self

    from rolewire.baselines.jwt import KeyRegistry, VerifiedRequest

__all__ = [
    "AuditEntry",
    "AuditError",
    "AuditRecordTampered",
    "AuditStore",
    "UnknownSigner",
    "show",
    "verify",
]


def _jwt() -> ModuleType:
    """The JWT baseline, imported on use: the command-line parser works
    without PyJWT and says what to install when a command needs it."""
    try:
        from rolewire.baselines import jwt
    except ImportError as exc:
        raise ConfigurationError(
            f"the audit store needs PyJWT: pip install 'rolewire[baselines]' ({exc})"
        ) from None
    return jwt


_SCHEMA = """
CREATE TABLE IF NOT EXISTS received_tokens (
    id INTEGER PRIMARY KEY,
    jti TEXT NOT NULL,
    iss TEXT NOT NULL,
    aud TEXT NOT NULL,
    sub TEXT NOT NULL,
    iat INTEGER NOT NULL,
    exp INTEGER NOT NULL,
    token TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    operation TEXT NOT NULL,
    body BLOB,
    received_at REAL NOT NULL,
    UNIQUE (iss, jti)
);
CREATE INDEX IF NOT EXISTS received_tokens_exp ON received_tokens (exp);
"""
_COLUMNS = ("id, jti, iss, aud, sub, iat, exp, token, request_hash, operation, body, "
            "received_at")


class AuditError(RolewireError):
    """The audit store cannot be used or a row cannot be proven."""


class UnknownSigner(AuditError):
    """A row's issuer has no public key in the registry: nothing can be
    proven about it (add the key, or the row is not from a known service)."""


class AuditRecordTampered(AuditError):
    """A stored row does not prove what it claims: the token's signature
    fails, or a column disagrees with the signed token or with the stored
    body. ``row_id``, ``jti`` and ``column`` say which (never the token)."""

    def __init__(self, message: str, *, row_id: int, jti: str, column: str) -> None:
        super().__init__(f"row {row_id} (jti {jti}): {message}")
        self.row_id = row_id
        self.jti = jti
        self.column = column


@dataclass(frozen=True)
class AuditEntry:
    """One proven request: ``issuer`` signed a token for ``operation`` with
    a body hashing to ``request_hash``, addressed to ``audience``, at
    ``issued_at``. ``body_verified``: the stored body matches the hash;
    ``user``: the end user of a nested STS token (``user_verified`` if the
    STS key was in the registry and its signature holds)."""

    row_id: int
    jti: str
    issuer: str
    audience: str
    issued_at: int
    operation: str
    request_hash: str
    received_at: float
    body_verified: bool
    user: str | None = None
    user_verified: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AuditStore:
    """The receiver's SQLite store of accepted tokens (WAL mode, one
    transaction per row)."""

    def __init__(self, path: str | os.PathLike[str], *, store_bodies: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.store_bodies = store_bodies
        self.clock = clock
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open audit store {os.fspath(path)}: {exc}") from None

    def record(self, request: VerifiedRequest, operation: str, body: bytes) -> None:
        """Store one accepted request. Raises :class:`TokenReplayed` if the
        ``(iss, jti)`` pair is already stored, :class:`AuditError` if the
        row cannot be written."""
        try:
            self._db.execute(
                "INSERT INTO received_tokens (jti, iss, aud, sub, iat, exp, token, "
                "request_hash, operation, body, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (request.jti, request.caller, str(request.claims.get("aud", "")),
                 str(request.claims.get("sub", "")), request.issued_at, request.expires_at,
                 request.token, request.request_hash, operation,
                 bytes(body) if self.store_bodies else None, self.clock()))
        except sqlite3.IntegrityError:
            raise _jwt().TokenReplayed("token already stored (jti seen before)") from None
        except sqlite3.Error as exc:
            raise AuditError(f"cannot write the audit store: {type(exc).__name__}") from None

    def unexpired(self, now: float) -> Iterator[tuple[str, str, int]]:
        """``(issuer, jti, exp)`` of stored tokens with ``exp >= now``."""
        yield from self._db.execute(
            "SELECT iss, jti, exp FROM received_tokens WHERE exp >= ?", (int(now),))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM received_tokens").fetchone()[0])

    def verify(self, registry: KeyRegistry, *, jti: str | None = None) -> list[AuditEntry]:
        """:func:`verify` on this store's rows."""
        return _verify_rows(self._db, registry, jti)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tampered(row: sqlite3.Row, column: str, message: str) -> AuditRecordTampered:
    return AuditRecordTampered(message, row_id=int(row["id"]), jti=str(row["jti"]),
                               column=column)


def _verify_row(row: sqlite3.Row, registry: KeyRegistry) -> AuditEntry:
    jwt = _jwt()
    token = row["token"]
    try:
        claims = jwt.peek_claims(token)
    except jwt.MalformedToken:
        raise _tampered(row, "token", "stored token is not a JWT") from None
    issuer = claims.get("iss")
    if issuer != row["iss"]:
        raise _tampered(row, "iss", "issuer column differs from the signed token")
    entry = registry.get(row["iss"])
    if entry is None or entry.sts:
        raise UnknownSigner(f"row {row['id']}: no service key for issuer {row['iss']!r}")
    try:
        signed = jwt.verify_signed_token(token, entry, audience=None, leeway=0,
                                         require=["iss", "aud", "iat", "jti", "rh"],
                                         verify_exp=False)
    except jwt.TokenRejected as exc:
        raise _tampered(row, "token", f"signature or claims do not verify ({exc})") from None
    for column, claim in (("jti", "jti"), ("aud", "aud"), ("iat", "iat"),
                          ("request_hash", "rh")):
        if signed.get(claim) != row[column]:
            raise _tampered(row, column, f"{column} column differs from the signed token")
    body_verified = False
    try:
        if row["body"] is not None:
            if jwt.request_hash(row["operation"], bytes(row["body"])) != row["request_hash"]:
                raise _tampered(row, "body", "stored operation/body do not match the hash")
            body_verified = True
    except ProtocolViolation:
        raise _tampered(row, "operation", "stored operation name is invalid") from None
    user, user_verified = None, False
    nested = signed.get("usr")
    if isinstance(nested, str):
        try:
            user_claims = jwt.peek_claims(nested)
            user = str(user_claims.get("sub"))
            sts = registry.get(str(user_claims.get("iss")))
            if sts is not None and sts.sts:
                jwt.verify_signed_token(nested, sts, audience=None, leeway=0,
                                        require=["iss", "sub"], verify_exp=False)
                user_verified = True
        except jwt.TokenRejected:
            raise _tampered(row, "token", "nested user token does not verify") from None
    return AuditEntry(int(row["id"]), row["jti"], row["iss"], row["aud"], int(row["iat"]),
                      row["operation"], row["request_hash"], float(row["received_at"]),
                      body_verified, user, user_verified)


def _verify_rows(db: sqlite3.Connection, registry: KeyRegistry,
                 jti: str | None) -> list[AuditEntry]:
    factory = db.row_factory
    db.row_factory = sqlite3.Row
    try:
        if jti is None:
            rows = db.execute(f"SELECT {_COLUMNS} FROM received_tokens ORDER BY id")
        else:
            rows = db.execute(f"SELECT {_COLUMNS} FROM received_tokens WHERE jti = ? "
                              "ORDER BY id", (jti,))
        entries = [_verify_row(row, registry) for row in rows]
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the audit store: {exc}") from None
    finally:
        db.row_factory = factory
    if jti is not None and not entries:
        raise AuditError(f"no stored token with jti {jti!r}")
    return entries


def verify(db_path: str | os.PathLike[str], registry: KeyRegistry | str | os.PathLike[str],
           *, jti: str | None = None) -> list[AuditEntry]:
    """Prove every row of the audit store at ``db_path`` (or the rows with
    ``jti``) with the public keys of ``registry`` (a :class:`KeyRegistry` or
    the directory it was saved to). Opens the file read-only. Returns the
    proven entries; raises :class:`AuditRecordTampered` on the first row that
    does not verify, :class:`UnknownSigner` for an unregistered issuer."""
    registry_type = _jwt().KeyRegistry
    keys = registry if isinstance(registry, registry_type) else registry_type.load(registry)
    path = Path(db_path)
    if not path.is_file():
        raise AuditError(f"no audit store at {os.fspath(path)}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open {os.fspath(path)}: {exc}") from None
    try:
        return _verify_rows(db, keys, jti)
    finally:
        db.close()


def show(db_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every stored row (token and body left out), unverified, for
    ``rolewire audit show``."""
    path = Path(db_path)
    if not path.is_file():
        raise AuditError(f"no audit store at {os.fspath(path)}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, jti, iss, aud, sub, iat, exp, operation, "
                              "request_hash, received_at FROM received_tokens ORDER BY id")
            names = [d[0] for d in rows.description]
            return [dict(zip(names, row)) for row in rows]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the audit store: {exc}") from None
