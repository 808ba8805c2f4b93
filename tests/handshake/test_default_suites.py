"""Default suites: X25519+ML-KEM-768 proposed first, AEGIS-256 records where
the CPU has AES instructions (ChaCha20-Poly1305 otherwise), the paper's X448
suites still offered and interoperable without a retry."""

from __future__ import annotations

import os

import pytest
from hs_util import pump

from rolewire.handshake import DEFAULT_SUITES, HandshakeConfig, HandshakeSuite, Initiator, Responder
from rolewire.handshake.suites import KexGroup, cpu_has_aes, default_suites
from rolewire.roles import KeyRole

KEY = os.urandom(32)
S = HandshakeSuite


def test_default_order_with_and_without_aes() -> None:
    assert default_suites(True) == (
        S.X25519_MLKEM768_BLAKE2B_AEGIS256, S.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305,
        S.X448_MLKEM768_BLAKE2B_AEGIS256, S.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305)
    assert default_suites(False) == (
        S.X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305, S.X25519_MLKEM768_BLAKE2B_AEGIS256,
        S.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305, S.X448_MLKEM768_BLAKE2B_AEGIS256)
    for has_aes in (True, False):
        assert set(default_suites(has_aes)) == set(HandshakeSuite)  # X448 still offered
    assert DEFAULT_SUITES == default_suites(cpu_has_aes())
    assert HandshakeConfig(roles=[]).suites == DEFAULT_SUITES


def _handshake(i_suites: tuple[HandshakeSuite, ...], r_suites: tuple[HandshakeSuite, ...]):
    roles = [KeyRole("k", KEY)]
    out = pump(Initiator(HandshakeConfig(roles=roles, suites=i_suites)),
               Responder(HandshakeConfig(roles=roles, suites=r_suites)))
    assert out.ok, (out.initiator, out.responder)
    a, b = out.initiator.session, out.responder.session
    assert b.open(a.seal(b"ping")) == b"ping"
    return out


@pytest.mark.parametrize("has_aes", [True, False])
def test_defaults_on_both_sides_pick_the_first_suite(has_aes: bool) -> None:
    suites = default_suites(has_aes)
    out = _handshake(suites, suites)
    assert out.initiator.suite is suites[0] and suites[0].group is KexGroup.X25519_MLKEM768
    assert len(out.flights) == 3  # no HelloRetry


@pytest.mark.parametrize("x448_record", [S.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305,
                                         S.X448_MLKEM768_BLAKE2B_AEGIS256])
def test_a_peer_preferring_x448_connects_without_retry(x448_record: HandshakeSuite) -> None:
    # An initiator configured with the paper's suites (X448 share) against a
    # responder with the defaults: the responder picks an X448 suite.
    out = _handshake((x448_record,), DEFAULT_SUITES)
    assert out.initiator.suite is x448_record and len(out.flights) == 3
    # The other way round: a responder that only takes X448 asks once.
    out = _handshake(DEFAULT_SUITES, (x448_record,))
    assert out.initiator.suite is x448_record and len(out.flights) == 5
