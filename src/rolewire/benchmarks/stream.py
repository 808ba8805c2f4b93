"""Loopback benchmarks of the asyncio adapter (used by
``rolewire.benchmarks.channel`` and by hand).

The server runs in a separate process (``python -m rolewire.benchmarks.stream
--serve``) so client
and server each get a CPU, as in the TLS baselines of the reference
measurements. Every figure is the median of ``repeats`` runs; a run ends
when the server has *handled* every message (a final request is answered
after the notifications before it, in order).

    >>> from rolewire.benchmarks.stream import bench_stream, bench_calls
    >>> bench_stream(64, 200_000)["messages_per_s"]          # doctest: +SKIP
    >>> bench_calls(5_000)["calls_per_s"]                      # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rolewire.benchmarks.child import child_server
from rolewire.handshake import HandshakeConfig, HandshakeSuite
from rolewire.record import RecordLimits
from rolewire.roles.key import KeyRole
from rolewire.services import Service

__all__ = ["AEGIS_SUITE", "DEFAULT_SUITE", "bench_calls", "bench_stream"]

DEFAULT_SUITE = HandshakeSuite.X448_MLKEM768_BLAKE2B_CHACHA20POLY1305
AEGIS_SUITE = HandshakeSuite.X448_MLKEM768_BLAKE2B_AEGIS256
#: Soft rekey limits out of the way: a benchmark seals millions of records.
_LIMITS = RecordLimits(soft_messages=1 << 60, soft_bytes=1 << 62)


def _config(key: bytes, suite: HandshakeSuite | str) -> HandshakeConfig:
    if isinstance(suite, str):
        suite = HandshakeSuite.from_name(suite)
    return HandshakeConfig(roles=[KeyRole("bench", key)], suites=(suite,),
                           record_limits=_LIMITS)


def _bench_service() -> Service:
    svc = Service("bench")
    state: dict[str, Any] = {"messages": 0, "bytes": 0, "cpu": time.process_time()}

    @svc.operation("sink", roles=["bench"])
    def sink(call: Any, body: bytes) -> None:
        state["messages"] += 1
        state["bytes"] += len(body)

    @svc.operation("done", roles=["bench"])
    def done(call: Any, body: bytes) -> bytes:
        """Messages, bytes and this process's CPU seconds since the last "done"."""
        now = time.process_time()
        out = b"%d %d %.6f" % (state["messages"], state["bytes"], now - state["cpu"])
        state.update(messages=0, bytes=0, cpu=now)
        return out

    @svc.operation("echo", roles=["bench"])
    def echo(call: Any, body: bytes) -> bytes:
        return body

    return svc


