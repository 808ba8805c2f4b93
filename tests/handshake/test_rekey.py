"""Rekeying of a session: soft limit and time limit (enforced on send), the
one-way ratchet, reordering across epoch boundaries and the grace period."""

from __future__ import annotations

import os
import random

import pytest
from hs_util import FakeClock, pump

from rolewire import errors
from rolewire.handshake import HandshakeConfig, Initiator, Responder
from rolewire.record import RecordLimits
from rolewire.roles import KeyRole

KEY = os.urandom(32)


def sessions(clock=None, **kw):
    extra = {"clock": clock} if clock else {}
    cfg = HandshakeConfig(roles=[KeyRole("k", KEY)], **extra, **kw)
    out = pump(Initiator(cfg), Responder(cfg))
    assert out.ok
    return out.initiator.session, out.responder.session


def test_time_limit_rekeys_on_send_not_lazily():
    clock = FakeClock()
    a, b = sessions(clock, rekey_interval=600)
    assert b.open(a.seal(b"0")) == b"0" and a.send_epoch == 0
    clock.now += 599
    a.seal(b"1")
    assert a.send_epoch == 0
    clock.now += 1
    record = a.seal(b"2")  # the very first send after the interval uses a new key
    assert a.send_epoch == 1 and record[2:6] == (1).to_bytes(4, "big")
    assert b.open(record) == b"2" and b.recv_epoch == 1
    assert a.counters.rekeys == 1


def test_soft_limit_rekeys():
    limits = RecordLimits(soft_messages=100, hard_messages=1000)
    a, b = sessions(record_limits=limits)
    records = [a.seal(b"%d" % i) for i in range(350)]
    assert a.send_epoch == 3
    assert [b.open(r) for r in records] == [b"%d" % i for i in range(350)]


def test_thousands_of_records_reordered_across_epochs():
    limits = RecordLimits(soft_messages=500, hard_messages=10_000)
    a, b = sessions(record_limits=limits, grace_period=3600)
    rng = random.Random(1234)
    messages = [os.urandom(8) + i.to_bytes(4, "big") for i in range(5000)]
    records = [a.seal(m) for m in messages]
    assert a.send_epoch == 9
    # Reorder locally (each record moves at most ~200 places, so within the
    # replay window and at most one epoch back) and duplicate 10 %.
    keyed = [(i + rng.uniform(0, 200), r) for i, r in enumerate(records)]
    keyed += [(i + rng.uniform(0, 200), records[i]) for i in rng.sample(range(5000), 500)]
    keyed.sort(key=lambda item: item[0])
    got, replays = [], 0
    for _, record in keyed:
        try:
            got.append(b.open(record))
        except errors.ReplayDetected:
            replays += 1
    assert sorted(got) == sorted(messages)  # nothing lost, nothing twice
    assert replays == 500
    assert b.counters.replays_rejected == 500


def test_previous_epoch_closes_after_the_grace_period(monkeypatch):
    a, b = sessions(grace_period=30)
    late = a.seal(b"old epoch")
    a.rekey()
    assert b.open(a.seal(b"new epoch")) == b"new epoch"
    # within the grace period the late record still opens
    assert b.open(late) == b"old epoch"
    late2 = None
    a2, b2 = sessions(grace_period=30)
    late2 = a2.seal(b"old")
    a2.rekey()
    b2.open(a2.seal(b"new"))
    now = [b2.record_layer.recv_epoch_advanced_at + 31]
    monkeypatch.setattr("rolewire.session.time.monotonic", lambda: now[0])
    with pytest.raises((errors.UnknownEpoch, errors.RecordTooOld)):
        b2.open(late2)


def test_ratchet_is_one_way_and_directional():
    a, b = sessions()
    r0 = a.seal(b"x")
    a.rekey()
    r1 = a.seal(b"y")
    assert r0[2:6] != r1[2:6]
    assert b.open(r1) == b"y" and b.open(r0) == b"x"
    # b's own sending epoch is independent
    assert b.send_epoch == 0 and a.open(b.seal(b"z")) == b"z"


def test_close_wipes_and_refuses():
    a, _b = sessions()
    a.close()
    with pytest.raises(errors.RecordLayerClosed):
        a.seal(b"x")
