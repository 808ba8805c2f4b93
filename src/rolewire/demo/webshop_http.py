"""``rolewire demo webshop --http``: the paper's web shop over HTTP.

The same five services, four roles, secrets, configs and access tables as
:mod:`rolewire.demo.webshop`, but each service is an ASGI app on its own
uvicorn server (127.0.0.1, random port) behind
:class:`~rolewire.http.RolewireMiddleware`, with the service's ``[access]``
table as its :class:`~rolewire.http.RouteTable` (``POST /<operation>``), and
every call goes through an ``httpx.AsyncClient`` with
:class:`rolewire.http.Transport`. Then the same breach: an attacker with the
suggestion service's secrets calls payment, shipping and warehouse, and every
attempt must be denied — by the handshake (no shared role, an HTTP 403 with
``Rolewire-Reject``) or by the route table (a sealed 403 naming no role).

Same report and JSON shape as the TCP demo; needs ``rolewire[http]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rolewire.config import ServiceConfig, load_config
from rolewire.demo.webshop import APPROVAL_ENV, CallRecord, WebshopReport, write_secrets
from rolewire.errors import Forbidden, HandshakeError, RolewireError
from rolewire.handshake import HandshakeConfig
from rolewire.roles import PasswordRateLimiter

__all__ = ["run"]

Handler = Callable[[bytes], Awaitable[bytes]]


class _Node:
    """One service: its ASGI app on uvicorn and its outgoing httpx client."""

    def __init__(self, config: ServiceConfig, report: WebshopReport,
                 limiter: PasswordRateLimiter) -> None:
        import httpx

        from rolewire.http import RouteTable, Transport

        self.name = config.name
        self.report = report
        roles = config.load_roles()
        for role in roles:
            if hasattr(role, "limiter"):
                role.limiter = limiter
        self.handshake = HandshakeConfig(roles=roles, allow_anonymous=self.name == "user-api")
        self.routes = RouteTable([("POST", f"/{op}", who) for op, who in config.access.items()])
        self.handlers: dict[str, Handler] = {}
        self.client = httpx.AsyncClient(transport=Transport(self.handshake), timeout=60)
        self.urls: dict[str, str] = {}
        self.server: Any = None
        self.task: asyncio.Task[None] | None = None
        self.port = 0

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        """The service as a plain ASGI app: ``POST /<operation>``, JSON in and out."""
        handler = self.handlers.get(scope["path"].lstrip("/"))
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, reply = 404, b'{"error": "no such operation"}'
        if handler is not None:
            try:
                status, reply = 200, await handler(body)
            except LookupError as exc:
                status, reply = 409, json.dumps({"error": str(exc)}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": reply})

    async def start(self) -> None:
        import uvicorn

        from rolewire.http import RolewireMiddleware

        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see benchmarks/http.py
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(RolewireMiddleware(self.app, self.handshake, routes=self.routes),
                                log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RolewireError(f"{self.name}: uvicorn did not start")
            await asyncio.sleep(0.01)

    async def call(self, peer: str, operation: str, body: bytes = b"") -> bytes:
        try:
            response = await self.client.post(f"{self.urls[peer]}/{operation}", content=body,
                                              headers={"content-type": "application/json"})
            if response.status_code != 200:
                raise RolewireError(f"{peer}/{operation}: HTTP {response.status_code}")
        except RolewireError as exc:
            self.report.calls.append(CallRecord(self.name, peer, operation, "error",
                                                type(exc).__name__))
            raise
        self.report.calls.append(CallRecord(self.name, peer, operation, "ok"))
        return response.content

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 30)


def _define_operations(nodes: dict[str, _Node]) -> None:
    user_api, suggestion, payment = nodes["user-api"], nodes["suggestion"], nodes["payment"]
    shipping, warehouse = nodes["shipping"], nodes["warehouse"]
    users = {"alice": {"address": "1 Loopback Lane, 127.0.0.1", "likes": "tea"}}
    stock = {"teapot": 3}

    async def purchase(body: bytes) -> bytes:
        user = json.loads(body)["user"]
        tips = json.loads(await user_api.call("suggestion", "suggest",
                                              json.dumps({"user": user}).encode()))
        receipt = json.loads(await user_api.call("payment", "charge", body))
        return json.dumps({"status": "ok", "receipt": receipt, "suggestions": tips}).encode()

    async def profile(body: bytes) -> bytes:
        return json.dumps(users[json.loads(body)["user"]]).encode()

    async def suggest(body: bytes) -> bytes:
        user = json.loads(body)["user"]
        likes = json.loads(await suggestion.call("user-api", "profile",
                                                 json.dumps({"user": user}).encode()))["likes"]
        return json.dumps([f"{likes} cosy", f"{likes} strainer"]).encode()

    async def charge(body: bytes) -> bytes:
        order = json.loads(body)
        shipment = json.loads(await payment.call("shipping", "ship", body))
        return json.dumps({"charged": order["amount"], "shipment": shipment}).encode()

    async def ship(body: bytes) -> bytes:
        order = json.loads(body)
        address = json.loads(await shipping.call(
            "user-api", "profile", json.dumps({"user": order["user"]}).encode()))["address"]
        picked = json.loads(await shipping.call("warehouse", "pick", body))
        return json.dumps({"to": address, "parcel": picked["parcel"]}).encode()

    async def track(body: bytes) -> bytes:
        return b'{"status": "in transit"}'

    async def pick(body: bytes) -> bytes:
        item = json.loads(body)["item"]
        if stock.get(item, 0) <= 0:
            raise LookupError("out of stock")
        stock[item] -= 1
        return json.dumps({"parcel": f"parcel-{item}-{stock[item]}"}).encode()

    user_api.handlers.update(purchase=purchase, profile=profile)
    suggestion.handlers.update(suggest=suggest)
    payment.handlers.update(charge=charge)
    shipping.handlers.update(ship=ship, track=track)
    warehouse.handlers.update(pick=pick)


async def _attempt(url: str, stolen: HandshakeConfig, body: dict[str, Any]) -> dict[str, str]:
    import httpx

    from rolewire.http import Transport

    try:
        async with httpx.AsyncClient(transport=Transport(stolen), timeout=60) as client:
            response = await client.post(url, json=body)
        return {"result": "ALLOWED" if response.status_code == 200 else "error",
                "detail": f"HTTP {response.status_code}"}
    except Forbidden as exc:
        return {"result": "denied", "detail": f"Forbidden: {exc}"}
    except HandshakeError as exc:
        return {"result": "denied", "detail": f"handshake refused: {exc}"}
    except RolewireError as exc:
        return {"result": "error", "detail": f"{type(exc).__name__}: {exc}"}


async def _run(base: Path, say: Callable[[str], None]) -> WebshopReport:
    import httpx

    from rolewire.http import Transport

    report = WebshopReport()
    say("generating throwaway secrets and configs")
    paths = write_secrets(base)
    limiter = PasswordRateLimiter()
    nodes = {name: _Node(load_config(path), report, limiter) for name, path in paths.items()}
    _define_operations(nodes)
    try:
        for name, node in nodes.items():
            await node.start()
            say(f"started {name} on http://127.0.0.1:{node.port} (uvicorn)")
        urls = {name: f"http://127.0.0.1:{node.port}" for name, node in nodes.items()}
        for node in nodes.values():
            node.urls = urls

        say("running one purchase over HTTP")
        customer = HandshakeConfig(roles=[], allow_anonymous=True)
        order = {"user": "alice", "item": "teapot", "amount": "19.90 EUR"}
        try:
            async with httpx.AsyncClient(transport=Transport(customer), timeout=60) as client:
                response = await client.post(f"{urls['user-api']}/purchase", json=order)
            if response.status_code != 200:
                raise RolewireError(f"purchase: HTTP {response.status_code}")
            result = response.json()
            report.calls.append(CallRecord("customer", "user-api", "purchase", "ok"))
            report.purchase = "ok" if result.get("status") == "ok" else "failed"
            report.purchase_detail = json.dumps(result)
        except RolewireError as exc:
            report.purchase_detail = f"{type(exc).__name__}: {exc}"

        say("attacker with the suggestion service's secrets")
        stolen = HandshakeConfig(roles=load_config(paths["suggestion"]).load_roles())
        attempts = (("payment", "charge", order), ("shipping", "ship", order),
                    ("warehouse", "pick", {"item": "teapot"}))
        for target, op, body in attempts:
            entry = {"from": "suggestion", "to": target, "operation": op}
            entry.update(await _attempt(f"{urls[target]}/{op}", stolen, body))
            report.breach.append(entry)
    finally:
        for node in nodes.values():
            await node.close()
        os.environ.pop(APPROVAL_ENV, None)
    return report


def run(say: Callable[[str], None] | None = None) -> WebshopReport:
    """Runs the HTTP scene in a temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="rolewire-webshop-http-") as tmp:
        return asyncio.run(_run(Path(tmp), say or (lambda _m: None)))
