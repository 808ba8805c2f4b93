"""The hand-rolled baseline: a minimal asyncio echo over TLS or plain TCP.

What a user writes when they need "messages over TLS" and nothing else:
4-byte big-endian length framing, an operation byte, no dispatch layer, no
roles, no call ids (replies come back in order on one connection, so the
client keeps a FIFO of waiting futures). It imports nothing from rolewire:
it is the honest yardstick for the cost of rolewire's own layers.

Frame: ``length u32 | op u8 | body`` (``length`` counts ``op`` and
``body``). Operations:

- ``0`` sink: count the message and its bytes, no reply;
- ``1`` done: reply with ``b"<messages> <bytes>"`` and reset both;
- ``2`` echo: reply with the body.

Replies are framed the same way with op ``3``. The server and client are
:class:`asyncio.Protocol` s that parse every complete frame of a read at
once (as a careful hand-rolled implementation would, rather than two
``readexactly`` awaits per message). With ``ssl_context`` the connection is
TLS (each ``write`` is one or more TLS records: ``send_many`` joins its
frames into one write, ``notify`` writes each frame as it comes).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["OPS", "EchoClient", "EchoServer", "connect", "serve"]

OPS = {"sink": 0, "done": 1, "echo": 2}
_REPLY = 3
_HEAD = struct.Struct(">IB")
_LEN = struct.Struct(">I")
#: Largest frame either side accepts (a bigger length closes the connection).
MAX_FRAME = 1 << 24


def _frames(buffer: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Complete frames at the start of ``buffer`` and the bytes they span."""
    out: list[tuple[int, bytes]] = []
    pos, size = 0, len(buffer)
    unpack = _LEN.unpack_from
    while size - pos >= 5:
        (length,) = unpack(buffer, pos)
        if length < 1 or length > MAX_FRAME:
            raise ValueError("bad frame length")
        end = pos + 4 + length
        if end > size:
            break
        out.append((buffer[pos + 4], bytes(buffer[pos + 5:end])))
        pos = end
    return out, pos


class _Server(asyncio.Protocol):
    def __init__(self, state: dict[str, int]) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            frames, used = _frames(self.buffer)
        except ValueError:
            self.transport.close()
            return
        del self.buffer[:used]
        state = self.state
        replies = []
        for op, body in frames:
            if op == 0:
                state["messages"] += 1
                state["bytes"] += len(body)
            elif op == 2:
                replies.append(_HEAD.pack(len(body) + 1, _REPLY) + body)
            elif op == 1:
                reply = b"%d %d" % (state["messages"], state["bytes"])
                state["messages"] = state["bytes"] = 0
                replies.append(_HEAD.pack(len(reply) + 1, _REPLY) + reply)
            else:
                self.transport.close()
                return
        if replies:
            self.transport.write(b"".join(replies))


class EchoServer:
    """A started server (``port``, ``close()``, ``await wait_closed()``)."""

    def __init__(self, server: asyncio.base_events.Server) -> None:
        self._server = server
        self.port: int = server.sockets[0].getsockname()[1]

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


async def serve(host: str = "127.0.0.1", port: int = 0,
                ssl_context: ssl.SSLContext | None = None) -> EchoServer:
    """Start the echo server (one message count shared by all connections)."""
    state = {"messages": 0, "bytes": 0}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Server(state), host, port, ssl=ssl_context,
                                      backlog=1024)
    return EchoServer(server)


class _Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.transport: Any = None
        self.paused: asyncio.Future[None] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            frames, used = _frames(self.buffer)
        except ValueError:
            self.transport.close()
            return
        del self.buffer[:used]
        for _op, body in frames:
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(body)

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        self.paused = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        self.resume_writing()


class EchoClient:
    """``call(op, body)`` (``done``/``echo``), ``notify``/``send_many``
    (``sink``), ``close()``: the interface the channel benchmark drives."""

    def __init__(self, transport: asyncio.Transport, protocol: _Client) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()

    async def _drain(self) -> None:
        paused = self._protocol.paused
        if paused is not None:
            await paused

    async def call(self, operation: str, body: bytes = b"", *,
                   timeout: float | None = None) -> bytes:
        if self._protocol.lost:
            raise ConnectionError("connection lost")
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._protocol.waiting.append(future)
        self._transport.write(_HEAD.pack(len(body) + 1, OPS[operation]) + body)
        return await asyncio.wait_for(future, timeout) if timeout else await future

    async def notify(self, operation: str, body: bytes = b"") -> None:
        self._transport.write(_HEAD.pack(len(body) + 1, OPS[operation]) + body)
        await self._drain()

    async def send_many(self, operation: str, bodies: Iterable[bytes]) -> None:
        op = OPS[operation]
        pack = _HEAD.pack
        self._transport.write(b"".join([pack(len(b) + 1, op) + b for b in bodies]))
        await self._drain()

    async def close(self) -> None:
        self._transport.close()


async def connect(host: str, port: int,
                  ssl_context: ssl.SSLContext | None = None,
                  server_hostname: str | None = None) -> EchoClient:
    """Connect to :func:`serve` (with ``ssl_context``: over TLS)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        _Client, host, port, ssl=ssl_context,
        server_hostname=server_hostname if ssl_context is not None else None)
    return EchoClient(transport, protocol)
