"""Issue 11 section 4, "Target": everything at once from one peer against a
real server in its own process, whose RSS is measured.

From 127.0.0.1: 500 idle sockets, 200 maximal pre-authentication frames
(100 announcing the old 1 MiB bound, 100 of the largest handshake message,
left incomplete) and an authenticated client that stops reading and asks
for 2000 replies of 256 KiB. Meanwhile a legitimate client from 127.0.0.2
completes its handshake and a call, and the server's peak RSS grows by less
than the bound docs/aio.md states (48 MiB). No timing assertion.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rolewire.aio import FrameKind, connect
from rolewire.aio.framing import DEFAULT_MAX_FRAME
from rolewire.handshake import HandshakeConfig
from rolewire.roles.key import KeyRole

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads the server's RSS from /proc")

#: The bound docs/aio.md states for this scenario.
RSS_GROWTH_BOUND = 48 * 1024 * 1024

CHILD = textwrap.dedent("""
    import asyncio, os, sys
    from rolewire.aio import serve
    from rolewire.handshake import HandshakeConfig
    from rolewire.roles.key import KeyRole
    from rolewire.services import Service

    async def main():
        cfg = HandshakeConfig(roles=[KeyRole("svc", bytes.fromhex(sys.argv[1]))])
        service = Service("target")
        blob = os.urandom(256 * 1024)
        service.add("echo", lambda call, body: body, roles=["svc"])
        service.add("big", lambda call, body: blob, roles=["svc"])
        async with serve(service, cfg, host="127.0.0.1", port=0) as server:
            print(server.port, flush=True)
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                         sys.stdin)
            while True:
                line = await reader.readline()
                if not line:
                    break
                print(dict(server.stats.as_dict()), flush=True)

    asyncio.run(main())
""")


def memory_of(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def test_target_idle_sockets_big_frames_and_a_non_reader_from_one_peer():
    key = os.urandom(32)
    cfg = HandshakeConfig(roles=[KeyRole("svc", key)])
    child = subprocess.Popen([sys.executable, "-c", CHILD, key.hex()], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())

        def stats() -> dict:
            child.stdin.write("stats\n")
            child.stdin.flush()
            return eval(child.stdout.readline(), {})  # a dict literal we printed

        async def frame_sender(loop, payload_size: int, sent: int, chunk: bytes):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", port))
                await loop.sock_sendall(sock, struct.pack(">IB", payload_size + 1,
                                                          FrameKind.HANDSHAKE))
                view = memoryview(chunk)
                while sent > 0:
                    await loop.sock_sendall(sock, view[:min(sent, len(chunk))])
                    sent -= len(chunk)
            except OSError:
                pass  # cut by the server: the point
            return sock

        async def main():
            loop = asyncio.get_running_loop()
            # Warm up the server's code paths before the baseline.
            async with connect("127.0.0.1", port, cfg, timeout=60) as warm:
                assert await warm.call("echo", b"warm", timeout=60) == b"warm"
                assert len(await warm.call("big", timeout=60)) == 256 * 1024
            await asyncio.sleep(0.3)
            base = memory_of(child.pid)

            # 1. A client that stops reading, with 2000 calls for 256 KiB.
            reader_less = await connect("127.0.0.1", port, cfg, timeout=60)
            reader_less._transport.pause_reading()
            owed = [asyncio.ensure_future(reader_less.call("big")) for _ in range(2000)]
            # 2. 500 idle sockets.
            idle = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                          for _ in range(500)), return_exceptions=True)
            # 3. 200 maximal pre-authentication frames.
            chunk = bytes(64 * 1024)
            old_max = DEFAULT_MAX_FRAME - 1
            new_max = cfg.max_message_size
            senders = [frame_sender(loop, old_max, old_max, chunk) for _ in range(100)]
            senders += [frame_sender(loop, new_max, new_max - 1, chunk) for _ in range(100)]
            senders_task = asyncio.gather(*senders)
            await asyncio.sleep(0.5)

            # The legitimate client from another address.
            async with connect("127.0.0.1", port, cfg, timeout=60,
                               local_addr=("127.0.0.2", 0)) as legit:
                assert await legit.call("echo", b"legit", timeout=60) == b"legit"
            sockets = await senders_task
            await asyncio.sleep(0.5)
            peak = memory_of(child.pid)
            during = stats()

            for sock in sockets:
                sock.close()
            for item in idle:
                if isinstance(item, tuple):
                    item[1].close()
            reader_less.abort()
            await asyncio.gather(*owed, return_exceptions=True)
            return base, peak, during

        base, peak, during = asyncio.run(asyncio.wait_for(main(), 180))
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    growth = peak["VmHWM"] - base["VmRSS"]
    print(f"server RSS {base['VmRSS'] / 2**20:.1f} MiB -> peak {peak['VmHWM'] / 2**20:.1f} MiB"
          f" (growth {growth / 2**20:.1f} MiB, bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB);"
          f" busy {during['busy_rejects']}, protocol errors {during['protocol_errors']},"
          f" requests handled {during['requests']}")
    assert during["sessions_total"] >= 3  # warm-up, the non-reader, the legitimate client
    assert during["requests"] < 2000 + 3  # the non-reader is no longer read
    assert growth < RSS_GROWTH_BOUND
