"""``rolewire bench http``: the HTTP binding against the thesis's HTTPS
baselines, on one uvicorn worker each, in interleaved rounds of one run.

Systems (the same tiny ASGI app: ``POST /echo`` returns its JSON body):

- ``plain``: HTTP, no security (the floor);
- ``mtls``: HTTPS with mutual TLS (uvicorn ``--ssl-*`` with required client
  certificates from a private CA, P-256; httpx with a client certificate);
- ``jwt``: HTTPS (server certificate only) and a self-signed EdDSA JWT per
  request in ``Authorization`` (:mod:`rolewire.baselines.jwt`: signed by the
  client, verified by the server with request hash and replay cache);
- ``rolewire``: plain HTTP through :class:`rolewire.http.RolewireMiddleware`
  and :class:`rolewire.http.SyncTransport` (key role).

Each server is a child process (one uvicorn worker); the client is a sync
``httpx.Client`` with keep-alive. Per round, in a rotating order: sequential
calls at 64 B and 16 KiB (calls/s and per-call latency), and "connect": a
new client to its first response (TCP, TLS or the rolewire handshake
included). Ratios are medians of per-round ratios (> 1: rolewire better):

- ``http_calls_vs_mtls``: rolewire ÷ mTLS keep-alive calls/s at 64 B;
- ``http_connect_vs_mtls``: mTLS ÷ rolewire new-client-to-first-response time;
- ``http_calls_vs_jwt``: rolewire ÷ JWT calls/s at 64 B (the HTTP stack is
  common, so this is what the JWT costs on top);
- ``http_calls16k_vs_mtls`` (no target): the same as the first at 16 KiB.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SYSTEMS", "TARGETS", "draw", "plot", "print_report", "run"]

SYSTEMS = ("plain", "mtls", "jwt", "rolewire")
SIZES = (64, 16384)
TARGETS = {"http_calls_vs_mtls": 1.0, "http_connect_vs_mtls": 1.5, "http_calls_vs_jwt": 1.5}
Progress = Callable[[str], None]


# -- the server (child process) -------------------------------------------------------
def _echo_app(verify: Callable[[str | None, bytes], bool] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status = 200
        if verify is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = auth[7:] if auth.startswith("Bearer ") else None
            if not verify(token, body):
                status, body = 401, b'{"error":"token"}'
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def _server_app(system: str, directory: Path) -> tuple[Any, dict[str, Any]]:
    ssl_args: dict[str, Any] = {}
    if system in ("mtls", "jwt"):
        ssl_args = {"ssl_certfile": str(directory / "server.pem"),
                    "ssl_keyfile": str(directory / "server.key")}
    if system == "mtls":
        ssl_args.update(ssl_ca_certs=str(directory / "ca.pem"), ssl_cert_reqs=ssl.CERT_REQUIRED)
    if system == "jwt":
        from rolewire.baselines.jwt import KeyRegistry, TokenRejected, TokenVerifier

        verifier = TokenVerifier("bench", KeyRegistry.load(directory / "registry"))

        def verify(token: str | None, body: bytes) -> bool:
            if token is None:
                return False
            try:
                verifier.verify(token, "POST /echo", body)
            except TokenRejected:
                return False
            return True

        return _echo_app(verify), ssl_args
    if system == "rolewire":
        from rolewire.http import RolewireMiddleware

        return RolewireMiddleware(_echo_app(), _rolewire_config(directory)), ssl_args
    return _echo_app(), ssl_args


def _rolewire_config(directory: Path) -> Any:
    from rolewire.handshake import HandshakeConfig
    from rolewire.roles import KeyRole

    key = base64.b64decode((directory / "rolewire.key").read_bytes())
    return HandshakeConfig(roles=[KeyRole("bench", key)])


def _serve_child() -> None:
    """Child entry point: spec on stdin, port on stdout, serve until stdin closes."""
    import uvicorn

    spec = json.loads(sys.stdin.readline())
    app, ssl_args = _server_app(spec["system"], Path(spec["dir"]))
    sock = socket.socket()
    # Accepted sockets inherit TCP_NODELAY: uvicorn writes response headers
    # and body separately, and with a socket passed in (not bound by
    # uvicorn) Nagle + delayed ACK would add 40 ms to every response.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    config = uvicorn.Config(app, log_level="error", lifespan="off", access_log=False,
                            workers=1, **ssl_args)
    server = uvicorn.Server(config)

    def stop_on_eof() -> None:
        sys.stdin.read()
        server.should_exit = True

    threading.Thread(target=stop_on_eof, daemon=True).start()
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


# -- the client (this process) ----------------------------------------------------------
def _prepare(directory: Path) -> None:
    from rolewire import pki
    from rolewire.baselines import mtls
    from rolewire.baselines.jwt import KeyRegistry, ServiceIdentity

    ca = pki.create_ca("bench http CA")
    (directory / "ca.pem").write_bytes(ca.certificate_pem())
    mtls.issue_service_certificate(ca, "bench", ["bench"]).save(
        directory / "server.pem", directory / "server.key")
    mtls.issue_service_certificate(ca, "bench-client", ["bench"]).save(
        directory / "client.pem", directory / "client.key")
    identity = ServiceIdentity.generate("bench-client")
    identity.save(directory / "client.jwk")
    registry = KeyRegistry()
    registry.add_identity(identity, ["bench"])
    registry.save(directory / "registry")
    (directory / "rolewire.key").write_bytes(base64.b64encode(os.urandom(32)))


class _Client:
    """A fresh client of one system (a new connection pool)."""

    def __init__(self, system: str, port: int, directory: Path) -> None:
        import httpx

        self.system = system
        scheme = "https" if system in ("mtls", "jwt") else "http"
        self.url = f"{scheme}://127.0.0.1:{port}/echo"
        # Plain-HTTP clients never use TLS: do not load a CA bundle for them
        # (that alone costs more than the rolewire handshake).
        transport: dict[str, Any] = {"verify": False}
        if scheme == "https":
            context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
            if system == "mtls":
                context.load_cert_chain(directory / "client.pem", directory / "client.key")
            transport["verify"] = context
        inner = httpx.HTTPTransport(**transport)
        kwargs: dict[str, Any] = {"timeout": 120, "transport": inner}
        self.signer = None
        if system == "jwt":
            from rolewire.baselines.jwt import ServiceIdentity, TokenSigner

            self.signer = TokenSigner(ServiceIdentity.load("bench-client",
                                                           directory / "client.jwk"))
        if system == "rolewire":
            from rolewire.http import SyncTransport

            kwargs["transport"] = SyncTransport(_rolewire_config(directory), inner=inner)
        self.client = httpx.Client(**kwargs)

    def call(self, body: bytes) -> None:
        headers = {"content-type": "application/json"}
        if self.signer is not None:
            headers["authorization"] = "Bearer " + self.signer.sign("bench", "POST /echo", body)
        response = self.client.post(self.url, content=body, headers=headers)
        if response.status_code != 200 or len(response.content) != len(body):
            raise RuntimeError(f"bench http {self.system}: bad reply {response.status_code}")

    def close(self) -> None:
        self.client.close()


def _payload(size: int) -> bytes:
    filler = size - len(b'{"d":""}')
    return b'{"d":"' + b"x" * filler + b'"}'


def _calls(client: _Client, size: int, n: int) -> tuple[float, list[float]]:
    body = _payload(size)
    client.call(body)  # warm
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        client.call(body)
        latencies.append(time.perf_counter() - t)
    return n / (time.perf_counter() - start), latencies


def _connect(system: str, port: int, directory: Path, n: int) -> list[float]:
    body = _payload(64)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client = _Client(system, port, directory)
        client.call(body)
        times.append(time.perf_counter() - t)
        client.close()
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run(quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Measure the four systems; returns the report (see module doc).
    ``ROLEWIRE_BENCH_TINY=1`` shrinks it to a smoke test."""
    import uvicorn

    from rolewire.benchmarks.child import child_server

    say = progress or (lambda _m: None)
    tiny = os.environ.get("ROLEWIRE_BENCH_TINY") == "1"
    rounds, n_calls, n_connect = (2, 20, 2) if tiny else (3, 150, 4) if quick else (7, 600, 12)
    per_size = {64: n_calls, 16384: max(10, n_calls // 2)}
    raw: dict[str, dict[str, list[Any]]] = {
        s: {"64": [], "16384": [], "lat64": [], "lat16384": [], "connect": []} for s in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="rolewire-bench-http-") as tmp:
        directory = Path(tmp)
        _prepare(directory)
        from contextlib import ExitStack

        with ExitStack() as stack:
            ports = {}
            for system in SYSTEMS:
                spec = json.dumps({"system": system, "dir": str(directory)}).encode()
                ports[system] = stack.enter_context(
                    child_server(["-m", "rolewire.benchmarks.http"], spec))
            clients = {s: _Client(s, ports[s], directory) for s in SYSTEMS}
            try:
                for r in range(rounds):
                    order = SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[:r % len(SYSTEMS)]
                    say(f"round {r + 1}/{rounds}")
                    for system in order:
                        for size in SIZES:
                            rate, lat = _calls(clients[system], size, per_size[size])
                            raw[system][str(size)].append(rate)
                            raw[system][f"lat{size}"].extend(lat)
                        raw[system]["connect"].append(
                            statistics.median(_connect(system, ports[system], directory,
                                                       n_connect)))
            finally:
                for client in clients.values():
                    client.close()
    systems: dict[str, Any] = {}
    for system in SYSTEMS:
        data = raw[system]
        systems[system] = {
            "calls": {str(size): {"calls_per_s": statistics.median(data[str(size)]),
                                  "p50_ms": _pct(data[f"lat{size}"], 0.50),
                                  "p99_ms": _pct(data[f"lat{size}"], 0.99)}
                      for size in SIZES},
            "connect": {"ms": statistics.median(data["connect"]) * 1000,
                        "per_round_ms": [v * 1000 for v in data["connect"]]},
        }

    def per_round(num: list[float], den: list[float]) -> list[float]:
        return [a / b for a, b in zip(num, den) if b]

    rounds_ratios = {
        "http_calls_vs_mtls": per_round(raw["rolewire"]["64"], raw["mtls"]["64"]),
        "http_connect_vs_mtls": per_round(raw["mtls"]["connect"], raw["rolewire"]["connect"]),
        "http_calls_vs_jwt": per_round(raw["rolewire"]["64"], raw["jwt"]["64"]),
        "http_calls16k_vs_mtls": per_round(raw["rolewire"]["16384"], raw["mtls"]["16384"]),
    }
    ratios = {k: statistics.median(v) if v else None for k, v in rounds_ratios.items()}
    return {
        "benchmark": "http", "quick": quick, "rounds": rounds,
        "server": f"uvicorn {uvicorn.__version__}, one worker per system, loopback",
        "client": "httpx.Client (sync, keep-alive); connect = new client to first response",
        "sizes": list(SIZES), "calls_per_round": per_size,
        "systems": systems, "ratios": ratios,
        "ratio_ranges": {k: [min(v), max(v)] if v else None for k, v in rounds_ratios.items()},
        "targets": dict(TARGETS),
        "targets_met": {k: (None if ratios[k] is None else ratios[k] >= t)  # type: ignore[operator]
                        for k, t in TARGETS.items()},
        "notes": ["ratios: medians of per-round ratios; > 1 means rolewire is better",
                  "client and servers share the machine: figures are rough, ratios count"],
    }


def print_report(result: dict[str, Any]) -> None:
    """A table of the figures and the ratios."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rolewire bench http - one uvicorn worker per system (median)")
    table.add_column("system")
    for size in result["sizes"]:
        table.add_column(f"{size} B calls/s", justify="right")
        table.add_column(f"{size} B p50/p99 ms", justify="right")
    table.add_column("connect ms", justify="right")
    for name, entry in result["systems"].items():
        cells = []
        for size in result["sizes"]:
            c = entry["calls"][str(size)]
            cells += [f"{c['calls_per_s']:,.0f}", f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}"]
        table.add_row(name, *cells, f"{entry['connect']['ms']:.2f}")
    console = Console()
    console.print(table)
    for name, value in result["ratios"].items():
        target = result["targets"].get(name)
        shown = "n/a" if value is None else f"{value:.2f}"
        console.print(f"  {name}: {shown}" + (f" (target >= {target})" if target else ""))


def draw(ax: Any, result: dict[str, Any]) -> None:
    """One chart panel: keep-alive calls/s at 64 B and connect time per system."""
    names = list(result["systems"])
    rates = [result["systems"][n]["calls"]["64"]["calls_per_s"] for n in names]
    bars = ax.bar(names, rates)
    for bar, name in zip(bars, names):
        ax.annotate(f"{result['systems'][name]['connect']['ms']:.1f} ms",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize="x-small")
    ax.set_title("HTTP keep-alive calls/s, 64 B\n(label: new client to first response)",
                 fontsize="small")


def plot(result: dict[str, Any], png_path: str | os.PathLike[str]) -> None:
    """``bench http --plot``: the :func:`draw` panel alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    draw(ax, result)
    fig.tight_layout()
    fig.savefig(os.fspath(png_path), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    _serve_child()
