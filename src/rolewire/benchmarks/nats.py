"""``rolewire bench nats``: rolewire end to end through a real nats-server,
against plain NATS and NATS with mutual TLS to the broker, in one run.

Every system talks to its own local nats-server (plain, or ``--tlsverify``
for the mTLS systems), all started before the first round; the systems are
measured in interleaved rounds (A, B, C, ... A, B, C, ...) so the drift of a
shared machine affects them alike, and the figures are medians over rounds.

Systems and measurements (64 B payloads):

- ``plain``: NATS pub/sub, one NATS message per payload; request/reply with
  ``nc.request`` (a responder that echoes);
- ``mtls``: the same with mutual TLS between each client and the broker;
- ``rolewire``: :func:`rolewire.nats.connect_nats` / :func:`serve_nats`
  end to end through the plain broker: one record per NATS message
  (``stream``), the records of a flush packed into one NATS message
  (``stream_batch``), and calls;
- ``rolewire_mtls``: rolewire through the mTLS broker.

``stream``: N one-way messages published as fast as the client can, ending
when the receiver has handled all N; msgs/s. ``calls_seq``: sequential
request/reply; ``calls16``: 16 callers at once; calls/s. ``pipeline``: one
producer and a queue group of two workers in this process; msgs/s.

Ratios (higher is better for rolewire): ``nats_e2e_vs_plain`` (rolewire
stream ÷ plain stream), ``nats_e2e_vs_mtls`` (rolewire stream ÷ mTLS
stream), ``nats_e2e_batch_vs_plain`` (rolewire batched stream ÷ plain
per-message stream), ``nats_calls16_vs_mtls`` (rolewire calls16 ÷ mTLS
calls16).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "ratios", "run"]

#: What the project aims for (issue 16).
TARGETS = {
    "nats_e2e_vs_plain": 0.9,
    "nats_e2e_vs_mtls": 1.0,
    "nats_e2e_batch_vs_plain": 8.0,
    "nats_calls16_vs_mtls": 1.2,
}
PAYLOAD = b"x" * 64
Progress = Callable[[str], None]


class _System:
    """One way to move the benchmark's messages through a broker."""

    name = ""

    async def setup(self) -> None: ...

    async def stream(self, n: int, *, batch: bool = False) -> float:  # pragma: no cover
        raise NotImplementedError

    async def calls(self, n: int, inflight: int) -> float:  # pragma: no cover
        raise NotImplementedError

    async def pipeline(self, n: int) -> float:  # pragma: no cover
        raise NotImplementedError

    async def teardown(self) -> None: ...


async def _timed(run: Callable[[], Awaitable[None]], n: int) -> float:
    start = time.perf_counter()
    await run()
    return n / (time.perf_counter() - start)


async def _in_flight(n: int, inflight: int, one: Callable[[], Awaitable[Any]]) -> None:
    per_task, extra = divmod(n, inflight)

    async def caller(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(caller(per_task + (1 if i < extra else 0))
                           for i in range(inflight)))


class _PlainNats(_System):
    """nats-py straight to the broker (optionally with mutual TLS)."""

    def __init__(self, name: str, url: str, tls: Any = None) -> None:
        self.name = name
        self.url = url
        self.tls = tls

    async def setup(self) -> None:
        import nats

        self.pub = await nats.connect(self.url, tls=self.tls)
        self.sub = await nats.connect(self.url, tls=self.tls)

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await self.sub.subscribe("bench.echo", cb=echo)
        await self.sub.flush()

    async def stream(self, n: int, *, batch: bool = False) -> float:
        done = asyncio.Event()
        count = 0

        async def counted(msg: Any) -> None:
            nonlocal count
            count += 1
            if count == n:
                done.set()

        sub = await self.sub.subscribe("bench.stream", cb=counted)
        await self.sub.flush()

        async def run() -> None:
            publish = self.pub.publish
            for _ in range(n):
                await publish("bench.stream", PAYLOAD)
            await self.pub.flush()
            await asyncio.wait_for(done.wait(), 120)

        try:
            return await _timed(run, n)
        finally:
            await sub.unsubscribe()

    async def calls(self, n: int, inflight: int) -> float:
        async def one() -> None:
            await self.pub.request("bench.echo", PAYLOAD, timeout=30)

        return await _timed(lambda: _in_flight(n, inflight, one), n)

    async def pipeline(self, n: int) -> float:
        done = asyncio.Event()
        count = 0

        async def worker(msg: Any) -> None:
            nonlocal count
            count += 1
            if count == n:
                done.set()

        subs = [await self.sub.subscribe("bench.work", queue="workers", cb=worker)
                for _ in range(2)]
        await self.sub.flush()

        async def run() -> None:
            for _ in range(n):
                await self.pub.publish("bench.work", PAYLOAD)
            await self.pub.flush()
            await asyncio.wait_for(done.wait(), 120)

        try:
            return await _timed(run, n)
        finally:
            for sub in subs:
                await sub.unsubscribe()

    async def teardown(self) -> None:
        await self.pub.close()
        await self.sub.close()