def _serve_stdio(suite: str) -> None:
    """Server side of a benchmark (``python -m rolewire.benchmarks.stream --serve
    SUITE``): reads the role key (hex) from stdin, prints the port, serves
    until stdin closes."""
    from rolewire.aio import serve

    key = bytes.fromhex(sys.stdin.readline().strip())

    async def main() -> None:
        server = await serve(_bench_service(), _config(key, suite), idle_timeout=None)
        print(server.port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@contextmanager
def _server(key: bytes, suite: HandshakeSuite | str, in_process: bool) -> Iterator[int | None]:
    """Yields the port of a server in a child process (or None: the caller
    serves in its own loop). A plain subprocess, not multiprocessing, so
    callers need no ``if __name__ == "__main__"`` guard."""
    if in_process:
        yield None
        return
    name = suite if isinstance(suite, str) else suite.name
    with child_server(["-m", "rolewire.benchmarks.stream", "--serve", name], key.hex().encode()) as port:
        yield port


async def _with_channel(port: int | None, key: bytes, suite: HandshakeSuite | str,
                        body: Any) -> Any:
    from rolewire.aio import connect, serve

    config = _config(key, suite)
    if port is None:
        async with serve(_bench_service(), config, idle_timeout=None) as server, \
                connect("127.0.0.1", server.port, config) as channel:
            return await body(channel)
    async with connect("127.0.0.1", port, config) as channel:
        return await body(channel)


def bench_stream(size: int, count: int, *, suite: HandshakeSuite | str = DEFAULT_SUITE,
                 mode: str = "send_many", batch: int = 256, repeats: int = 3,
                 in_process: bool = False) -> dict[str, Any]:
    """One-way streaming of ``count`` messages of ``size`` bytes over
    loopback, then one request to wait until the server handled them all.

    Args:
        suite: a :class:`~rolewire.handshake.HandshakeSuite` (or its name);
            both ends enable only it. ``AEGIS_SUITE`` for AEGIS-256 records.
        mode: ``"send_many"`` (batches of ``batch`` messages, one native seal
            and one write per batch) or ``"notify"`` (one ``await notify()``
            per message; the channel coalesces them itself).
        repeats: timed runs; the median is reported.
        in_process: run the server in this process's event loop (both ends
            then share one CPU) instead of a separate process.

    Returns ``{"size", "count", "suite", "mode", "messages_per_s", "mb_per_s",
    "seconds", "runs", "sender_cpu_us", "receiver_cpu_us"}`` (``runs``:
    messages/s of every run; ``*_cpu_us``: median CPU time per message of
    each process, steadier than wall-clock rates on a shared VM;
    ``receiver_cpu_us`` is None with ``in_process``).
    """
    if mode not in ("send_many", "notify"):
        raise ValueError("mode is 'send_many' or 'notify'")
    key = os.urandom(32)
    payload = os.urandom(size)
    suite_name = suite if isinstance(suite, str) else suite.name

    async def body(channel: Any) -> list[tuple[float, float, float]]:
        await channel.call("done")  # reset, and warm up
        bodies = [payload] * batch
        times = []
        for _ in range(repeats):
            cpu = time.process_time()
            start = time.perf_counter()
            sent = 0
            if mode == "send_many":
                while sent < count:
                    n = min(batch, count - sent)
                    await channel.send_many("sink", bodies if n == batch else bodies[:n])
                    sent += n
            else:
                notify = channel.notify
                for _ in range(count):
                    await notify("sink", payload)
            reply = await channel.call("done")
            elapsed = time.perf_counter() - start
            sender_cpu = time.process_time() - cpu
            got, _, receiver_cpu = reply.split()
            if int(got) != count:
                raise RuntimeError(f"server handled {int(got)} of {count} messages")
            times.append((elapsed, sender_cpu, float(receiver_cpu)))
        return times

    with _server(key, suite, in_process) as port:
        results = asyncio.run(_with_channel(port, key, suite, body))
    times = [r[0] for r in results]
    median = statistics.median(times)
    out = {
        "size": size, "count": count, "suite": suite_name, "mode": mode,
        "messages_per_s": count / median, "mb_per_s": count * size / median / 1e6,
        "seconds": median, "runs": [count / t for t in times],
        "sender_cpu_us": statistics.median(r[1] for r in results) / count * 1e6,
        "receiver_cpu_us": None,
    }
    if not in_process:  # else both sides share one process's CPU clock
        out["receiver_cpu_us"] = statistics.median(r[2] for r in results) / count * 1e6
    return out


def bench_calls(count: int = 5000, *, size: int = 64,
                suite: HandshakeSuite | str = DEFAULT_SUITE, repeats: int = 3,
                in_process: bool = False) -> dict[str, Any]:
    """Sequential request/response calls (one outstanding at a time) of
    ``size``-byte bodies over loopback. Returns ``{"count", "size", "suite",
    "calls_per_s", "latency_us", "runs"}`` (medians of ``repeats`` runs)."""
    key = os.urandom(32)
    payload = os.urandom(size)
    suite_name = suite if isinstance(suite, str) else suite.name

    async def body(channel: Any) -> list[float]:
        for _ in range(100):
            await channel.call("echo", payload)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(count):
                await channel.call("echo", payload)
            times.append(time.perf_counter() - start)
        return times

    with _server(key, suite, in_process) as port:
        times = asyncio.run(_with_channel(port, key, suite, body))
    median = statistics.median(times)
    return {"count": count, "size": size, "suite": suite_name,
            "calls_per_s": count / median, "latency_us": median / count * 1e6,
            "runs": [count / t for t in times]}


def main() -> None:
    """Print the streaming and call figures for both record suites."""
    for suite in (DEFAULT_SUITE, AEGIS_SUITE):
        for size, count in ((64, 200_000), (16 * 1024, 20_000)):
            for mode in ("send_many", "notify"):
                r = bench_stream(size, count, suite=suite, mode=mode)
                print(f"{suite.name:42} {mode:9} {size:6} B  "
                      f"{r['messages_per_s']:>10,.0f} msg/s  {r['mb_per_s']:8.1f} MB/s  "
                      f"cpu/msg sender {r['sender_cpu_us']:.2f} us "
                      f"receiver {r['receiver_cpu_us']:.2f} us")
        r = bench_calls(5000, suite=suite)
        print(f"{suite.name:42} calls            {r['calls_per_s']:>10,.0f} calls/s  "
              f"({r['latency_us']:.0f} us)")


if __name__ == "__main__":  # python -m rolewire.benchmarks.stream [--serve SUITE]
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        _serve_stdio(sys.argv[2])
    else:
        main()
