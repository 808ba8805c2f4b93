"""rolewire over HTTP: the handshake as POSTs to a well-known path, sealed
request and response bodies whose records bind the method, target, session
id, content type and named headers, a pure ASGI middleware for the server and
httpx transports for the client (docs/http.md; the wire format in
docs/PROTOCOL.md, "HTTP binding").

Server (any ASGI app; FastAPI shown)::

    app = FastAPI()

    @app.post("/charge")
    async def charge(peer=Depends(require_roles("payment"))): ...

    app = RolewireMiddleware(app, HandshakeConfig(roles=[...]))

Client::

    async with httpx.AsyncClient(transport=Transport(HandshakeConfig(roles=[...]))) as c:
        await c.post("http://payment:8000/charge", json={...})

Layers: :mod:`rolewire.http.wire` (formats), the sans-IO cores
:mod:`rolewire.http.server` and :mod:`rolewire.http.client` (bytes, headers
and time in; replies, events and bytes out), and the adapters
:mod:`rolewire.http.asgi` and :mod:`rolewire.http.transport` (needs httpx:
``pip install 'rolewire[http]'``).
"""

from __future__ import annotations

from typing import Any

from rolewire.http.asgi import RolewireCredentials, RolewireMiddleware, RolewireUser
from rolewire.http.authz import RouteTable, peer_of, require_roles
from rolewire.http.client import ChannelOptions, ClientChannel, ClientHandshake
from rolewire.http.errors import (
    BodyTooLarge,
    BodyTruncated,
    HTTPBindingError,
    HTTPForbidden,
    MalformedBody,
    NotSealed,
    RecordRejected,
    ResponseForged,
    ResponseTruncated,
    SessionExpired,
    SessionIdInUse,
    UnknownSession,
)
from rolewire.http.server import PeerIdentity, ServerEndpoint, ServerOptions
from rolewire.http.wire import HANDSHAKE_PATH, HIDDEN_TARGET_PATH

__all__ = [
    "HANDSHAKE_PATH",
    "HIDDEN_TARGET_PATH",
    "BodyTooLarge",
    "BodyTruncated",
    "ChannelOptions",
    "ClientChannel",
    "ClientHandshake",
    "HTTPBindingError",
    "HTTPForbidden",
    "MalformedBody",
    "NotSealed",
    "PeerIdentity",
    "RecordRejected",
    "ResponseForged",
    "ResponseTruncated",
    "RolewireCredentials",
    "RolewireMiddleware",
    "RolewireUser",
    "RouteTable",
    "ServerEndpoint",
    "ServerOptions",
    "SessionExpired",
    "SessionIdInUse",
    "SyncTransport",
    "Transport",
    "UnknownSession",
    "peer_of",
    "require_roles",
]


def __getattr__(name: str) -> Any:
    # The httpx transports load httpx only when asked for.
    if name in ("Transport", "SyncTransport"):
        from rolewire.http import transport

        return getattr(transport, name)
    raise AttributeError(f"module 'rolewire.http' has no attribute {name!r}")
