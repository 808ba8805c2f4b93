"""``rolewire audit``: prove stored calls to a third party, for rolewire's
signed-call log (:mod:`rolewire.nonrep.audit`) and the JWT baseline's token
store (:mod:`rolewire.baselines.audit`) alike, so the two can be compared::

    rolewire audit verify DB --anchors DIR [--head HEX] [--jti JTI] [--json]
    rolewire audit show DB [--json]

The kind of ``DB`` is recognised from its tables. ``--anchors DIR``: for a
rolewire log, ``DIR/<role>.pem`` holds each certificate role's trust
anchors; for a JWT store, ``DIR`` is the signers' public-key directory
(``KeyRegistry.save``; ``--keys`` is the older name). Exit 0: everything
proven; 1: tampering found (the first fault is printed); errors (unreadable
files, unknown signers) are RolewireErrors for the caller to report.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from rolewire.errors import ConfigurationError, RolewireError

__all__ = ["add_audit_parser", "store_kind"]


def store_kind(db: str) -> str:
    """``"rolewire"`` (signed-call log) or ``"jwt"`` (token store)."""
    path = Path(db)
    if not path.is_file():
        raise ConfigurationError(f"no audit database at {db}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ConfigurationError(f"{db} is not an SQLite database ({exc})") from None
    if "nonrep_log" in tables:
        return "rolewire"
    if "received_tokens" in tables:
        return "jwt"
    raise ConfigurationError(f"{db} holds neither a rolewire audit log nor a JWT token store")


def _tampered(args: argparse.Namespace, exc: RolewireError, **extra: Any) -> int:
    if args.json:
        print(json.dumps({"ok": False, "error": str(exc), "type": type(exc).__name__,
                          **extra}))
    else:
        print(f"TAMPERED: {type(exc).__name__}: {exc}")
    return 1


def _verify_rolewire(args: argparse.Namespace, anchors: str) -> int:
    from rolewire.nonrep import audit as log
    from rolewire.nonrep.signing import SignatureInvalid, SignerNotTrusted

    head = bytes.fromhex(args.head) if args.head else None
    try:
        proven = log.verify(args.db, anchors, head=head)
    except log.AuditLogTampered as exc:
        return _tampered(args, exc, row=exc.seq)
    except (SignatureInvalid, SignerNotTrusted) as exc:
        return _tampered(args, exc)
    if args.json:
        print(json.dumps({"ok": True, "kind": "rolewire",
                          "entries": [p.as_dict() for p in proven]}, indent=2))
        return 0
    for p in proven:
        user = f" for end user {p.user_sha256[:16]}" if p.user_sha256 else ""
        body = "body matches" if p.body_verified else "body not stored"
        print(f"row {p.seq}: {p.signer} (role {p.role}, {p.algorithm}) signed "
              f"{p.operation!r} call {p.call_id} at {p.time}{user} "
              f"[batch {p.batch}#{p.index}, {body}]")
    print(f"{len(proven)} call(s) proven; log intact")
    return 0


def _verify_jwt(args: argparse.Namespace, keys: str) -> int:
    from rolewire.baselines import audit as store

    try:
        entries = store.verify(args.db, keys, jti=args.jti)
    except store.AuditRecordTampered as exc:
        return _tampered(args, exc, row=exc.row_id, column=exc.column)
    if args.json:
        print(json.dumps({"ok": True, "kind": "jwt",
                          "entries": [e.as_dict() for e in entries]}, indent=2))
        return 0
    for e in entries:
        user = f" for user {e.user!r}" + ("" if e.user_verified else " (unverified)") \
            if e.user else ""
        body = "body matches" if e.body_verified else "body not stored"
        print(f"row {e.row_id}: {e.issuer} signed {e.operation!r} to {e.audience} at "
              f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(e.issued_at))}{user} "
              f"[jti {e.jti}, {body}]")
    print(f"{len(entries)} request(s) proven")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    anchors = args.anchors or args.keys
    if not anchors:
        raise ConfigurationError("audit verify needs --anchors DIR")
    if store_kind(args.db) == "rolewire":
        if args.jti:
            raise ConfigurationError("--jti applies to JWT token stores")
        return _verify_rolewire(args, anchors)
    if args.head:
        raise ConfigurationError("--head applies to rolewire audit logs")
    return _verify_jwt(args, anchors)


def _cmd_show(args: argparse.Namespace) -> int:
    kind = store_kind(args.db)
    if kind == "rolewire":
        from rolewire.nonrep.audit import show

        rows = show(args.db)
    else:
        from rolewire.baselines.audit import show as show_tokens

        rows = show_tokens(args.db)
    if args.json:
        print(json.dumps({"kind": kind, "rows": rows}, indent=2))
        return 0
    for row in rows:
        fields = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("seq", "kind", "id"))
        print(f"{row.get('seq', row.get('id'))} {row.get('kind', 'token')}: {fields}")
    if kind == "rolewire" and rows:
        print(f"head {rows[-1]['row_hash']}  (record it elsewhere: audit verify --head)")
    print(f"{len(rows)} row(s), not verified (use audit verify)")
    return 0


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit verify|show`` to a ``rolewire`` argparse sub-command set."""
    audit: argparse.ArgumentParser = subparsers.add_parser(
        "audit", help="prove stored signed calls (or JWT-baseline requests) to a third party",
        description="Check a rolewire signed-call audit log or a JWT-baseline token store "
                    "with only the signers' trust anchors (non-repudiation).")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    check = audit_sub.add_parser(
        "verify", help="prove every stored call and that the log was not edited",
        description="rolewire log: check the row hash chain, every signer chain against "
                    "DIR/<role>.pem at the time of signing, and every batch signature over "
                    "its calls. JWT store: re-verify every token with its issuer's public "
                    "key. Exit 0 if all is proven, 1 if something was tampered with.")
    check.add_argument("db", metavar="DB", help="the audit database (SQLite file)")
    check.add_argument("--anchors", metavar="DIR",
                       help="trust anchors: <role>.pem files (rolewire) or the public-key "
                            "directory (JWT)")
    check.add_argument("--keys", metavar="DIR", help=argparse.SUPPRESS)
    check.add_argument("--head", metavar="HEX",
                       help="the log's head hash recorded earlier (detects truncation)")
    check.add_argument("--jti", help="JWT store: prove only the request with this token id")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_cmd_verify)
    listing = audit_sub.add_parser("show", help="list the entries (without verifying)",
                                   description="List the rows of an audit database.")
    listing.add_argument("db", metavar="DB")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_cmd_show)
    return audit
