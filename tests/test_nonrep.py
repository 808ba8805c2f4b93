"""Non-repudiation (issue 18 §2): Merkle proofs (property tests), batched
call signatures with ECDSA P-256, Ed25519 and Ed25519 + ML-DSA-65, every way
to alter, reorder, drop or re-route a signed call, the hash-chained audit
log and every way to edit it, signed calls over real rolewire.aio
connections, and the ``rolewire audit`` command."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolewire import pki
from rolewire.aio import connect, serve
from rolewire.auditcmd import add_audit_parser
from rolewire.callstate import VerifiedMetadata
from rolewire.errors import Forbidden
from rolewire.handshake import HandshakeConfig
from rolewire.nonrep import (
    AuditLog,
    BatchHead,
    BatchIncomplete,
    BatchMalformed,
    BatchSignatureInvalid,
    BatchSigner,
    BatchVerifier,
    LogRowDeleted,
    LogRowEdited,
    LogRowInserted,
    SignedCall,
    SignedCalls,
    SignerNotTrusted,
    inclusion_proof,
    issue_signer,
    merkle_root,
    sign_calls,
    verify,
    verify_inclusion,
)
from rolewire.nonrep.audit import CALL_FIELDS, _row_hash
from rolewire.protocol.wire import CallMessage, MessageType
from rolewire.roles.key import KeyRole
from rolewire.services import UNRESTRICTED, Service

ALGORITHMS = ("ecdsa-p256", "ed25519", "ed25519+mldsa65")
CA = pki.create_ca("payment-role CA")
OTHER_CA = pki.create_ca("another CA")
SIGNERS = {a: issue_signer(CA.certificate, CA.private_key, "payment", "user-api", algorithm=a)
           for a in ALGORITHMS}
TH = hashlib.sha512(b"session").digest()
NOW_MS = int(time.time() * 1000)


# --- Merkle tree --------------------------------------------------------------------

leaves = st.lists(st.binary(max_size=40), min_size=1, max_size=70)


@given(leaves, st.data())
def test_inclusion_proofs_verify(items, data):
    root = merkle_root(items)
    index = data.draw(st.integers(0, len(items) - 1))
    proof = inclusion_proof(items, index)
    assert verify_inclusion(items[index], index, len(items), proof, root)
    assert len(proof) <= max(1, len(items)).bit_length()


@given(leaves, st.data())
def test_inclusion_proofs_refuse_anything_else(items, data):
    root = merkle_root(items)
    index = data.draw(st.integers(0, len(items) - 1))
    proof = inclusion_proof(items, index)
    assert not verify_inclusion(items[index] + b"x", index, len(items), proof, root)
    # (a wrong tree size can give the same path shape; the size is signed
    # separately, in the batch head)
    assert not verify_inclusion(items[index], len(items), len(items), proof, root)
    assert not verify_inclusion(items[index], index, len(items), proof, b"\x00" * 32)
    if proof:
        assert not verify_inclusion(items[index], index, len(items), proof[:-1], root)
        bent = [bytes([proof[0][0] ^ 1]) + proof[0][1:]] + proof[1:]
        assert not verify_inclusion(items[index], index, len(items), bent, root)
    other = data.draw(st.integers(0, len(items) - 1))
    if items[other] != items[index]:
        assert not verify_inclusion(items[index], other, len(items), proof, root)


@given(leaves, st.data())
def test_root_changes_on_alter_reorder_drop(items, data):
    root = merkle_root(items)
    i = data.draw(st.integers(0, len(items) - 1))
    altered = list(items)
    altered[i] = items[i] + b"!"
    assert merkle_root(altered) != root
    if len(items) > 1:
        assert merkle_root(items[:i] + items[i + 1:]) != root
        j = data.draw(st.integers(0, len(items) - 1))
        swapped = list(items)
        swapped[i], swapped[j] = items[j], items[i]
        assert (merkle_root(swapped) == root) == (items[i] == items[j])


@given(st.lists(st.binary(max_size=8), max_size=300))
def test_bottom_up_root_is_the_rfc_9162_tree(items):
    from rolewire.nonrep.merkle import merkle_root_recursive
    assert merkle_root(items) == merkle_root_recursive(items)


def test_merkle_known_answer():
    # RFC 9162 structure: root of [a, b, c] = H(1 | H(1 | H(0|a) | H(0|b)) | H(0|c))
    def h(b):
        return hashlib.sha256(b).digest()

    la, lb, lc = (h(b"\x00" + x) for x in (b"a", b"b", b"c"))
    assert merkle_root([b"a", b"b", b"c"]) == h(b"\x01" + h(b"\x01" + la + lb) + lc)
    assert merkle_root([]) == h(b"")


# --- batches, sans-IO -----------------------------------------------------------------


def make_calls(batcher: BatchSigner, n: int, *, user: bytes | None = None):
    out = []
    for i in range(n):
        meta = {"rw-user": user} if user else {}
        body = b"order-%d" % i
        stamped = batcher.stamp(MessageType.REQUEST, i + 1, "charge", body, meta, NOW_MS + i)
        out.append(CallMessage(MessageType.REQUEST, i + 1, "charge", body, stamped))
    return out


def verifier(record=None, roles=frozenset({"payment"}), anchors=None, th=TH):
    return BatchVerifier(anchors or {"payment": [CA.certificate]}, th, roles,
                         clock=lambda: NOW_MS, record=record)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_batch_signs_once_and_verifies(algorithm):
    batcher = BatchSigner(SIGNERS[algorithm], TH, max_calls=64)
    calls = make_calls(batcher, 10, user=b"alice.token.x")
    [head] = batcher.close()
    assert batcher.signatures == 1
    v = verifier()
    for call in calls:
        assert v.receive(call) == []  # held until the head
    released = v.receive(CallMessage(MessageType.SIGNED_BATCH, 0, "", head))
    assert [m.call_id for m in released] == list(range(1, 11))
    proof = released[3].metadata.evidence
    assert isinstance(released[3].metadata, VerifiedMetadata) and isinstance(proof, SignedCall)
    assert (proof.role, proof.signer, proof.position, proof.batch_size) == \
        ("payment", "CN=user-api", 3, 10)
    assert proof.end_user_digest == hashlib.sha256(b"alice.token.x").digest()
    assert v.verified == 1 and v.refused == 0


def _head(batcher):
    [body] = batcher.close()
    return BatchHead.decode(body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_altered_reordered_dropped_calls_detected(algorithm):
    batcher = BatchSigner(SIGNERS[algorithm], TH)
    calls = make_calls(batcher, 6)
    head = _head(batcher)
    altered = list(calls)
    altered[2] = altered[2]._replace(body=b"order-2-but-more")
    with pytest.raises(BatchSignatureInvalid):
        verifier().verify(head, altered)
    swapped = list(calls)  # contents exchanged between two positions
    swapped[1] = calls[1]._replace(body=calls[4].body)
    swapped[4] = calls[4]._replace(body=calls[1].body)
    with pytest.raises(BatchSignatureInvalid):
        verifier().verify(head, swapped)
    with pytest.raises(BatchMalformed):  # delivered in another order
        verifier().verify(head, [calls[1], calls[0], *calls[2:]])
    with pytest.raises(BatchIncomplete):
        verifier().verify(head, calls[:-1])
    op_changed = list(calls)
    op_changed[0] = calls[0]._replace(operation="refund")
    with pytest.raises(BatchSignatureInvalid):
        verifier().verify(head, op_changed)
    assert len(verifier().verify(head, calls)) == 6


def test_hybrid_needs_both_signatures():
    batcher = BatchSigner(SIGNERS["ed25519+mldsa65"], TH)
    calls = make_calls(batcher, 3)
    head = _head(batcher)
    for flip in (0, 64 + 100):  # one byte of the Ed25519 part, then of the ML-DSA part
        sig = bytearray(head.signature)
        sig[flip] ^= 1
        bad = BatchHead(head.algorithm, head.role, head.batch, head.count, head.chain,
                        bytes(sig))
        with pytest.raises(BatchSignatureInvalid):
            verifier().verify(bad, calls)
    with pytest.raises(BatchSignatureInvalid):  # ML-DSA part stripped
        verifier().verify(BatchHead(head.algorithm, head.role, head.batch, head.count,
                                    head.chain, head.signature[:64]), calls)


def test_signer_must_hold_the_role_and_the_session():
    batcher = BatchSigner(SIGNERS["ed25519"], TH)
    calls = make_calls(batcher, 2)
    head = _head(batcher)
    with pytest.raises(SignerNotTrusted):  # anchors of another CA
        verifier(anchors={"payment": [OTHER_CA.certificate]}).verify(head, calls)
    with pytest.raises(SignerNotTrusted):  # the caller did not prove the role here
        verifier(roles=frozenset({"user-info"})).verify(head, calls)
    with pytest.raises(BatchSignatureInvalid):  # replayed into another session
        verifier(th=hashlib.sha512(b"other session").digest()).verify(head, calls)
    outsider = issue_signer(OTHER_CA.certificate, OTHER_CA.private_key, "payment", "mallory")
    forged = BatchSigner(outsider, TH)
    forged_calls = make_calls(forged, 2)
    with pytest.raises(SignerNotTrusted):
        verifier().verify(_head(forged), forged_calls)
    expired = issue_signer(CA.certificate, CA.private_key, "payment", "old", days=1,
                           not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    late = BatchSigner(expired, TH)
    late_calls = make_calls(late, 1)
    with pytest.raises(SignerNotTrusted):
        verifier().verify(_head(late), late_calls)


def test_receive_releases_unverified_on_failure_and_bounds():
    batcher = BatchSigner(SIGNERS["ed25519"], TH)
    calls = make_calls(batcher, 3)
    [body] = batcher.close()
    v = verifier()
    for call in calls[:2]:
        v.receive(call)
    # the third call was dropped on the way: the head finds two
    released = v.receive(CallMessage(MessageType.SIGNED_BATCH, 0, "", body))
    assert [m.call_id for m in released] == [1, 2]
    assert not any(isinstance(m.metadata, VerifiedMetadata) for m in released)
    assert isinstance(v.last_error, BatchIncomplete)
    # garbage head, skewed clock, unsigned calls pass through
    assert v.receive(CallMessage(MessageType.SIGNED_BATCH, 0, "", b"\x01")) == []
    assert isinstance(v.last_error, BatchMalformed)
    skewed = BatchSigner(SIGNERS["ed25519"], TH)
    [far] = [CallMessage(MessageType.REQUEST, 9, "charge", b"", skewed.stamp(
        MessageType.REQUEST, 9, "charge", b"", {}, NOW_MS + 3_600_000))]
    assert v.receive(far) == [far] and isinstance(v.last_error, BatchMalformed)
    plain = CallMessage(MessageType.REQUEST, 5, "charge", b"x")
    assert v.receive(plain) == [plain]


def test_full_batches_roll_over():
    batcher = BatchSigner(SIGNERS["ed25519"], TH, max_calls=4)
    calls = make_calls(batcher, 10)
    bodies = batcher.close()
    assert len(bodies) == 3 and batcher.signatures == 3
    v = verifier()
    released = []
    for call in calls:
        released += v.receive(call)
    for body in bodies:
        released += v.receive(CallMessage(MessageType.SIGNED_BATCH, 0, "", body))
    assert [m.call_id for m in released] == list(range(1, 11))
    assert all(isinstance(m.metadata, VerifiedMetadata) for m in released)


# --- the audit log --------------------------------------------------------------------


@pytest.fixture
def logged(tmp_path: Path):
    db = tmp_path / "audit.db"
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    (anchors / "payment.pem").write_bytes(CA.certificate_pem())
    with AuditLog(db) as log:
        for algorithm in ALGORITHMS:
            batcher = BatchSigner(SIGNERS[algorithm], TH, max_calls=3)
            calls = make_calls(batcher, 5, user=b"tok")
            v = verifier(record=log.recorder(TH, "10.0.0.1:5"))
            for call in calls:
                v.receive(call)
            for body in batcher.close():
                v.receive(CallMessage(MessageType.SIGNED_BATCH, 0, "", body))
            assert v.verified == 2
        head = log.head
    return db, anchors, head


def test_log_verifies(logged):
    db, anchors, head = logged
    proven = verify(db, anchors, head=head)
    assert len(proven) == 15
    assert {p.algorithm for p in proven} == set(ALGORITHMS)
    assert proven[0].signer == "CN=user-api" and proven[0].role == "payment"
    assert all(p.body_verified for p in proven)


def test_log_without_bodies(tmp_path):
    batcher = BatchSigner(SIGNERS["ed25519"], TH)
    calls = make_calls(batcher, 3)
    with AuditLog(tmp_path / "nb.db", store_bodies=False) as log:
        v = verifier(record=log.recorder(TH))
        for call in calls:
            v.receive(call)
        [body] = batcher.close()
        v.receive(CallMessage(MessageType.SIGNED_BATCH, 0, "", body))
    proven = verify(tmp_path / "nb.db", {"payment": [CA.certificate]})
    assert [p.body_verified for p in proven] == [False] * 3
    assert proven[1].body_sha256 == hashlib.sha256(b"order-1").hexdigest()
    assert b"order-1" not in (tmp_path / "nb.db").read_bytes()


def test_log_is_append_only(logged):
    db, _, _ = logged
    conn = sqlite3.connect(db)
    for sql in ("UPDATE nonrep_log SET kind = 'x' WHERE seq = 2",
                "DELETE FROM nonrep_log WHERE seq = 2"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
    conn.close()


def tamper(db: Path, *sql: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER IF EXISTS nonrep_log_no_update")
    conn.execute("DROP TRIGGER IF EXISTS nonrep_log_no_delete")
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()


def rows(db: Path):
    conn = sqlite3.connect(db)
    out = list(conn.execute("SELECT seq, kind, payload, prev, row_hash FROM nonrep_log "
                            "ORDER BY seq"))
    conn.close()
    return out


def test_edited_row_detected(logged):
    db, anchors, _ = logged
    seq, _, payload, _, _ = rows(db)[3]
    edited = payload.replace('"charge"', '"refund"')
    assert edited != payload
    tamper(db, f"UPDATE nonrep_log SET payload = '{edited}' WHERE seq = {seq}")
    with pytest.raises(LogRowEdited) as info:
        verify(db, anchors)
    assert info.value.seq == seq


def test_edited_row_with_rewritten_chain_detected(logged):
    db, anchors, _ = logged
    all_rows = rows(db)
    target = next(r for r in all_rows if r[1] == "call")
    data = json.loads(target[2])
    data[CALL_FIELDS.index("body")] = base64.b64encode(b"order-999").decode()
    statements = []
    prev = bytes(all_rows[target[0] - 2][4]) if target[0] > 1 else bytes(32)
    for seq, kind, payload, _, _ in all_rows[target[0] - 1:]:
        if seq == target[0]:
            payload = json.dumps(data, separators=(",", ":"))
        h = _row_hash(seq, kind, payload, prev)
        statements.append((seq, payload, prev, h))
        prev = h
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER nonrep_log_no_update")
    for seq, payload, p, h in statements:
        conn.execute("UPDATE nonrep_log SET payload = ?, prev = ?, row_hash = ? WHERE seq = ?",
                     (payload, p, h, seq))
    conn.commit()
    conn.close()
    with pytest.raises(LogRowEdited, match="call digest"):
        verify(db, anchors)


def test_deleted_row_detected(logged):
    db, anchors, _ = logged
    tamper(db, "DELETE FROM nonrep_log WHERE seq = 4")
    with pytest.raises(LogRowDeleted) as info:
        verify(db, anchors)
    assert info.value.seq == 4


def test_truncation_detected_only_against_the_head(logged):
    db, anchors, head = logged
    last = rows(db)[-1][0]
    tamper(db, f"DELETE FROM nonrep_log WHERE seq > {last - 3}")  # the whole last batch
    assert len(verify(db, anchors)) == 13  # a clean cut is invisible without the head
    with pytest.raises(LogRowDeleted):
        verify(db, anchors, head=head)
    tamper(db, f"DELETE FROM nonrep_log WHERE seq = {last - 3}")  # a call of a batch
    with pytest.raises(LogRowDeleted, match="of its 3 calls"):
        verify(db, anchors)


def test_inserted_row_detected(logged):
    db, anchors, head = logged
    all_rows = rows(db)
    seq = all_rows[-1][0] + 1
    forged = json.loads(next(r[2] for r in all_rows if r[1] == "call"))
    forged[CALL_FIELDS.index("index")] = 3
    forged[CALL_FIELDS.index("operation")] = "refund"
    payload = json.dumps(forged, separators=(",", ":"))
    prev = bytes(all_rows[-1][4])
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO nonrep_log VALUES (?,?,?,?,?)",
                 (seq, "call", payload, prev, _row_hash(seq, "call", payload, prev)))
    conn.commit()
    conn.close()
    with pytest.raises(LogRowInserted):
        verify(db, anchors)  # a call beyond its batch's signed count
    with pytest.raises(LogRowInserted):
        verify(db, anchors, head=head)


def test_inserted_row_in_the_middle_detected(logged):
    db, anchors, _ = logged
    tamper(db, "UPDATE nonrep_log SET seq = seq + 1000 WHERE seq >= 5",
           "INSERT INTO nonrep_log VALUES (5, 'call', '{}', x'00', x'00')",
           "UPDATE nonrep_log SET seq = seq - 999 WHERE seq >= 1005")
    with pytest.raises((LogRowEdited, LogRowInserted)):
        verify(db, anchors)


def test_swapped_signature_detected(logged):
    db, anchors, _ = logged
    all_rows = rows(db)
    batches = [r for r in all_rows if r[1] == "batch"]
    a, b = json.loads(batches[0][2]), json.loads(batches[1][2])
    a["signature"] = b["signature"]
    payload = json.dumps(a, sort_keys=True, separators=(",", ":"))
    # rewrite the chain from there so only the signature check can object
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER nonrep_log_no_update")
    prev = bytes(all_rows[batches[0][0] - 2][4])
    for seq, kind, text, _, _ in all_rows[batches[0][0] - 1:]:
        text = payload if seq == batches[0][0] else text
        h = _row_hash(seq, kind, text, prev)
        conn.execute("UPDATE nonrep_log SET payload = ?, prev = ?, row_hash = ? WHERE seq = ?",
                     (text, prev, h, seq))
        prev = h
    conn.commit()
    conn.close()
    with pytest.raises(BatchSignatureInvalid):
        verify(db, anchors)


def test_wrong_anchors(logged, tmp_path):
    db, _, _ = logged
    other = tmp_path / "other"
    other.mkdir()
    (other / "payment.pem").write_bytes(OTHER_CA.certificate_pem())
    with pytest.raises(SignerNotTrusted):
        verify(db, other)


def test_cli_verify_and_show(logged, tmp_path, capsys):
    import argparse
    db, anchors, head = logged
    parser = argparse.ArgumentParser(prog="rolewire")
    add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "verify", str(db), "--anchors", str(anchors),
                              "--head", head.hex()])
    assert args.func(args) == 0
    assert "15 call(s) proven" in capsys.readouterr().out
    args = parser.parse_args(["audit", "show", str(db)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"head {head.hex()}" in out and "CN=user-api" in out
    tamper(db, "DELETE FROM nonrep_log WHERE seq = 3")
    args = parser.parse_args(["audit", "verify", str(db), "--anchors", str(anchors), "--json"])
    assert args.func(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["type"] == "LogRowDeleted"


# --- over rolewire.aio ------------------------------------------------------------------

KEY = os.urandom(32)


def test_signed_calls_over_aio(tmp_path):
    signer = SIGNERS["ed25519"]
    log = AuditLog(tmp_path / "payment.db")
    service = Service("payment", signed_calls=SignedCalls({"payment": [CA.certificate]}, log))
    seen = []

    @service.operation("charge", roles=["payment"], signed="payment")
    def charge(call, body):
        seen.append(call.signed)
        return b"ok:" + body

    @service.operation("ping", roles=UNRESTRICTED)
    def ping(call, body):
        return b"pong"

    cfg = HandshakeConfig(roles=[KeyRole("payment", KEY)])

    async def main():
        async with serve(service, cfg, port=0) as server:
            async with connect("127.0.0.1", server.port, cfg) as unsigned:
                with pytest.raises(Forbidden, match="requires signed calls"):
                    await unsigned.call("charge", b"x")
                assert await unsigned.call("ping") == b"pong"
            async with connect("127.0.0.1", server.port, cfg) as channel:
                batcher = sign_calls(channel, signer, max_calls=8)
                results = await asyncio.gather(*(channel.call("charge", b"%d" % i)
                                                 for i in range(20)))
                assert results == [b"ok:%d" % i for i in range(20)]
                assert await channel.call("charge", b"alone") == b"ok:alone"
                assert await channel.call("ping") == b"pong"  # signed, unsigned op: fine
                await channel.send_many("charge", [b"n1", b"n2", b"n3"])
                assert await channel.call("charge", b"last") == b"ok:last"
                # 20 concurrent calls in 3 batches (8, 8, 4), then one per lone call
                assert batcher.signatures <= 8
        log.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert len(seen) == 25 and all(s.role == "payment" for s in seen)
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    (anchors / "payment.pem").write_bytes(CA.certificate_pem())
    proven = verify(tmp_path / "payment.db", anchors)
    assert len(proven) == 26  # the 25 charges and the signed ping
    assert sorted(p.operation for p in proven).count("charge") == 25


def test_batch_signed_under_an_unproven_role_is_refused_over_aio(tmp_path):
    service = Service("payment", signed_calls=SignedCalls({"payment": [CA.certificate]}))

    @service.operation("charge", roles=["shop"], signed="payment")
    def charge(call, body):
        return b"charged"

    cfg = HandshakeConfig(roles=[KeyRole("shop", KEY)])

    async def main():
        async with serve(service, cfg, port=0) as server, \
                connect("127.0.0.1", server.port, cfg) as channel:
            sign_calls(channel, SIGNERS["ecdsa-p256"])
            with pytest.raises(Forbidden, match="requires signed calls"):
                await channel.call("charge", b"x")

    asyncio.run(asyncio.wait_for(main(), 30))


def test_heads_ignored_by_a_service_without_signed_operations():
    service = Service("svc")

    @service.operation("echo", roles=UNRESTRICTED)
    def echo(call, body):
        return body

    cfg = HandshakeConfig(roles=[KeyRole("k", KEY)])

    async def main():
        async with serve(service, cfg, port=0) as server, \
                connect("127.0.0.1", server.port, cfg) as channel:
            sign_calls(channel, SIGNERS["ed25519"])
            assert await channel.call("echo", b"hi") == b"hi"
            assert await channel.call("echo", b"again") == b"again"

    asyncio.run(asyncio.wait_for(main(), 30))


# --- property: any single change to the log is caught -----------------------------------

_LOG_CACHE: dict[str, bytes] = {}


def _pristine_log(tmp: Path) -> Path:
    """A small log (2 batches of 3 calls), built once and copied per example."""
    if "db" not in _LOG_CACHE:
        build = tmp / "pristine.db"
        with AuditLog(build) as log:
            batcher = BatchSigner(SIGNERS["ed25519"], TH, max_calls=3)
            calls = make_calls(batcher, 6)
            v = verifier(record=log.recorder(TH))
            for call in calls:
                v.receive(call)
            for body in batcher.close():
                v.receive(CallMessage(MessageType.SIGNED_BATCH, 0, "", body))
        conn = sqlite3.connect(build)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
        _LOG_CACHE["db"] = build.read_bytes()
    path = tmp / f"copy-{os.urandom(6).hex()}.db"
    path.write_bytes(_LOG_CACHE["db"])
    return path


@given(st.sampled_from(["edit", "delete", "insert", "swap"]), st.integers(1, 9),
       st.integers(0, 10_000))
def test_any_single_change_to_the_log_is_detected(tmp_path_factory, operation, seq, salt):
    from rolewire.nonrep import AuditLogTampered, BatchError, SignerNotTrusted
    db = _pristine_log(tmp_path_factory.getbasetemp())
    all_rows = rows(db)
    assert len(all_rows) == 9  # chain, batch, 3 calls, batch, 3 calls
    target = all_rows[seq - 1]
    if operation == "edit":
        payload = target[2]
        i = salt % len(payload)
        changed = payload[:i] + ("0" if payload[i] != "0" else "1") + payload[i + 1:]
        tamper(db, f"UPDATE nonrep_log SET payload = '{changed.replace(chr(39), chr(39) * 2)}'"
                   f" WHERE seq = {seq}")
    elif operation == "delete":
        if seq == len(all_rows):
            seq -= 1  # a clean cut of the last row is the documented limit (head)
        tamper(db, f"DELETE FROM nonrep_log WHERE seq = {seq}")
    elif operation == "insert":
        # a copy of an existing row, chained correctly, appended at the end
        new = len(all_rows) + 1
        prev = bytes(all_rows[-1][4])
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO nonrep_log VALUES (?,?,?,?,?)",
                     (new, target[1], target[2], prev,
                      _row_hash(new, target[1], target[2], prev)))
        conn.commit()
        conn.close()
    else:  # swap the payloads of two rows of the same kind
        other = next((r for r in all_rows if r[1] == target[1] and r[0] != seq
                      and r[2] != target[2]), None)
        if other is None:
            return
        conn = sqlite3.connect(db)
        conn.execute("DROP TRIGGER IF EXISTS nonrep_log_no_update")
        conn.execute("UPDATE nonrep_log SET payload = ? WHERE seq = ?", (other[2], seq))
        conn.execute("UPDATE nonrep_log SET payload = ? WHERE seq = ?", (target[2], other[0]))
        conn.commit()
        conn.close()
    with pytest.raises((AuditLogTampered, BatchError, SignerNotTrusted)):
        verify(db, {"payment": [CA.certificate]})
