"""Protocol-level known-answer vectors (docs/PROTOCOL.md, "Test vectors").

Every vector is produced by running the implementation with known-answer
randomness (:mod:`rolewire.entropy`): each side draws its random inputs
from its own seed, and the trace lists every value drawn, every step of the
transcript hash and key schedule (``h``, ``ck``, the handshake key, the
plaintexts of the encrypted fields: role entries, hints' matches, proofs),
the J-PAKE key material, the derived record keys and IVs, the first records
in each direction and three key updates.

    python -m tests.vectors.protocol.generate          # rewrite every file
    python -m tests.vectors.protocol.generate --check  # compare only

``tests/test_protocol_vectors.py`` regenerates every vector on both record
backends and compares the JSON text byte for byte, and replays each one
against the parser and the state machines.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import pathlib
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kyber_py.ml_kem import ML_KEM_768

from rolewire import entropy
from rolewire.handshake import (
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeSuite,
    Initiator,
    Responder,
)
from rolewire.handshake.messages import PROTOCOL_VERSION
from rolewire.protocol import wire
from rolewire.protocol.rehandshake import Rehandshake
from rolewire.record import RecordLayer, Suite
from rolewire.record._format import ratchet
from rolewire.roles import CertificateRole, KeyRole, PasswordRole

HERE = pathlib.Path(__file__).parent
#: Certificates are validated at this instant (the vectors never expire).
WALL_CLOCK = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)
KEY = bytes(range(32))
PASSWORD = "correct horse battery staple"


def encapsulate(ek: bytes, m: bytes) -> tuple[bytes, bytes]:
    """FIPS 203 ML-KEM.Encaps_internal (kyber-py, test only)."""
    ss, ct = ML_KEM_768._encaps_internal(ek, m)
    return bytes(ss), bytes(ct)


def _hex(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: _hex(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hex(v) for v in value]
    return value


# -- certificate inputs (fixed, stored in the vector) -----------------------------------


_MATERIAL: dict[str, str] = {}


def _certificate_material() -> dict[str, str]:
    """A CA and a leaf (ECDSA P-256), made once and then read from the
    stored vector so that every run uses the same bytes."""
    if _MATERIAL:
        return dict(_MATERIAL)
    path = HERE / "certificate.json"
    if path.exists():
        _MATERIAL.update(json.loads(path.read_text())["inputs"]["certificate"])
        return dict(_MATERIAL)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    start = WALL_CLOCK - datetime.timedelta(days=365)
    end = WALL_CLOCK + datetime.timedelta(days=365 * 50)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca = (x509.CertificateBuilder().subject_name(name("vector CA")).issuer_name(name("vector CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(start)
          .not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("vector service"))
            .issuer_name(ca.subject).public_key(leaf_key.public_key()).serial_number(2)
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("vector.example")]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _MATERIAL.update({
        "ca_pem": ca.public_bytes(pem).decode(),
        "leaf_pem": leaf.public_bytes(pem).decode(),
        "leaf_key_pem": leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
    })
    return dict(_MATERIAL)


def _certificate_roles(material: dict[str, str]) -> tuple[CertificateRole, CertificateRole]:
    ca = x509.load_pem_x509_certificate(material["ca_pem"].encode())
    leaf = x509.load_pem_x509_certificate(material["leaf_pem"].encode())
    key = serialization.load_pem_private_key(material["leaf_key_pem"].encode(), None)
    holder = CertificateRole("service", anchors=[ca], chain=[leaf], private_key=key)  # type: ignore[arg-type]
    verifier = CertificateRole("service", anchors=[ca])
    return holder, verifier


# -- scenarios -----------------------------------------------------------------------------


def _roles(kinds: list[str], side: str, material: dict[str, str] | None) -> list[Any]:
    roles: list[Any] = []
    for kind in kinds:
        if kind == "key":
            roles.append(KeyRole("shop", KEY))
        elif kind == "password":
            roles.append(PasswordRole("ops", PASSWORD))
        elif kind == "certificate":
            assert material is not None
            holder, verifier = _certificate_roles(material)
            # the responder holds the certificate, the initiator verifies it
            roles.append(holder if side == "responder" else verifier)
    return roles


SCENARIOS: dict[str, dict[str, Any]] = {
    "key_x448_chacha20poly1305": {"roles": ["key"], "suites": [0x01]},
    "key_x25519_chacha20poly1305": {"roles": ["key"], "suites": [0x02]},
    "key_x448_aegis256": {"roles": ["key"], "suites": [0x03]},
    "key_x25519_aegis256": {"roles": ["key"], "suites": [0x04]},
    "password": {"roles": ["password"], "suites": [0x01]},
    # the responder proves a certificate role and accepts an anonymous
    # initiator (the server-certificate pattern)
    "certificate": {"roles": ["certificate"], "suites": [0x01], "anonymous_responder": True},
    "mixed": {"roles": ["key", "password", "certificate"], "suites": [0x01]},
    "hello_retry": {"roles": ["key"], "suites": [0x01, 0x02], "responder_suites": [0x02]},
}


def _config(kinds: list[str], suites: list[int], side: str, material: dict[str, str] | None,
            backend: str, anonymous: bool = False) -> HandshakeConfig:
    return HandshakeConfig(roles=_roles(kinds, side, material),
                           suites=tuple(HandshakeSuite(s) for s in suites),
                           wall_clock=lambda: WALL_CLOCK, record_backend=backend,
                           allow_anonymous=anonymous)


class _Side:
    """One handshake side in its own context (its own randomness and trace)."""

    def __init__(self, name: str, seed: bytes, make: Any) -> None:
        self.name = name
        self.context = contextvars.copy_context()
        self.source = entropy.KnownAnswerRandomness(seed, encapsulate)
        self.context.run(entropy.use_known_answer_randomness, self.source, insecure=True)
        self.machine = self.context.run(make)
        self.result: Any = None

    def out(self) -> bytes:
        return bytes(self.context.run(self.machine.data_to_send))

    def feed(self, data: bytes) -> None:
        self.context.run(self.machine.receive_data, data)
        while self.result is None:
            event = self.context.run(self.machine.next_event)
            if event is NEED_DATA:
                return
            self.result = event


def _drive(initiator: _Side, responder: _Side) -> list[tuple[str, bytes]]:
    flights: list[tuple[str, bytes]] = []
    for _ in range(12):
        moved = False
        for sender, receiver in ((initiator, responder), (responder, initiator)):
            data = sender.out()
            if data:
                flights.append((sender.name, data))
                receiver.feed(data)
                moved = True
        if not moved:
            break
    return flights


def _side_record(side: _Side) -> dict[str, Any]:
    return {
        "seed": side.source.seed,
        "drawn": [{"label": label, "value": value} for label, value in side.source.drawn],
        "trace": side.source.steps,
    }


def _records(session_i: Any, session_r: Any, suite: Suite) -> dict[str, Any]:
    """First records both ways, then three key updates of the initiator's
    sending direction (epoch keys, one record each)."""
    first_i = session_i.seal(b"first record, initiator to responder")
    first_r = session_r.seal(b"first record, responder to initiator")
    assert session_r.open(first_i) and session_i.open(first_r)
    updates = []
    for _ in range(3):
        epoch = session_i.rekey()
        plaintext = b"record in epoch %d" % epoch
        record = session_i.seal(plaintext)
        assert session_r.open(record) == plaintext
        updates.append({"epoch": epoch, "plaintext": plaintext, "record": record})
    return {"initiator_to_responder": {"plaintext": b"first record, initiator to responder",
                                       "record": first_i},
            "responder_to_initiator": {"plaintext": b"first record, responder to initiator",
                                       "record": first_r},
            "key_updates": updates}


def _epoch_keys(key: bytes, iv: bytes, count: int) -> list[dict[str, Any]]:
    out = []
    epoch = 0
    for _ in range(count):
        key, iv, epoch = ratchet(key, iv, epoch)
        out.append({"epoch": epoch, "key": key, "iv": iv})
    return out


def handshake_vector(name: str, backend: str = "c") -> dict[str, Any]:
    spec = SCENARIOS[name]
    material = _certificate_material() if "certificate" in spec["roles"] else None
    suites_i = spec["suites"]
    suites_r = spec.get("responder_suites", suites_i)
    cfg_i = _config(spec["roles"], suites_i, "initiator", material, backend)
    cfg_r = _config(spec["roles"], suites_r, "responder", material, backend,
                    anonymous=spec.get("anonymous_responder", False))
    initiator = _Side("initiator", b"initiator seed " + name.encode(),
                      lambda: Initiator(cfg_i))
    responder = _Side("responder", b"responder seed " + name.encode(),
                      lambda: Responder(cfg_r))
    flights = _drive(initiator, responder)
    done_i, done_r = initiator.result, responder.result
    assert isinstance(done_i, HandshakeComplete) and isinstance(done_r, HandshakeComplete), (
        done_i, done_r)
    split = next(s for s in initiator.source.steps if s["step"] == "split")
    suite = done_i.session.record_suite
    vector: dict[str, Any] = {
        "name": name,
        "protocol_version": PROTOCOL_VERSION,
        "inputs": {
            "initiator_suites": suites_i, "responder_suites": suites_r,
            "roles": spec["roles"],
            "responder_allow_anonymous": spec.get("anonymous_responder", False),
            "key_role": {"name": "shop", "key": KEY} if "key" in spec["roles"] else None,
            "password_role": ({"name": "ops", "password": PASSWORD}
                              if "password" in spec["roles"] else None),
            "certificate_role": ({"name": "service", "holder": "responder",
                                  "verifier": "initiator"}
                                 if material is not None else None),
            "wall_clock": WALL_CLOCK.isoformat(),
        },
        "flights": [{"from": sender, "bytes": data} for sender, data in flights],
        "initiator": _side_record(initiator),
        "responder": _side_record(responder),
        "result": {
            "suite": int(done_i.suite), "record_suite": int(suite),
            "transcript_hash": done_i.transcript_hash,
            "peer_roles_initiator": sorted(done_i.peer_roles),
            "peer_roles_responder": sorted(done_r.peer_roles),
            "i2r_key": split["i2r_key"], "i2r_iv": split["i2r_iv"],
            "r2i_key": split["r2i_key"], "r2i_iv": split["r2i_iv"],
            "i2r_epoch_keys": _epoch_keys(split["i2r_key"], split["i2r_iv"], 3),
        },
        "records": _records(done_i.session, done_r.session, suite),
    }
    if material is not None:
        vector["inputs"]["certificate"] = material
    return vector


def rehandshake_vector(backend: str = "c") -> dict[str, Any]:
    """A key-role session, then one in-band re-handshake started by the
    initiator: the control plaintexts and records, both sides' traces, the
    new keys (each direction starting at its announced epoch)."""
    cfg = _config(["key"], [0x01], "initiator", None, backend)
    initiator = _Side("initiator", b"initiator seed rehandshake", lambda: Initiator(cfg))
    responder = _Side("responder", b"responder seed rehandshake", lambda: Responder(cfg))
    flights = _drive(initiator, responder)
    s_i, s_r = initiator.result.session, responder.result.session
    rh_i = initiator.context.run(Rehandshake, s_i, cfg)
    rh_r = responder.context.run(Rehandshake, s_r, cfg)
    mark_i, mark_r = len(initiator.source.steps), len(responder.source.steps)
    initiator.context.run(rh_i.start)
    controls: list[dict[str, Any]] = []
    for _ in range(10):
        moved = False
        for name, sender, rh_s, receiver, rh_d, s_d in (
                ("initiator", initiator, rh_i, responder, rh_r, s_r),
                ("responder", responder, rh_r, initiator, rh_i, s_i)):
            for record in sender.context.run(rh_s.records_to_send):
                plaintext = s_d.open(record)
                controls.append({"from": name, "record": record, "plaintext": plaintext})
                receiver.context.run(rh_d.handle, plaintext)
                moved = True
        if not moved:
            break
    assert s_i.generation == s_r.generation == 1
    after_i = s_i.seal(b"first record under the new keys, initiator to responder")
    after_r = s_r.seal(b"first record under the new keys, responder to initiator")
    assert s_r.open(after_i) and s_i.open(after_r)
    return {
        "name": "rehandshake",
        "protocol_version": PROTOCOL_VERSION,
        "inputs": {"roles": ["key"], "key_role": {"name": "shop", "key": KEY},
                   "suites": [0x01]},
        "first_handshake_flights": [{"from": s, "bytes": d} for s, d in flights],
        "first_transcript_hash": initiator.result.transcript_hash,
        "controls": controls,
        "initiator": {"seed": initiator.source.seed,
                      "trace": initiator.source.steps[mark_i:]},
        "responder": {"seed": responder.source.seed,
                      "trace": responder.source.steps[mark_r:]},
        "records_after": {"initiator_to_responder": after_i,
                          "responder_to_initiator": after_r,
                          "send_epoch_initiator": s_i.send_epoch,
                          "send_epoch_responder": s_r.send_epoch},
    }


def message_layer_vector() -> dict[str, Any]:
    """Each message type of the message layer (docs/PROTOCOL.md, "Message
    layer" and "Call metadata") and a re-handshake control message."""
    from rolewire.protocol.rehandshake import ControlKind, encode_control

    CM, MT = wire.CallMessage, wire.MessageType
    items = [
        ("REQUEST", wire.encode(CM(MT.REQUEST, 1, "echo", b"hello"))),
        ("REQUEST with metadata", wire.encode(CM(MT.REQUEST, 2, "echo", b"hi",
                                                 {"trace.id": b"abc", "user": b"alice"}))),
        ("NOTIFY", wire.encode(CM(MT.NOTIFY, 0, "log", b"line"))),
        ("RESPONSE", wire.encode(CM(MT.RESPONSE, 1, "echo", b"hello"))),
        ("ERROR", wire.encode(wire.error_message(1, "echo", wire.ErrorCode.FORBIDDEN,
                                                 "call refused"))),
        ("CLOSE", wire.encode(CM(MT.CLOSE, 0, ""))),
        ("liveness probe", wire.call_header(MT.REQUEST, 7, wire.PING_OPERATION)),
        ("REHANDSHAKE FLIGHT", encode_control(ControlKind.FLIGHT, 5, b"\x0f\x00\x00\x01\x07")),
        ("REHANDSHAKE SWITCH", encode_control(ControlKind.SWITCH, 5)),
    ]
    frames = [
        ("handshake frame", wire.encode_frame(wire.FrameKind.HANDSHAKE, b"\x0f\x00\x00\x01\x0c")),
        ("record frame", wire.encode_frame(wire.FrameKind.RECORD, bytes(30))),
    ]
    return {"name": "message_layer",
            "messages": [{"what": w, "bytes": b} for w, b in items],
            "frames": [{"what": w, "bytes": b} for w, b in frames]}


def records_vector(backend: str = "c") -> dict[str, Any]:
    """Records at epoch boundaries, both record suites: the last record of
    an epoch, the first of the next (the receiver advances), a late record
    of the old epoch (opens once), a jump over two epochs (the skipped one
    stays open), and three key updates with their keys."""
    out = []
    for suite in Suite:
        key = bytes(range(32))
        iv = bytes(range(100, 100 + suite.iv_size))
        sender = RecordLayer(suite, send_key=key, send_iv=iv, recv_key=key, recv_iv=iv,
                             backend=backend)
        steps = []
        for epoch in range(4):
            if epoch:
                assert sender.update_send_key() == epoch
            for counter in (0, 1):
                plaintext = b"epoch %d counter %d" % (epoch, counter)
                steps.append({"epoch": epoch, "counter": counter, "plaintext": plaintext,
                              "record": sender.seal(plaintext)})
        # receiver order: e0c0, e1c0 (advance), e0c1 (late, previous epoch),
        # e3c0 (jump: epoch 2 becomes a past epoch), e2c1 (late, skipped epoch)
        order = [0, 2, 1, 6, 5]
        out.append({
            "suite": int(suite),
            "key": key, "iv": iv,
            "epoch_keys": _epoch_keys(key, iv, 3),
            "records": steps,
            "receive_order": order,
            "receiver_epoch_after_each": [0, 1, 1, 3, 3],
        })
    return {"name": "records_epochs", "suites": out}


def all_vectors(backend: str = "c") -> dict[str, dict[str, Any]]:
    vectors = {name: handshake_vector(name, backend) for name in SCENARIOS}
    vectors["rehandshake"] = rehandshake_vector(backend)
    vectors["message_layer"] = message_layer_vector()
    vectors["records_epochs"] = records_vector(backend)
    return vectors


def dumps(vector: dict[str, Any]) -> str:
    return json.dumps(_hex(vector), indent=1, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    bad = 0
    for name, vector in all_vectors().items():
        path = HERE / f"{name}.json"
        text = dumps(vector)
        if check:
            if not path.exists() or path.read_text() != text:
                print(f"differs: {path}")
                bad += 1
        else:
            path.write_text(text)
            print(f"wrote {path} ({len(text)} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
