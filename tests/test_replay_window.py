"""Replay window against a set-based model: random reorder, duplicates and
drops, through the real record path (C and pure) and the pure window alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolewire import errors
from rolewire.record import ReplayWindow, Suite
from rolewire.record._format import ERR_REPLAY, ERR_TOO_OLD, OK
from tests.conftest import make_pair

VECTORS = Path(__file__).parent / "vectors"


class Model:
    """The specification: accept c iff unseen and (c > last or last - c < W)."""

    def __init__(self, size):
        self.size, self.seen, self.last = size, set(), 0

    def offer(self, counter):
        if counter in self.seen:
            return "replay" if counter > self.last or self.last - counter < self.size else "old"
        if counter <= self.last and self.last - counter >= self.size:
            return "old"
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return "ok"


def window_result(window, counter):
    rc = window.check(counter)
    if rc == OK:
        window.update(counter)
        return "ok"
    return {ERR_REPLAY: "replay", ERR_TOO_OLD: "old"}[rc]


@given(
    st.sampled_from([64, 128, 192, 4096]),
    st.lists(
        st.one_of(st.integers(0, 700), st.integers(0, 1 << 40), st.just(0)),
        max_size=300,
    ),
)
def test_pure_window_matches_model(size, counters):
    window, model = ReplayWindow(size), Model(size)
    for counter in counters:
        assert window_result(window, counter) == model.offer(counter), counter


@st.composite
def delivery(draw, total=400):
    """A delivery order over records 0..total-1 with reorders, dups and drops."""
    order = draw(st.permutations(range(total)))
    # Local reordering is more interesting than a global shuffle: mostly
    # ascending with jitter, plus some far-away stragglers.
    jitter = draw(st.lists(st.integers(-80, 80), min_size=total, max_size=total))
    keyed = sorted(range(total), key=lambda i: i + jitter[i])
    mode = draw(st.sampled_from(["jitter", "shuffle"]))
    base = keyed if mode == "jitter" else list(order)
    dups = draw(st.lists(st.integers(0, total - 1), max_size=40))
    drops = set(draw(st.lists(st.integers(0, total - 1), max_size=60)))
    sequence = [i for i in base if i not in drops]
    for position, dup in enumerate(dups):
        sequence.insert(min(position * 9, len(sequence)), dup)
    return sequence


RESULT = {errors.ReplayDetected: "replay", errors.RecordTooOld: "old"}


@pytest.mark.parametrize("backend", ["c", "pure"])
@given(sequence=delivery())
def test_record_path_matches_model(backend, sequence):
    alice, bob = make_pair(Suite.AEGIS_256, backend, window=64)
    records = alice.seal_many([i.to_bytes(2, "big") for i in range(400)])
    model = Model(64)
    for index in sequence:
        expected = model.offer(index)
        try:
            assert bob.open(records[index]) == index.to_bytes(2, "big")
            got = "ok"
        except (errors.ReplayDetected, errors.RecordTooOld) as exc:
            got = RESULT[type(exc)]
        assert got == expected, (index, model.last)


@pytest.mark.parametrize("backend", ["c", "pure"])
def test_out_of_order_within_window_accepted_exactly_once(backend):
    alice, bob = make_pair(Suite.CHACHA20_POLY1305, backend, window=4096)
    records = alice.seal_many([b"%d" % i for i in range(4096)])
    for record in reversed(records):
        bob.open(record)
    for record in records[::97]:
        with pytest.raises(errors.ReplayDetected):
            bob.open(record)


def test_window_edges():
    w = ReplayWindow(64)
    assert window_result(w, 0) == "ok"
    assert window_result(w, 0) == "replay"
    assert window_result(w, 64) == "ok"
    assert window_result(w, 0) == "old"  # 64 - 0 == W: just outside
    assert window_result(w, 1) == "ok"   # 64 - 1 < W: just inside
    assert window_result(w, 1 << 63) == "ok"  # far jump clears everything
    assert window_result(w, (1 << 63) - 63) == "ok"
    assert window_result(w, (1 << 63) - 64) == "old"
    assert window_result(w, 64) == "old"


def _wireguard_cases():
    path = VECTORS / "replay_wireguard.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["sections"]


@pytest.mark.skipif(not (VECTORS / "replay_wireguard.json").exists(), reason="no data")
@pytest.mark.parametrize("backend", ["c", "pure", "window"])
def test_wireguard_cases(backend):
    """wireguard-go replay/replay_test.go cases, ported as data.

    Their filter accepts c iff last - c <= windowSize, i.e. windowSize + 1
    counters; ours accepts last - c < W. So their windowSize is our W - 1,
    evaluated with our W = 8192."""
    from tests.wireguard_port import run_sections

    run_sections(_wireguard_cases(), backend)
