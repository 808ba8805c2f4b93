"""The handshake cipher: libsodium's ChaCha20-Poly1305, byte for byte the
RFC 8439 AEAD that ``cryptography`` implements (the one the handshake used
before, and the one the protocol vectors were made with), and a typed
failure for every tampered, truncated or misdirected message."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

import rolewire.handshake
import rolewire.roles
from rolewire.errors import HandshakeDecryptError, RolewireError
from rolewire.handshake.schedule import HandshakeCipher, SymmetricState

KEYS = st.binary(min_size=32, max_size=32)
NONCES = st.binary(min_size=12, max_size=12)


@given(KEYS, NONCES, st.binary(max_size=3000), st.binary(max_size=200))
def test_same_bytes_as_cryptography(key, nonce, plaintext, ad):
    ours = HandshakeCipher(key)
    theirs = ChaCha20Poly1305(key)
    ciphertext = ours.encrypt(nonce, plaintext, ad)
    assert ciphertext == theirs.encrypt(nonce, plaintext, ad)
    assert ours.decrypt(nonce, ciphertext, ad) == plaintext


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_any_bytes_like_input(kind):
    """What ``cryptography``'s cipher took, this one takes too (cffi passes
    only ``bytes`` as a pointer)."""
    key, nonce = os.urandom(32), os.urandom(12)
    cipher = HandshakeCipher(key)
    ciphertext = cipher.encrypt(kind(nonce), kind(b"field"), kind(b"ad"))
    assert ciphertext == ChaCha20Poly1305(key).encrypt(nonce, b"field", b"ad")
    assert cipher.decrypt(kind(nonce), kind(ciphertext), kind(b"ad")) == b"field"


def test_rfc8439_aead_vector():
    """RFC 8439, section 2.8.2."""
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    ad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you "
                 b"only one tip for the future, sunscreen would be it.")
    ciphertext = HandshakeCipher(key).encrypt(nonce, plaintext, ad)
    assert ciphertext[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"
    assert ciphertext[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"


@given(KEYS, NONCES, st.binary(max_size=300), st.binary(max_size=50), st.data())
def test_any_flipped_bit_fails_typed(key, nonce, plaintext, ad, data):
    cipher = HandshakeCipher(key)
    ciphertext = bytearray(cipher.encrypt(nonce, plaintext, ad))
    bit = data.draw(st.integers(0, 8 * len(ciphertext) - 1))
    ciphertext[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HandshakeDecryptError):
        cipher.decrypt(nonce, bytes(ciphertext), ad)


def test_wrong_nonce_ad_or_key_fails_typed():
    key, nonce = os.urandom(32), os.urandom(12)
    ciphertext = HandshakeCipher(key).encrypt(nonce, b"hello", b"transcript")
    with pytest.raises(HandshakeDecryptError):
        HandshakeCipher(key).decrypt(os.urandom(12), ciphertext, b"transcript")
    with pytest.raises(HandshakeDecryptError):
        HandshakeCipher(key).decrypt(nonce, ciphertext, b"other transcript")
    with pytest.raises(HandshakeDecryptError):
        HandshakeCipher(os.urandom(32)).decrypt(nonce, ciphertext, b"transcript")


@pytest.mark.parametrize("size", [0, 1, 15, 16])
def test_truncated_ciphertext_fails_typed(size):
    cipher = HandshakeCipher(os.urandom(32))
    ciphertext = cipher.encrypt(bytes(12), b"", b"")
    assert len(ciphertext) == 16
    with pytest.raises(HandshakeDecryptError) as info:
        cipher.decrypt(bytes(12), ciphertext[:size] if size < 16 else os.urandom(16), b"")
    assert isinstance(info.value, RolewireError)


def test_empty_plaintext_round_trips():
    cipher = HandshakeCipher(os.urandom(32))
    assert cipher.decrypt(bytes(12), cipher.encrypt(bytes(12), b"", b"ad"), b"ad") == b""


def test_key_or_nonce_of_wrong_size_refused():
    with pytest.raises(ValueError):
        HandshakeCipher(bytes(31))
    cipher = HandshakeCipher(bytes(32))
    ciphertext = cipher.encrypt(bytes(12), b"x", b"")
    for nonce in (b"", bytes(11), bytes(13)):
        with pytest.raises(ValueError):
            cipher.encrypt(nonce, b"x", b"")
        with pytest.raises(ValueError):
            cipher.decrypt(nonce, ciphertext, b"")


def test_symmetric_state_messages_decrypt_on_the_peer_and_not_twice():
    """Both sides' states after the same mix_key: the peer opens the
    message once; the same bytes again (the next nonce) fail typed."""
    sender, receiver = SymmetricState(), SymmetricState()
    for state in (sender, receiver):
        state.mix_key(b"shared input")
    ciphertext = sender.encrypt_and_hash(b"role proof")
    assert receiver.decrypt_and_hash(ciphertext) == b"role proof"
    assert sender.h == receiver.h
    with pytest.raises(HandshakeDecryptError):
        receiver.decrypt_and_hash(ciphertext)


def test_the_handshake_does_not_import_openssls_aeads():
    """A guard for the reason the handshake cipher is libsodium's: one call
    of OpenSSL's ChaCha20-Poly1305 left ML-KEM at half speed on an AVX-512
    CPU (see HandshakeCipher). No timing here: the handshake and role
    modules import no AEAD from ``cryptography``."""
    for package in (rolewire.handshake, rolewire.roles):
        for path in Path(package.__file__).parent.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom):
                    assert not (node.module or "").startswith(
                        "cryptography.hazmat.primitives.ciphers"), path
                elif isinstance(node, ast.Import):
                    assert not any(alias.name.startswith("cryptography.hazmat.primitives.ciphers")
                                   for alias in node.names), path
