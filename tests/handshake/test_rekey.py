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


def test_previous_epoch_closes_after_the_grace_period():
    clock = FakeClock()
    a, b = sessions(clock, grace_period=30)
    late = a.seal(b"old epoch")
    late_b = a.seal(b"old epoch, later")
    a.rekey()
    assert b.open(a.seal(b"new epoch")) == b"new epoch"
    # within the grace period the late record still opens
    clock.now += 29
    assert b.open(late) == b"old epoch"
    clock.now += 1
    with pytest.raises(errors.UnknownEpoch):
        b.open(late_b)
    assert b.record_layer.past_epochs == ()


def test_each_past_epoch_has_its_own_grace_period():
    clock = FakeClock()
    a, b = sessions(clock, grace_period=30, record_past_epochs=8)
    late = {}
    for epoch in range(4):
        late[epoch] = a.seal(b"late %d" % epoch)
        b.open(a.seal(b"now"))  # b moves to this epoch
        a.rekey()
        clock.now += 10
    b.open(a.seal(b"epoch 4"))
    # epoch 0 was superseded 30 s ago (retired), epoch 1 20 s ago, 2 10 s,
    # 3 just now
    assert b.record_layer.past_epochs == (3, 2, 1)
    with pytest.raises(errors.UnknownEpoch):
        b.open(late[0])
    assert [b.open(late[e]) for e in (1, 2, 3)] == [b"late 1", b"late 2", b"late 3"]
    assert b.record_layer.past_epochs == (3, 2, 1)


def test_minimum_epoch_lifetime_defers_automatic_rekeys():
    clock = FakeClock()
    limits = RecordLimits(soft_messages=10, hard_messages=1000)
    a, _b = sessions(clock, record_limits=limits, min_epoch_records=50,
                     min_epoch_lifetime=5.0)
    for _ in range(60):
        a.seal(b"x")
    assert a.send_epoch == 0  # soft limit hit, but the epoch is too young
    clock.now += 5
    a.seal(b"x")
    assert a.send_epoch == 1
    a.rekey()  # explicit: not deferred
    assert a.send_epoch == 2


def test_hard_limit_is_never_deferred():
    limits = RecordLimits(soft_messages=2, hard_messages=3)
    a, b = sessions(record_limits=limits, min_epoch_records=100)
    records = [a.seal(b"%d" % i) for i in range(7)]
    assert a.send_epoch == 2
    assert [b.open(r) for r in records] == [b"%d" % i for i in range(7)]


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
