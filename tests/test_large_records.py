"""Large ChaCha20-Poly1305 records: the C backend seals and opens those of
the current epoch with at least OPENSSL_CHACHA_THRESHOLD plaintext bytes
through OpenSSL (cryptography) while its C core keeps limits, counters,
epochs and the replay window. Run against both backends (the pure twin uses
cryptography for every size): the behaviour must be the same."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolewire import errors
from rolewire.protocol import fastpath
from rolewire.protocol.fastpath import MSG, OperationTable
from rolewire.protocol.wire import CallMessage, MessageType, encode
from rolewire.record import RecordLimits, Suite
from rolewire.record._format import HEADER_SIZE, OPENSSL_CHACHA_THRESHOLD
from tests.conftest import make_pair
from tests.test_fastpath import OPS, decoded, feed_both, layers, receivers_for, sealed_both

CHACHA = Suite.CHACHA20_POLY1305
SIZES = [OPENSSL_CHACHA_THRESHOLD - 1, OPENSSL_CHACHA_THRESHOLD, 16384]


def message(size: int, tag: int = 0) -> bytes:
    """Deterministic, and no message contains another's bytes."""
    return random.Random(tag).randbytes(size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("where", ["header", "ciphertext", "tag"])
def test_tampered_large_record_is_refused_and_changes_nothing(backend, size, where):
    alice, bob = make_pair(CHACHA, backend)
    record = alice.seal(message(size))
    offset = {"header": 13, "ciphertext": HEADER_SIZE + size // 2, "tag": len(record) - 1}
    forged = bytearray(record)
    forged[offset[where]] ^= 0x40
    with pytest.raises(errors.RecordError) as caught:
        bob.open(bytes(forged))
    # A flipped counter byte names another counter: still a bad tag.
    assert isinstance(caught.value, errors.AuthenticationFailed)
    # The forgery did not mark the counter: the genuine record opens once.
    assert bob.open(record) == message(size)
    with pytest.raises(errors.ReplayDetected):
        bob.open(record)


@pytest.mark.parametrize("size", SIZES)
def test_large_record_replay_and_too_old(backend, size):
    alice, bob = make_pair(CHACHA, backend, window=64)
    first = alice.seal(message(size))
    later = [alice.seal(b"x") for _ in range(64)]
    results = bob.open_many([first, first])
    assert results[0] == message(size) and isinstance(results[1], errors.ReplayDetected)
    _, bob = make_pair(CHACHA, backend, window=64)
    for record in later:
        bob.open(record)
    with pytest.raises(errors.RecordTooOld):
        bob.open(first)


def test_mixed_batch_keeps_order_and_per_record_errors(backend):
    alice, bob = make_pair(CHACHA, backend)
    sizes = [16384, 3, OPENSSL_CHACHA_THRESHOLD, 0, 16384, 100]
    plaintexts = [message(size, i) for i, size in enumerate(sizes)]
    records = alice.seal_many(plaintexts)
    forged = bytearray(records[4])
    forged[-1] ^= 1
    batch = [records[0], records[1], records[2], bytes(forged), records[3], records[0],
             records[4], records[5]]
    out = bytearray(b"\xaa" * sum(map(len, batch)))
    result = bob.open_packed(b"".join(batch), _offsets(batch), out=out)
    got = result.results()
    assert got[:3] == plaintexts[:3]
    assert isinstance(got[3], errors.AuthenticationFailed)
    assert got[4] == plaintexts[3]
    assert isinstance(got[5], errors.ReplayDetected)
    assert got[6:] == plaintexts[4:]


def test_forged_large_record_leaves_no_plaintext_in_out(backend):
    """A forgery that decrypts (flipped tag) must not leave its unauthenticated
    plaintext in the output buffer (decrypt_into writes before it checks)."""
    alice, bob = make_pair(CHACHA, backend)
    good, bad = alice.seal_many([message(16384, 1), message(16384, 2)])
    forged = bad[:-1] + bytes([bad[-1] ^ 1])
    out = bytearray(len(good) + len(forged))
    result = bob.open_packed(good + forged, _offsets([good, forged]), out=out)
    assert result[0] == message(16384, 1)
    assert isinstance(result.errors[1], errors.AuthenticationFailed)
    assert message(16384, 2)[:32] not in bytes(out)


def test_large_batch_advances_epochs_in_order(backend):
    alice, bob = make_pair(CHACHA, backend)
    old = alice.seal(message(16384, 1))
    alice.update_send_key()
    new = alice.seal_many([message(16384, 2), message(10, 3)])
    alice.update_send_key()
    newer = alice.seal(message(OPENSSL_CHACHA_THRESHOLD, 4))
    results = bob.open_many([new[0], old, newer, new[1], new[0]])
    assert results[:4] == [message(16384, 2), message(16384, 1),
                           message(OPENSSL_CHACHA_THRESHOLD, 4), message(10, 3)]
    assert isinstance(results[4], errors.ReplayDetected)
    assert bob.recv_epoch == 2 and bob.recv_epoch_advances == 1


def test_large_batch_limits_all_or_nothing(backend):
    limits = RecordLimits(hard_messages=3, soft_messages=3)
    alice, bob = make_pair(CHACHA, backend, limits=limits)
    with pytest.raises(errors.KeyExhausted):
        alice.seal_many([message(16384)] * 4)
    assert alice.messages_sealed == 0
    records = alice.seal_many([message(16384), b"s", message(OPENSSL_CHACHA_THRESHOLD)])
    assert alice.messages_sealed == 3 and alice.rekey_due
    with pytest.raises(errors.KeyExhausted):
        alice.seal(message(16384))
    assert bob.open_many(records) == [message(16384), b"s", message(OPENSSL_CHACHA_THRESHOLD)]


def test_large_records_after_close(backend):
    alice, bob = make_pair(CHACHA, backend)
    record = alice.seal(message(16384))
    alice.close()
    bob.close()
    with pytest.raises(errors.RecordLayerClosed):
        alice.seal(message(16384))
    with pytest.raises(errors.RecordLayerClosed):
        bob.open(record)
    assert isinstance(bob.open_many([record])[0], errors.RecordLayerClosed)


def _offsets(items):
    from array import array
    from itertools import accumulate

    return array("Q", [0, *accumulate(map(len, items))])


# -- the C backend's key handling and locking ------------------------------

def test_c_openssl_aead_made_once_per_epoch_and_dropped():
    alice, bob = make_pair(CHACHA, "c")
    assert alice.seal(message(100)) and alice._send_aead is None  # small: libsodium
    first = alice.seal(message(16384))
    aead = alice._send_aead
    assert aead is not None
    alice.seal_many([message(16384), message(16384)])
    assert alice._send_aead is aead  # one object per key epoch
    bob.open(first)
    assert bob._recv_aead is not None
    alice.update_send_key()
    assert alice._send_aead is None  # dropped with the old key
    bob.open(alice.seal(message(16384)))  # advances: libsodium, drops the stale one
    assert bob.recv_epoch == 1 and bob._recv_aead is None
    bob.open(alice.seal(message(16384)))
    assert bob._recv_aead is not None and bob._recv_aead is not aead
    alice.close()
    bob.close()
    assert alice._send_aead is None and bob._recv_aead is None


def test_c_aegis_never_goes_to_openssl():
    alice, bob = make_pair(Suite.AEGIS_256, "c")
    bob.open(alice.seal(message(16384)))
    assert alice._send_aead is None and bob._recv_aead is None


def test_c_direction_is_locked_while_openssl_works():
    """Between begin and end the C lock is held for the caller's AEAD: a
    concurrent call gets ConcurrentUseError, as during any C call."""
    from rolewire._native_loader import ffi, lib

    alice, bob = make_pair(CHACHA, "c")
    scratch = ffi.new("char[]", 64)
    assert lib.rw_seal_begin(alice._sender, 16384, scratch, 64) >= 0
    with pytest.raises(errors.ConcurrentUseError):
        alice.seal(message(16384))
    with pytest.raises(errors.ConcurrentUseError):
        alice.seal(b"small")
    with pytest.raises(errors.ConcurrentUseError):
        alice.update_send_key()
    assert lib.rw_sender_end(alice._sender) == 0
    assert lib.rw_sender_end(alice._sender) < 0  # nothing pending: refused
    record = alice.seal(message(16384))
    # The reserved counter 0 was spent (never reused): this record has 1.
    assert int.from_bytes(record[6:14], "big") == 1
    assert lib.rw_open_begin(bob._receiver, record, len(record), scratch) == 0
    with pytest.raises(errors.ConcurrentUseError):
        bob.open(record)
    assert lib.rw_open_end(bob._receiver, 0) == 0
    assert bob.open(record) == message(16384)


def test_c_failure_inside_the_aead_releases_the_lock(monkeypatch):
    alice, bob = make_pair(CHACHA, "c")
    records = alice.seal_many([message(16384), message(16384)])
    bob.open(records[0])

    class Broken:
        def decrypt(self, *args):
            raise RuntimeError("boom")

        decrypt_into = encrypt = encrypt_into = decrypt

    monkeypatch.setattr(bob, "_recv_aead", Broken())
    with pytest.raises(RuntimeError):
        bob.open(records[1])
    with pytest.raises(RuntimeError):
        bob.open_many([records[1]])
    monkeypatch.setattr(bob, "_recv_aead", None)
    # Lock released, counter not marked: the record still opens, once.
    assert bob.open_many([records[1], records[1]])[0] == message(16384)


def test_c_refuses_an_aead_that_does_not_copy_its_key(monkeypatch):
    from rolewire.record import _c

    class LazyKey:
        """Reads the key buffer at every call (what the probe must catch)."""

        def __init__(self, key):
            self.key = key

        def encrypt(self, nonce, data, ad):
            return bytes(self.key[:16])

    monkeypatch.setattr(_c, "ChaCha20Poly1305", LazyKey)
    alice, _ = make_pair(CHACHA, "c")
    with pytest.raises(errors.RolewireError, match="copy its key"):
        alice.seal(message(16384))
    assert alice.seal(b"small")  # the lock was released


def test_c_without_the_external_aead_keeps_everything_in_c(monkeypatch):
    """An extension built from older sources (no caller's-AEAD entry points)
    still works: every record in libsodium, the same bytes."""
    from rolewire.record import _c

    monkeypatch.setattr(_c, "_EXTERNAL_AEAD", False)
    alice, bob = make_pair(CHACHA, "c")
    plaintexts = [message(16384, 1), b"s", message(OPENSSL_CHACHA_THRESHOLD, 2)]
    records = [alice.seal(plaintexts[0]), *alice.seal_many(plaintexts[1:])]
    assert alice._send_aead is None
    reference, _ = make_pair(CHACHA, "pure")
    assert records == [reference.seal(plaintexts[0]), *reference.seal_many(plaintexts[1:])]
    assert bob.open(records[0]) == plaintexts[0]
    assert bob.open_many(records[1:]) == plaintexts[1:]
    assert bob._recv_aead is None


# --- the native fast path (protocol.fastpath.FastReceiver) -------------------------------

native_only = pytest.mark.skipif(not fastpath.native_available(),
                                 reason="the C fast path is not built (or ROLEWIRE_PURE=1)")
#: Tests of the caller's-AEAD entry points of the fast path (an extension
#: built from older sources lacks them and keeps every record in C).
external_only = pytest.mark.skipif(
    not (fastpath.native_available() and fastpath._HAVE_EXTERNAL),
    reason="the C fast path lacks rw_fp_recv_ext (an older build: rebuild the extension)")


def _counting(layer, monkeypatch) -> list[int]:
    """The plaintext sizes of the records the C layer hands to OpenSSL on
    the fast path, in order."""
    calls: list[int] = []
    original = layer.open_reserved_run

    def counted(nonces, stride, records, outs, ok):
        calls.extend(len(out) for out in outs)
        return original(nonces, stride, records, outs, ok)

    monkeypatch.setattr(layer, "open_reserved_run", counted)
    return calls


@native_only
@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 10, 3000, OPENSSL_CHACHA_THRESHOLD - 30,
                                       OPENSSL_CHACHA_THRESHOLD - 29, 16384, 40_000]),
                      min_size=1, max_size=24),
       container_max=st.sampled_from([0, 64, 16384]),
       cuts=st.lists(st.integers(0, 1 << 30), max_size=6))
