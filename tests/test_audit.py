"""Non-repudiation: the JWT server stores received tokens; a third party with
only public keys proves them, and tampered rows are refused."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rolewire import pki
from rolewire.auditcmd import add_audit_parser
from rolewire.baselines import jwt
from rolewire.baselines.audit import (
    AuditError,
    AuditRecordTampered,
    AuditStore,
    UnknownSigner,
    verify,
)
from rolewire.errors import ConfigurationError
from rolewire.services import CallContext, Service

ORDER = b'{"item": "book", "qty": 1}'


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An order service calls inventory (with a user token) and payment
    calls it too; inventory keeps an audit store. Returns paths and keys."""
    tmp = tmp_path_factory.mktemp("audit")
    ca = pki.create_ca("ca")
    orders = jwt.ServiceIdentity.generate("orders")
    payment = jwt.ServiceIdentity.generate("payment", "ES256")
    sts = jwt.SecurityTokenService(jwt.ServiceIdentity.generate("sts"))
    registry = jwt.KeyRegistry()
    registry.add_identity(orders, ["orders"])
    registry.add_identity(payment, ["payment"])
    registry.add_identity(sts.identity, sts=True)
    registry.save(tmp / "keys")

    inventory = Service("inventory")

    @inventory.operation("reserve", roles=["orders"])
    def reserve(call: CallContext, body: bytes) -> bytes:
        return b"reserved"

    @inventory.operation("release", roles=["orders", "payment"])
    def release(call: CallContext, body: bytes) -> bytes:
        return b"released"

    async def main() -> None:
        store = AuditStore(tmp / "inventory.db")
        async with jwt.serve(inventory, cert=pki.issue(ca, "inventory"), registry=registry,
                             audit=store) as server:
            async with jwt.connect("127.0.0.1", server.port, identity=orders,
                                   audience="inventory", ca=ca) as client:
                await client.call("reserve", ORDER, user_token=sts.issue("alice", ["buy"]))
                await client.call("release", b"")
            async with jwt.connect("127.0.0.1", server.port, identity=payment,
                                   audience="inventory", ca=ca) as client:
                await client.call("release", b"refund 7")
                with pytest.raises(Exception):  # noqa: B017 - Forbidden: not stored
                    await client.call("reserve", ORDER)
        store.close()

    asyncio.run(main())
    return {"db": tmp / "inventory.db", "keys": tmp / "keys", "registry": registry,
            "orders": orders}


def test_stored_requests_are_proven(world: dict[str, Any]) -> None:
    entries = verify(world["db"], world["keys"])
    # Every accepted request was stored, the forbidden one too (the token was
    # valid: the caller did sign it), in arrival order.
    assert [(e.issuer, e.operation) for e in entries] == [
        ("orders", "reserve"), ("orders", "release"), ("payment", "release"),
        ("payment", "reserve")]
    first = entries[0]
    assert first.audience == "inventory" and first.body_verified
    assert first.user == "alice" and first.user_verified
    assert first.request_hash == jwt.request_hash("reserve", ORDER)
    one = verify(world["db"], world["registry"], jti=entries[2].jti)
    assert [e.issuer for e in one] == ["payment"]
    with pytest.raises(AuditError):
        verify(world["db"], world["registry"], jti="no-such-jti")


def tampered_copy(world: dict[str, Any], tmp_path: Path, sql: str,
                  params: tuple[Any, ...] = ()) -> Path:
    copy = tmp_path / "copy.db"
    shutil.copy(world["db"], copy)
    for suffix in ("-wal", "-shm"):
        source = Path(str(world["db"]) + suffix)
        if source.exists():
            shutil.copy(source, str(copy) + suffix)
    db = sqlite3.connect(copy)
    db.execute(sql, params)
    db.commit()
    db.close()
    return copy


def _flip_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"


TAMPERING: dict[str, tuple[str, Callable[[sqlite3.Connection], tuple[Any, ...]]]] = {
    "body": ("UPDATE received_tokens SET body = ? WHERE id = 1",
             lambda db: (b'{"item": "book", "qty": 100}',)),
    "request_hash": ("UPDATE received_tokens SET request_hash = ? WHERE id = 1",
                     lambda db: (jwt.request_hash("reserve", b"other"),)),
    "iss": ("UPDATE received_tokens SET iss = 'payment' WHERE id = 1", lambda db: ()),
    "token": ("UPDATE received_tokens SET token = ? WHERE id = 1",
              lambda db: (_flip_signature(db.execute(
                  "SELECT token FROM received_tokens WHERE id = 1").fetchone()[0]),)),
    "jti": ("UPDATE received_tokens SET token = ? WHERE id = 2",  # another row's token
            lambda db: (db.execute("SELECT token FROM received_tokens WHERE id = 1"
                                   ).fetchone()[0],)),
    "operation": ("UPDATE received_tokens SET operation = 'release' WHERE id = 1",
                  lambda db: ()),
}


