"""Protocol-level known-answer vectors (tests/vectors/protocol/*.json,
docs/PROTOCOL.md "Test vectors").

1. Regeneration: every vector is produced again from the implementation,
   on both record backends, and its JSON text must equal the file byte for
   byte (tests/vectors/protocol/generate.py regenerates the files).
2. Replay: each side's state machine, given only its own seed and the
   *recorded* flights of its peer, must produce exactly its recorded
   flights and keys; every flight parses; every recorded record opens under
   the recorded keys; the message-layer vectors decode and re-encode.
3. The test-only randomness hook cannot be selected by accident.
"""

from __future__ import annotations

import contextvars
import json
import os
import pathlib

import pytest

from rolewire import entropy, errors
from rolewire.handshake import NEED_DATA, HandshakeComplete, Initiator, Responder
from rolewire.handshake.messages import FRAME_HEADER_SIZE, parse_frame_header, parse_message
from rolewire.protocol import wire
from rolewire.protocol.rehandshake import parse_control
from rolewire.record import RecordLayer, Suite
from tests.vectors.protocol import generate

HERE = pathlib.Path(__file__).parent / "vectors" / "protocol"
HANDSHAKES = sorted(generate.SCENARIOS)
ALL = [*HANDSHAKES, "rehandshake", "message_layer", "records_epochs"]


def load(name: str) -> dict:
    return json.loads((HERE / f"{name}.json").read_text())


@pytest.mark.parametrize("backend", ["c", "pure"])
def test_every_vector_regenerates_byte_for_byte(backend):
    produced = generate.all_vectors(backend)
    assert sorted(produced) == sorted(ALL)
    for name, vector in produced.items():
        assert generate.dumps(vector) == (HERE / f"{name}.json").read_text(), name


def test_every_vector_file_is_listed():
    assert sorted(p.stem for p in HERE.glob("*.json")) == sorted(ALL)


# -- replay against the parser and the state machines ---------------------------------


def _messages(flight: bytes) -> list[tuple[int, bytes]]:
    out = []
    while flight:
        msg_type, length = parse_frame_header(flight[:FRAME_HEADER_SIZE])
        body = flight[FRAME_HEADER_SIZE:FRAME_HEADER_SIZE + length]
        assert len(body) == length
        out.append((msg_type, body))
        flight = flight[FRAME_HEADER_SIZE + length:]
    return out


@pytest.mark.parametrize("name", HANDSHAKES)
def test_flights_parse(name):
    for flight in load(name)["flights"]:
        for msg_type, body in _messages(bytes.fromhex(flight["bytes"])):
            parse_message(msg_type, body)


def _replay_side(vector: dict, side: str, backend: str) -> tuple[list[bytes], object]:
    """Run one side alone, fed the peer's recorded flights."""
    spec = generate.SCENARIOS[vector["name"]]
    material = vector["inputs"].get("certificate")
    suites = vector["inputs"][f"{side}_suites"]
    cfg = generate._config(spec["roles"], suites, side, material, backend,
                           anonymous=side == "responder" and spec.get("anonymous_responder",
                                                                      False))
    context = contextvars.copy_context()
    source = entropy.KnownAnswerRandomness(bytes.fromhex(vector[side]["seed"]),
                                           generate.encapsulate)
    context.run(entropy.use_known_answer_randomness, source, insecure=True)
    machine = context.run(Initiator if side == "initiator" else Responder, cfg)
    produced = []
    result = None
    out = context.run(machine.data_to_send)
    if out:
        produced.append(out)
    for flight in vector["flights"]:
        if flight["from"] == side:
            continue
        context.run(machine.receive_data, bytes.fromhex(flight["bytes"]))
        while result is None:
            event = context.run(machine.next_event)
            if event is NEED_DATA:
                break
            result = event
        out = context.run(machine.data_to_send)
        if out:
            produced.append(out)
    return produced, result