def test_fast_path_opens_large_chacha_records_like_the_pure_twin(sizes, container_max, cuts):
    a, b = layers(CHACHA)
    ops = OperationTable(OPS)
    msgs = [CallMessage(MessageType.NOTIFY, i, "sink", message(n, i)) for i, n in
            enumerate(sizes)]
    frames = sealed_both(a, [encode(m) for m in msgs], container_max)
    receivers = receivers_for(b, ops)
    points = sorted({c % (len(frames) + 1) for c in cuts} | {0, len(frames)})
    got: list[CallMessage] = []
    for start, end in itertools.pairwise(points):
        got += decoded(feed_both(receivers, frames[start:end]), ops)
    assert got == msgs


@external_only
def test_fast_path_sends_only_large_current_epoch_records_to_openssl(monkeypatch):
    a, b = layers(CHACHA)
    calls = _counting(b["c"], monkeypatch)
    sizes = [100, OPENSSL_CHACHA_THRESHOLD - 11, OPENSSL_CHACHA_THRESHOLD - 10, 16384]
    # (10 bytes of call header: plaintexts of threshold-1, threshold, ...)
    msgs = [encode(CallMessage(MessageType.NOTIFY, 0, "", message(n, n))) for n in sizes]
    batch = feed_both(receivers_for(b), sealed_both(a, msgs))
    assert batch.opened == 4 and list(batch.status[:4]) == [MSG] * 4
    assert calls == [OPENSSL_CHACHA_THRESHOLD, 16384 + 10]
    # AEGIS-256 never goes to OpenSSL.
    a2, b2 = layers(Suite.AEGIS_256)
    assert b2["c"].native_open_threshold is None
    feed_both(receivers_for(b2), sealed_both(a2, msgs))


