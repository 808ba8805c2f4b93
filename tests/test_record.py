"""Record layer behaviour, run against the C backend and the pure twin."""

from __future__ import annotations

import struct
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolewire import errors
from rolewire.record import HEADER_SIZE, RecordLayer, RecordLimits, Suite
from tests.conftest import key_material, make_pair

SIZES = [0, 1, 63, 64, 1024, 16 * 1024, 64 * 1024]


@pytest.mark.parametrize("size", SIZES)
def test_roundtrip(pair, size):
    alice, bob = pair
    message = bytes(range(256)) * (size // 256) + bytes(size % 256)
    record = alice.seal(message)
    assert len(record) == size + alice.suite.overhead
    assert bob.open(record) == message


def test_header_layout(pair):
    alice, _ = pair
    alice.seal(b"first")
    record = alice.seal(b"second")
    version, suite_id, epoch, counter = struct.unpack(">BBIQ", record[:HEADER_SIZE])
    assert (version, suite_id, epoch, counter) == (1, alice.suite, 0, 1)


def test_both_directions_independent(pair):
    alice, bob = pair
    for i in range(3):
        assert bob.open(alice.seal(b"a%d" % i)) == b"a%d" % i
        assert alice.open(bob.seal(b"b%d" % i)) == b"b%d" % i


def test_reflection_rejected(pair):
    """A record can't be sent back to its own sender: directions use different keys."""
    alice, _ = pair
    record = alice.seal(b"to bob")
    with pytest.raises(errors.AuthenticationFailed):
        alice.open(record)


def test_every_bit_flip_rejected(pair):
    alice, bob = pair
    record = alice.seal(b"attack at dawn")
    for bit in range(len(record) * 8):
        tampered = bytearray(record)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(errors.RecordError):
            bob.open(bytes(tampered))
    # The untouched record still opens: no rejection moved the window.
    assert bob.open(record) == b"attack at dawn"


def test_every_truncation_and_extension_rejected(pair):
    alice, bob = pair
    record = alice.seal(b"attack at dawn")
    for length in range(len(record)):
        with pytest.raises(errors.RecordError):
            bob.open(record[:length])
    with pytest.raises(errors.RecordError):
        bob.open(record + b"\x00")
    assert bob.open(record) == b"attack at dawn"


def test_short_record_is_malformed(pair):
    _, bob = pair
    for junk in (b"", b"\x01", bytes(HEADER_SIZE)):
        with pytest.raises(errors.MalformedRecord):
            bob.open(junk)


def test_wrong_version_and_suite(pair):
    alice, bob = pair
    record = bytearray(alice.seal(b"x"))
    bad_version = bytes([2]) + bytes(record[1:])
    with pytest.raises(errors.MalformedRecord, match="version"):
        bob.open(bad_version)
    other = 2 if alice.suite == 1 else 1
    bad_suite = bytes(record[:1]) + bytes([other]) + bytes(record[2:])
    with pytest.raises(errors.MalformedRecord, match="suite"):
        bob.open(bad_suite)


def test_replay_and_out_of_order(pair):
    alice, bob = pair
    records = [alice.seal(b"m%d" % i) for i in range(10)]
    for i in (5, 0, 9, 1, 2, 8, 3, 4, 6, 7):
        assert bob.open(records[i]) == b"m%d" % i
    for record in records:
        with pytest.raises(errors.ReplayDetected):
            bob.open(record)


def test_too_old(pair_factory):
    alice, bob = pair_factory(window=64)
    records = [alice.seal(b"%d" % i) for i in range(130)]
    bob.open(records[129])
    with pytest.raises(errors.RecordTooOld):
        bob.open(records[129 - 64])
    assert bob.open(records[129 - 63]) == b"66"  # last one inside the window


def test_forged_record_does_not_move_window(pair_factory):
    alice, bob = pair_factory(window=64)
    records = [alice.seal(b"%d" % i) for i in range(3)]
    forged = bytearray(records[0])
    forged[6:14] = struct.pack(">Q", 10_000)  # far-future counter, tag now invalid
    with pytest.raises(errors.AuthenticationFailed):
        bob.open(bytes(forged))
    assert [bob.open(r) for r in records] == [b"0", b"1", b"2"]


def test_counter_beyond_hard_limit_refused(pair_factory):
    limits = RecordLimits(soft_messages=4, hard_messages=8)
    alice, bob = pair_factory(limits=limits)
    record = bytearray(alice.seal(b"x"))
    record[6:14] = struct.pack(">Q", 8)
    with pytest.raises(errors.MalformedRecord, match="counter"):
        bob.open(bytes(record))


def test_soft_and_hard_message_limits(pair_factory):
    limits = RecordLimits(soft_messages=3, hard_messages=5)
    alice, bob = pair_factory(limits=limits)
    for i in range(5):
        assert alice.rekey_due == (i >= 3)
        bob.open(alice.seal(b"x"))
    with pytest.raises(errors.KeyExhausted):
        alice.seal(b"x")
    assert alice.messages_sealed == 5
    alice.update_send_key()
    assert not alice.rekey_due
    assert bob.open(alice.seal(b"after rekey")) == b"after rekey"


def test_byte_limits(pair_factory):
    limits = RecordLimits(soft_bytes=100, hard_bytes=150)
    alice, _ = pair_factory(limits=limits)
    alice.seal(bytes(99))
    assert not alice.rekey_due
    alice.seal(bytes(1))
    assert alice.rekey_due
    with pytest.raises(errors.KeyExhausted):
        alice.seal(bytes(51))
    alice.seal(bytes(50))
    assert alice.bytes_sealed == 150


def test_max_plaintext(pair_factory):
    limits = RecordLimits(max_plaintext=100)
    alice, bob = pair_factory(limits=limits)
    alice.seal(bytes(100))
    with pytest.raises(errors.RecordTooLarge):
        alice.seal(bytes(101))
    # A receiver with a lower limit refuses a larger record before decrypting.
    big_sender, _ = pair_factory()
    with pytest.raises(errors.RecordTooLarge):
        bob.open(big_sender.seal(bytes(101)))


def test_key_update_and_grace_period(pair):
    alice, bob = pair
    old = [alice.seal(b"old%d" % i) for i in range(3)]
    assert alice.update_send_key() == 1
    new = alice.seal(b"new")
    assert bob.recv_epoch == 0
    assert bob.open(new) == b"new"
    assert bob.recv_epoch == 1 and bob.has_previous_epoch
    assert bob.recv_epoch_advances == 1
    assert bob.open(old[2]) == b"old2"  # late record of the previous epoch
    with pytest.raises(errors.ReplayDetected):
        bob.open(old[2])
    bob.retire_previous_epoch()
    assert not bob.has_previous_epoch
    with pytest.raises(errors.UnknownEpoch):
        bob.open(old[0])
    with pytest.raises(errors.ReplayDetected):
        bob.open(new)


def test_epoch_skip_bounded(pair):
    alice, bob = pair
    for _ in range(4):
        alice.update_send_key()
    assert bob.open(alice.seal(b"four ahead")) == b"four ahead"
    assert bob.recv_epoch == 4
    for _ in range(5):
        alice.update_send_key()
    with pytest.raises(errors.UnknownEpoch):
        bob.open(alice.seal(b"five ahead"))
    assert bob.recv_epoch == 4


def test_forged_next_epoch_does_not_advance(pair):
    alice, bob = pair
    record = bytearray(alice.seal(b"x"))
    record[2:6] = struct.pack(">I", 1)
    with pytest.raises(errors.AuthenticationFailed):
        bob.open(bytes(record))
    assert bob.recv_epoch == 0 and not bob.has_previous_epoch
    assert bob.open(alice.seal(b"y")) == b"y"


def test_old_epoch_beyond_previous_unknown(pair_factory):
    alice, bob = pair_factory(past_epochs=1)
    first = alice.seal(b"epoch0")
    alice.update_send_key()
    bob.open(alice.seal(b"epoch1"))
    alice.update_send_key()
    bob.open(alice.seal(b"epoch2"))
    assert bob.past_epochs == (1,)
    with pytest.raises(errors.UnknownEpoch):
        bob.open(first)


def test_several_past_epochs_stay_open(pair_factory):
    """Late records of every one of the last ``past_epochs`` epochs open
    (exactly once); the oldest beyond the bound are wiped."""
    alice, bob = pair_factory(past_epochs=3)
    late = []
    for epoch in range(6):
        late.append(alice.seal(b"late%d" % epoch))
        bob.open(alice.seal(b"now%d" % epoch))
        alice.update_send_key()
    assert bob.recv_epoch == 5 and bob.past_epochs == (4, 3, 2)
    for epoch in (4, 3, 2):
        assert bob.open(late[epoch]) == b"late%d" % epoch
        with pytest.raises(errors.ReplayDetected):
            bob.open(late[epoch])
    for epoch in (1, 0):
        with pytest.raises(errors.UnknownEpoch):
            bob.open(late[epoch])
    bob.retire_epoch(3)
    assert bob.past_epochs == (4, 2)
    with pytest.raises(errors.UnknownEpoch):
        bob.open(late[3])
    bob.retire_epoch(99)  # unknown: ignored
    bob.retire_previous_epoch()
    assert bob.past_epochs == () and not bob.has_previous_epoch


def test_skipped_epochs_become_past_epochs(pair_factory):
    """A jump of several epochs keeps the skipped ones open too: their late
    records were sealed before the newer one that arrived first."""
    alice, bob = pair_factory(past_epochs=4)
    held = []
    for _ in range(3):
        held.append(alice.seal(b"held"))
        alice.update_send_key()
    assert bob.open(alice.seal(b"jump")) == b"jump"
    assert bob.recv_epoch == 3 and bob.past_epochs == (2, 1, 0)
    assert [bob.open(r) for r in held] == [b"held"] * 3


def test_no_past_epochs(pair_factory):
    alice, bob = pair_factory(past_epochs=0)
    old = alice.seal(b"old")
    alice.update_send_key()
    bob.open(alice.seal(b"new"))
    assert bob.past_epochs == () and not bob.has_previous_epoch
    with pytest.raises(errors.UnknownEpoch):
        bob.open(old)


@pytest.mark.parametrize("bad", [-1, 65, True, 1.5])
def test_past_epochs_checked(pair_factory, bad):
    with pytest.raises(errors.ConfigurationError):
        pair_factory(past_epochs=bad)


def test_close_wipes_and_refuses(pair):
    alice, bob = pair
    record = alice.seal(b"x")
    alice.close()
    bob.close()
    with pytest.raises(errors.RecordLayerClosed):
        alice.seal(b"y")
    with pytest.raises(errors.RecordLayerClosed):
        bob.open(record)
    with pytest.raises(errors.RecordLayerClosed):
        alice.update_send_key()


def test_context_manager_closes(suite, backend):
    k = key_material(suite)
    with RecordLayer(suite, send_key=k["a_key"], send_iv=k["a_iv"], recv_key=k["b_key"],
                     recv_iv=k["b_iv"], backend=backend) as layer:
        layer.seal(b"x")
    with pytest.raises(errors.RecordLayerClosed):
        layer.seal(b"x")


@pytest.mark.parametrize("kind", [bytearray, memoryview, lambda b: array("B", b)])
def test_buffer_protocol_inputs(pair, kind):
    alice, bob = pair
    record = alice.seal(kind(b"buffer input"))
    assert bob.open(kind(record)) == b"buffer input"


def test_repr_shows_no_key(suite, backend):
    k = key_material(suite)
    layer = RecordLayer(suite, send_key=k["a_key"], send_iv=k["a_iv"], recv_key=k["b_key"],
                        recv_iv=k["b_iv"], backend=backend)
    text = repr(layer)
    assert k["a_key"].hex() not in text and str(k["a_key"]) not in text
    assert suite.wire_name in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"send_key": bytes(31)},
        {"recv_key": bytes(33)},
        {"send_iv": bytes(5)},
        {"window": 100},
        {"window": 32},
        {"window": (1 << 20) + 64},
        {"epoch": -1},
        {"epoch": 1 << 32},
        {"backend": "fortran"},
    ],
)
def test_bad_parameters(backend, kwargs):
    suite = Suite.CHACHA20_POLY1305
    k = key_material(suite)
    args = {"send_key": k["a_key"], "send_iv": k["a_iv"], "recv_key": k["b_key"],
            "recv_iv": k["b_iv"], "backend": backend}
    args.update(kwargs)
    with pytest.raises(errors.ConfigurationError):
        RecordLayer(suite, **args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"soft_messages": 10, "hard_messages": 5},
        {"hard_messages": 0, "soft_messages": 0},
        {"soft_bytes": 10, "hard_bytes": 5},
        {"max_plaintext": 0},
        {"max_plaintext": (1 << 24) + 1},
        {"hard_bytes": 1 << 64},
    ],
)
def test_bad_limits(kwargs):
    with pytest.raises(errors.ConfigurationError):
        RecordLimits(**kwargs)