def _rolewire_systems(url: str, tls: Any, suffix: str) -> list[_System]:
    # Imported here so the plain-NATS baselines run even if the binding
    # cannot be imported (the report then says so).
    from rolewire.benchmarks._nats_rolewire import RolewireNats

    return [RolewireNats("rolewire" + suffix, url, tls)]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """The issue's ratios from :func:`run`'s ``results``."""

    def get(system: str, kind: str) -> float | None:
        value = results.get(system, {}).get(kind)
        return float(value) if value else None

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        "nats_e2e_vs_plain": div(get("rolewire", "stream"), get("plain", "stream")),
        "nats_e2e_vs_mtls": div(get("rolewire", "stream"), get("mtls", "stream")),
        "nats_e2e_batch_vs_plain": div(get("rolewire", "stream_batch"),
                                       get("plain", "stream")),
        "nats_calls16_vs_mtls": div(get("rolewire", "calls16"), get("mtls", "calls16")),
        "nats_calls_seq_vs_mtls": div(get("rolewire", "calls_seq"), get("mtls", "calls_seq")),
        "nats_e2e_mtls_vs_mtls": div(get("rolewire_mtls", "stream"), get("mtls", "stream")),
    }


async def _measure(systems: list[_System], *, rounds: int, stream_n: int, calls_n: int,
                   progress: Progress | None) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
    for system in systems:
        await system.setup()
    try:
        for round_no in range(rounds):
            for system in systems:
                if progress:
                    progress(f"round {round_no + 1}/{rounds}: {system.name}")
                row = figures[system.name]
                row.setdefault("stream", []).append(await system.stream(stream_n))
                if system.name.startswith("rolewire"):
                    row.setdefault("stream_batch", []).append(
                        await system.stream(stream_n, batch=True))
                row.setdefault("calls_seq", []).append(await system.calls(calls_n, 1))
                row.setdefault("calls16", []).append(await system.calls(calls_n * 4, 16))
                row.setdefault("pipeline", []).append(await system.pipeline(stream_n))
    finally:
        for system in systems:
            await system.teardown()
    return figures


def run(*, quick: bool = False, rounds: int | None = None,
        progress: Progress | None = None) -> dict[str, Any]:
    """Start the brokers, measure every system in interleaved rounds, and
    return ``{"benchmark": "nats", "results": {system: {kind: median}},
    "ranges": {...}, "ratios": {...}, "targets": ..., "targets_met": ...}``."""
    from rolewire.nats.broker import NatsServer
    from rolewire.nats.tls import make_broker_pki

    rounds = rounds or (2 if quick else 5)
    stream_n = 5_000 if quick else 40_000
    calls_n = 300 if quick else 2_000
    notes: list[str] = []
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        broker_pki = make_broker_pki(directory)
        plain = stack.enter_context(NatsServer())
        secured = stack.enter_context(NatsServer(tls=broker_pki.server))
        systems: list[_System] = [
            _PlainNats("plain", plain.url),
            _PlainNats("mtls", secured.url, broker_pki.client_context()),
        ]
        try:
            systems += _rolewire_systems(plain.url, None, "")
            systems += _rolewire_systems(secured.url, broker_pki.client_context(), "_mtls")
        except ImportError as exc:  # pragma: no cover - the binding is part of the package
            notes.append(f"rolewire over NATS not measured: {exc}")
        figures = asyncio.run(_measure(systems, rounds=rounds, stream_n=stream_n,
                                       calls_n=calls_n, progress=progress))
    results = {name: {kind: round(_median(values), 1) for kind, values in row.items()}
               for name, row in figures.items()}
    ranges = {name: {kind: [round(min(v), 1), round(max(v), 1)] for kind, v in row.items()}
              for name, row in figures.items()}
    found = ratios(results)
    return {
        "benchmark": "nats", "quick": quick, "rounds": rounds,
        "counts": {"stream": stream_n, "calls_seq": calls_n, "calls16": calls_n * 4},
        "results": results, "ranges": ranges, "ratios": found, "targets": TARGETS,
        "targets_met": {k: (found.get(k) is not None and found[k] >= v)  # type: ignore[operator]
                        for k, v in TARGETS.items()},
        "notes": notes,
    }


def print_report(result: dict[str, Any]) -> None:
    """A table of the figures (medians, with ranges) and the ratios."""
    from rich.console import Console
    from rich.table import Table

    kinds = ("stream", "stream_batch", "calls_seq", "calls16", "pipeline")
    table = Table(title="rolewire bench nats - 64 B, per second (median of interleaved rounds)")
    table.add_column("system")
    for kind in kinds:
        table.add_column(kind, justify="right")
    for name, row in result["results"].items():
        table.add_row(name, *(f"{row[k]:,.0f}" if k in row else "-" for k in kinds))
    console = Console()
    console.print(table)
    for key, value in result["ratios"].items():
        target = TARGETS.get(key)
        shown = "n/a" if value is None else f"{value:.2f}"
        if target is None:
            console.print(f"{key} = {shown}")
        else:
            met = result["targets_met"].get(key)
            console.print(f"{key} = {shown} (target >= {target}; {'met' if met else 'not met'})")


def draw(ax: Any, result: dict[str, Any]) -> None:
    """One panel of ``bench all --plot``: 64 B messages/s and calls/s per
    system (medians), on a log scale."""
    kinds = ("stream", "stream_batch", "calls16", "pipeline")
    systems = list(result.get("results", {}))
    width = 0.8 / max(len(systems), 1)
    for i, name in enumerate(systems):
        row = result["results"][name]
        ax.bar([k + i * width for k in range(len(kinds))], [row.get(k, 0.0) for k in kinds],
               width, label=name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(kinds))], list(kinds))
    ax.set_yscale("log")
    ax.set_title("NATS, 64 B (per second)")
    ax.legend(fontsize="small")