@external_only
def test_fast_path_large_records_tampered_replayed_and_across_epochs(monkeypatch):
    a, b = layers(CHACHA)
    calls = _counting(b["c"], monkeypatch)
    big = [encode(CallMessage(MessageType.NOTIFY, i, "sink", message(16384, i)))
           for i in range(6)]
    first = sealed_both(a, big[:1])
    tampered = bytearray(first)
    tampered[-3] ^= 0x01
    receivers = receivers_for(b)
    # forged, then genuine (the forgery marked nothing), then a replay: one
    # run (reserved together; committed in order, so the replay is caught)
    batch = feed_both(receivers, bytes(tampered) + first + first)
    assert [int(s) for s in batch.status[:3]] == [-9, MSG, -7]
    assert batch.records == 3 and batch.opened == 1 and len(calls) == 3
    old = sealed_both(a, big[1:2])
    for layer in a.values():  # the sender moves to epoch 1
        layer.update_send_key()
    new = sealed_both(a, big[2:4])
    # new epoch (its first record advances the receiver in C), then a late
    # record of the old one (a past epoch: C), then the new current epoch
    batch = feed_both(receivers, new + old)
    assert batch.opened == 3 and batch.flags == 2
    assert len(calls) == 4  # only the second record of epoch 1
    assert b["c"].recv_epoch == 1 and b["c"].recv_epoch_advances == 1
    later = sealed_both(a, big[4:6])
    assert feed_both(receivers, later).opened == 2 and len(calls) == 6