def test_environment_selects_pure(monkeypatch):
    k = key_material(Suite.CHACHA20_POLY1305)
    args = {"send_key": k["a_key"], "send_iv": k["a_iv"], "recv_key": k["b_key"],
            "recv_iv": k["b_iv"]}
    monkeypatch.setenv("ROLEWIRE_PURE", "1")
    assert RecordLayer(Suite.CHACHA20_POLY1305, **args).backend == "pure"
    monkeypatch.setenv("ROLEWIRE_PURE", "0")
    assert RecordLayer(Suite.CHACHA20_POLY1305, **args).backend == "c"
    assert RecordLayer(Suite.CHACHA20_POLY1305, backend="pure", **args).backend == "pure"


@given(st.binary(max_size=200))
def test_garbage_only_typed_errors(data):
    for backend in ("c", "pure"):
        _, bob = make_pair(Suite.CHACHA20_POLY1305, backend)
        with pytest.raises(errors.RecordError):
            bob.open(data)


@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE), st.binary(max_size=64))
def test_garbage_with_valid_looking_header(header, body):
    for backend in ("c", "pure"):
        _, bob = make_pair(Suite.CHACHA20_POLY1305, backend)
        record = b"\x01\x01" + header[2:] + body
        with pytest.raises(errors.RecordError):
            bob.open(record)


