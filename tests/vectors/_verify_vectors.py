"""Re-verify the known-answer vector files in this directory against reference libraries.

Not a pytest module (leading underscore): run it directly,

    python tests/vectors/_verify_vectors.py          # all but the 1,000,000-step X448 loop
    python tests/vectors/_verify_vectors.py --slow   # also that loop (about 7 minutes)

It exits non-zero on the first mismatch. References: cryptography (ChaCha20-Poly1305, X448,
ML-KEM-768), PyNaCl's libsodium (AEGIS-256), hashlib (BLAKE2b), and for the replay-window data an
idealised sliding-window model written here from the semantics stated in the file's notes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(name: str) -> Any:
    with open(HERE / name, encoding="utf-8") as f:
        return json.load(f)


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def check_chacha20poly1305() -> int:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    vecs = load("chacha20poly1305.json")["vectors"]
    assert vecs[0]["id"] == "rfc8439-2.8.2", "RFC 8439 2.8.2 vector must come first"
    for v in vecs:
        key, nonce, aad = h(v["key"]), h(v["nonce"]), h(v["aad"])
        pt, sealed = h(v["plaintext"]), h(v["ciphertext"] + v["tag"])
        assert len(key) == 32 and len(nonce) == 12 and len(h(v["tag"])) == 16, v["id"]
        aead = ChaCha20Poly1305(key)
        if v["valid"]:
            assert aead.encrypt(nonce, pt, aad) == sealed, v["id"]
            assert aead.decrypt(nonce, sealed, aad) == pt, v["id"]
        else:
            try:
                aead.decrypt(nonce, sealed, aad)
            except InvalidTag:
                pass
            else:
                raise AssertionError(f"{v['id']}: invalid vector decrypted")
    return len(vecs)


def check_aegis256() -> int:
    import nacl.bindings as nb
    from nacl.exceptions import CryptoError

    assert nb.crypto_aead_aegis256_ABYTES == 32
    vecs = load("aegis256.json")["vectors"]
    for v in vecs:
        key, nonce, ad = h(v["key"]), h(v["nonce"]), h(v["ad"])
        sealed = h(v["ct"] + v["tag"])
        assert len(key) == 32 and len(nonce) == 32 and len(h(v["tag"])) == 32, v["id"]
        if v["valid"]:
            msg = h(v["msg"])
            assert nb.crypto_aead_aegis256_encrypt(msg, ad, nonce, key) == sealed, v["id"]
            assert nb.crypto_aead_aegis256_decrypt(sealed, ad, nonce, key) == msg, v["id"]
        else:
            try:
                nb.crypto_aead_aegis256_decrypt(sealed, ad, nonce, key)
            except CryptoError:
                pass
            else:
                raise AssertionError(f"{v['id']}: must-fail vector decrypted")
    return len(vecs)


def check_blake2b() -> int:
    vecs = load("blake2b.json")["vectors"]
    for v in vecs:
        d = hashlib.blake2b(h(v["input"]), key=h(v["key"]), digest_size=len(h(v["digest"])))
        assert d.hexdigest() == v["digest"], v["id"]
    return len(vecs)


def check_x448(slow: bool) -> int:
    from cryptography.hazmat.primitives.asymmetric.x448 import X448PrivateKey, X448PublicKey

    def x448(k: bytes, u: bytes) -> bytes:
        priv = X448PrivateKey.from_private_bytes(k)
        return priv.exchange(X448PublicKey.from_public_bytes(u))

    doc = load("x448.json")
    n = 0
    for v in doc["scalar_mult"]:
        assert x448(h(v["scalar"]), h(v["u"])).hex() == v["output"], v["id"]
        n += 1
    for v in doc["iterated"]:
        if v.get("slow") and not slow:
            print(f"  skipped {v['id']} (use --slow)")
            continue
        k = u = h(v["start"])
        for _ in range(v["iterations"]):
            k, u = x448(k, u), k
        assert k.hex() == v["result"], v["id"]
        n += 1
    for v in doc["diffie_hellman"]:
        for who in ("alice", "bob"):
            priv = X448PrivateKey.from_private_bytes(h(v[f"{who}_private"]))
            assert priv.public_key().public_bytes_raw().hex() == v[f"{who}_public"], v["id"]
        assert x448(h(v["alice_private"]), h(v["bob_public"])).hex() == v["shared"], v["id"]
        assert x448(h(v["bob_private"]), h(v["alice_public"])).hex() == v["shared"], v["id"]
        n += 1
    return n


MLKEM_Q = 3329


def _ek_coefficients(ek: bytes) -> list[int]:
    out: list[int] = []
    t = ek[:1152]  # 3 polynomials x 256 coefficients x 12 bits; the last 32 bytes are rho
    for i in range(0, len(t), 3):
        x = t[i] | t[i + 1] << 8 | t[i + 2] << 16
        out += [x & 0xFFF, x >> 12]
    return out


def check_mlkem768() -> int:
    from cryptography.hazmat.primitives.asymmetric import mlkem

    doc = load("mlkem768.json")
    n = 0
    for v in doc["vectors"]:
        assert v["seed64"] == v["d"] + v["z"], v["id"]
        sk = mlkem.MLKEM768PrivateKey.from_seed_bytes(h(v["seed64"]))
        assert sk.public_key().public_bytes_raw().hex() == v["ek"], v["id"]
        assert sk.decapsulate(h(v["c"])).hex() == v["K"], v["id"]
        assert sk.decapsulate(h(v["c_invalid"])).hex() == v["K_implicit_reject"], v["id"]
        pk = mlkem.MLKEM768PublicKey.from_public_bytes(h(v["ek"]))
        assert pk.public_bytes_raw().hex() == v["ek"], v["id"]
        n += 1
    for v in doc["invalid_encapsulation_keys"]["vectors"]:
        ek = h(v["ek"])
        assert len(ek) == 1184, v["id"]
        coeffs = _ek_coefficients(ek)
        over = [i for i, c in enumerate(coeffs) if c >= MLKEM_Q]
        assert over == [v["overflow_coefficient_index"]], v["id"]
        assert coeffs[over[0]] == v["overflow_coefficient_value"], v["id"]
        try:
            mlkem.MLKEM768PublicKey.from_public_bytes(ek)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{v['id']}: key with coefficient >= q was accepted")
        n += 1
    return n


def _eval(expr: str, w: int, lim: int) -> int:
    return int(eval(expr, {"__builtins__": {}}, {"W": w, "L": lim}))  # own data


def _run_replay_section(section: dict[str, Any], w: int, lim: int) -> bool:
    """Idealised window: accept c iff c < lim, c not seen, and c > last or last - c <= w."""
    seen: set[int] = set()
    last = 0

    def check(c: int) -> bool:
        nonlocal last
        if c >= lim:
            return False
        if c > last:
            last = c
        elif last - c > w:
            return False
        if c in seen:
            return False
        seen.add(c)
        return True

    for case in section["cases"]:
        if "range" in case:
            r = case["range"]
            a, b, step = _eval(r["from"], w, lim), _eval(r["to"], w, lim), r["step"]
            if any(check(c) != case["accept"] for c in range(a, b + step, step)):
                return False
        elif check(_eval(case["expr"], w, lim)) != case["accept"]:
            return False
    return True


def check_replay() -> int:
    doc = load("replay_wireguard.json")
    w, lim = doc["window_bits"], doc["limit"]
    assert w == (128 - 1) * 64 and lim == (1 << 64) - (1 << 13) - 1
    n = 0
    for s in doc["sections"]:
        assert s["window_bits"] == w and s["limit"] == lim, s["name"]
        for case in s["cases"]:
            if "range" in case:
                r = case["range"]
                assert _eval(r["from"], w, lim) == r["from_value"], s["name"]
                assert _eval(r["to"], w, lim) == r["to_value"], s["name"]
                assert abs(r["to_value"] - r["from_value"]) + 1 == r["count"], s["name"]
                n += r["count"]
            else:
                assert _eval(case["expr"], w, lim) == case["counter"], (s["name"], case)
                n += 1
        assert _run_replay_section(s, w, lim), s["name"]
        # the symbolic form must hold for other window sizes / limits too
        for other_w in (11, 64, 1024, 2048, 8192):
            for other_lim in (lim, 1 << 64, 4 * other_w + 8):
                assert _run_replay_section(s, other_w, other_lim), (s["name"], other_w, other_lim)
    return n


def main(argv: list[str]) -> int:
    slow = "--slow" in argv
    checks: list[tuple[str, Callable[[], int]]] = [
        ("chacha20poly1305.json", check_chacha20poly1305),
        ("aegis256.json", check_aegis256),
        ("blake2b.json", check_blake2b),
        ("x448.json", lambda: check_x448(slow)),
        ("mlkem768.json", check_mlkem768),
        ("replay_wireguard.json", check_replay),
    ]
    failed = 0
    for name, fn in checks:
        try:
            count = fn()
        except AssertionError as e:
            failed += 1
            print(f"FAIL {name}: {e}")
        else:
            print(f"ok   {name}: {count} checked")
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
