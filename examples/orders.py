"""An example service for ``rolewire serve``: ``rolewire serve orders:service
--config service.toml`` (see README.md in this directory).

The roles written here are what the code expects; the config's [access]
table has the last word (it replaces the roles of every operation it lists).
"""

from __future__ import annotations

import asyncio
import json

from rolewire import UNRESTRICTED, CallContext, Service

service = Service("orders")
_orders: list[dict[str, object]] = []


@service.operation("health", roles=UNRESTRICTED)
def health(call: CallContext, body: bytes) -> bytes:
    return b"ok"


@service.operation("place_order", roles=["orders-client"])
def place_order(call: CallContext, body: bytes) -> bytes:
    order = {"id": len(_orders) + 1, "item": body.decode("utf-8", "replace")}
    _orders.append(order)
    return json.dumps(order).encode()


@service.operation("list_orders", roles=["orders-client"])
def list_orders(call: CallContext, body: bytes) -> bytes:
    return json.dumps(_orders).encode()


@service.operation("slow", roles=["orders-client"])
async def slow(call: CallContext, body: bytes) -> bytes:
    """Sleeps ``body`` seconds (a float) then answers: shows the drain."""
    await asyncio.sleep(float(body or b"1"))
    return b"done"


@service.operation("refund", roles=["admin"])
def refund(call: CallContext, body: bytes) -> bytes:
    return b"refunded " + body