# -- batches -----------------------------------------------------------------


def test_seal_many_open_many(pair):
    alice, bob = pair
    messages = [b"", b"a", b"bb" * 40, bytes(5000)]
    records = alice.seal_many(messages)
    assert [len(r) - alice.suite.overhead for r in records] == [len(m) for m in messages]
    assert bob.open_many(records) == messages


def test_batch_matches_single_calls(suite, backend):
    messages = [bytes([i]) * i for i in range(20)]
    a1, _ = make_pair(suite, backend)
    a2, _ = make_pair(suite, backend)
    assert a1.seal_many(messages) == [a2.seal(m) for m in messages]


def test_open_many_keeps_good_ones(pair):
    alice, bob = pair
    records = alice.seal_many([b"one", b"two", b"three"])
    tampered = bytearray(records[1])
    tampered[-1] ^= 1
    results = bob.open_many([records[0], bytes(tampered), records[2], records[0], b"junk"])
    assert results[0] == b"one" and results[2] == b"three"
    assert isinstance(results[1], errors.AuthenticationFailed)
    assert isinstance(results[3], errors.ReplayDetected)
    assert isinstance(results[4], errors.MalformedRecord)
    # The tampered one did not consume counter 1: the genuine record opens.
    assert bob.open(records[1]) == b"two"


