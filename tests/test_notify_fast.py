"""The server's notification fast path: permission and context cached per
connection, only for operations checked by roles alone; everything else
keeps the full per-call checks."""

from __future__ import annotations

import asyncio
import os

from rolewire.aio import connect, serve
from rolewire.handshake import HandshakeConfig
from rolewire.roles.key import KeyRole
from rolewire.services import Service

SHOP_KEY, ADMIN_KEY = os.urandom(32), os.urandom(32)
SERVER_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY), KeyRole("admin", ADMIN_KEY)])
SHOP_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)])


def test_cached_notifications_still_refuse_what_roles_do_not_allow() -> None:
    svc = Service("fast")
    seen: list[tuple[str, bytes, frozenset[str]]] = []

    @svc.operation("sink", roles=["shop"])
    def sink(call, body):
        seen.append(("sink", body, call.peer_roles))

    @svc.operation("admin_sink", roles=["admin"])
    def admin_sink(call, body):
        seen.append(("admin_sink", body, call.peer_roles))

    @svc.operation("async_sink", roles=["shop"])
    async def async_sink(call, body):
        await asyncio.sleep(0)
        seen.append(("async_sink", body, call.peer_roles))

    @svc.operation("count", roles=["shop"])
    def count(call, body):
        return b"%d" % len(seen)

    async def main() -> list:
        async with serve(svc, SERVER_CFG) as server:
            async with connect("127.0.0.1", server.port, SHOP_CFG) as channel:
                for i in range(300):
                    await channel.notify("sink", b"%d" % i)
                    if i % 100 == 0:
                        await channel.notify("admin_sink", b"no")  # forbidden, every time
                        await channel.notify("async_sink", b"a%d" % i)
                await channel.notify("sink", b"meta", metadata={"k": b"v"})
                assert await channel.call("count") == b"304"
                conns = list(server._established)
                assert len(conns) == 1
                cached = set(conns[0].conn.cached_notifications)
            return cached

    cached = asyncio.run(asyncio.wait_for(main(), 60))
    assert cached == {"sink", "async_sink"}  # never the forbidden one
    assert [b for op, b, _ in seen if op == "sink"] == [b"%d" % i for i in range(300)] + [b"meta"]
    assert [b for op, b, _ in seen if op == "async_sink"] == [b"a0", b"a100", b"a200"]
    assert not any(op == "admin_sink" for op, _, _ in seen)
    assert {roles for _, _, roles in seen} == {frozenset({"shop"})}
