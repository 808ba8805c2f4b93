"""Transport independence: records survive reordering, duplication and
several paths; every message arrives exactly once; a relay sees only
headers and ciphertext."""

from __future__ import annotations

import collections
import itertools
import os

import pytest

from rolewire import errors
from rolewire.record import Suite
from rolewire.session import Session
from rolewire.transport import MemoryLink, Path, Relay, ShufflingChannel, parse_header

MARKER = b"TOP-SECRET-PAYLOAD"
PATHS = (Path(latency=0, jitter=40), Path(latency=20, jitter=300), Path(latency=5, jitter=1000))


def session_pair(suite: Suite, *, window: int | None = None) -> tuple[Session, Session]:
    """Two ends of one session with crosswise direction keys."""
    k1, k2 = os.urandom(32), os.urandom(32)
    iv1, iv2 = os.urandom(suite.iv_size), os.urandom(suite.iv_size)
    a = Session.from_keys(suite=suite, send_key=k1, send_iv=iv1, recv_key=k2, recv_iv=iv2,
                          peer_roles={"b"}, is_initiator=True, window=window)
    b = Session.from_keys(suite=suite, send_key=k2, send_iv=iv2, recv_key=k1, recv_iv=iv1,
                          peer_roles={"a"}, is_initiator=False, window=window)
    return a, b


def message(i: int, side: bytes = b"a") -> bytes:
    return side + b"%06d:" % i + MARKER + bytes((i * 7 + j) % 251 for j in range(i % 97))


def check_exactly_once(sent: list[bytes], endpoint) -> None:
    received = collections.Counter(endpoint.received)
    assert len(endpoint.received) == len(sent)
    assert received == collections.Counter(sent)


@pytest.mark.parametrize("suite", list(Suite), ids=lambda s: s.wire_name)
def test_shuffled_duplicated_multipath_exactly_once(suite):
    a, b = session_pair(suite)
    relay = Relay()
    link = MemoryLink(a, b, seed=1234, paths=PATHS, duplicate=0.1, relay=relay)
    sent_a, sent_b = [], []
    for i in range(4000):
        m = message(i)
        sent_a.append(m)
        link.a.send(m)
        if i % 3 == 0:
            r = message(i, b"b")
            sent_b.append(r)
            link.b.send(r)
        if i % 1000 == 499:
            a.rekey()  # cross an epoch boundary with records still in flight
        link.pump()
    link.settle()

    check_exactly_once(sent_a, link.b)
    check_exactly_once(sent_b, link.a)
    # Every duplicate (and nothing else) was refused, as a replay.
    assert link.a.outgoing.duplicated > 0
    assert len(link.b.rejected) == link.a.outgoing.duplicated
    assert len(link.a.rejected) == link.b.outgoing.duplicated
    assert all(isinstance(e, errors.ReplayDetected) for e in link.a.rejected + link.b.rejected)
    assert b.counters.replays_rejected == link.a.outgoing.duplicated
    assert a.counters.rekeys == 4 and b.recv_epoch == 4

    # The relay saw every record, could parse the headers, and nothing else.
    assert relay.epochs == {0, 1, 2, 3, 4}
    assert len(relay.headers) == len(sent_a) + len(sent_b)
    assert {h.suite for h in relay.headers} == {int(suite)}
    assert not relay.contains(MARKER)
    blob = b"\x00".join(relay.records)
    for m in sent_a[100::400]:
        assert m not in blob


def test_records_really_were_reordered():
    a, b = session_pair(Suite.CHACHA20_POLY1305)
    link = MemoryLink(a, b, seed=7, paths=PATHS)
    arrival = []
    for i in range(2000):
        link.a.send(message(i))
        arrival.extend(parse_header(r).counter for r in link.a.outgoing.deliver())
    arrival.extend(parse_header(r).counter for r in link.a.outgoing.drain())
    assert sorted(arrival) == list(range(2000))
    inversions = sum(1 for x, y in itertools.pairwise(arrival) if x > y)
    assert inversions > 500
    # ... but never further than the paths allow (so within the replay window).
    assert max(abs(pos - c) for pos, c in enumerate(arrival)) <= ShufflingChannel(
        paths=PATHS).max_delay


