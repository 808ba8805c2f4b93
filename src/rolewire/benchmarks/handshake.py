"""``rolewire bench handshake``: full handshakes per second, both sides in
one process, no sockets, against Python ``ssl`` TLS 1.3 mutual certificate
authentication over memory BIOs measured in the same run.

Measured for each suite: a key role, a certificate role (ECDSA P-256,
one-certificate chain under a role CA) and a password role (J-PAKE).
``certificate`` uses the library default (a successful path validation of
an identical chain is cached for up to 5 minutes; the signature over the
transcript is verified every time); ``certificate-nocache`` validates the
path on every handshake, as TLS does. The
TLS baseline uses P-256 certificates on both sides (client certificate
required), TLS 1.3 with Python's defaults (X25519 or X25519MLKEM768 key
exchange, whatever the OpenSSL in use prefers) and no session resumption.

Ratios (default suite, ours ÷ TLS; > 1 means rolewire is faster):
``handshake_key_vs_mtls``, ``handshake_cert_vs_mtls``,
``handshake_cert_nocache_vs_mtls``, ``handshake_password_vs_mtls``, and
``handshake_key_x448_vs_mtls`` (the paper's X448 suite, no target);
``ratio_ranges`` holds the min and max of the per-round ratios. All configurations are
measured in interleaved rounds and each ratio is the median of per-round
ratios, so a slow spell of a shared machine does not favour either side.
"""

from __future__ import annotations

import functools
import os
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rolewire import pki
from rolewire.handshake import (
    DEFAULT_SUITES,
    NEED_DATA,
    HandshakeComplete,
    HandshakeConfig,
    HandshakeSuite,
    Initiator,
    Responder,
)
from rolewire.roles import CertificateRole, KeyRole, PasswordRateLimiter, PasswordRole

Progress = Callable[[str], None]


def _tiny() -> bool:
    return os.environ.get("ROLEWIRE_BENCH_TINY") == "1"


def handshake_once(ci: HandshakeConfig, cr: HandshakeConfig) -> None:
    """One full handshake in memory; raises if it does not complete."""
    init = Initiator(ci)
    resp = Responder(cr)
    done_i = done_r = None
    while done_i is None or done_r is None:
        data = init.data_to_send()
        if data:
            resp.receive_data(data)
        if done_r is None:
            ev = resp.next_event()
            if ev is not NEED_DATA:
                done_r = ev
        data = resp.data_to_send()
        if data:
            init.receive_data(data)
        if done_i is None:
            ev = init.next_event()
            if ev is not NEED_DATA:
                done_i = ev
    if not (isinstance(done_i, HandshakeComplete) and isinstance(done_r, HandshakeComplete)):
        raise RuntimeError(f"benchmark handshake failed: {done_i!r} / {done_r!r}")  # noqa: TRY004
    done_i.session.close()
    done_r.session.close()


def _rate_once(fn: Callable[[], None], budget: float) -> float:
    """Handshakes per second over about ``budget`` seconds (at least one)."""
    n = 0
    start = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return n / elapsed


def _role_configs(kind: str, suite: HandshakeSuite, ca: pki.Issued) -> tuple[HandshakeConfig,
                                                                           HandshakeConfig]:
    # (Any: ** into CertificateRole's keywords, whose types differ)
    cache: dict[str, Any] = {"cache_size": 0} if kind == "certificate-nocache" else {}
    if kind == "key":
        role: Any = KeyRole("bench", os.urandom(32))
        roles_i = roles_r = [role]
    elif kind.startswith("certificate"):
        a = pki.issue(ca, "bench-a")
        b = pki.issue(ca, "bench-b")
        roles_i = [CertificateRole("bench", anchors=[ca.certificate], chain=[a.certificate],
                                   private_key=a.private_key, **cache)]
        roles_r = [CertificateRole("bench", anchors=[ca.certificate], chain=[b.certificate],
                                   private_key=b.private_key, **cache)]
    else:
        # A limiter that never locks: the benchmark only runs right passwords.
        limiter = PasswordRateLimiter(max_failures=1 << 30)
        roles_i = [PasswordRole("bench", "correct horse battery", limiter=limiter)]
        roles_r = [PasswordRole("bench", "correct horse battery", limiter=limiter)]
    return (HandshakeConfig(roles=roles_i, suites=(suite,)),
            HandshakeConfig(roles=roles_r, suites=(suite,)))


