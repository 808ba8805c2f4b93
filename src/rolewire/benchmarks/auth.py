"""``rolewire bench auth``: the cost of authenticating one message once
connected, in one process, no sockets.

- ``jwt_eddsa`` / ``jwt_es256``: PyJWT ``encode`` + ``decode`` of a service
  token with the JWT baseline's claims (``iss``, ``sub``, ``aud``, ``iat``,
  ``exp``, random ``jti``, ``rh``), ``decode`` validating signature,
  audience, issuer and times: what any per-request JWT scheme pays at least;
- ``jwt_eddsa_baseline`` / ``jwt_es256_baseline``: the baseline's full path,
  :meth:`TokenSigner.sign` + :meth:`TokenVerifier.verify` (registry lookup,
  request hash over the 64-byte body, lifetime, replay cache);
- ``rolewire_chacha20poly1305`` / ``rolewire_aegis256``: ``RecordLayer.seal`` +
  ``open`` of a 64-byte message (random keys in both directions): rolewire
  authenticates every record with its AEAD tag under the session keys the
  handshake derived, and checks the replay window.

Ratio ``auth_vs_jwt`` = ``jwt_eddsa`` time ÷ ``rolewire_chacha20poly1305``
time (> 1: rolewire's per-message authentication is cheaper).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

from rolewire.benchmarks.record import _rate, _single
from rolewire.record import Suite

__all__ = ["PAYLOAD", "run"]

PAYLOAD = 64
Progress = Callable[[str], None]


def _jwt_runners() -> dict[str, Callable[[int], None]]:
    import jwt as pyjwt

    from rolewire.baselines.jwt import (
        KeyRegistry,
        ReplayCache,
        ServiceIdentity,
        TokenSigner,
        TokenVerifier,
        new_token_id,
        request_hash,
    )

    body = os.urandom(PAYLOAD)
    runners: dict[str, Callable[[int], None]] = {}
    for algorithm, label in (("EdDSA", "eddsa"), ("ES256", "es256")):
        caller = ServiceIdentity.generate("caller", algorithm)
        key, public = caller.private_key, caller.public_key

        def bare(n: int, key: Any = key, public: Any = public, algorithm: str = algorithm
                 ) -> None:
            encode, decode, clock = pyjwt.encode, pyjwt.decode, time.time
            for _ in range(n):
                now = int(clock())
                token = encode({"iss": "caller", "sub": "caller", "aud": "callee", "iat": now,
                                "exp": now + 60, "jti": new_token_id(),
                                "rh": request_hash("op", body)}, key, algorithm=algorithm)
                decode(token, public, algorithms=[algorithm], audience="callee",
                       issuer="caller", leeway=5)

        registry = KeyRegistry()
        registry.add_identity(caller, ["caller-role"])
        signer = TokenSigner(caller)
        # Large enough for every token of the run (entries live for 65 s).
        verifier = TokenVerifier("callee", registry,
                                 replay_cache=ReplayCache(max_entries=50_000_000))

        def full(n: int, signer: TokenSigner = signer, verifier: TokenVerifier = verifier
                 ) -> None:
            sign, verify = signer.sign, verifier.verify
            for _ in range(n):
                verify(sign("callee", "op", body), "op", body)

        runners[f"jwt_{label}"] = bare
        runners[f"jwt_{label}_baseline"] = full
    return runners


def run(quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Per-message authentication cost; returns a JSON-ready dict with
    ``results`` (``us_per_message`` and ``per_s`` per scheme) and the
    ``auth_vs_jwt`` ratio."""
    budget, repeats = (0.25, 3) if quick else (1.0, 5)
    if os.environ.get("ROLEWIRE_BENCH_TINY"):
        budget, repeats = 0.002, 1
    say = progress or (lambda _msg: None)
    plan: dict[str, Callable[[int], None]] = {}
    notes: list[str] = []
    try:
        plan.update(_jwt_runners())
    except ImportError as exc:
        notes.append(f"JWT skipped: PyJWT not installed ({exc})")
    # The record benchmark's "single" runner: one seal + one open per message.
    plan["rolewire_chacha20poly1305"] = _single(Suite.CHACHA20_POLY1305, PAYLOAD, "c")
    plan["rolewire_aegis256"] = _single(Suite.AEGIS_256, PAYLOAD, "c")
    results: dict[str, dict[str, float]] = {}
    for index, (name, runner) in enumerate(plan.items(), 1):
        say(f"[{index}/{len(plan)}] {name}")
        rate = _rate(runner, 1, budget, repeats)
        results[name] = {"per_s": rate, "us_per_message": 1e6 / rate}
    ratio = None
    if "jwt_eddsa" in results:
        ratio = (results["jwt_eddsa"]["us_per_message"]
                 / results["rolewire_chacha20poly1305"]["us_per_message"])
    return {
        "benchmark": "auth",
        "unit": "per message, sign+verify (JWT) or seal+open (rolewire), 64-byte body, median",
        "payload_bytes": PAYLOAD,
        "quick": quick,
        "repeats": repeats,
        "python": platform.python_version(),
        "results": results,
        "ratios": {"auth_vs_jwt": ratio},
        "notes": notes,
    }
