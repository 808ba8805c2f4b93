"""``rolewire bench channel`` and ``connect``: the same service over every
system, over loopback TCP with asyncio.

Systems (``register_system`` adds more):

- ``tcp``: plain TCP, same framing and dispatch, no security (the ceiling);
- ``mtls``: TLS 1.3 with client certificates (:mod:`rolewire.baselines.mtls`,
  ``ssl`` defaults, P-256 certificates);
- ``jwt``: a self-signed EdDSA JWT per message over server-authenticated
  TLS 1.3 (:mod:`rolewire.baselines.jwt`; no audit store);
- ``rolewire``: :mod:`rolewire.aio` (key role, default suites: X25519+ML-KEM-768,
  AEGIS-256 records where the CPU has AES instructions);
- ``rolewire-chacha``: the same with ChaCha20-Poly1305 records.

The server runs in a separate process (``python -m
rolewire.benchmarks.channel --serve``) for every system alike; by default
the client and all servers are pinned to one CPU (Linux), so a figure is the
CPU both ends spend per message and repeated runs agree within a few percent
(unpinned, on a 2-vCPU VM, cross-CPU wake-ups make runs vary several-fold).
With ``ROLEWIRE_BENCH_TINY=1`` (tests) everything runs in one process with
tiny counts.

Measured, per message size (64 B, 1 KiB, 16 KiB), medians of ``repeats``
runs, each run sized to take about ``budget`` seconds. All systems are up at
once and measured in interleaved rounds (A, B, C, D, A, B, ...), so the drift
of a shared machine affects them alike and the ratios stay comparable:

- ``stream``: the client sends N notifications as fast as it can, with
  ``send_many`` in batches of 256 (one write per batch; with JWT one token
  per message), then one request; a run ends when the server has *handled*
  all N (it answers with its count, which must be N). messages/s and MB/s
  (payload bytes).
- ``stream_notify`` (64 B): the same stream sent with one ``await
  notify()`` per message, as a loop over incoming work is usually written
  (TLS seals and writes each message; rolewire coalesces them).
- ``calls``: sequential request/response (``echo``), one outstanding.
- ``pipelined`` (64 B): 16 tasks calling at once on one connection.
- ``connect`` (:func:`run_connect`): time from ``connect()`` to the reply of
  the first call (64 B ``echo``): TCP + TLS or rolewire handshake, the
  server greeting, one authenticated request; a new connection each time.
- ``fleet`` (systems in ``FLEET_SYSTEMS``): ``FLEET`` (500) connections at
  once; the server's resident memory per connection, and calls/s summed
  over all of them (one 64 B ``echo`` outstanding on each).

Next to the same-stack baselines (``tcp``, ``mtls``, ``jwt``: rolewire's own
connection core, Service and call codec over TCP/TLS, see
:mod:`rolewire.protocol.transport_secured`) run the honest ones, with no rolewire
code on the data path: ``tls-min`` and ``tcp-min``
(:mod:`rolewire.baselines.echo`, what a user hand-rolls) and ``grpc-mtls``
(:mod:`rolewire.baselines.grpc_mtls`, ``grpc.aio`` with mutual TLS; skipped
without the ``bench`` extra).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolewire.benchmarks.child import child_server
from rolewire.errors import RolewireError
from rolewire.services import Service

__all__ = [
    "FLEET",
    "FLEET_SYSTEMS",
    "SIZES",
    "BenchSystem",
    "SystemUnavailable",
    "bench_service",
    "register_system",
    "registered_systems",
    "run",
    "run_connect",
    "run_suite",
]

SIZES = (64, 1024, 16 * 1024)
BATCH = 256
PIPELINE = 16
#: Connections per system of the fleet measurement, and the systems it runs.
FLEET = 500
FLEET_SYSTEMS = ("tls-min", "mtls", "grpc-mtls", "rolewire")
Progress = Callable[[str], None]


class SystemUnavailable(RolewireError):
    """A benchmark system cannot run here (its module is missing...)."""


@dataclass(frozen=True)
class BenchSystem:
    """One system under test.

    ``prepare(dir)`` writes its credentials into a fresh directory (once, in
    the parent process); ``serve(service, dir)`` returns a started server
    (``.port``, ``.close()``, ``await .wait_closed()``); ``connect(host,
    port, dir)`` returns a client (``call``, ``send_many`` or ``notify``,
    ``close``). Both may run in another process than ``prepare``: pass only
    the directory between them. ``connect`` is called many times by the
    connect benchmark; cache contexts/configs built from ``dir``."""

    name: str
    label: str
    prepare: Callable[[Path], None]
    serve: Callable[[Service, Path], Awaitable[Any]]
    connect: Callable[[str, int, Path], Awaitable[Any]]
    note: str = ""


SystemFactory = Callable[[], BenchSystem]
_SYSTEMS: dict[str, SystemFactory] = {}


def register_system(name: str, factory: SystemFactory) -> None:
    """Add (or replace) a system. ``factory()`` returns a
    :class:`BenchSystem` or raises :class:`SystemUnavailable`. A module-level
    factory runs its server in a separate process like the built-in ones; a
    local function or lambda runs it in the benchmark's own process (noted
    in the JSON)."""
    _SYSTEMS[name] = factory


def registered_systems() -> list[str]:
    return list(_SYSTEMS)


def _tiny() -> bool:
    return bool(os.environ.get("ROLEWIRE_BENCH_TINY"))


# --- the service every system serves ----------------------------------------------


def bench_service() -> Service:
    """``sink`` (notification: counts), ``done`` (request: returns and resets
    the count and bytes), ``echo`` (request: returns the body); all need role
    ``bench``."""
    svc = Service("bench")
    state = {"messages": 0, "bytes": 0}

    @svc.operation("sink", roles=["bench"])
    def sink(call: Any, body: bytes) -> None:
        state["messages"] += 1
        state["bytes"] += len(body)

    @svc.operation("done", roles=["bench"])
    def done(call: Any, body: bytes) -> bytes:
        out = b"%d %d" % (state["messages"], state["bytes"])
        state.update(messages=0, bytes=0)
        return out

    @svc.operation("echo", roles=["bench"])
    def echo(call: Any, body: bytes) -> bytes:
        return body

    return svc


# --- built-in systems -------------------------------------------------------------------


def _cached(build: Callable[[Path], Any]) -> Callable[[Path], Any]:
    cache: dict[Path, Any] = {}

    def get(directory: Path) -> Any:
        if directory not in cache:
            cache[directory] = build(directory)
        return cache[directory]

    return get


def tcp_system() -> BenchSystem:
    from rolewire.baselines import connect_plain, serve_plain

    async def serve(service: Service, directory: Path) -> Any:
        return await serve_plain(service, peer_roles=["bench"])

    async def connect(host: str, port: int, directory: Path) -> Any:
        return await connect_plain(host, port)

    return BenchSystem("tcp", "plain TCP (no security)", lambda d: None, serve, connect)


def mtls_system() -> BenchSystem:
    from rolewire import pki
    from rolewire.baselines import mtls

    def prepare(directory: Path) -> None:
        ca = pki.create_ca("bench CA")
        ca.save(directory / "ca.pem", directory / "ca.key")
        mtls.issue_service_certificate(ca, "bench", ["bench"]).save(
            directory / "server.pem", directory / "server.key")
        mtls.issue_service_certificate(ca, "bench-client", ["bench"]).save(
            directory / "client.pem", directory / "client.key")

    connector = _cached(lambda d: mtls.MtlsConnector(d / "client.pem", d / "client.key",
                                                     ca=d / "ca.pem"))

    async def serve(service: Service, directory: Path) -> Any:
        return await mtls.serve(service, cert=directory / "server.pem",
                                key=directory / "server.key", ca=directory / "ca.pem")

    async def connect(host: str, port: int, directory: Path) -> Any:
        return await mtls.connect(host, port, connector=connector(directory))

    return BenchSystem("mtls", "TLS 1.3 mTLS (ssl, P-256 certificates)", prepare, serve,
                       connect)


def jwt_system() -> BenchSystem:
    try:
        from rolewire.baselines import jwt
    except ImportError as exc:  # PyJWT missing
        raise SystemUnavailable(f"needs PyJWT (the baselines extra): {exc}") from None
    from rolewire import pki
    from rolewire.baselines import mtls

    def prepare(directory: Path) -> None:
        ca = pki.create_ca("bench CA")
        ca.save(directory / "ca.pem", directory / "ca.key")
        pki.issue(ca, "bench").save(directory / "server.pem", directory / "server.key")
        client = jwt.ServiceIdentity.generate("bench-client", "EdDSA")
        client.save(directory / "client.key")
        registry = jwt.KeyRegistry()
        registry.add_identity(client, ["bench"])
        registry.save(directory / "keys")

    def client_side(directory: Path) -> tuple[Any, Any]:
        identity = jwt.ServiceIdentity.load("bench-client", directory / "client.key")
        context = mtls.client_context(None, ca=directory / "ca.pem", check_hostname=True)
        return identity, context

    cached_client = _cached(client_side)

    async def serve(service: Service, directory: Path) -> Any:
        # The benchmark sends hundreds of thousands of tokens within their
        # lifetime: size the replay cache for that (it is still checked).
        verifier = jwt.TokenVerifier("bench", jwt.KeyRegistry.load(directory / "keys"),
                                     replay_cache=jwt.ReplayCache(max_entries=10_000_000))
        return await jwt.serve(service, cert=directory / "server.pem",
                               key=directory / "server.key", registry=verifier.registry,
                               verifier=verifier)

    async def connect(host: str, port: int, directory: Path) -> Any:
        identity, context = cached_client(directory)
        return await jwt.connect(host, port, identity=identity, audience="bench",
                                 ca=directory / "ca.pem", ssl_context=context)

    return BenchSystem("jwt", "JWT EdDSA per message over TLS 1.3", prepare, serve, connect,
                       note="no audit store")


def _write_pki(directory: Path) -> None:
    """A CA, a server certificate for ``bench`` and a client certificate
    (ECDSA P-256, as a private PKI issues them)."""
    from rolewire import pki

    ca = pki.create_ca("bench CA")
    ca.save(directory / "ca.pem", directory / "ca.key")
    pki.issue(ca, "bench").save(directory / "server.pem", directory / "server.key")
    pki.issue(ca, "bench-client").save(directory / "client.pem", directory / "client.key")


def _min_contexts(directory: Path) -> tuple[Any, Any]:
    """Plain ``ssl`` contexts for the minimal TLS echo: TLS 1.3, client
    certificate required (mutual TLS, as rolewire authenticates both sides)."""
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx, name in ((server, "server"), (client, "client")):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key")
        ctx.load_verify_locations(directory / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return server, client


def tls_min_system() -> BenchSystem:
    """The hand-rolled yardstick: :mod:`rolewire.baselines.echo` over TLS 1.3
    with client certificates (no rolewire code on the data path)."""
    from rolewire.baselines import echo

    contexts = _cached(_min_contexts)

    async def serve(service: Service, directory: Path) -> Any:
        return await echo.serve(ssl_context=contexts(directory)[0])

    async def connect(host: str, port: int, directory: Path) -> Any:
        return await echo.connect(host, port, ssl_context=contexts(directory)[1],
                                  server_hostname="bench")

    return BenchSystem("tls-min", "minimal asyncio TLS 1.3 echo (mutual TLS, 4-byte framing, "
                       "no dispatch layer)", _write_pki, serve, connect)


def tcp_min_system() -> BenchSystem:
    """The same minimal echo over plain TCP (no security at all)."""
    from rolewire.baselines import echo

    async def serve(service: Service, directory: Path) -> Any:
        return await echo.serve()

    async def connect(host: str, port: int, directory: Path) -> Any:
        return await echo.connect(host, port)

    return BenchSystem("tcp-min", "minimal asyncio plain-TCP echo (4-byte framing)",
                       lambda d: None, serve, connect)


def grpc_mtls_system() -> BenchSystem:
    """gRPC (``grpc.aio``) with mutual TLS: what microservice teams pick."""
    try:
        from rolewire.baselines import grpc_mtls
    except ImportError as exc:
        raise SystemUnavailable(f"needs grpcio (the bench extra): {exc}") from None

    async def serve(service: Service, directory: Path) -> Any:
        return await grpc_mtls.serve(directory / "server.pem", directory / "server.key",
                                     directory / "ca.pem")

    async def connect(host: str, port: int, directory: Path) -> Any:
        return await grpc_mtls.connect(host, port, directory / "client.pem",
                                       directory / "client.key", directory / "ca.pem",
                                       server_name="bench")

    return BenchSystem("grpc-mtls", "gRPC grpc.aio with mutual TLS (raw bytes messages)",
                       _write_pki, serve, connect)


def rolewire_system() -> BenchSystem:
    """rolewire with the default suites (on a CPU with AES instructions:
    X25519+ML-KEM-768 with AEGIS-256 records)."""
    return _rolewire_system("rolewire", None)


def rolewire_chacha_system() -> BenchSystem:
    """rolewire with ChaCha20-Poly1305 records (the default on CPUs without
    AES instructions; X25519+ML-KEM-768)."""
    return _rolewire_system("rolewire-chacha", "X25519_MLKEM768_BLAKE2B_CHACHA20POLY1305")


def _rolewire_system(name: str, suite_name: str | None) -> BenchSystem:
    try:
        aio = importlib.import_module("rolewire.aio")
        from rolewire.handshake import DEFAULT_SUITES, HandshakeConfig, HandshakeSuite
        from rolewire.record import RecordLimits
        from rolewire.roles.key import KeyRole
    except ImportError as exc:
        raise SystemUnavailable(f"rolewire.aio is not available: {exc}") from None
    if not (callable(getattr(aio, "serve", None)) and callable(getattr(aio, "connect", None))):
        raise SystemUnavailable("rolewire.aio does not provide serve/connect yet")

    def prepare(directory: Path) -> None:
        from rolewire.pki import write_secret_file

        write_secret_file(directory / "rolewire.key", os.urandom(32).hex().encode())

    def build(directory: Path) -> Any:
        key = bytes.fromhex((directory / "rolewire.key").read_text())
        # Soft rekey limits out of the way: a benchmark seals millions of records.
        limits = RecordLimits(soft_messages=1 << 60, soft_bytes=1 << 62)
        suites = (HandshakeSuite[suite_name],) if suite_name else tuple(DEFAULT_SUITES)
        return HandshakeConfig(roles=[KeyRole("bench", key)], record_limits=limits,
                               suites=suites)

    config = _cached(build)

    async def serve(service: Service, directory: Path) -> Any:
        # All benchmark clients come from 127.0.0.1: the per-address
        # handshake rate and pending bounds (DoS defences) are lifted, as a
        # TLS server has none; the fleet opens FLEET connections at once.
        return await aio.serve(service, config(directory), idle_timeout=None,
                               handshake_rate=None, max_pending_per_peer=256,
                               max_connections=4 * FLEET)

    async def connect(host: str, port: int, directory: Path) -> Any:
        return await aio.connect(host, port, config(directory))

    label = ("rolewire (key role, default suites)" if suite_name is None
             else f"rolewire (key role, {suite_name})")
    return BenchSystem(name, label, prepare, serve, connect)


register_system("tcp", tcp_system)
register_system("tcp-min", tcp_min_system)
register_system("tls-min", tls_min_system)
register_system("mtls", mtls_system)
register_system("grpc-mtls", grpc_mtls_system)
register_system("jwt", jwt_system)
register_system("rolewire", rolewire_system)
register_system("rolewire-chacha", rolewire_chacha_system)


# --- server placement -----------------------------------------------------------------


def _factory_path(factory: SystemFactory) -> str | None:
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", "")
    if not module or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def _load_factory(path: str) -> SystemFactory:
    module, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


def _serve_stdio() -> None:
    """Child side: read ``{"factory", "dir"}`` (JSON line) from stdin, print
    the port, serve until stdin closes."""
    spec = json.loads(sys.stdin.readline())
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {spec["cpu"]})
    system = _load_factory(spec["factory"])()

    async def main() -> None:
        server = await system.serve(bench_service(), Path(spec["dir"]))
        # The fleet benchmark reads this process's resident memory.
        (Path(spec["dir"]) / "server.pid").write_text(str(os.getpid()))
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@contextmanager
def _pinned(enabled: bool) -> Iterator[int | None]:
    """Pin this thread to one CPU for the duration (yields the CPU, or None
    where affinity cannot be set); the previous affinity is restored."""
    getter = getattr(os, "sched_getaffinity", None)
    setter = getattr(os, "sched_setaffinity", None)
    if not enabled or getter is None or setter is None:
        yield None
        return
    before = getter(0)
    cpu = max(before)
    setter(0, {cpu})
    try:
        yield cpu
    finally:
        setter(0, before)


@contextmanager
def _subprocess_server(factory: str, directory: Path, cpu: int | None = None
                       ) -> Iterator[int]:
    spec = {"factory": factory, "dir": str(directory), "cpu": cpu}
    with child_server(["-m", "rolewire.benchmarks.channel", "--serve"],
                      json.dumps(spec).encode()) as port:
        yield port


# --- measurements -------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    sizes: tuple[int, ...]
    budget: float
    repeats: int
    fixed_count: int | None  # tiny mode: exactly this many, no calibration
    connect_budget: float


def _plan(quick: bool) -> _Plan:
    if _tiny():
        return _Plan(SIZES, 0.0, 1, 8, 0.0)
    if quick:
        return _Plan(SIZES, 0.2, 3, None, 0.25)
    return _Plan(SIZES, 1.0, 5, None, 1.0)


async def _timed_stream(client: Any, count: int, send: Callable[[], Awaitable[None]]
                        ) -> float:
    """Reset the server's count, time ``send()`` until the server has handled
    all ``count`` notifications (its ``done`` reply), check the count."""
    await client.call("done")
    start = time.perf_counter()
    await send()
    reply = await client.call("done", timeout=300.0)
    elapsed = time.perf_counter() - start
    handled = int(reply.split()[0])
    if handled != count:
        raise RuntimeError(f"server handled {handled} of {count} messages")
    return elapsed


async def _stream_once(client: Any, size: int, count: int) -> float:
    payload = os.urandom(size)
    bodies = [payload] * BATCH
    send_many = getattr(client, "send_many", None)

    async def send() -> None:
        sent = 0
        while sent < count:
            n = min(BATCH, count - sent)
            chunk = bodies if n == BATCH else bodies[:n]
            if send_many is not None:
                await send_many("sink", chunk)
            else:
                for body in chunk:
                    await client.notify("sink", body)
            sent += n

    return await _timed_stream(client, count, send)


async def _stream_notify_once(client: Any, size: int, count: int) -> float:
    """Like :func:`_stream_once`, but the way a loop over incoming work is
    usually written: one ``await notify()`` per message. What reaches the
    socket is then up to the system: TLS seals and writes each message as it
    comes; rolewire queues them and seals/writes once per loop iteration."""
    payload = os.urandom(size)
    notify = client.notify

    async def send() -> None:
        for _ in range(count):
            await notify("sink", payload)

    return await _timed_stream(client, count, send)


async def _calls_once(client: Any, size: int, count: int) -> float:
    payload = os.urandom(size)
    call = client.call
    start = time.perf_counter()
    for _ in range(count):
        await call("echo", payload)
    return time.perf_counter() - start


async def _pipelined_once(client: Any, size: int, count: int) -> float:
    payload = os.urandom(size)
    per_task = max(1, count // PIPELINE)

    async def worker() -> None:
        for _ in range(per_task):
            await client.call("echo", payload)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(PIPELINE)))
    return time.perf_counter() - start


Runner = Callable[[Any, int, int], Awaitable[float]]


@dataclass
class _Live:
    """One system during a run: its client connection and where it serves."""

    name: str
    system: BenchSystem
    directory: Path
    port: int
    client: Any = None
    server: Any = None  # in-process server, if any


async def _calibrate(runner: Runner, client: Any, size: int, plan: _Plan) -> int:
    """A count that takes about ``plan.budget`` seconds (the calibration runs
    double as warm-up)."""
    if plan.fixed_count is not None:
        return plan.fixed_count
    count = 64
    while True:
        elapsed = await runner(client, size, count)
        if elapsed >= plan.budget / 8 or count >= 1 << 22:
            break
        count *= 4
    return max(32, int(count * plan.budget / max(elapsed, 1e-6)))


async def _interleaved(live: list[_Live], runner: Runner, size: int, plan: _Plan,
                       units: Callable[[int], int] = lambda n: n) -> dict[str, dict[str, Any]]:
    """Calibrate each system, then time ``plan.repeats`` rounds, each round
    running every system once: drift of a shared machine hits all alike."""
    counts = {s.name: await _calibrate(runner, s.client, size, plan) for s in live}
    rates: dict[str, list[float]] = {s.name: [] for s in live}
    for _ in range(plan.repeats):
        for s in live:
            elapsed = await runner(s.client, size, counts[s.name])
            rates[s.name].append(units(counts[s.name]) / elapsed)
    return {name: {"count": counts[name], "rate": statistics.median(runs), "runs": runs}
            for name, runs in rates.items()}


async def _channel_figures(live: list[_Live], plan: _Plan, say: Progress
                           ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {s.name: {"stream": {}, "calls": {}} for s in live}
    for size in plan.sizes:
        say(f"stream {size} B")
        for name, m in (await _interleaved(live, _stream_once, size, plan)).items():
            out[name]["stream"][str(size)] = {
                "messages_per_s": m["rate"], "mb_per_s": m["rate"] * size / 1e6,
                "count": m["count"], "runs": m["runs"]}
        say(f"calls {size} B")
        for name, m in (await _interleaved(live, _calls_once, size, plan)).items():
            out[name]["calls"][str(size)] = {
                "calls_per_s": m["rate"], "latency_us": 1e6 / m["rate"],
                "count": m["count"], "runs": m["runs"]}
    say("stream 64 B, one notify() per message")
    for name, m in (await _interleaved(live, _stream_notify_once, 64, plan)).items():
        out[name]["stream_notify"] = {"64": {
            "messages_per_s": m["rate"], "mb_per_s": m["rate"] * 64 / 1e6,
            "count": m["count"], "runs": m["runs"]}}
    say(f"pipelined calls 64 B ({PIPELINE} outstanding)")
    pipelined = await _interleaved(live, _pipelined_once, 64, plan,
                                   lambda n: max(1, n // PIPELINE) * PIPELINE)
    for name, m in pipelined.items():
        out[name]["pipelined"] = {"64": {"calls_per_s": m["rate"], "outstanding": PIPELINE,
                                         "runs": m["runs"]}}
    return out


async def _connect_once(s: _Live, payload: bytes) -> float:
    start = time.perf_counter()
    client = await s.system.connect("127.0.0.1", s.port, s.directory)
    await client.call("echo", payload)
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


async def _connect_figures(live: list[_Live], plan: _Plan, say: Progress
                           ) -> dict[str, dict[str, Any]]:
    """Rounds of about ``connect_budget`` seconds per system; each round's
    median connect time, then the median of the rounds."""
    say("connect")
    payload = os.urandom(64)
    for s in live:
        await _connect_once(s, payload)  # warm up (imports, caches)
    runs: dict[str, list[float]] = {s.name: [] for s in live}
    for _ in range(plan.repeats):
        for s in live:
            times = [await _connect_once(s, payload)]
            deadline = time.perf_counter() + plan.connect_budget
            while time.perf_counter() < deadline:
                times.append(await _connect_once(s, payload))
            runs[s.name].append(statistics.median(times))
    out = {}
    for name, values in runs.items():
        ms = statistics.median(values) * 1e3
        out[name] = {"ms": ms, "per_s": 1e3 / ms, "runs_ms": [v * 1e3 for v in values]}
    return out


def _rss(pid: int) -> int | None:
    """Resident bytes of process ``pid`` (Linux; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _server_pid(s: _Live) -> int:
    if s.server is not None:
        return os.getpid()
    try:
        return int((s.directory / "server.pid").read_text())
    except (OSError, ValueError):
        return -1


async def _open_fleet(s: _Live, count: int, payload: bytes) -> list[Any]:
    clients: list[Any] = []
    step = 32
    for start in range(0, count, step):
        batch = await asyncio.gather(*(s.system.connect("127.0.0.1", s.port, s.directory)
                                       for _ in range(min(step, count - start))))
        clients.extend(batch)
    await asyncio.gather(*(c.call("echo", payload) for c in clients))
    return clients


async def _fleet_once(clients: list[Any], payload: bytes, per_client: int) -> float:
    async def worker(client: Any) -> None:
        for _ in range(per_client):
            await client.call("echo", payload)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    return time.perf_counter() - start


async def _fleet_figures(live: list[_Live], plan: _Plan, say: Progress
                         ) -> dict[str, dict[str, Any]]:
    """``FLEET`` connections per system at once: the server's resident
    memory per connection (growth from before the first connect to after one
    call on each), then calls/s summed over all connections (each one call
    outstanding, 64 B ``echo``), in interleaved rounds."""
    count = plan.fixed_count or FLEET
    say(f"{count} connections per system: memory and aggregate calls/s")
    payload = os.urandom(64)
    fleet = [s for s in live if s.name in FLEET_SYSTEMS]
    out: dict[str, dict[str, Any]] = {}
    fleets: dict[str, list[Any]] = {}
    try:
        for s in fleet:
            pid = _server_pid(s)
            rss_before = _rss(pid)
            fleets[s.name] = await _open_fleet(s, count, payload)
            rss_after = _rss(pid)
            per_conn = (None if rss_before is None or rss_after is None
                        else max(rss_after - rss_before, 0) / count)
            out[s.name] = {"connections": count, "server_memory_per_conn_bytes": per_conn}
        per: dict[str, int] = {}
        for s in fleet:  # calibrate (doubles as warm-up)
            n = 1
            while plan.fixed_count is None:
                elapsed = await _fleet_once(fleets[s.name], payload, n)
                if elapsed >= plan.budget / 4 or n >= 1 << 12:
                    n = max(1, int(n * plan.budget / max(elapsed, 1e-6)))
                    break
                n *= 2
            per[s.name] = n
        runs: dict[str, list[float]] = {s.name: [] for s in fleet}
        for _ in range(plan.repeats):
            for s in fleet:
                elapsed = await _fleet_once(fleets[s.name], payload, per[s.name])
                runs[s.name].append(count * per[s.name] / elapsed)
        for s in fleet:
            out[s.name].update(calls_per_s=statistics.median(runs[s.name]),
                               runs=runs[s.name])
    finally:
        for clients in fleets.values():
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return out


async def _run_live(live: list[_Live], kinds: set[str], plan: _Plan, say: Progress
                    ) -> dict[str, dict[str, dict[str, Any]]]:
    try:
        for s in live:
            if s.port == 0:  # serve in this process
                s.server = await s.system.serve(bench_service(), s.directory)
                s.port = s.server.port
        out: dict[str, dict[str, dict[str, Any]]] = {}
        if "channel" in kinds:
            for s in live:
                s.client = await s.system.connect("127.0.0.1", s.port, s.directory)
            try:
                out["channel"] = await _channel_figures(live, plan, say)
            finally:
                for s in live:
                    if s.client is not None:
                        await s.client.close()
        if "connect" in kinds:
            out["connect"] = await _connect_figures(live, plan, say)
        if "fleet" in kinds:
            out["fleet"] = await _fleet_figures(live, plan, say)
        return out
    finally:
        for s in live:
            if s.server is not None:
                s.server.close()
                await s.server.wait_closed()


def run_suite(kinds: set[str], quick: bool = False, progress: Progress | None = None,
              systems: list[str] | None = None, in_process: bool | None = None,
              pin_cpu: bool = True) -> dict[str, dict[str, Any]]:
    """Run the ``channel`` and/or ``connect`` measurements over every system.
    All systems are up at once (one server each, serving both kinds) and
    measured in interleaved rounds. Returns ``{"channel": {...}, "connect":
    {...}}`` for the kinds asked.

    ``pin_cpu``: run the client and every server on one CPU (Linux). The
    figures then measure the CPU both ends spend per message, and stay within
    a few percent between runs; unpinned, on a small shared VM, cross-CPU
    wake-ups make single runs vary several-fold."""
    say = progress or (lambda _msg: None)
    plan = _plan(quick)
    local = _tiny() if in_process is None else in_process
    sections: dict[str, dict[str, Any]] = {}
    for kind in ("channel", "connect", "fleet"):
        if kind in kinds:
            sections[kind] = {"server": "in-process" if local else "subprocess",
                              "repeats": plan.repeats, "systems": {}}
    if "channel" in sections:
        sections["channel"].update(
            sizes=list(plan.sizes), batch=BATCH, budget_s=plan.budget,
            unit="stream: messages/s and MB/s of payload; calls: calls/s (median of runs)")
    if "connect" in sections:
        sections["connect"]["unit"] = "ms from connect() to the first call's reply (median)"
    if "fleet" in sections:
        sections["fleet"]["unit"] = ("server resident bytes per open connection; calls/s "
                                     "summed over all connections (median of rounds)")
    with ExitStack() as stack:
        cpu = stack.enter_context(_pinned(pin_cpu))
        for section in sections.values():
            section["cpu_pinning"] = (f"client and servers on CPU {cpu}" if cpu is not None
                                      else "none")
        live: list[_Live] = []
        for name in systems or registered_systems():
            factory = _SYSTEMS[name]
            try:
                system = factory()
            except SystemUnavailable as exc:
                for section in sections.values():
                    section["systems"][name] = {"skipped": str(exc)}
                continue
            directory = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="rolewire-bench-")))
            system.prepare(directory)
            path = _factory_path(factory)
            port = 0
            if not local and path is not None:
                port = stack.enter_context(_subprocess_server(path, directory, cpu))
            live.append(_Live(name, system, directory, port))
        placement = {s.name: "in-process" if s.port == 0 else "subprocess" for s in live}
        figures = asyncio.run(_run_live(live, set(sections), plan, say)) if live else {}
    for s in live:
        for kind, section in sections.items():
            if s.name not in figures[kind]:
                continue  # not part of this measurement (fleet: FLEET_SYSTEMS)
            entry = {"label": s.system.label, **figures[kind][s.name]}
            if s.system.note:
                entry["note"] = s.system.note
            if placement[s.name] != section["server"]:
                entry["server"] = placement[s.name]
            section["systems"][s.name] = entry
    # Keep the registry's order (skipped ones included).
    order = systems or registered_systems()
    for section in sections.values():
        section["systems"] = {n: section["systems"][n] for n in order
                              if n in section["systems"]}
    return sections


def run(quick: bool = False, progress: Progress | None = None,
        systems: list[str] | None = None, pin_cpu: bool = True) -> dict[str, Any]:
    """The channel benchmark alone (see the module docs)."""
    return run_suite({"channel"}, quick, progress, systems, pin_cpu=pin_cpu)["channel"]


def run_connect(quick: bool = False, progress: Progress | None = None,
                systems: list[str] | None = None, pin_cpu: bool = True) -> dict[str, Any]:
    """The connect benchmark alone (see the module docs)."""
    return run_suite({"connect"}, quick, progress, systems, pin_cpu=pin_cpu)["connect"]


if __name__ == "__main__":  # python -m rolewire.benchmarks.channel --serve
    if sys.argv[1:] == ["--serve"]:
        _serve_stdio()
    else:
        print(json.dumps(run(quick="--quick" in sys.argv, progress=print), indent=2))
