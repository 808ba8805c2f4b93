"""Robustness limits: every documented bound is enforced with a typed error,
at the bound and one past it, and a length field that claims a huge size
never makes rolewire allocate that much.

Bounds covered: record plaintext (configured and protocol maximum), batch
records, replay window size, handshake message size (frame, parser, the
handshake's receive buffer), certificate chain length, roles per process and
per message, role name length, suites per Hello.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from rolewire import errors
from rolewire.handshake import HandshakeConfig, HandshakeFailed, Responder
from rolewire.handshake import messages as hm
from rolewire.record import (
    HEADER_SIZE,
    PROTOCOL_MAX_PLAINTEXT,
    WINDOW_MAX,
    WINDOW_MIN,
    RecordLimits,
    Suite,
)
from rolewire.roles.base import MAX_ROLE_NAME, MAX_ROLES, RoleSet
from rolewire.roles.key import KeyRole
from tests.conftest import make_pair

MiB = 1 << 20
#: The most a parser may allocate (Python heap) while rejecting a length field
#: that claims up to 16 MiB: proportional to the input, never to the claim.
ALLOC_BUDGET = 256 * 1024


@contextmanager
def peak_allocation() -> Iterator[Callable[[], int]]:
    """Peak Python-heap allocation (bytes) inside the block."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    peak = [0]
    try:
        yield lambda: peak[0]
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# --- record layer --------------------------------------------------------------


def test_default_max_plaintext_is_one_mib():
    assert RecordLimits().max_plaintext == MiB
    assert PROTOCOL_MAX_PLAINTEXT == 1 << 24


@pytest.mark.parametrize("value", [0, -1, PROTOCOL_MAX_PLAINTEXT + 1, 1 << 32])
def test_max_plaintext_outside_protocol_range_refused(value):
    with pytest.raises(errors.ConfigurationError):
        RecordLimits(max_plaintext=value)


def test_seal_at_and_over_default_limit(suite, backend):
    alice, bob = make_pair(suite, backend)
    record = alice.seal(bytes(MiB))
    assert len(record) == MiB + suite.overhead
    assert bob.open(record) == bytes(MiB)
    with pytest.raises(errors.RecordTooLarge):
        alice.seal(bytes(MiB + 1))
    assert alice.messages_sealed == 1  # the refused message used no counter


def test_protocol_maximum_record(backend):
    limits = RecordLimits(max_plaintext=PROTOCOL_MAX_PLAINTEXT)
    alice, bob = make_pair(Suite.CHACHA20_POLY1305, backend, limits=limits)
    assert len(bob.open(alice.seal(bytes(PROTOCOL_MAX_PLAINTEXT)))) == PROTOCOL_MAX_PLAINTEXT
    with pytest.raises(errors.RecordTooLarge):
        alice.seal(bytes(PROTOCOL_MAX_PLAINTEXT + 1))


def test_oversize_record_refused_on_open_before_decrypting(suite, backend):
    small = RecordLimits(max_plaintext=1000)
    _, bob = make_pair(suite, backend, limits=small)
    big_alice, _ = make_pair(suite, backend)
    at_limit = big_alice.seal(bytes(1000))
    over = big_alice.seal(bytes(1001))
    with pytest.raises(errors.RecordTooLarge):
        bob.open(over)
    assert bob.open(at_limit) == bytes(1000)
    # RecordTooLarge is a MalformedRecord: callers dropping malformed records
    # drop these too.
    assert issubclass(errors.RecordTooLarge, errors.MalformedRecord)


def test_oversize_garbage_record_is_typed_error(backend):
    """2 MiB of garbage behind a valid-looking header: refused as too large
    (length is checked before anything else is looked at), not decrypted."""
    _, bob = make_pair(Suite.CHACHA20_POLY1305, backend)
    record = b"\x01\x01" + bytes(12) + bytes(2 * MiB)
    with pytest.raises(errors.RecordTooLarge):
        bob.open(record)


