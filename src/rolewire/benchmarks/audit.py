"""``rolewire bench audit``: what non-repudiation and end-user context cost
per call (issue 18), measured in one run in interleaved rounds.

Per call, in one process (no sockets), each system storing what it needs to
prove the call later in its own SQLite file (WAL, ``synchronous=NORMAL``):

- ``jwt_eddsa_stored`` / ``jwt_es256_stored``: the JWT baseline's
  :meth:`TokenSigner.sign` + :meth:`TokenVerifier.verify` +
  :meth:`AuditStore.record` (one token per request, stored; TLS not counted);
- ``rolewire_signed_<alg>`` for ``ecdsa-p256``, ``ed25519`` and
  ``ed25519-mldsa65`` (both signatures): the caller stamps the call
  (:class:`~rolewire.nonrep.BatchSigner`), the call message is encoded with
  its metadata, sealed and opened by a record layer (ChaCha20-Poly1305) and
  decoded; the receiver's :class:`~rolewire.nonrep.BatchVerifier` holds it;
  every ``BATCH`` calls the head is signed, verified once and the batch
  appended to the hash-chained :class:`~rolewire.nonrep.AuditLog`;
- ``rolewire_unsigned``: the same call message encoded, sealed, opened and
  decoded, nothing signed or stored.

Over a real loopback connection (``rolewire.aio``, sequential request/
response, one event loop): ``call_plain`` and ``call_end_user`` (the call
carries an Ed25519 end-user token, verified once and then served from the
connection's cache; the operation requires a claim).

Ratios (medians of per-round ratios): ``nonrep_vs_jwt`` = ``jwt_eddsa_stored``
÷ ``rolewire_signed_ed25519`` (target ≥ 20); ``enduser_overhead`` =
``call_end_user`` ÷ ``call_plain`` (target ≤ 1.2).
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rolewire.benchmarks.record import _pair
from rolewire.record import Suite

__all__ = ["BATCH", "TARGETS", "merge_into", "print_report", "run"]

PAYLOAD = 64
#: Calls per signed batch.
BATCH = 256
TARGETS = {"nonrep_vs_jwt": 20.0, "enduser_overhead": 1.2}
LOWER_IS_BETTER = frozenset({"enduser_overhead"})
Progress = Callable[[str], None]
Runner = Callable[[int], None]


def _jwt_runners(tmp: Path) -> dict[str, Runner]:
    from rolewire.baselines.audit import AuditStore
    from rolewire.baselines.jwt import (
        KeyRegistry,
        ReplayCache,
        ServiceIdentity,
        TokenSigner,
        TokenVerifier,
    )

    body = os.urandom(PAYLOAD)
    runners: dict[str, Runner] = {}
    for algorithm, label in (("EdDSA", "eddsa"), ("ES256", "es256")):
        caller = ServiceIdentity.generate("caller", algorithm)
        registry = KeyRegistry()
        registry.add_identity(caller, ["caller-role"])
        signer = TokenSigner(caller)
        verifier = TokenVerifier("callee", registry,
                                 replay_cache=ReplayCache(max_entries=50_000_000))
        store = AuditStore(tmp / f"jwt-{label}.db")

        def run(n: int, signer: TokenSigner = signer, verifier: TokenVerifier = verifier,
                store: AuditStore = store) -> None:
            sign, verify, record = signer.sign, verifier.verify, store.record
            for _ in range(n):
                record(verify(sign("callee", "op", body), "op", body), "op", body)

        runners[f"jwt_{label}_stored"] = run
    return runners


def _rolewire_runners(tmp: Path) -> dict[str, Runner]:
    from rolewire import pki
    from rolewire.nonrep import AuditLog, BatchSigner, BatchVerifier, issue_signer
    from rolewire.protocol.wire import CallMessage, MessageType, decode, encode

    ca = pki.create_ca("bench role CA")
    body = os.urandom(PAYLOAD)
    transcript = os.urandom(64)
    alice, bob = _pair(Suite.CHACHA20_POLY1305, "c")
    seal, open_ = alice.seal, bob.open
    request = MessageType.REQUEST

    def unsigned(n: int) -> None:
        for i in range(n):
            decode(open_(seal(encode(CallMessage(request, i + 1, "op", body)))))

    runners: dict[str, Runner] = {"rolewire_unsigned": unsigned}
    for algorithm in ("ecdsa-p256", "ed25519", "ed25519+mldsa65"):
        signer = issue_signer(ca.certificate, ca.private_key, "payer", "caller",
                              algorithm=algorithm)
        log = AuditLog(tmp / f"rolewire-{algorithm.replace('+', '-')}.db")

        def signed(n: int, signer: Any = signer, log: Any = log) -> None:
            now_ms = int(time.time() * 1000)
            batcher = BatchSigner(signer, transcript, max_calls=BATCH)
            verifier = BatchVerifier({"payer": [ca.certificate]}, transcript,
                                     frozenset({"payer"}), clock=lambda: now_ms,
                                     record=log.recorder(transcript))
            stamp, receive = batcher.stamp, verifier.receive
            released = 0
            for i in range(n):
                meta = stamp(request, i + 1, "op", body, {}, now_ms)
                message = decode(open_(seal(encode(CallMessage(request, i + 1, "op", body,
                                                               meta)))))
                released += len(receive(message))
                if (i + 1) % BATCH == 0 or i + 1 == n:
                    for head in batcher.close():
                        frame = open_(seal(encode(CallMessage(MessageType.SIGNED_BATCH, 0, "",
                                                              head))))
                        released += len(receive(decode(frame)))
            if released != n or verifier.refused:
                raise RuntimeError(f"signed-call benchmark: {verifier.last_error!r}")

        runners[f"rolewire_signed_{algorithm.replace('+', '-')}"] = signed
    return runners


class _Calls:
    """A server and a channel on loopback in a private event loop, for the
    end-user context overhead (sequential calls)."""

    def __init__(self) -> None:
        from rolewire.aio import connect, serve
        from rolewire.enduser import EndUserVerifier, TokenService, require_claim, token_metadata
        from rolewire.handshake import HandshakeConfig
        from rolewire.roles.key import KeyRole
        from rolewire.services import UNRESTRICTED, Service

        idp = TokenService.generate("https://idp.bench", "EdDSA", lifetime=3600)
        service = Service("callee", end_users=EndUserVerifier(
            "callee", [idp.issuer_config()], accept_audiences=["app"]))

        @service.operation("echo", roles=UNRESTRICTED)
        def echo(call: Any, body: bytes) -> bytes:
            return body

        @service.operation("echo_user", roles=UNRESTRICTED, user=require_claim("scope", "x"))
        def echo_user(call: Any, body: bytes) -> bytes:
            return body

        self.metadata = token_metadata(idp.issue("alice", audience="app", scope=["x"]))
        self.body = os.urandom(PAYLOAD)
        cfg = HandshakeConfig(roles=[KeyRole("k", os.urandom(32))])
        self.loop = asyncio.new_event_loop()

        async def start() -> tuple[Any, Any]:
            server = await serve(service, cfg, port=0)
            return server, await connect("127.0.0.1", server.port, cfg)

        self.server, self.channel = self.loop.run_until_complete(start())
        self.verifier = service.end_users

    def plain(self, n: int) -> None:
        async def go() -> None:
            call, body = self.channel.call, self.body
            for _ in range(n):
                await call("echo", body)
        self.loop.run_until_complete(go())

    def end_user(self, n: int) -> None:
        async def go() -> None:
            call, body, meta = self.channel.call, self.body, self.metadata
            for _ in range(n):
                await call("echo_user", body, metadata=meta)
        self.loop.run_until_complete(go())

    def close(self) -> None:
        async def stop() -> None:
            await self.channel.close()
            self.server.close()
            await self.server.wait_closed()
        self.loop.run_until_complete(stop())
        self.loop.close()


def _calibrate(run: Runner, budget: float) -> int:
    n = 1
    while True:
        start = time.perf_counter()
        run(n)
        took = time.perf_counter() - start
        if took >= budget / 4 or n >= 1 << 20:
            return max(1, int(n * budget / max(took, 1e-9)))
        n *= 4


def _ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    per_round = [x / y for x, y in zip(a, b)]
    return statistics.median(per_round), min(per_round), max(per_round)


def run(quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-ready dict with per-system
    ``us_per_call`` (median of the rounds), per-round figures and the
    ``nonrep_vs_jwt`` / ``enduser_overhead`` ratios."""
    budget, rounds = (0.3, 3) if quick else (1.0, 5)
    if os.environ.get("ROLEWIRE_BENCH_TINY"):
        budget, rounds = 0.01, 1
    say = progress or (lambda _msg: None)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rolewire-bench-audit-") as tmp:
        plan: dict[str, Runner] = {}
        try:
            plan.update(_jwt_runners(Path(tmp)))
        except ImportError as exc:
            notes.append(f"JWT skipped: PyJWT not installed ({exc})")
        plan.update(_rolewire_runners(Path(tmp)))
        calls = _Calls()
        try:
            plan["call_plain"] = calls.plain
            plan["call_end_user"] = calls.end_user
            say("calibrating")
            sizes = {name: _calibrate(runner, budget) for name, runner in plan.items()}
            figures: dict[str, list[float]] = {name: [] for name in plan}
            for r in range(rounds):
                for name, runner in plan.items():  # interleaved: A B C ... A B C
                    say(f"round {r + 1}/{rounds}: {name}")
                    n = sizes[name]
                    start = time.perf_counter()
                    runner(n)
                    figures[name].append((time.perf_counter() - start) * 1e6 / n)
            verifications = calls.verifier.verifications
        finally:
            calls.close()
    results = {name: {"us_per_call": statistics.median(values),
                      "per_s": 1e6 / statistics.median(values),
                      "rounds_us": [round(v, 3) for v in values], "calls_per_round": sizes[name]}
               for name, values in figures.items()}
    ratios: dict[str, float | None] = {"nonrep_vs_jwt": None, "enduser_overhead": None}
    ranges: dict[str, list[float]] = {}
    if "jwt_eddsa_stored" in figures:
        mid, low, high = _ratio(figures["jwt_eddsa_stored"], figures["rolewire_signed_ed25519"])
        ratios["nonrep_vs_jwt"], ranges["nonrep_vs_jwt"] = mid, [low, high]
        for name in ("jwt_es256_stored",):
            for alg in ("ecdsa-p256", "ed25519-mldsa65"):
                key = f"{name}_vs_signed_{alg}"
                ratios[key] = _ratio(figures[name], figures[f"rolewire_signed_{alg}"])[0]
    mid, low, high = _ratio(figures["call_end_user"], figures["call_plain"])
    ratios["enduser_overhead"], ranges["enduser_overhead"] = mid, [low, high]
    met = {name: (None if ratios.get(name) is None else
                  ratios[name] <= target if name in LOWER_IS_BETTER else  # type: ignore[operator]
                  ratios[name] >= target)  # type: ignore[operator]
           for name, target in TARGETS.items()}
    return {
        "benchmark": "audit",
        "unit": "microseconds per call, median of interleaved rounds",
        "payload_bytes": PAYLOAD,
        "batch_calls": BATCH,
        "quick": quick,
        "rounds": rounds,
        "python": platform.python_version(),
        "results": results,
        "ratios": ratios,
        "ratio_ranges": ranges,
        "targets": TARGETS,
        "targets_met": met,
        "end_user_token_verifications": verifications,
        "notes": notes + [
            "JWT figures exclude TLS; rolewire figures include the record seal+open",
            "call_* are sequential request/response over loopback in one process",
        ],
    }


