"""Shared pieces of the HTTP binding tests: roles, a counting app, and a tap
transport that records (and can rewrite) what travels on the wire."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from rolewire.handshake import HandshakeConfig
from rolewire.roles import KeyRole

PAYMENT_KEY = os.urandom(32)
SHIPPING_KEY = os.urandom(32)


def payment_config(**kw: Any) -> HandshakeConfig:
    return HandshakeConfig(roles=[KeyRole("payment", PAYMENT_KEY)], **kw)


def server_config(**kw: Any) -> HandshakeConfig:
    return HandshakeConfig(roles=[KeyRole("payment", PAYMENT_KEY),
                                  KeyRole("shipping", SHIPPING_KEY)], **kw)


@dataclass
class Wire:
    method: str
    url: httpx.URL
    headers: list[tuple[bytes, bytes]]
    body: bytes
    status: int = 0
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    response_body: bytes = b""


class Tap(httpx.AsyncBaseTransport):
    """Records every request/response pair on the wire; ``rewrite`` may
    replace a request before it is sent."""

    def __init__(self, inner: httpx.AsyncBaseTransport,
                 rewrite: Callable[[httpx.Request, bytes], Awaitable[httpx.Request] |
                                   httpx.Request | None] | None = None) -> None:
        self.inner = inner
        self.log: list[Wire] = []
        self.rewrite = rewrite

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        if self.rewrite is not None:
            new = self.rewrite(request, body)
            if hasattr(new, "__await__"):
                new = await new  # type: ignore[misc]
            if new is not None:
                request = new  # type: ignore[assignment]
                body = await request.aread()
        wire = Wire(request.method, request.url, list(request.headers.raw), body)
        self.log.append(wire)
        response = await self.inner.handle_async_request(request)
        data = await response.aread()
        wire.status = response.status_code
        wire.response_headers = list(response.headers.raw)
        wire.response_body = data
        return httpx.Response(response.status_code, headers=response.headers, content=data)

    def sealed(self) -> list[Wire]:
        return [w for w in self.log if not w.url.path.startswith("/.well-known/rolewire/h")]


def resend(wire: Wire, *, path: str | None = None, method: str | None = None,
           headers: dict[str, str] | None = None, body: bytes | None = None) -> httpx.Request:
    """A raw request built from a recorded one, optionally changed."""
    hdrs = httpx.Headers(wire.headers)
    for k, v in (headers or {}).items():
        hdrs[k] = v
    url = wire.url if path is None else wire.url.copy_with(raw_path=path.encode())
    content = wire.body if body is None else body
    hdrs.pop("content-length", None)
    return httpx.Request(method or wire.method, url, headers=hdrs, content=content)


class Counter:
    def __init__(self) -> None:
        self.calls = 0