def test_seal_batch_with_one_oversize_message_seals_nothing(backend):
    alice, _ = make_pair(Suite.AEGIS_256, backend, limits=RecordLimits(max_plaintext=64))
    with pytest.raises(errors.RecordTooLarge):
        alice.seal_many([bytes(64), bytes(10), bytes(65)])
    assert alice.messages_sealed == 0
    assert len(alice.seal_many([bytes(64)] * 100)) == 100


def test_open_batch_reports_oversize_per_record(backend):
    big_alice, _ = make_pair(Suite.CHACHA20_POLY1305, backend)
    _, bob = make_pair(Suite.CHACHA20_POLY1305, backend, limits=RecordLimits(max_plaintext=64))
    records = big_alice.seal_many([bytes(64), bytes(65), bytes(1)])
    results = bob.open_many(records)
    assert results[0] == bytes(64) and results[2] == bytes(1)
    assert isinstance(results[1], errors.RecordTooLarge)


def test_batch_message_count_bounded_by_hard_limit(backend):
    limits = RecordLimits(soft_messages=5, hard_messages=10)
    alice, _ = make_pair(Suite.CHACHA20_POLY1305, backend, limits=limits)
    with pytest.raises(errors.KeyExhausted):
        alice.seal_many([b"x"] * 11)
    assert alice.messages_sealed == 0
    assert len(alice.seal_many([b"x"] * 10)) == 10
    with pytest.raises(errors.KeyExhausted):
        alice.seal(b"x")


def test_batch_byte_budget_bounded_by_hard_limit(backend):
    limits = RecordLimits(soft_bytes=100, hard_bytes=1000)
    alice, _ = make_pair(Suite.CHACHA20_POLY1305, backend, limits=limits)
    with pytest.raises(errors.KeyExhausted):
        alice.seal_many([bytes(500), bytes(501)])
    assert alice.bytes_sealed == 0
    alice.seal_many([bytes(500), bytes(500)])
    with pytest.raises(errors.KeyExhausted):
        alice.seal(b"x")


def test_short_records_are_malformed(suite, backend):
    _, bob = make_pair(suite, backend)
    for size in (0, 1, HEADER_SIZE, suite.overhead - 1):
        with pytest.raises(errors.MalformedRecord):
            bob.open(b"\x01" + bytes((suite,)) + bytes(max(size - 2, 0)))


@pytest.mark.parametrize("window", [WINDOW_MIN, 1024, WINDOW_MAX])
def test_window_bounds_accepted(backend, window):
    make_pair(Suite.CHACHA20_POLY1305, backend, window=window)


@pytest.mark.parametrize("window", [0, WINDOW_MIN - 64, WINDOW_MIN + 1, WINDOW_MAX + 64, 1 << 32])
def test_window_out_of_bounds_refused(backend, window):
    with pytest.raises(errors.ConfigurationError):
        make_pair(Suite.CHACHA20_POLY1305, backend, window=window)


# --- handshake messages ---------------------------------------------------------


def test_frame_at_and_over_max_message_size():
    body = bytes(hm.MAX_MESSAGE_SIZE - hm.FRAME_HEADER_SIZE)
    framed = hm.frame(hm.MsgType.INITIATOR_AUTH, body)
    assert len(framed) == hm.MAX_MESSAGE_SIZE
    assert hm.parse_frame_header(framed[:4]) == (hm.MsgType.INITIATOR_AUTH, len(body))
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.frame(hm.MsgType.INITIATOR_AUTH, body + b"x")


@pytest.mark.parametrize("claimed", [hm.MAX_MESSAGE_SIZE - 3, 1 << 20, (1 << 24) - 1])
def test_frame_header_claiming_too_much_refused(claimed):
    header = bytes((hm.MsgType.HELLO,)) + claimed.to_bytes(3, "big")
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.parse_frame_header(header)
    # A larger configured bound admits what the default refuses.
    assert hm.parse_frame_header(header, max_size=4 + (1 << 24)) == (1, claimed)


