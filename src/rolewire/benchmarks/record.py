"""``rolewire bench record``: record seal+open throughput, always as ratios
against baselines measured in the same run.

Measured per message size (64 B, 1 KiB, 16 KiB, 64 KiB), seal followed by
open, messages per second (median of rounds; every configuration runs once
per round, interleaved, and each ratio is the median of per-round ratios,
``ratio_ranges`` their min and max):

- ``raw_c``: libsodium seal+open in a C loop with no record layer (the
  physical limit; benchmark-only function in our extension);
- ``single``: ``RecordLayer.seal`` + ``open``, one call each per message;
- ``batch``: ``seal_packed`` + ``open_packed`` over up to 256 messages (at
  most 1 MiB) per call, into preallocated buffers;
- ``pure``: the pure-Python twin, single calls;
- ``cryptography``: ``ChaCha20Poly1305.encrypt`` + ``decrypt`` per call
  (fixed nonce and AD: the bare cost of an AEAD call from Python).

``aegis_raw64_vs_chacha_raw64`` (no target) is the ceiling of
``aegis_batch64_vs_chacha_batch64``: what the two AEADs alone give at 64 B.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from rolewire.record import RecordLayer, RecordLimits, Suite
from rolewire.record import raw_aead_loop as raw_loop

SIZES = (64, 1024, 16 * 1024, 64 * 1024)
BATCH = 256
BATCH_BYTES = 1 << 20


def batch_count(size: int) -> int:
    """Messages per batch call: 256, fewer for large messages (a batch that
    outgrows the caches measures memory bandwidth, not the record layer)."""
    return max(4, min(BATCH, BATCH_BYTES // max(size, 1)))

Progress = Callable[[str], None]


def _pair(suite: Suite, backend: str) -> tuple[RecordLayer, RecordLayer]:
    key_a, key_b = os.urandom(32), os.urandom(32)
    iv_a, iv_b = os.urandom(suite.iv_size), os.urandom(suite.iv_size)
    # Soft limits off: a benchmark seals millions of records under one key.
    limits = RecordLimits(soft_messages=1 << 60, soft_bytes=1 << 62)
    alice = RecordLayer(suite, send_key=key_a, send_iv=iv_a, recv_key=key_b, recv_iv=iv_b,
                        limits=limits, backend=backend)
    bob = RecordLayer(suite, send_key=key_b, send_iv=iv_b, recv_key=key_a, recv_iv=iv_a,
                      limits=limits, backend=backend)
    return alice, bob


def _calibrate(run: Callable[[int], None], budget: float) -> int:
    """A call count that takes about ``budget`` seconds (doubles as warm-up)."""
    calls = 1
    while True:
        start = time.perf_counter()
        run(calls)
        elapsed = time.perf_counter() - start
        if elapsed >= budget / 4 or calls >= 1 << 24:
            return max(1, int(calls * budget / max(elapsed, 1e-9)))
        calls *= 4


def _timed(run: Callable[[int], None], calls: int, per_call: int) -> float:
    start = time.perf_counter()
    run(calls)
    return calls * per_call / (time.perf_counter() - start)


def _rate(run: Callable[[int], None], per_call: int, budget: float, repeats: int) -> float:
    """Median messages/s of ``repeats`` timed runs of one configuration, each
    about ``budget`` s (for callers that interleave on their own)."""
    calls = _calibrate(run, budget)
    return statistics.median(_timed(run, calls, per_call) for _ in range(repeats))


def _single(suite: Suite, size: int, backend: str) -> Callable[[int], None]:
    alice, bob = _pair(suite, backend)
    message = os.urandom(size)
    seal, open_ = alice.seal, bob.open

    def run(n: int) -> None:
        for _ in range(n):
            open_(seal(message))

    return run


def _batch(suite: Suite, size: int) -> Callable[[int], None]:
    alice, bob = _pair(suite, "c")
    count = batch_count(size)
    data = os.urandom(size * count)
    offsets = array("Q", range(0, size * count + 1, size))
    sealed_buf = bytearray(size * count + count * suite.overhead)
    plain_buf = bytearray(len(sealed_buf))

    def run(n: int) -> None:
        for _ in range(n):
            sealed = alice.seal_packed(data, offsets, out=sealed_buf)
            opened = bob.open_packed(sealed_buf, sealed.offsets, out=plain_buf)
            if opened.errors:
                raise RuntimeError("benchmark batch failed to open")

    return run


def _raw(suite: Suite, size: int) -> Callable[[int], None]:
    def run(n: int) -> None:
        raw_loop(suite, size, n * BATCH)

    return run


def _cryptography(size: int) -> Callable[[int], None]:
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce, ad, message = os.urandom(12), os.urandom(14), os.urandom(size)
    encrypt, decrypt = aead.encrypt, aead.decrypt

    def run(n: int) -> None:
        for _ in range(n):
            decrypt(nonce, encrypt(nonce, message, ad), ad)

    return run


#: Implementations measured (``impl`` of :func:`body`); ``cryptography`` is
#: ChaCha20-Poly1305 only.
IMPLS = ("raw_c", "single", "batch", "pure", "cryptography")


@dataclass(frozen=True)
class Body:
    """One benchmark body: ``run(n)`` makes ``n`` calls, each handling
    ``per_call`` messages of ``size`` bytes (seal and open). The one
    definition of each configuration, for ``rolewire bench record`` and the
    pytest-benchmark front end (bench/bench_record.py) alike."""

    suite: Suite
    impl: str
    size: int
    run: Callable[[int], None]
    per_call: int


def body(impl: str, suite: Suite, size: int) -> Body:
    """The benchmark body of one configuration (``impl`` from :data:`IMPLS`)."""
    suite = Suite(suite)
    if impl == "raw_c":
        return Body(suite, impl, size, _raw(suite, size), BATCH)
    if impl == "single":
        return Body(suite, impl, size, _single(suite, size, "c"), 1)
    if impl == "batch":
        return Body(suite, impl, size, _batch(suite, size), batch_count(size))
    if impl == "pure":
        return Body(suite, impl, size, _single(suite, size, "pure"), 1)
    if impl == "cryptography" and suite is Suite.CHACHA20_POLY1305:
        return Body(suite, impl, size, _cryptography(size), 1)
    raise ValueError(f"no record benchmark {impl!r} for {suite.wire_name}")


def plan(sizes: tuple[int, ...] = SIZES) -> list[Body]:
    """Every configuration ``run`` measures, in the order of one round."""
    bodies = [body(impl, suite, size) for suite in Suite for size in sizes
              for impl in IMPLS if impl != "cryptography"]
    bodies += [body("cryptography", Suite.CHACHA20_POLY1305, size) for size in sizes]
    return bodies


def run(quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run the record benchmark; returns a JSON-ready dict with every figure
    (messages/s, medians) and the ratios the project tracks."""
    budget, repeats = (0.12, 3) if quick else (0.5, 7)
    sizes: tuple[int, ...] = SIZES
    if os.environ.get("ROLEWIRE_BENCH_TINY"):  # tests: exercise the code, measure nothing
        budget, repeats, sizes = 0.002, 1, (64, 1024)
    say = progress or (lambda _msg: None)
    results: dict[str, dict[str, dict[str, float]]] = {}

    bodies = plan(sizes)

    # Calibrate every configuration, then time them in interleaved rounds
    # (A, B, C, ..., A, B, C, ...): a slow spell of a shared machine hits all
    # alike, and each ratio is the median of its per-round ratios (run one
    # after another, the single-vs-cryptography ratio was skewed 4x).
    counts = []
    for index, item in enumerate(bodies, 1):
        say(f"calibrating [{index}/{len(bodies)}] {item.suite.wire_name} {item.impl} "
            f"{item.size} B")
        counts.append(_calibrate(item.run, budget / (4 if item.impl == "pure" else 1)))
    rounds: list[list[float]] = [[] for _ in bodies]
    for r in range(repeats):
        say(f"round {r + 1}/{repeats}: {len(bodies)} configurations")
        for index, item in enumerate(bodies):
            rounds[index].append(_timed(item.run, counts[index], item.per_call))
    runs: dict[tuple[str, str, str], list[float]] = {}
    for item, rates in zip(bodies, rounds):
        runs[(item.suite.wire_name, item.impl, str(item.size))] = rates
        results.setdefault(item.suite.wire_name, {}).setdefault(item.impl, {})[
            str(item.size)] = statistics.median(rates)

    def per_round(a: tuple[str, str, str], b: tuple[str, str, str]) -> list[float]:
        return [x / y for x, y in zip(runs[a], runs[b])]

    chacha, aegis = "CHACHA20-POLY1305", "AEGIS-256"
    pairs = {
        "record_batch64_vs_raw": ((chacha, "batch", "64"), (chacha, "raw_c", "64")),
        "record_single64_vs_cryptography": ((chacha, "single", "64"),
                                            (chacha, "cryptography", "64")),
        "aegis_batch64_vs_chacha_batch64": ((aegis, "batch", "64"), (chacha, "batch", "64")),
        # The ceiling of the line above: the two AEADs alone (libsodium, C
        # loop, same header as AD). At 64 B AEGIS-256's initialisation
        # dominates; measured here ~2.7x, below the 5.0 target, which came
        # from encryption-only figures without AD (REFERENCE.md s.5).
        "aegis_raw64_vs_chacha_raw64": ((aegis, "raw_c", "64"), (chacha, "raw_c", "64")),
    }
    if (chacha, "single", "16384") in runs:
        # Large ChaCha20-Poly1305 records against one OpenSSL call from Python.
        pairs["record_single16k_vs_cryptography"] = ((chacha, "single", "16384"),
                                                     (chacha, "cryptography", "16384"))
    ratios = {name: statistics.median(per_round(a, b)) for name, (a, b) in pairs.items()}
    ranges = {name: [min(per_round(a, b)), max(per_round(a, b))]
              for name, (a, b) in pairs.items()}
    targets = {
        "record_batch64_vs_raw": 0.80,
        "record_single64_vs_cryptography": 1.0,
        "aegis_batch64_vs_chacha_batch64": 5.0,
    }
    return {
        "benchmark": "record",
        "unit": "messages/s (seal+open), median of repeats",
        "quick": quick,
        "repeats": repeats,
        "batch_size": BATCH,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "results": results,
        "ratios": ratios,
        "ratio_ranges": ranges,
        "interleaved": True,
        "runs": {f"{suite}/{impl}/{size}": rates for (suite, impl, size), rates in runs.items()},
        "targets": targets,
        "targets_met": {name: ratios[name] >= goal for name, goal in targets.items()},
    }
