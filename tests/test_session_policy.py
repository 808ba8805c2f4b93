"""The rekeying policy's quiet region (Session._set_quiet): ``seal`` skips the
policy check while counts, bytes and time stay inside bounds the last check
set. Skipping must never change when a rekey happens: a session that checks
before every seal (the quiet region forced empty) rekeys at exactly the
same seals, for every limit, lifetime and clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rolewire.errors import KeyExhausted
from rolewire.record import RecordLimits, Suite
from rolewire.session import Session
from tests.conftest import make_pair


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _session(backend: str, limits: RecordLimits, clock: Clock, **policy: float) -> Session:
    layer, _ = make_pair(Suite.CHACHA20_POLY1305, backend, limits=limits)
    return Session(layer=layer, peer_roles=frozenset({"r"}), suite=None,
                   transcript_hash=bytes(64), is_initiator=True, clock=clock,
                   **policy)  # type: ignore[arg-type]


steps = st.lists(st.tuples(st.integers(0, 1000),                     # plaintext bytes
                           st.sampled_from([0.0, 0.0, 0.0, 0.4, 3.0])),  # clock step
                 min_size=1, max_size=120)


@settings(max_examples=300, deadline=None)
@given(steps=steps, soft_messages=st.integers(1, 200), soft_bytes=st.integers(1, 20000),
       hard_extra=st.integers(0, 30), min_records=st.integers(0, 20),
       min_lifetime=st.sampled_from([0.0, 1.0, 5.0]),
       interval=st.sampled_from([2.0, 7.0, 600.0]),
       backend=st.sampled_from(["c", "pure"]))
def test_skipping_the_check_rekeys_at_the_same_seals(steps, soft_messages, soft_bytes,
                                                     hard_extra, min_records, min_lifetime,
                                                     interval, backend):
    limits = RecordLimits(soft_messages=soft_messages, soft_bytes=soft_bytes,
                          hard_messages=soft_messages + hard_extra, hard_bytes=1 << 40)
    policy = {"rekey_interval": interval, "min_epoch_records": min_records,
              "min_epoch_lifetime": min_lifetime}
    clock = Clock()
    quiet = _session(backend, limits, clock, **policy)
    checked = _session(backend, limits, clock, **policy)
    for size, step in steps:
        clock.now += step
        checked._quiet_records = 0  # check before every seal
        outcomes = []
        for session in (quiet, checked):
            try:
                session.seal(bytes(size))
                outcomes.append(None)
            except KeyExhausted:
                outcomes.append("exhausted")
        assert outcomes[0] == outcomes[1]
        assert quiet.counters.rekeys == checked.counters.rekeys
        assert quiet.send_epoch == checked.send_epoch
        assert quiet.send_key_changes == quiet.counters.rekeys


def test_an_outside_rekey_ends_the_quiet_region():
    clock = Clock()
    session = _session("c", RecordLimits(soft_messages=5, hard_messages=6), clock,
                       rekey_interval=600.0, min_epoch_records=0)
    for _ in range(3):
        session.seal(b"x")
    session.rekey()  # resets the epoch's counts: the bounds must be recomputed
    for _ in range(4):
        session.seal(b"x")
    assert session.counters.rekeys == 1 and session.record_layer.messages_sealed == 4
    session.seal(b"x")  # the 5th of this epoch reaches the soft limit
    session.seal(b"x")
    assert session.counters.rekeys == 2