def test_frame_header_bound_is_configurable():
    header = b"\x04" + (5000).to_bytes(3, "big")
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.parse_frame_header(header, max_size=4096)
    assert hm.parse_frame_header(header, max_size=5004) == (4, 5000)


@pytest.mark.parametrize(
    ("parse", "data"),
    [
        (lambda d: hm.parse_message(hm.MsgType.INITIATOR_AUTH, d), b"\xff\xff\xff" + b"x" * 8),
        (lambda d: hm.parse_message(hm.MsgType.RESPONDER_AUTH, d), b"\xff\xff\xff" + b"x" * 8),
        (lambda d: hm.parse_message(hm.MsgType.RESPONDER_HELLO, d),
         b"\x01" + bytes(32) + b"\x02" + bytes(32 + 1088) + b"\xff\xff\xff" + b"x"),
        (hm.parse_chain, b"\x01\xff\xff\xff" + b"x" * 8),
        (hm.parse_role_entries, b"\x01\x00\x01\xff\xff\xff" + b"x" * 8),
        (hm.parse_proofs, b"\x01\x00\xff\xff" + b"x" * 8),
        (hm.parse_role_data, b"\x00\x01\xff\xff" + b"x" * 8),
        (lambda d: hm.parse_message(hm.MsgType.HELLO, d),
         b"\x01" + bytes(32) + b"\x01\x01\x01\xff\xff" + b"x" * 8),
    ],
    ids=["initiator_auth", "responder_auth", "responder_hello", "chain", "role_entries",
         "proofs", "role_data", "hello_share"],
)
def test_length_field_claiming_huge_size_allocates_nothing(parse, data):
    with peak_allocation() as peak, pytest.raises(errors.MalformedHandshakeMessage):
        parse(data)
    assert peak() < ALLOC_BUDGET


def test_handshake_refuses_huge_frame_without_buffering_it():
    """A peer announcing a 16 MiB message is refused from the 4 header bytes;
    the handshake neither waits for nor allocates the body."""
    responder = Responder(HandshakeConfig(roles=[KeyRole("svc", bytes(32))]))
    with peak_allocation() as peak:
        responder.receive_data(b"\x01\xff\xff\xff" + b"x" * 100)
        event = responder.next_event()
    assert isinstance(event, HandshakeFailed)
    assert isinstance(event.error, errors.HandshakeMessageTooLarge)
    assert peak() < ALLOC_BUDGET


def test_handshake_receive_buffer_is_bounded():
    """Unprocessed input beyond two maximum-size messages fails the handshake
    (a peer cannot make us buffer without bound)."""
    config = HandshakeConfig(roles=[KeyRole("svc", bytes(32))], max_message_size=4096)
    responder = Responder(config)
    # A header announcing a message just under the bound, then a trickle.
    responder.receive_data(b"\x01" + (4092).to_bytes(3, "big"))
    for _ in range(3):
        responder.receive_data(bytes(4096))
    event = responder.next_event()
    assert isinstance(event, HandshakeFailed)
    assert isinstance(event.error, errors.MalformedHandshakeMessage)


@pytest.mark.parametrize("value", [4095, 4 + (1 << 24)])
def test_max_message_size_config_range(value):
    with pytest.raises(errors.ConfigurationError):
        HandshakeConfig(max_message_size=value)


# --- chain length --------------------------------------------------------------------


def test_chain_of_max_length_accepted():
    chain = tuple(bytes((i + 1,)) * 10 for i in range(hm.MAX_CHAIN))
    assert hm.MAX_CHAIN == 8
    assert hm.parse_chain(hm.encode_chain(chain)) == chain


def test_chain_over_max_length_refused():
    nine = b"\x09" + b"".join(b"\x00\x00\x01" + bytes((i,)) for i in range(9))
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.parse_chain(nine)
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.encode_chain(tuple(b"c" for _ in range(9)))
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.encode_chain(())
    with pytest.raises(errors.MalformedHandshakeMessage):
        hm.parse_chain(b"\x00")


# --- roles ------------------------------------------------------------------------------


