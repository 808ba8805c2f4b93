"""The rolewire systems of ``rolewire bench nats`` (see
:mod:`rolewire.benchmarks.nats`): a key-role service on a subject served
with :func:`rolewire.nats.serve_nats`, a client from
:func:`rolewire.nats.connect_nats`, both through the given broker."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from rolewire.benchmarks.nats import PAYLOAD, _in_flight, _System, _timed
from rolewire.handshake import HandshakeConfig
from rolewire.roles.key import KeyRole
from rolewire.services import Service

_KEY = os.urandom(32)


class RolewireNats(_System):
    """rolewire end to end through the broker at ``url``."""

    def __init__(self, name: str, url: str, tls: Any = None) -> None:
        self.name = name
        self.url = url
        self.tls = tls
        self.config = HandshakeConfig(roles=[KeyRole("bench", _KEY)])
        self.received = 0
        self.target = 0
        self.done = asyncio.Event()
        service = Service("bench")

        @service.operation(roles=["bench"])
        def item(call: Any, body: bytes) -> None:
            self.received += 1
            if self.received == self.target:
                self.done.set()

        @service.operation(roles=["bench"])
        def echo(call: Any, body: bytes) -> bytes:
            return body

        self.service = service

    async def setup(self) -> None:
        import nats

        from rolewire.nats import connect_nats, serve_nats

        self.server_nc = await nats.connect(self.url, tls=self.tls)
        self.client_nc = await nats.connect(self.url, tls=self.tls)
        self.instances = [await serve_nats(self.service, self.config, self.server_nc,
                                           "bench.rolewire")]
        self.worker_nc = await nats.connect(self.url, tls=self.tls)
        self.instances.append(await serve_nats(self.service, self.config, self.worker_nc,
                                               "bench.rolewire.work"))
        self.instances.append(await serve_nats(self.service, self.config, self.server_nc,
                                               "bench.rolewire.work"))
        self.batched = await connect_nats(self.client_nc, "bench.rolewire", self.config)
        self.single = await connect_nats(self.client_nc, "bench.rolewire", self.config,
                                         batch=False)

    async def _stream(self, channel: Any, n: int, chunk: int) -> float:
        self.received, self.target = 0, n
        self.done.clear()

        async def run() -> None:
            for start in range(0, n, chunk):
                await channel.send_many("item", [PAYLOAD] * min(chunk, n - start))
            await asyncio.wait_for(self.done.wait(), 120)

        return await _timed(run, n)

    async def stream(self, n: int, *, batch: bool = False) -> float:
        # Per message: one record per NATS message, written as the messages
        # come (notify each). Batched: the records of one flush in one NATS
        # message (send_many in chunks of 256, as the TCP benchmark does).
        if batch:
            return await self._stream(self.batched, n, 256)
        self.received, self.target = 0, n
        self.done.clear()

        async def run() -> None:
            notify = self.single.notify
            for _ in range(n):
                await notify("item", PAYLOAD)
            await asyncio.wait_for(self.done.wait(), 120)

        return await _timed(run, n)

    async def calls(self, n: int, inflight: int) -> float:
        async def one() -> None:
            await self.batched.call("echo", PAYLOAD)

        return await _timed(lambda: _in_flight(n, inflight, one), n)

    async def pipeline(self, n: int) -> float:
        from rolewire.nats import connect_nats

        # One producer, a queue group of two workers: each session goes to
        # one instance of the group; two sessions spread over both.
        producers = [await connect_nats(self.client_nc, "bench.rolewire.work", self.config)
                     for _ in range(2)]
        self.received, self.target = 0, n
        self.done.clear()

        async def run() -> None:
            half = n // 2
            for producer, count in zip(producers, (half, n - half)):
                for start in range(0, count, 256):
                    await producer.send_many("item", [PAYLOAD] * min(256, count - start))
            await asyncio.wait_for(self.done.wait(), 120)

        try:
            return await _timed(run, n)
        finally:
            for producer in producers:
                await producer.close()

    async def teardown(self) -> None:
        for channel in (self.batched, self.single):
            await channel.close()
        for instance in self.instances:
            await instance.close()
        for nc in (self.server_nc, self.client_nc, self.worker_nc):
            await nc.close()
