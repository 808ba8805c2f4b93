"""pytest-benchmark front end for the record benchmark: the bodies are the
ones ``rolewire bench record`` times (rolewire.benchmarks.record.body), so
there is one definition of each. Each group holds rolewire and its
baselines for one message size, side by side; compare ratios, not absolute
numbers (run: python -m pytest bench --benchmark-only). One round is one
call of a body; ``messages_per_round`` in extra_info gives the per-message
cost."""

from __future__ import annotations

import pytest

from rolewire.benchmarks.record import IMPLS, body
from rolewire.record import Suite

SIZES = [64, 1024, 16384]

CONFIGS = [(impl, suite) for impl in IMPLS for suite in Suite
           if impl != "cryptography" or suite is Suite.CHACHA20_POLY1305]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("impl", "suite"), CONFIGS,
                         ids=[f"{impl}-{suite.wire_name}" for impl, suite in CONFIGS])
def test_record(benchmark, impl, suite, size):
    item = body(impl, suite, size)
    benchmark.group = f"record {size} B"
    benchmark.extra_info["messages_per_round"] = item.per_call
    benchmark(item.run, 1)