@pytest.mark.parametrize("backend", ["c", "pure"])
@pytest.mark.parametrize("side", ["initiator", "responder"])
@pytest.mark.parametrize("name", HANDSHAKES)
def test_state_machine_replays_the_recorded_flights(name, side, backend):
    vector = load(name)
    produced, result = _replay_side(vector, side, backend)
    recorded = [bytes.fromhex(f["bytes"]) for f in vector["flights"] if f["from"] == side]
    assert produced == recorded
    assert isinstance(result, HandshakeComplete)
    assert result.transcript_hash.hex() == vector["result"]["transcript_hash"]
    layer = result.session.record_layer
    assert layer.backend == backend
    # the peer's first record opens under the derived keys
    peer = "responder_to_initiator" if side == "initiator" else "initiator_to_responder"
    records = vector["records"]
    assert result.session.open(bytes.fromhex(records[peer]["record"])).hex() == (
        records[peer]["plaintext"])


@pytest.mark.parametrize("backend", ["c", "pure"])
@pytest.mark.parametrize("name", HANDSHAKES)
def test_records_and_three_key_updates_open_under_the_recorded_keys(name, backend):
    vector = load(name)
    result = vector["result"]
    suite = Suite(result["record_suite"])
    k = {n: bytes.fromhex(result[n]) for n in ("i2r_key", "i2r_iv", "r2i_key", "r2i_iv")}
    responder = RecordLayer(suite, send_key=k["r2i_key"], send_iv=k["r2i_iv"],
                            recv_key=k["i2r_key"], recv_iv=k["i2r_iv"], backend=backend)
    records = vector["records"]
    first = records["initiator_to_responder"]
    assert responder.open(bytes.fromhex(first["record"])).hex() == first["plaintext"]
    assert responder.seal(bytes.fromhex(records["responder_to_initiator"]["plaintext"])).hex() \
        == records["responder_to_initiator"]["record"]
    for update, keys in zip(records["key_updates"], result["i2r_epoch_keys"]):
        record = bytes.fromhex(update["record"])
        assert int.from_bytes(record[2:6], "big") == update["epoch"] == keys["epoch"]
        assert responder.open(record).hex() == update["plaintext"]
        # the epoch key alone opens it too (the ratchet, step by step)
        alone = RecordLayer(suite, send_key=bytes(32), send_iv=bytes(suite.iv_size),
                            recv_key=bytes.fromhex(keys["key"]),
                            recv_iv=bytes.fromhex(keys["iv"]), epoch=keys["epoch"],
                            backend=backend)
        assert alone.open(record).hex() == update["plaintext"]


@pytest.mark.parametrize("backend", ["c", "pure"])
def test_records_at_epoch_boundaries(backend):
    for case in load("records_epochs")["suites"]:
        suite = Suite(case["suite"])
        key, iv = bytes.fromhex(case["key"]), bytes.fromhex(case["iv"])
        sender = RecordLayer(suite, send_key=key, send_iv=iv, recv_key=key, recv_iv=iv,
                             backend=backend)
        for step in case["records"]:
            if step["counter"] == 0 and step["epoch"]:
                sender.update_send_key()
            assert sender.seal(bytes.fromhex(step["plaintext"])).hex() == step["record"]
        receiver = RecordLayer(suite, send_key=key, send_iv=iv, recv_key=key, recv_iv=iv,
                               backend=backend)
        for index, epoch in zip(case["receive_order"], case["receiver_epoch_after_each"]):
            step = case["records"][index]
            assert receiver.open(bytes.fromhex(step["record"])).hex() == step["plaintext"]
            assert receiver.recv_epoch == epoch
            with pytest.raises(errors.ReplayDetected):
                receiver.open(bytes.fromhex(step["record"]))


def test_message_layer_vectors_decode_and_reencode():
    vector = load("message_layer")
    for item in vector["messages"]:
        data = bytes.fromhex(item["bytes"])
        if data[0] == wire.MessageType.REHANDSHAKE:
            kind, epoch, payload = parse_control(data)
            from rolewire.protocol.rehandshake import encode_control

            assert encode_control(kind, epoch, payload) == data
            continue
        message = wire.decode(data)
        assert wire.encode(message) == data, item["what"]
    for item in vector["frames"]:
        data = bytes.fromhex(item["bytes"])
        ((kind, payload),) = wire.FrameDecoder().feed(data)
        assert wire.encode_frame(kind, payload) == data