def test_batches_sealed_in_one_call_survive_shuffling():
    a, b = session_pair(Suite.AEGIS_256)
    link = MemoryLink(a, b, seed=99, paths=PATHS, duplicate=0.25)
    sent = [message(i) for i in range(3000)]
    for start in range(0, len(sent), 50):
        link.a.send_many(sent[start:start + 50])
        link.pump()
    link.settle()
    check_exactly_once(sent, link.b)
    assert link.b.replays_rejected == link.a.outgoing.duplicated


def test_late_records_below_a_small_window_are_refused_not_redelivered():
    """With delays beyond the replay window the guarantee becomes at-most-once:
    late records are refused as too old, never delivered twice."""
    a, b = session_pair(Suite.CHACHA20_POLY1305, window=128)
    link = MemoryLink(a, b, seed=5, paths=(Path(0, 2), Path(0, 600)), duplicate=0.1)
    sent = [message(i) for i in range(3000)]
    for m in sent:
        link.a.send(m)
        link.pump()
    link.settle()
    got = collections.Counter(link.b.received)
    assert max(got.values()) == 1 and set(got) <= set(sent)
    too_old = [e for e in link.b.rejected if isinstance(e, errors.RecordTooOld)]
    assert too_old and len(got) + len(link.b.rejected) == link.a.outgoing.sent + \
        link.a.outgoing.duplicated


def test_loss_gives_at_most_once():
    a, b = session_pair(Suite.CHACHA20_POLY1305)
    link = MemoryLink(a, b, seed=3, paths=PATHS, duplicate=0.1, loss=0.05)
    sent = [message(i) for i in range(2000)]
    for m in sent:
        link.a.send(m)
        link.pump()
    link.settle()
    got = collections.Counter(link.b.received)
    assert max(got.values()) == 1
    assert len(got) < len(sent) and set(got) <= set(sent)


def test_tampered_record_from_the_relay_is_refused():
    a, b = session_pair(Suite.CHACHA20_POLY1305)
    record = a.seal(message(1))
    header = parse_header(record)
    assert (header.version, header.epoch, header.counter) == (1, 0, 0)
    forged = bytearray(record)
    forged[-1] ^= 1
    with pytest.raises(errors.AuthenticationFailed):
        b.open(bytes(forged))
    # Changing the clear header also breaks the tag (it is the AEAD's AD).
    moved = bytearray(record)
    moved[13] ^= 1
    with pytest.raises(errors.AuthenticationFailed):
        b.open(bytes(moved))
    assert b.open(record) == message(1)
    with pytest.raises(errors.MalformedRecord):
        parse_header(b"\x01" * 13)


def test_channel_parameters_are_checked():
    with pytest.raises(ValueError):
        ShufflingChannel(paths=())
    with pytest.raises(ValueError):
        ShufflingChannel(duplicate=1.5)


def test_handshake_session_over_shuffling_transport():
    """The same, with sessions from a real handshake run over the memory link."""
    from rolewire import handshake
    from rolewire.roles.key import KeyRole

    key = os.urandom(32)
    cfg = handshake.HandshakeConfig(roles=[KeyRole("svc", key)])
    init, resp = handshake.Initiator(cfg), handshake.Responder(cfg)
    events = {}
    to_resp = init.data_to_send()
    while len(events) < 2:
        resp.receive_data(to_resp)
        ev = resp.next_event()
        if isinstance(ev, handshake.HandshakeComplete):
            events["r"] = ev
        to_init = resp.data_to_send()
        if to_init:
            init.receive_data(to_init)
        if "i" not in events:
            ev = init.next_event()
            if isinstance(ev, handshake.HandshakeComplete):
                events["i"] = ev
        to_resp = init.data_to_send()
    a, b = events["i"].session, events["r"].session
    assert a.transcript_hash == b.transcript_hash and b.peer_roles == {"svc"}
    relay = Relay()
    link = MemoryLink(a, b, seed=11, paths=PATHS, duplicate=0.2, relay=relay)
    sent = [message(i) for i in range(2000)]
    for i, m in enumerate(sent):
        link.a.send(m)
        if i == 1000:
            a.rekey()
        link.pump()
    link.settle()
    check_exactly_once(sent, link.b)
    assert all(isinstance(e, errors.ReplayDetected) for e in link.b.rejected)
    assert not relay.contains(MARKER)