@external_only
def test_fast_path_failure_inside_openssl_releases_the_lock(monkeypatch):
    a, b = layers(CHACHA)
    msgs = [encode(CallMessage(MessageType.NOTIFY, i, "sink", message(16384, i)))
            for i in range(2)]
    frames = sealed_both(a, msgs)
    cut = len(frames) // 2

    def boom(nonces, stride, records, outs, ok):
        raise RuntimeError("boom")

    receiver = fastpath.FastReceiver(b["c"], native=True)
    monkeypatch.setattr(b["c"], "open_reserved_run", boom)
    with pytest.raises(RuntimeError):
        receiver.feed(frames[:cut])
    monkeypatch.undo()
    # The lock is free and the record was not marked: it opens now.
    receiver = fastpath.FastReceiver(b["c"], native=True)
    batch = receiver.feed(frames)
    assert batch.opened == 2


@native_only
def test_fast_path_without_the_external_entry_points_stays_in_c(monkeypatch):
    # (an extension built from older sources: every record opens in C)
    a, b = layers(CHACHA)
    calls = _counting(b["c"], monkeypatch)
    monkeypatch.setattr(fastpath, "_HAVE_EXTERNAL", False)
    msgs = [encode(CallMessage(MessageType.NOTIFY, i, "sink", message(16384, i)))
            for i in range(3)]
    batch = feed_both(receivers_for(b), sealed_both(a, msgs))
    assert batch.opened == 3 and calls == []


