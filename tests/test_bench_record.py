"""rolewire bench record: its rounds are interleaved (issue 13), and the
pytest-benchmark front end uses the same bodies (issue 12)."""

from __future__ import annotations

from rolewire.benchmarks import record as bench


def test_rounds_are_interleaved(monkeypatch):
    """Every configuration runs once per round (A, B, C, A, B, C, ...), not
    all repeats of one configuration back to back."""
    order = []
    monkeypatch.delenv("ROLEWIRE_BENCH_TINY", raising=False)
    monkeypatch.setattr(bench, "_calibrate", lambda run, budget: 1)

    def timed(run, calls, per_call):
        order.append(run)
        return 1.0

    monkeypatch.setattr(bench, "_timed", timed)
    report = bench.run(quick=True)
    configs = len(bench.plan())
    repeats = report["repeats"]
    assert repeats > 1 and len(order) == configs * repeats
    first = order[:configs]
    assert len(set(map(id, first))) == configs
    assert order == first * repeats
    assert report["interleaved"]


def test_every_impl_has_a_body():
    for item in bench.plan((64,)):
        assert item.impl in bench.IMPLS and item.size == 64 and item.per_call >= 1
        item.run(1)
