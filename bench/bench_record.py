"""pytest-benchmark suites for the record layer. Each group holds rolewire
and its baselines for one message size, so the report shows them side by
side; compare ratios, not absolute numbers (run with --benchmark-only)."""

from __future__ import annotations

import os
from array import array

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from rolewire.benchmarks.record import _pair, batch_count
from rolewire.record import raw_aead_loop as raw_loop
from rolewire.record import Suite

SIZES = [64, 1024, 16384]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("suite", list(Suite), ids=lambda s: s.wire_name)
def test_single(benchmark, suite, size):
    benchmark.group = f"record {size} B"
    alice, bob = _pair(suite, "c")
    message = os.urandom(size)
    benchmark(lambda: bob.open(alice.seal(message)))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("suite", list(Suite), ids=lambda s: s.wire_name)
def test_batch_per_message(benchmark, suite, size):
    benchmark.group = f"record {size} B"
    count = batch_count(size)
    alice, bob = _pair(suite, "c")
    data = os.urandom(size * count)
    offsets = array("Q", range(0, size * count + 1, size))
    sealed_buf = bytearray(size * count + count * suite.overhead)
    plain_buf = bytearray(len(sealed_buf))

    def run():
        sealed = alice.seal_packed(data, offsets, out=sealed_buf)
        bob.open_packed(sealed_buf, sealed.offsets, out=plain_buf)

    # One round = one batch; divide by the batch size for per-message cost.
    benchmark.extra_info["messages_per_round"] = count
    benchmark(run)


@pytest.mark.parametrize("size", SIZES)
def test_cryptography_per_call(benchmark, size):
    benchmark.group = f"record {size} B"
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce, ad, message = os.urandom(12), os.urandom(14), os.urandom(size)
    benchmark(lambda: aead.decrypt(nonce, aead.encrypt(nonce, message, ad), ad))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("suite", list(Suite), ids=lambda s: s.wire_name)
def test_raw_libsodium_loop_256(benchmark, suite, size):
    benchmark.group = f"record {size} B"
    benchmark.extra_info["messages_per_round"] = 256
    benchmark(lambda: raw_loop(suite, size, 256))
