"""``rolewire bench workers``: full handshakes per second over loopback TCP
against :func:`rolewire.aio.serve_workers` with one and with two worker
processes (key role, default suite).

The load comes from client processes (two, each running ``concurrency``
connect-and-close loops); each handshake is a new TCP connection, the full
handshake, and a graceful CLOSE. Both pools run for the whole benchmark
(an idle pool uses no CPU) and are measured in interleaved rounds, the
order alternating, so a slow spell of a shared machine hits both alike;
figures are medians over the rounds, ``workers2_vs_workers1`` is the median
of the per-round ratios.

The clients need about as much CPU per handshake as the server, so on a
machine with two cores the clients and two workers compete for them and
the ratio stays near 1; it shows what a second worker buys only where the
server has cores of its own. There is no target.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from rolewire.aio import WorkerPool, connect, serve_workers
from rolewire.handshake import HandshakeConfig
from rolewire.roles import KeyRole
from rolewire.services import Service

Progress = Callable[[str], None]

#: Client processes generating the load, and connect loops in each.
CLIENT_PROCESSES = 2
CONCURRENCY = 8


def bench_service(key: bytes) -> tuple[Service, HandshakeConfig]:
    """The factory each worker runs: one key role, one operation."""
    service = Service("bench-workers")

    @service.operation("ping", roles=["bench"])
    def ping(call: Any, body: bytes) -> bytes:
        return body

    return service, HandshakeConfig(roles=[KeyRole("bench", key)])


async def _handshakes(port: int, config: HandshakeConfig, seconds: float,
                      concurrency: int) -> tuple[int, float]:
    """Connect-and-close loops for about ``seconds``: (handshakes, elapsed)."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            channel = await connect("127.0.0.1", port, config, timeout=30)
            await channel.close()
            done += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done, time.perf_counter() - start


def _client(conn: Any, key: bytes, concurrency: int) -> None:
    """A client process: runs the measurements the parent asks for."""
    config = HandshakeConfig(roles=[KeyRole("bench", key)])
    while True:
        command = conn.recv()
        if command[0] == "quit":
            return
        _, port, seconds = command
        conn.send(asyncio.run(_handshakes(port, config, seconds, concurrency)))


class _Clients:
    """The client processes (spawned, like the workers)."""

    def __init__(self, key: bytes, processes: int, concurrency: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        for _ in range(processes):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_client, args=(theirs, key, concurrency),
                               name="rolewire-bench-client")
            proc.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(proc)

    def rate(self, port: int, seconds: float) -> float:
        """Handshakes per second of all clients together against ``port``."""
        for pipe in self.pipes:
            pipe.send(("run", port, seconds))
        results: list[tuple[int, float]] = [pipe.recv() for pipe in self.pipes]
        return sum(n / elapsed for n, elapsed in results)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("quit",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(30)
            if proc.exitcode is None:
                proc.kill()
                proc.join(10)


def run(quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Measures both pools; returns the JSON-ready report."""
    say = progress or (lambda _msg: None)
    tiny = os.environ.get("ROLEWIRE_BENCH_TINY") == "1"
    budget = 0.3 if tiny else (1.0 if quick else 2.0)
    repeats = 1 if tiny else (3 if quick else 5)
    key = os.urandom(32)
    factory = functools.partial(bench_service, key)
    # The per-address handshake rate and pending bounds protect a server
    # from one peer; here every client is on 127.0.0.1 on purpose.
    options: dict[str, Any] = {"handshake_rate": None, "max_pending_per_peer": 256}
    pools: dict[int, WorkerPool] = {}
    clients: _Clients | None = None
    runs: dict[int, list[float]] = {1: [], 2: []}
    try:
        say("starting 1 + 2 workers and the client processes")
        for n in (1, 2):
            pools[n] = serve_workers(factory, workers=n, **options)
        clients = _Clients(key, CLIENT_PROCESSES, CONCURRENCY)
        for n in (1, 2):
            clients.rate(pools[n].port, min(budget, 0.3))  # warm up (and fail early)
        for r in range(repeats):
            say(f"round {r + 1}/{repeats}")
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                runs[n].append(clients.rate(pools[n].port, budget))
    finally:
        if clients is not None:
            clients.close()
        for pool in pools.values():
            pool.stop()
    per_round = [two / one for one, two in zip(runs[1], runs[2])]
    ratio = statistics.median(per_round)
    return {
        "unit": "full handshakes per second, TCP loopback, key role (median of rounds)",
        "handshakes_per_s_workers1": statistics.median(runs[1]),
        "handshakes_per_s_workers2": statistics.median(runs[2]),
        "workers2_vs_workers1": ratio,
        "runs": {"workers1": runs[1], "workers2": runs[2]},
        "ratios": {"workers2_vs_workers1": ratio},
        "ratio_ranges": {"workers2_vs_workers1": [min(per_round), max(per_round)]},
        "targets": {},
        "rounds": repeats,
        "budget_s": budget,
        "client_processes": CLIENT_PROCESSES,
        "concurrency": CONCURRENCY,
        "cpu_count": os.cpu_count(),
    }


def merge_into(report: dict[str, Any]) -> None:
    """Add this benchmark to a ``bench all`` summary: the two rates as
    ``workers1_handshakes_per_s`` and ``workers2_handshakes_per_s`` at the
    top, ``workers2_vs_workers1`` under ``ratios`` and ``ratio_ranges``
    (no target: see the module docstring)."""
    workers = report["workers"]
    report["workers1_handshakes_per_s"] = workers["handshakes_per_s_workers1"]
    report["workers2_handshakes_per_s"] = workers["handshakes_per_s_workers2"]
    report.setdefault("ratios", {})["workers2_vs_workers1"] = workers["workers2_vs_workers1"]
    report.setdefault("ratio_ranges", {})["workers2_vs_workers1"] = (
        workers["ratio_ranges"]["workers2_vs_workers1"])


def print_report(result: dict[str, Any]) -> None:
    """The two rates and their ratio."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rolewire bench workers - handshakes/s through serve_workers "
                        "(median of interleaved rounds)")
    table.add_column("workers")
    table.add_column("handshakes/s", justify="right")
    for n in (1, 2):
        table.add_row(str(n), f"{result[f'handshakes_per_s_workers{n}']:,.0f}")
    console = Console()
    console.print(table)
    low, high = result["ratio_ranges"]["workers2_vs_workers1"]
    console.print(f"workers2_vs_workers1 = {result['workers2_vs_workers1']:.2f} "
                  f"(rounds {low:.2f}..{high:.2f}; {result['cpu_count']} CPUs shared with "
                  f"{result['client_processes']} client processes; no target)")