def merge_into(report: dict[str, Any]) -> None:
    """Add this benchmark's ratios to a ``bench all`` summary (``ratios``,
    ``ratio_ranges``, ``targets``, ``targets_met``; ``enduser_overhead``
    joins ``lower_is_better``)."""
    audit = report["audit"]
    report["lower_is_better"] = sorted({*report.get("lower_is_better", ()), *LOWER_IS_BETTER})
    for key in ("nonrep_vs_jwt", "enduser_overhead"):
        report.setdefault("ratios", {})[key] = audit["ratios"][key]
        if key in audit["ratio_ranges"]:
            report.setdefault("ratio_ranges", {})[key] = audit["ratio_ranges"][key]
        report.setdefault("targets", {})[key] = TARGETS[key]
        report.setdefault("targets_met", {})[key] = audit["targets_met"][key]


def print_report(result: dict[str, Any]) -> None:
    """A short table of the figures and the two ratios."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rolewire bench audit (per call, median of interleaved rounds)")
    table.add_column("system")
    table.add_column("µs/call", justify="right")
    table.add_column("calls/s", justify="right")
    for name, row in result["results"].items():
        table.add_row(name, f"{row['us_per_call']:,.1f}", f"{row['per_s']:,.0f}")
    console = Console()
    console.print(table)
    for key, target in TARGETS.items():
        value = result["ratios"].get(key)
        shown = "n/a" if value is None else f"{value:.2f}"
        sign = "<=" if key in LOWER_IS_BETTER else ">="
        met = result["targets_met"].get(key)
        console.print(f"{key} = {shown} (target {sign} {target}; "
                      f"{'met' if met else 'not met' if met is not None else 'n/a'})")