def test_rehandshake_vector_controls_parse_and_switch_epochs():
    vector = load("rehandshake")
    kinds = [parse_control(bytes.fromhex(c["plaintext"]))[0] for c in vector["controls"]]
    assert kinds.count(1) >= 3 and kinds.count(2) == 2  # three flights, two SWITCHes
    after = vector["records_after"]
    assert after["send_epoch_initiator"] >= 1 and after["send_epoch_responder"] >= 1
    # the binding: the re-handshake's first step mixes the old transcript in
    first = vector["initiator"]["trace"][0]
    assert first["step"] == "mix_hash"
    assert first["data"] == (b"rolewire/2 rehandshake".hex() + vector["first_transcript_hash"])


# -- the hook -------------------------------------------------------------------------


def test_mlkem_encapsulation_hook_is_fips203():
    """The deterministic encapsulation the vectors use gives the NIST
    KAT's ciphertext and key (so the vectors hold real ML-KEM values)."""
    kat = json.loads((HERE.parent / "mlkem768.json").read_text())["vectors"][0]
    ss, ct = generate.encapsulate(bytes.fromhex(kat["ek"]), bytes.fromhex(kat["m"]))
    assert ct.hex() == kat["c"] and ss.hex() == kat["K"]


def test_known_answer_randomness_needs_an_explicit_insecure_flag():
    with pytest.raises(errors.ConfigurationError), \
            entropy.known_answer_randomness(b"seed", generate.encapsulate):
        pass
    with pytest.raises(errors.ConfigurationError):
        entropy.use_known_answer_randomness(
            entropy.KnownAnswerRandomness(b"s", generate.encapsulate))
    assert entropy.active() is None
    # production: fresh randomness every time
    assert entropy.random_bytes(32, "x") != entropy.random_bytes(32, "x")


def test_known_answer_randomness_stays_in_its_context():
    with entropy.known_answer_randomness(b"seed", generate.encapsulate, insecure=True) as src:
        assert entropy.active() is src
        a = entropy.random_bytes(16, "x")
        assert contextvars.copy_context().run(entropy.active) is src
    assert entropy.active() is None
    with entropy.known_answer_randomness(b"seed", generate.encapsulate, insecure=True):
        assert entropy.random_bytes(16, "x") == a
    assert os.urandom(1)  # nothing patched globally


# -- suite selection and group ids (docs/PROTOCOL.md, "Suites") --------------------


def _hello_with_group(group: int) -> bytes:
    from rolewire.handshake import HandshakeConfig
    from rolewire.handshake.messages import MsgType
    from rolewire.roles import KeyRole

    hello = Initiator(HandshakeConfig(roles=[KeyRole("k", bytes(32))])).data_to_send()
    assert hello[0] == MsgType.HELLO
    # the group byte follows version, random, n and the n suites
    n = hello[4 + 1 + 32]
    offset = 4 + 1 + 32 + 1 + n
    return hello[:offset] + bytes((group,)) + hello[offset + 1:]


def _responder_answer(hello: bytes):
    from rolewire.handshake import HandshakeConfig
    from rolewire.roles import KeyRole

    responder = Responder(HandshakeConfig(roles=[KeyRole("k", bytes(32))]))
    responder.receive_data(hello)
    return responder.next_event(), responder.data_to_send()


def test_reserved_group_zero_is_an_illegal_parameter():
    from rolewire.handshake import HandshakeFailed, RejectReason

    event, out = _responder_answer(_hello_with_group(0))
    assert isinstance(event, HandshakeFailed)
    assert event.reason_code == RejectReason.ILLEGAL_PARAMETER
    assert out == bytes((0x0F, 0, 0, 1, RejectReason.ILLEGAL_PARAMETER))


@pytest.mark.parametrize("group", [3, 0x7F, 0xFF])
def test_unassigned_group_gets_a_hello_retry(group):
    from rolewire.handshake.messages import MsgType

    event, out = _responder_answer(_hello_with_group(group))
    assert event is NEED_DATA
    assert out[0] == MsgType.HELLO_RETRY and len(out) == 4 + 2