def test_packed_into_caller_buffer(pair):
    alice, bob = pair
    data = b"helloworld!"
    offsets = array("Q", [0, 5, 10, 11])
    overhead = alice.suite.overhead
    out = bytearray(len(data) + 3 * overhead + 7)
    sealed = alice.seal_packed(memoryview(data), offsets, out=out)
    assert sealed.buffer.obj is out
    assert len(sealed) == 3 and sealed.offsets[-1] == len(data) + 3 * overhead
    plain_out = bytearray(sealed.offsets[-1])
    opened = bob.open_packed(out, sealed.offsets, out=memoryview(plain_out))
    assert opened.ok and opened.to_list() == [b"hello", b"world", b"!"]
    assert bytes(opened[1]) == b"world"


def test_packed_errors_raise_on_index(pair):
    alice, bob = pair
    sealed = alice.seal_packed(b"abcd", [0, 2, 4])
    buf = bytearray(sealed.buffer)
    buf[sealed.offsets[1]] ^= 0xFF  # break the second record's version byte
    opened = bob.open_packed(buf, sealed.offsets)
    assert bytes(opened[0]) == b"ab"
    with pytest.raises(errors.MalformedRecord):
        opened[1]
    assert set(opened.errors) == {1} and not opened.ok


def test_packed_out_too_small(pair):
    alice, _ = pair
    with pytest.raises(errors.ConfigurationError):
        alice.seal_packed(b"abcd", [0, 4], out=bytearray(4))
    with pytest.raises(TypeError):
        alice.seal_packed(b"abcd", [0, 4], out=b"\x00" * 100)
    assert alice.messages_sealed == 0


@pytest.mark.parametrize("offsets", [[0, 5, 3], [0, 10], [4, 2], [-1, 2]])
def test_packed_bad_offsets(pair, offsets):
    alice, bob = pair
    with pytest.raises(errors.ConfigurationError):
        alice.seal_packed(b"abcd", offsets)
    with pytest.raises(errors.ConfigurationError):
        bob.open_packed(b"abcd", offsets)
    assert alice.messages_sealed == 0


def test_packed_empty_batch(pair):
    alice, bob = pair
    assert len(alice.seal_packed(b"", [0])) == 0
    assert len(bob.open_packed(b"", [0])) == 0


def test_batch_all_or_nothing_at_hard_limit(pair_factory):
    alice, _ = pair_factory(limits=RecordLimits(soft_messages=2, hard_messages=4))
    alice.seal(b"x")
    with pytest.raises(errors.KeyExhausted):
        alice.seal_many([b"a", b"b", b"c", b"d"])
    assert alice.messages_sealed == 1
    alice.seal_many([b"a", b"b", b"c"])
    assert alice.messages_sealed == 4


def test_batch_too_large_message_seals_nothing(pair_factory):
    alice, _ = pair_factory(limits=RecordLimits(max_plaintext=10))
    with pytest.raises(errors.RecordTooLarge):
        alice.seal_many([b"ok", bytes(11)])
    assert alice.messages_sealed == 0


def test_batch_open_advances_epoch(pair):
    alice, bob = pair
    old = alice.seal(b"old")
    alice.update_send_key()
    new = alice.seal_many([b"n1", b"n2"])
    assert bob.open_many([new[1], old, new[0]]) == [b"n2", b"old", b"n1"]
    assert bob.recv_epoch == 1 and bob.recv_epoch_advances == 1