@pytest.mark.parametrize("what", sorted(TAMPERING))
def test_tampered_rows_are_refused(world: dict[str, Any], tmp_path: Path, what: str) -> None:
    sql, params = TAMPERING[what]
    db = sqlite3.connect(f"{Path(world['db']).as_uri()}?mode=ro", uri=True)
    values = params(db)
    db.close()
    copy = tampered_copy(world, tmp_path, sql, values)
    with pytest.raises(AuditRecordTampered) as info:
        verify(copy, world["keys"])
    expected = {"body": "body", "request_hash": "request_hash", "iss": "iss",
                "token": "token", "jti": "jti", "operation": "body"}[what]
    assert info.value.column == expected
    assert "eyJ" not in str(info.value)  # the message never carries a token


def test_unknown_signer(world: dict[str, Any]) -> None:
    only_orders = jwt.KeyRegistry()
    only_orders.add_identity(world["orders"], ["orders"])
    with pytest.raises(UnknownSigner):
        verify(world["db"], only_orders)


def test_stored_tokens_stay_single_use_after_a_restart(tmp_path: Path) -> None:
    ca = pki.create_ca("ca")
    caller = jwt.ServiceIdentity.generate("caller")
    registry = jwt.KeyRegistry()
    registry.add_identity(caller, ["r"])
    svc = Service("callee")

    @svc.operation("op", roles=["r"])
    def op(call: CallContext, body: bytes) -> bytes:
        return b"done"

    token = jwt.TokenSigner(caller).sign("callee", "op", b"x")

    class Fixed(jwt.TokenSigner):
        def sign(self, *args: Any, **kwargs: Any) -> str:
            return token

    async def once() -> bytes:
        store = AuditStore(tmp_path / "callee.db")
        try:
            async with (
                jwt.serve(svc, cert=pki.issue(ca, "callee"), registry=registry,
                          audit=store) as server,
                jwt.connect("127.0.0.1", server.port, identity=caller, audience="callee", ca=ca,
                            signer=Fixed(caller)) as client,
            ):
                return await client.call("op", b"x")
        finally:
            store.close()

    assert asyncio.run(once()) == b"done"
    with pytest.raises(Exception, match="already used"):  # a new server, same store
        asyncio.run(once())


def test_store_without_bodies(tmp_path: Path) -> None:
    caller = jwt.ServiceIdentity.generate("caller")
    registry = jwt.KeyRegistry()
    registry.add_identity(caller)
    token = jwt.TokenSigner(caller).sign("callee", "op", b"secret body")
    request = jwt.TokenVerifier("callee", registry).verify(token, "op", b"secret body")
    with AuditStore(tmp_path / "a.db", store_bodies=False) as store:
        store.record(request, "op", b"secret body")
        with pytest.raises(jwt.TokenReplayed):
            store.record(request, "op", b"secret body")
        [entry] = store.verify(registry)
    assert not entry.body_verified and entry.issuer == "caller"
    assert b"secret body" not in (tmp_path / "a.db").read_bytes()


def test_cli_verify(world: dict[str, Any], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="rolewire")
    add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "verify", str(world["db"]), "--keys",
                              str(world["keys"])])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "4 request(s) proven" in out and "orders signed 'reserve'" in out
    copy = tampered_copy(world, tmp_path, "UPDATE received_tokens SET body = x'00' WHERE id = 3")
    args = parser.parse_args(["audit", "verify", str(copy), "--keys", str(world["keys"]),
                              "--json"])
    assert args.func(args) == 1
    assert '"ok": false' in capsys.readouterr().out


def test_cli_same_interface_as_rolewire_logs(world: dict[str, Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``audit verify DB --anchors DIR`` and ``audit show DB`` work on the JWT
    store exactly as on rolewire's signed-call log (issue 18)."""
    parser = argparse.ArgumentParser(prog="rolewire")
    add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "verify", str(world["db"]), "--anchors",
                              str(world["keys"]), "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["kind"] == "jwt" and len(report["entries"]) == 4
    args = parser.parse_args(["audit", "show", str(world["db"]), "--json"])
    assert args.func(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "jwt" and len(shown["rows"]) == 4
    assert all("token" not in row and "body" not in row for row in shown["rows"])
    args = parser.parse_args(["audit", "verify", str(world["db"]), "--anchors",
                              str(world["keys"]), "--head", "00"])
    with pytest.raises(ConfigurationError):
        args.func(args)