class _MtlsPair:
    """TLS 1.3 with client certificates over memory BIOs (the baseline)."""

    def __init__(self, directory: Path, ca: pki.Issued) -> None:
        ca_path = directory / "ca.pem"
        ca_path.write_bytes(ca.certificate_pem())
        paths = {}
        for name in ("server", "client"):
            issued = pki.issue(ca, f"bench-{name}")
            cert, key = directory / f"{name}.pem", directory / f"{name}.key"
            issued.save(cert, key)
            paths[name] = (cert, key)
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx, name in ((self.server_ctx, "server"), (self.client_ctx, "client")):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_cert_chain(*paths[name])
            ctx.load_verify_locations(ca_path)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.options |= ssl.OP_NO_TICKET
        self.client_ctx.check_hostname = False

    def handshake(self) -> None:
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = self.client_ctx.wrap_bio(c_in, c_out, server_side=False)
        server = self.server_ctx.wrap_bio(s_in, s_out, server_side=True)
        c_done = s_done = False
        for _ in range(20):
            if not c_done:
                try:
                    client.do_handshake()
                    c_done = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            if not s_done:
                try:
                    server.do_handshake()
                    s_done = True
                except ssl.SSLWantReadError:
                    pass
            c_in.write(s_out.read())
            if c_done and s_done:
                # TLS 1.3 client auth completes on the server once it has read
                # the client's Finished; push one byte through to be sure both
                # sides are done, as an application's first message would.
                client.write(b"x")
                s_in.write(c_out.read())
                server.read(1)
                return
        raise RuntimeError("TLS handshake did not complete")


def run(quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Measures everything; returns the JSON-ready report.

    Every configuration (TLS and each suite × role kind) is measured once per
    round, ``repeats`` rounds in a row, so drift of a shared machine hits all
    of them alike; figures are medians over the rounds, and each ratio is the
    median of the per-round ratios (ours ÷ TLS measured seconds apart)."""
    say = progress or (lambda _msg: None)
    tiny = _tiny()
    budget = 0.02 if tiny else (0.3 if quick else 1.0)
    repeats = 1 if tiny else (3 if quick else 5)
    suites = list(HandshakeSuite) if not tiny else [DEFAULT_SUITES[0]]
    kinds = ("key", "certificate", "certificate-nocache", "password")
    ca = pki.create_ca("rolewire bench CA")
    with tempfile.TemporaryDirectory() as tmp:
        mtls = _MtlsPair(Path(tmp), ca)
        runners: dict[tuple[str, str], Callable[[], None]] = {("tls", "mtls"): mtls.handshake}
        for suite in suites:
            for kind in kinds:
                ci, cr = _role_configs(kind, suite, ca)
                runners[(suite.wire_name, kind)] = functools.partial(handshake_once, ci, cr)
        for fn in runners.values():
            fn()  # warm up (and fail early)
        rounds: dict[tuple[str, str], list[float]] = {name: [] for name in runners}
        for r in range(repeats):
            say(f"round {r + 1}/{repeats}: TLS 1.3 mTLS and {len(runners) - 1} rolewire "
                "configurations")
            for name, fn in runners.items():
                rounds[name].append(_rate_once(fn, budget))
    tls_runs = rounds[("tls", "mtls")]
    results: dict[str, dict[str, float]] = {
        suite.wire_name: {kind: statistics.median(rounds[(suite.wire_name, kind)])
                          for kind in kinds} for suite in suites}
    default = DEFAULT_SUITES[0].wire_name

    def per_round(kind: str, suite: str = default) -> list[float]:
        return [ours / tls for ours, tls in zip(rounds[(suite, kind)], tls_runs)]

    names = {"handshake_key_vs_mtls": "key", "handshake_cert_vs_mtls": "certificate",
             "handshake_cert_nocache_vs_mtls": "certificate-nocache",
             "handshake_password_vs_mtls": "password"}
    ratios = {name: statistics.median(per_round(kind)) for name, kind in names.items()}
    ranges = {name: [min(per_round(kind)), max(per_round(kind))]
              for name, kind in names.items()}
    x448 = HandshakeSuite.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305.wire_name
    if x448 in results and x448 != default:
        # The paper's suite, for comparison (no target).
        ratios["handshake_key_x448_vs_mtls"] = statistics.median(per_round("key", x448))
        ranges["handshake_key_x448_vs_mtls"] = [min(per_round("key", x448)),
                                                max(per_round("key", x448))]
    return {
        "unit": "handshakes per second (both sides, one process, median of rounds)",
        "default_suite": default,
        "rounds": repeats,
        "budget_s": budget,
        "tls13_mtls_p256": statistics.median(tls_runs),
        "tls13_mtls_p256_runs": tls_runs,
        "rolewire": results,
        "rolewire_runs": {f"{suite}/{kind}": runs for (suite, kind), runs in rounds.items()
                          if suite != "tls"},
        "ratios": ratios,
        "ratio_ranges": ranges,
        "targets": {"handshake_key_vs_mtls": 2.5, "handshake_cert_vs_mtls": 1.2,
                    "handshake_cert_nocache_vs_mtls": 1.5, "handshake_password_vs_mtls": 1.0},
        "openssl": ssl.OPENSSL_VERSION,
    }
