"""The C backend and the pure twin must produce byte-identical records and
identical outcomes (plaintext or error type) for the same operations."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rolewire._native_loader import lib
from rolewire.record import RecordLimits, Suite, _format
from tests.conftest import make_pair

suites = st.sampled_from(list(Suite))

# An operation script: ("seal", message) | ("update",) | ("batch", [messages])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("seal"), st.binary(max_size=300)),
        st.tuples(st.just("update")),
        st.tuples(st.just("batch"), st.lists(st.binary(max_size=100), max_size=6)),
    ),
    max_size=25,
)


def run_script(backend, suite, seed, ops):
    alice, _ = make_pair(suite, backend, seed=seed)
    produced = []
    for op in ops:
        if op[0] == "seal":
            produced.append(alice.seal(op[1]))
        elif op[0] == "update":
            produced.append(alice.update_send_key())
        else:
            produced.extend(alice.seal_many(op[1]))
    return produced


@given(suites, st.integers(0, 1000), operations)
def test_sealing_is_byte_identical(suite, seed, ops):
    assert run_script("c", suite, seed, ops) == run_script("pure", suite, seed, ops)


def outcome(layer, record):
    try:
        return layer.open(record)
    except Exception as exc:  # noqa: BLE001 - comparing error types
        return type(exc)


@given(
    suites,
    st.lists(st.binary(max_size=50), min_size=1, max_size=12),
    st.lists(
        st.tuples(st.integers(0, 100), st.sampled_from(["deliver", "flip", "truncate"]),
                  st.integers(0, 10_000)),
        max_size=40,
    ),
    st.integers(0, 3),
)
def test_opening_outcomes_identical(suite, messages, deliveries, updates_at):
    """Deliver (possibly tampered, duplicated, reordered) records to both
    backends and compare every outcome, including epoch advances."""
    outcomes = {}
    for backend in ("c", "pure"):
        alice, bob = make_pair(suite, backend, window=64)
        records = []
        for i, message in enumerate(messages):
            if i == updates_at:
                alice.update_send_key()
            records.append(alice.seal(message))
        results = []
        for index, action, where in deliveries:
            record = bytearray(records[index % len(records)])
            if action == "flip":
                record[where % len(record)] ^= 1 << (where % 8)
            elif action == "truncate":
                del record[where % len(record):]
            results.append(outcome(bob, bytes(record)))
            results.append((bob.recv_epoch, bob.has_previous_epoch))
        outcomes[backend] = results
    assert outcomes["c"] == outcomes["pure"]


@given(suites, st.lists(st.binary(max_size=40), max_size=10), st.lists(st.integers(0, 30)))
def test_batch_open_identical(suite, messages, order):
    outcomes = {}
    for backend in ("c", "pure"):
        alice, bob = make_pair(suite, backend)
        records = alice.seal_many(messages)
        chosen = [records[i % len(records)] for i in order] if records else []
        results = bob.open_many(chosen)
        outcomes[backend] = [r if isinstance(r, bytes) else type(r) for r in results]
    assert outcomes["c"] == outcomes["pure"]


def test_limits_identical():
    limits = RecordLimits(soft_messages=2, hard_messages=3, soft_bytes=10, hard_bytes=20)
    for suite in Suite:
        results = {}
        for backend in ("c", "pure"):
            alice, _ = make_pair(suite, backend, limits=limits)
            seq = []
            for size in (5, 6, 8, 1, 0):
                try:
                    seq.append((alice.seal(bytes(size)), alice.rekey_due))
                except Exception as exc:  # noqa: BLE001
                    seq.append(type(exc))
            results[backend] = seq
        assert results["c"] == results["pure"]


@pytest.mark.parametrize(
    "name",
    [n for n in dir(_format) if n == "OK" or n.startswith(("ERR_", "REKEY", "EPOCH_ADV"))],
)
def test_status_codes_match_c(name):
    assert getattr(lib, "RW_" + name) == getattr(_format, name)


def test_format_constants_match_c():
    assert lib.RW_HEADER_SIZE == _format.HEADER_SIZE
    assert lib.RW_VERSION == _format.VERSION
    assert lib.RW_PROTOCOL_MAX_PLAINTEXT == _format.PROTOCOL_MAX_PLAINTEXT
    assert (lib.RW_WINDOW_MIN, lib.RW_WINDOW_MAX) == (_format.WINDOW_MIN, _format.WINDOW_MAX)
    for suite in Suite:
        assert lib.rw_suite_iv_size(suite) == suite.iv_size
        assert lib.rw_suite_tag_size(suite) == suite.tag_size


@given(
    suites,
    st.integers(0, 5),
    st.lists(st.tuples(st.integers(0, 7), st.booleans()), min_size=1, max_size=30),
    st.lists(st.tuples(st.integers(0, 200), st.sampled_from(["deliver", "retire", "flip"])),
             max_size=60),
)
def test_multi_epoch_outcomes_identical(suite, past_epochs, sealing, deliveries):
    """Several key updates (with skipped epochs), late records of many past
    epochs, per-epoch retirement and forgeries: both backends agree on every
    outcome and on the set of open past epochs."""
    outcomes = {}
    for backend in ("c", "pure"):
        alice, bob = make_pair(suite, backend, window=64, past_epochs=past_epochs)
        records = []
        for count, rekey in sealing:
            records.extend(alice.seal(b"m%d" % len(records)) for _ in range(count))
            if rekey:
                alice.update_send_key()
        records.append(alice.seal(b"last"))
        results = []
        for index, action in deliveries:
            record = bytearray(records[index % len(records)])
            if action == "retire":
                bob.retire_epoch(struct.unpack_from(">I", record, 2)[0])
            else:
                if action == "flip":
                    record[-1] ^= 1
                results.append(outcome(bob, bytes(record)))
            results.append((bob.recv_epoch, bob.past_epochs))
        outcomes[backend] = results
    assert outcomes["c"] == outcomes["pure"]


@given(
    suites,
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2)), min_size=1, max_size=12),
    st.lists(st.tuples(st.sampled_from(["open", "batch"]),
                       st.lists(st.integers(0, 100), min_size=1, max_size=6)),
             max_size=20),
)
@example(Suite.CHACHA20_POLY1305, [(1, 1), (1, 1)], [("batch", [0, 1, 2])])
def test_recv_epoch_advances_counted_alike(suite, sealing, deliveries):
    """recv_epoch_advances: +1 per advancing open(), +1 per open_packed()
    batch with any advancing record (a batch of three epochs counts once) -
    in both backends."""
    outcomes = {}
    for backend in ("c", "pure"):
        alice, bob = make_pair(suite, backend, window=64)
        records = []
        for count, rekeys in sealing:
            records.extend(alice.seal(b"m%d" % len(records)) for _ in range(count))
            for _ in range(rekeys):
                alice.update_send_key()
        records.append(alice.seal(b"last"))
        seen = []
        for kind, picks in deliveries:
            chosen = [records[i % len(records)] for i in picks]
            if kind == "open":
                for record in chosen:
                    outcome(bob, record)
            else:
                bob.open_many(chosen)
            seen.append((bob.recv_epoch_advances, bob.recv_epoch))
        outcomes[backend] = seen
    assert outcomes["c"] == outcomes["pure"]


@pytest.mark.parametrize("backend", ["c", "pure"])
def test_batch_advancing_twice_counts_once(backend):
    alice, bob = make_pair(Suite.CHACHA20_POLY1305, backend)
    first = alice.seal(b"e0")
    alice.update_send_key()
    second = alice.seal(b"e1")
    alice.update_send_key()
    third = alice.seal(b"e2")
    assert bob.open_many([first, second, third]) == [b"e0", b"e1", b"e2"]
    assert bob.recv_epoch == 2 and bob.recv_epoch_advances == 1


# Large ChaCha20-Poly1305 records: the C backend seals and opens those of at
# least OPENSSL_CHACHA_THRESHOLD bytes through OpenSSL, smaller ones with
# libsodium; the pure twin uses cryptography for all. The bytes must not
# tell which.
LARGE = _format.OPENSSL_CHACHA_THRESHOLD
MAX_EPOCH_SKIP = _format.MAX_EPOCH_SKIP
large_sizes = st.sampled_from([0, 1, 64, 1023, 1024, 1025, LARGE - 1, LARGE, LARGE + 1, 16384])


def filler(size, seed):
    return bytes((seed + i * 131) % 251 for i in range(size))


@given(
    suites,
    st.integers(0, 1000),
    st.lists(
        st.one_of(
            st.tuples(st.just("seal"), large_sizes),
            st.tuples(st.just("update")),
            st.tuples(st.just("batch"), st.lists(large_sizes, max_size=6)),
        ),
        max_size=12,
    ),
)
@example(Suite.CHACHA20_POLY1305, 0,
         [("seal", 1023), ("seal", 1024), ("seal", 1025), ("seal", LARGE - 1), ("seal", LARGE),
          ("seal", LARGE + 1), ("seal", 16384), ("batch", [16384, 1, LARGE, 0, LARGE - 1])])
def test_large_records_byte_identical(suite, seed, ops):
    """Sealing across the threshold (single and mixed batches, with key
    updates) gives the same records in both backends, and both backends open
    them alike, singly and as one batch, in order (a record more than four
    epochs ahead is an UnknownEpoch in both)."""
    produced = {}
    for backend in ("c", "pure"):
        alice, _ = make_pair(suite, backend, seed=seed)
        records, plaintexts = [], []
        for n, op in enumerate(ops):
            if op[0] == "seal":
                plaintexts.append(filler(op[1], seed + n))
                records.append(alice.seal(plaintexts[-1]))
            elif op[0] == "update":
                alice.update_send_key()
            else:
                batch = [filler(size, seed + n + j) for j, size in enumerate(op[1])]
                plaintexts.extend(batch)
                records.extend(alice.seal_many(batch))
        produced[backend] = (records, plaintexts)
    assert produced["c"] == produced["pure"]
    records, plaintexts = produced["c"]
    opened = {}
    for backend in ("c", "pure"):
        _, bob = make_pair(suite, backend, seed=seed)
        singly = [outcome(bob, r) for r in records]
        _, bob = make_pair(suite, backend, seed=seed)
        batch = [r if isinstance(r, bytes) else type(r) for r in bob.open_many(records)]
        opened[backend] = (singly, batch)
        for got in (singly, batch):
            assert all(g == p for g, p in zip(got, plaintexts) if isinstance(g, bytes))
    assert opened["c"] == opened["pure"]
    if len(ops) <= MAX_EPOCH_SKIP:  # no gap of more than four key updates
        assert opened["c"] == (plaintexts, plaintexts)


@given(
    suites,
    st.lists(st.tuples(large_sizes, st.booleans()), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 100), st.sampled_from(["deliver", "flip", "truncate"]),
                       st.integers(0, 1 << 20)),
             max_size=16),
    st.booleans(),
)
def test_large_batch_outcomes_identical(suite, sealing, deliveries, batched):
    """Mixed small and large records of several epochs, duplicated, reordered
    and tampered, opened one by one or as one batch: the same plaintexts,
    errors (in order), epochs, window state and advance counts in both
    backends."""
    outcomes = {}
    for backend in ("c", "pure"):
        alice, bob = make_pair(suite, backend, window=64)
        records = []
        for n, (size, rekey) in enumerate(sealing):
            records.append(alice.seal(filler(size, n)))
            if rekey:
                alice.update_send_key()
        chosen = []
        for index, action, where in deliveries:
            record = bytearray(records[index % len(records)])
            if action == "flip":
                record[where % len(record)] ^= 1 << (where % 8)
            elif action == "truncate":
                del record[where % len(record):]
            chosen.append(bytes(record))
        if batched:
            results = bob.open_many(chosen)
            seen = [r if isinstance(r, bytes) else type(r) for r in results]
        else:
            seen = [outcome(bob, record) for record in chosen]
        # Replaying everything afterwards shows what the windows recorded.
        again = [outcome(bob, record) for record in records]
        outcomes[backend] = (seen, again, bob.recv_epoch, bob.past_epochs,
                             bob.recv_epoch_advances)
    assert outcomes["c"] == outcomes["pure"]