def _key_roles(n: int) -> list[KeyRole]:
    return [KeyRole(f"role-{i}", bytes(32)) for i in range(n)]


def test_role_set_of_max_size_accepted():
    assert MAX_ROLES == 64
    assert len(RoleSet(_key_roles(MAX_ROLES))) == MAX_ROLES


def test_role_set_over_max_size_refused():
    with pytest.raises(errors.ConfigurationError):
        RoleSet(_key_roles(MAX_ROLES + 1))
    with pytest.raises(errors.ConfigurationError):
        HandshakeConfig(roles=_key_roles(MAX_ROLES + 1))


def test_role_name_length_bound():
    KeyRole("r" * MAX_ROLE_NAME, bytes(32))
    with pytest.raises(errors.ConfigurationError):
        KeyRole("r" * (MAX_ROLE_NAME + 1), bytes(32))
    # The bound is on UTF-8 bytes, not characters.
    with pytest.raises(errors.ConfigurationError):
        KeyRole("é" * (MAX_ROLE_NAME // 2 + 1), bytes(32))


def _hint(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(2, "big"), digest_size=hm.HINT_SIZE).digest()


def _hello(n_offers: int, n_suites: int = 1) -> hm.Hello:
    hints = tuple(_hint(i) for i in range(n_offers))
    return hm.Hello(2, bytes(32), tuple(range(1, n_suites + 1)), 1, bytes(8), hints)


def test_roles_per_message_bounds():
    body = _hello(MAX_ROLES).encode()[4:]
    assert len(hm.parse_message(hm.MsgType.HELLO, body).hints) == MAX_ROLES
    with pytest.raises(errors.HandshakeMessageTooLarge):
        _hello(MAX_ROLES + 1).encode()
    too_many = body[:-(1 + hm.HINT_SIZE * MAX_ROLES + 2)]  # hints, slots, cookie
    too_many += bytes((MAX_ROLES + 1,)) + b"".join(_hint(i) for i in range(MAX_ROLES + 1))
    too_many += b"\x00\x00"
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.parse_message(hm.MsgType.HELLO, too_many)
    slots = hm.Hello(2, bytes(32), (1,), 1, bytes(8), (), (bytes(192),) * hm.MAX_PASSWORD_SLOTS)
    assert len(hm.parse_message(hm.MsgType.HELLO, slots.encode()[4:]).slots) == 8
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.Hello(2, bytes(32), (1,), 1, bytes(8), (), (bytes(192),) * 9).encode()


def test_role_entries_and_proofs_bounds():
    entries = [hm.RoleEntry(i, 1, b"") for i in range(MAX_ROLES)]
    assert len(hm.parse_role_entries(hm.encode_role_entries(entries))) == MAX_ROLES
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.encode_role_entries([*entries, hm.RoleEntry(MAX_ROLES, 1, b"")])
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.parse_role_entries(bytes((MAX_ROLES + 1,)) + b"\x00\x01\x00\x00\x00" * 65)
    proofs = [hm.ProofEntry(i, b"p") for i in range(MAX_ROLES)]
    assert len(hm.parse_proofs(hm.encode_proofs(proofs))) == MAX_ROLES
    with pytest.raises(errors.HandshakeMessageTooLarge):
        hm.parse_proofs(bytes((MAX_ROLES + 1,)) + b"\x00\x00\x01p" * 65)


def test_suites_per_hello_bound():
    assert len(hm.parse_message(hm.MsgType.HELLO, _hello(0, hm.MAX_SUITES).encode()[4:])
               .suites) == hm.MAX_SUITES
    with pytest.raises(errors.MalformedHandshakeMessage):
        _hello(0, hm.MAX_SUITES + 1).encode()
    body = b"\x01" + bytes(32) + bytes((hm.MAX_SUITES + 1,)) + bytes(range(1, 34)) + b"\x01\x00\x00\x00"
    with pytest.raises(errors.MalformedHandshakeMessage):
        hm.parse_message(hm.MsgType.HELLO, body)
