"""Known-answer tests. AEAD vectors run through the exact libsodium function
pointers the C record layer calls (rw_aead_seal/open) and through the
libraries the pure twin uses; records are checked against the format
written out from docs/PROTOCOL.md, independently of both backends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from rolewire import errors
from rolewire.record import RecordLayer, Suite
from rolewire.record._c import aead_open, aead_seal

VECTORS = Path(__file__).parent / "vectors"


def load(name):
    return json.loads((VECTORS / name).read_text())["vectors"]


CHACHA = load("chacha20poly1305.json")
AEGIS = load("aegis256.json")
BLAKE2B = load("blake2b.json")

h = bytes.fromhex


def test_vector_counts():
    assert CHACHA[0]["id"] == "rfc8439-2.8.2"
    assert len(CHACHA) >= 40 and len([v for v in AEGIS if v["valid"]]) >= 5


@pytest.mark.parametrize("v", CHACHA, ids=[v["id"] for v in CHACHA])
def test_chacha20poly1305_native(v):
    key, nonce, aad = h(v["key"]), h(v["nonce"]), h(v["aad"])
    sealed = h(v["ciphertext"]) + h(v["tag"])
    if v["valid"]:
        assert aead_seal(Suite.CHACHA20_POLY1305, key, nonce, aad, h(v["plaintext"])) == sealed
        assert aead_open(Suite.CHACHA20_POLY1305, key, nonce, aad, sealed) == h(v["plaintext"])
    else:
        with pytest.raises(errors.AuthenticationFailed):
            aead_open(Suite.CHACHA20_POLY1305, key, nonce, aad, sealed)


@pytest.mark.parametrize("v", CHACHA, ids=[v["id"] for v in CHACHA])
def test_chacha20poly1305_pure(v):
    aead = ChaCha20Poly1305(h(v["key"]))
    sealed = h(v["ciphertext"]) + h(v["tag"])
    if v["valid"]:
        assert aead.encrypt(h(v["nonce"]), h(v["plaintext"]), h(v["aad"])) == sealed
    else:
        with pytest.raises(InvalidTag):
            aead.decrypt(h(v["nonce"]), sealed, h(v["aad"]))


@pytest.mark.parametrize("v", AEGIS, ids=[v["id"] for v in AEGIS])
def test_aegis256(v):
    key, nonce, ad = h(v["key"]), h(v["nonce"]), h(v["ad"])
    sealed = h(v["ct"]) + h(v["tag"])
    if v["valid"]:
        msg = h(v["msg"])
        assert aead_seal(Suite.AEGIS_256, key, nonce, ad, msg) == sealed
        assert aead_open(Suite.AEGIS_256, key, nonce, ad, sealed) == msg
        assert sodium.crypto_aead_aegis256_encrypt(msg, ad, nonce, key) == sealed
    else:
        with pytest.raises(errors.AuthenticationFailed):
            aead_open(Suite.AEGIS_256, key, nonce, ad, sealed)
        with pytest.raises(CryptoError):
            sodium.crypto_aead_aegis256_decrypt(sealed, ad, nonce, key)


@pytest.mark.parametrize("v", BLAKE2B, ids=[v["id"] for v in BLAKE2B])
def test_blake2b_keyed(v):
    digest = h(v["digest"])
    assert hashlib.blake2b(h(v["input"]), key=h(v["key"]), digest_size=len(digest)).digest() == digest


# -- the record format, written out from the spec -----------------------------

def spec_seal(suite, key, iv, epoch, counter, plaintext):
    header = bytes([1, suite]) + epoch.to_bytes(4, "big") + counter.to_bytes(8, "big")
    nonce = iv[:-8] + (int.from_bytes(iv[-8:], "big") ^ counter).to_bytes(8, "big")
    if suite == Suite.CHACHA20_POLY1305:
        body = ChaCha20Poly1305(key).encrypt(nonce, plaintext, header)
    else:
        body = sodium.crypto_aead_aegis256_encrypt(plaintext, header, nonce, key)
    return header + body


def spec_ratchet(key, iv, epoch):
    okm = hashlib.blake2b(iv + (epoch + 1).to_bytes(4, "big"), digest_size=64, key=key,
                          salt=bytes(16), person=b"rolewire kupdate").digest()
    return okm[:32], okm[32:32 + len(iv)]


@pytest.mark.parametrize("backend", ["c", "pure"])
@pytest.mark.parametrize("suite", list(Suite), ids=lambda s: s.wire_name)
def test_records_follow_the_spec(backend, suite):
    key, iv = bytes(range(32)), bytes(range(100, 100 + suite.iv_size))
    layer = RecordLayer(suite, send_key=key, send_iv=iv, recv_key=bytes(32),
                        recv_iv=bytes(suite.iv_size), epoch=7, backend=backend)
    assert layer.seal(b"first") == spec_seal(suite, key, iv, 7, 0, b"first")
    assert layer.seal(b"second") == spec_seal(suite, key, iv, 7, 1, b"second")
    layer.update_send_key()
    key8, iv8 = spec_ratchet(key, iv, 7)
    assert layer.seal(b"epoch 8") == spec_seal(suite, key8, iv8, 8, 0, b"epoch 8")
    layer.update_send_key()
    key9, iv9 = spec_ratchet(key8, iv8, 8)
    assert layer.seal(b"") == spec_seal(suite, key9, iv9, 9, 0, b"")


def test_record_golden_bytes():
    """Frozen bytes: any change to the wire format must change this test
    (and docs/PROTOCOL.md) on purpose."""
    layer = RecordLayer(Suite.CHACHA20_POLY1305, send_key=bytes(32), send_iv=bytes(12),
                        recv_key=bytes(32), recv_iv=bytes(12), backend="c")
    assert layer.seal(b"rolewire").hex() == GOLDEN_CHACHA


GOLDEN_CHACHA = "0101000000000000000000000000ed688bdb22384a1f14d0bac205e23931f4ef05a451daf527"
