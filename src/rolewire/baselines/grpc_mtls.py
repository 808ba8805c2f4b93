"""The microservice baseline: gRPC (``grpcio``, ``grpc.aio``) with mutual TLS.

What a microservice team picks: HTTP/2, one channel per peer, client
certificates required. Messages are raw bytes (identity serializers, so no
protobuf cost is added or hidden). Service ``rolewire.bench.Bench``:

- ``Echo`` (unary-unary): returns the request;
- ``Done`` (unary-unary): returns ``b"<messages> <bytes>"`` counted by the
  sinks since the last ``Done`` and resets both;
- ``Sink`` (stream-unary): counts every message of the stream, returns the
  count when the client closes the stream.

Streaming, in the two styles ``grpc.aio`` offers (the benchmark reports the
faster): ``send_many`` sends one batch as one ``Sink`` call fed by an
iterator; ``notify`` writes each message with ``await call.write()`` on one
long-lived ``Sink`` call, closed (and its count awaited) by the next
``call``, so a ``Done`` always follows the messages before it.

Needs the ``bench`` extra (``pip install 'rolewire[bench]'``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

__all__ = ["SERVICE", "GrpcClient", "GrpcServer", "connect", "serve"]

SERVICE = "rolewire.bench.Bench"
_OPTIONS = [("grpc.max_send_message_length", 1 << 24),
            ("grpc.max_receive_message_length", 1 << 24)]


def _identity(data: bytes) -> bytes:
    return data


class GrpcServer:
    """A started server (``port``, ``close()``, ``await wait_closed()``)."""

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self._server = server
        self.port = port
        self._stopping: Any = None

    def close(self) -> None:
        import asyncio

        self._stopping = asyncio.ensure_future(self._server.stop(None))

    async def wait_closed(self) -> None:
        if self._stopping is None:
            self.close()
        await self._stopping


async def serve(cert: Path, key: Path, ca: Path, host: str = "127.0.0.1",
                port: int = 0) -> GrpcServer:
    """Start the benchmark service with mutual TLS (client certificate
    required, ``ca`` the only anchor)."""
    state = {"messages": 0, "bytes": 0}

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def done(request: bytes, context: Any) -> bytes:
        out = b"%d %d" % (state["messages"], state["bytes"])
        state["messages"] = state["bytes"] = 0
        return out

    async def sink(requests: Any, context: Any) -> bytes:
        n = 0
        async for body in requests:
            state["messages"] += 1
            state["bytes"] += len(body)
            n += 1
        return b"%d" % n

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity),
        "Done": grpc.unary_unary_rpc_method_handler(done, _identity, _identity),
        "Sink": grpc.stream_unary_rpc_method_handler(sink, _identity, _identity),
    }
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    credentials = grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=ca.read_bytes(),
        require_client_auth=True)
    bound = server.add_secure_port(f"{host}:{port}", credentials)
    await server.start()
    return GrpcServer(server, bound)


class GrpcClient:
    """``call("echo"|"done", body)``, ``send_many``/``notify`` (``sink``),
    ``close()``: the interface the channel benchmark drives."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._unary = {
            "echo": channel.unary_unary(f"/{SERVICE}/Echo", _identity, _identity),
            "done": channel.unary_unary(f"/{SERVICE}/Done", _identity, _identity),
        }
        self._sink = channel.stream_unary(f"/{SERVICE}/Sink", _identity, _identity)
        self._open_sink: Any = None

    async def _close_sink(self) -> None:
        if self._open_sink is not None:
            call, self._open_sink = self._open_sink, None
            await call.done_writing()
            await call

    async def call(self, operation: str, body: bytes = b"", *,
                   timeout: float | None = None) -> bytes:
        await self._close_sink()
        return await self._unary[operation](body, timeout=timeout)  # type: ignore[no-any-return]

    async def send_many(self, operation: str, bodies: Iterable[bytes]) -> None:
        await self._close_sink()
        await self._sink(iter(list(bodies)))

    async def notify(self, operation: str, body: bytes = b"") -> None:
        if self._open_sink is None:
            self._open_sink = self._sink()
        await self._open_sink.write(body)

    async def close(self) -> None:
        await self._close_sink()
        await self._channel.close()


async def connect(host: str, port: int, cert: Path, key: Path, ca: Path,
                  server_name: str) -> GrpcClient:
    """A channel with mutual TLS; ``server_name``: the name in the server's
    certificate. Waits until the channel is connected (TLS handshake done)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(), private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes())
    options = [*_OPTIONS, ("grpc.ssl_target_name_override", server_name),
               # A fresh connection per client (the connect benchmark), not a
               # subchannel shared with an earlier channel.
               ("grpc.use_local_subchannel_pool", 1)]
    channel = grpc.aio.secure_channel(f"{host}:{port}", credentials, options=options)
    await channel.channel_ready()
    return GrpcClient(channel)