def _counting_seals(layer, monkeypatch) -> list[int]:
    """The messages (indexes) the C layer hands to OpenSSL on the fast
    path's send side, in order."""
    calls: list[int] = []
    original = layer.seal_reserved_run

    def counted(messages, offsets, out, run):
        calls.extend(i for i, _ in run)
        return original(messages, offsets, out, run)

    monkeypatch.setattr(layer, "seal_reserved_run", counted)
    return calls


@external_only
@pytest.mark.parametrize("container_max", [0, 16384])
def test_fast_path_seals_large_chacha_records_with_openssl(monkeypatch, container_max):
    a, b = layers(CHACHA)
    calls = _counting_seals(a["c"], monkeypatch)
    sizes = [16384, 40_000, 100, 200, OPENSSL_CHACHA_THRESHOLD - 1, OPENSSL_CHACHA_THRESHOLD,
             5, 16384, 16384]
    msgs = [message(n, i) for i, n in enumerate(sizes)]
    frames = sealed_both(a, msgs, container_max)  # same frames as the pure twin
    # Records of their own with >= threshold bytes; a container (here the
    # five messages 2..6) stays in C.
    assert calls == ([0, 1, 7, 8] if container_max else [0, 1, 5, 7, 8])
    batch = feed_both(receivers_for(b), frames)
    assert batch.opened == batch.records
    # Nothing is left locked: an ordinary seal works.
    a["c"].seal(b"x")


@external_only
def test_fast_path_large_seals_keep_the_limits_of_c(monkeypatch):
    limits = RecordLimits(soft_messages=5, soft_bytes=1 << 50, hard_messages=8)
    a, _b = layers(CHACHA, limits=limits)
    calls = _counting_seals(a["c"], monkeypatch)
    msgs = [message(16384, i) for i in range(3)]
    c = fastpath.seal_frames(a["c"], msgs, native=True)
    assert c == fastpath.seal_frames(a["pure"], msgs, native=False) and c[2] == 0
    c = fastpath.seal_frames(a["c"], msgs, native=True)
    p = fastpath.seal_frames(a["pure"], msgs, native=False)
    assert c == p and c[2] & 1  # soft limit reached: rekey
    assert len(calls) == 6
    with pytest.raises(errors.KeyExhausted):  # the 9th record: hard limit
        fastpath.seal_frames(a["c"], msgs, native=True)
    with pytest.raises(errors.KeyExhausted):
        fastpath.seal_frames(a["pure"], msgs, native=False)
    with pytest.raises(errors.KeyExhausted):  # and the lock was released
        a["c"].seal(b"x")
