"""A pure ASGI middleware (no Starlette ``BaseHTTPMiddleware``) that puts an
ASGI app behind the HTTP binding.

It answers the handshake path, opens sealed requests before the app sees
them, puts the peer's verified roles into the scope, seals the app's
responses, and refuses everything else:

- unsealed, forged, replayed or moved requests: 401 (``Rolewire-Error``
  names the cause; nothing reaches the app);
- an out-of-role request (route table): 403, sealed, no role names;
- a body over the limit: 413, before any decryption.

What the app sees in its scope:

- ``scope["rolewire"]`` and ``scope["state"]["rolewire"]``: the
  :class:`~rolewire.http.PeerIdentity` (roles, session id);
- ``scope["auth"]``: credentials whose ``scopes`` are the roles, so
  ``starlette.authentication.requires("payment")`` works;
- ``scope["user"]``: a user object (``is_authenticated``, ``roles``);
- the real content type, path and query (with the hidden-target option).

Request bodies stream: each record is opened when the app asks for more
(back-pressure runs through to the client), and a response body the app
streams is sealed piece by piece. A record that fails in the middle of a
streamed body ends the app's body with ``http.disconnect``.
"""

from __future__ import annotations

import collections
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from rolewire.handshake import HandshakeConfig
from rolewire.http.authz import FORBIDDEN_BODY, RouteTable
from rolewire.http.errors import BodyTooLarge, HTTPBindingError
from rolewire.http.server import (
    BodyData,
    PeerIdentity,
    Reply,
    RequestOpener,
    RequestVerified,
    ServerEndpoint,
    ServerOptions,
    error_reply,
)
from rolewire.http.wire import HANDSHAKE_PATH, HEADER_ERROR, HEADER_SESSION, header_value

__all__ = ["RolewireCredentials", "RolewireMiddleware", "RolewireUser"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Extensions whose body would bypass sealing.
_UNSEALABLE_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopy",
                          "http.response.push", "http.response.early_hint")


class RolewireCredentials:
    """``scope["auth"]`` in Starlette's shape: ``scopes`` are the roles."""

    __slots__ = ("scopes",)

    def __init__(self, scopes: Iterable[str]) -> None:
        self.scopes = sorted(scopes)


class RolewireUser:
    """``scope["user"]`` in Starlette's shape (``is_authenticated``,
    ``display_name``, ``identity``), plus ``roles`` and ``peer``."""

    __slots__ = ("peer",)

    def __init__(self, peer: PeerIdentity) -> None:
        self.peer = peer

    @property
    def roles(self) -> frozenset[str]:
        return self.peer.roles

    @property
    def is_authenticated(self) -> bool:
        return bool(self.peer.roles)

    @property
    def display_name(self) -> str:
        return ""

    @property
    def identity(self) -> str:
        return self.peer.session_id


class RolewireMiddleware:
    """Wraps an ASGI app (FastAPI, Starlette, or any ASGI callable).

    Args:
        app: the application.
        config: the server's :class:`~rolewire.handshake.HandshakeConfig`.
        options: :class:`~rolewire.http.ServerOptions` (body limit, session
            lifetime, headers to bind...).
        routes: a :class:`~rolewire.http.RouteTable` checked before the app is
            called; None leaves authorization to the app
            (``Depends(require_roles(...))``).
        public_paths: exact paths served unsealed (health checks of a load
            balancer); nothing else is.
        clock: monotonic time source for session lifetimes.
    """

    def __init__(self, app: ASGIApp, config: HandshakeConfig, *,
                 options: ServerOptions | None = None, routes: RouteTable | None = None,
                 public_paths: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.endpoint = ServerEndpoint(config, options)
        self.routes = routes
        self.public_paths = frozenset(public_paths)
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        if kind != "http":
            # WebSockets are not part of the binding: refuse, never pass unsealed.
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path = scope["path"]
        if path == HANDSHAKE_PATH:
            await self._handshake(scope, receive, send)
            return
        if path in self.public_paths:
            await self.app(scope, receive, send)
            return
        await self._sealed(scope, receive, send)

    # -- handshake -------------------------------------------------------------
    async def _handshake(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _send_reply(send, Reply(405, [(b"allow", b"POST")], b""))
            return
        limit = 2 * self.endpoint.config.max_message_size
        try:
            body = await _read_body(receive, limit)
        except BodyTooLarge as exc:
            await _send_reply(send, error_reply(exc))
            return
        if body is None:
            return  # client went away
        headers = scope["headers"]
        client = scope.get("client")
        reply = self.endpoint.handshake(header_value(headers, HEADER_SESSION.encode()),
                                        header_value(headers, b"content-type"), body,
                                        now=self._clock(), peer=client[0] if client else None)
        await _send_reply(send, reply)

    # -- sealed requests -----------------------------------------------------------
    async def _sealed(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path") or urllib.parse.quote(scope["path"]).encode()
        try:
            opener = self.endpoint.begin_request(scope["method"].encode(), raw_path,
                                                 scope.get("query_string", b""),
                                                 list(scope["headers"]), now=self._clock())
        except HTTPBindingError as exc:
            await _send_reply(send, error_reply(exc))
            return
        queue: collections.deque[BodyData] = collections.deque()
        verified: RequestVerified | None = None
        buffered = 0
        buffer_limit = self.endpoint.options.verify_before_app
        try:
            while verified is None or (not opener.done and buffered < buffer_limit):
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                more = bool(message.get("more_body", False))
                for event in opener.feed(message.get("body", b"")):
                    if isinstance(event, RequestVerified):
                        verified = event
                    else:
                        queue.append(event)
                        buffered += len(event.data)
                if not more and not opener.done:
                    opener.end()
        except HTTPBindingError as exc:
            await _send_reply(send, error_reply(exc))
            return

        sealer = opener.response_sealer()
        inner_scope = self._inner_scope(scope, verified)
        body = _SealedReceive(receive, opener, queue)
        responder = _SealedSend(send, sealer, body)
        if self.routes is not None and not self.routes.permits(
                scope["method"], inner_scope["path"], verified.peer.roles):
            await responder.reply(403, [(b"content-type", b"application/json"),
                                        (HEADER_ERROR.encode(), b"forbidden")], FORBIDDEN_BODY)
            return
        try:
            await self.app(inner_scope, body.receive, responder.send)
        except Exception:
            if body.error is not None:
                # The app failed on the disconnect we gave it for a bad body;
                # the client got the binding's error reply (see _SealedSend).
                if not responder.started:
                    await _send_reply(send, error_reply(body.error))
                return
            if not responder.started:
                await responder.reply(500, [(b"content-type", b"text/plain; charset=utf-8")],
                                      b"Internal Server Error")
            raise
        if body.error is not None and not responder.started:
            await _send_reply(send, error_reply(body.error))
            return
        if responder.started and not responder.finished:
            await responder.send({"type": "http.response.body", "body": b"",
                                  "more_body": False})

    def _inner_scope(self, scope: Scope, verified: RequestVerified) -> Scope:
        inner = dict(scope)
        headers = [(k, v) for k, v in scope["headers"]
                   if k not in (b"content-type", b"content-length", HEADER_SESSION.encode(),
                                b"transfer-encoding")]
        if verified.content_type:
            headers.append((b"content-type", verified.content_type))
        inner["headers"] = headers
        raw_path, _, query = verified.target.partition(b"?")
        inner["raw_path"] = raw_path
        inner["path"] = urllib.parse.unquote(raw_path.decode("latin-1"))
        inner["query_string"] = query
        peer = verified.peer
        state = dict(scope.get("state") or {})
        state["rolewire"] = peer
        inner["state"] = state
        inner["rolewire"] = peer
        inner["auth"] = RolewireCredentials(peer.roles)
        inner["user"] = RolewireUser(peer)
        extensions = dict(scope.get("extensions") or {})
        for name in _UNSEALABLE_EXTENSIONS:
            extensions.pop(name, None)
        inner["extensions"] = extensions
        return inner


class _SealedReceive:
    """The app's ``receive``: verified body pieces, opened on demand."""

    def __init__(self, receive: Receive, opener: RequestOpener,
                 queue: collections.deque[BodyData]) -> None:
        self._receive = receive
        self._opener = opener
        self._queue = queue
        #: The binding error that cut the body short, if one did.
        self.error: HTTPBindingError | None = None

    async def receive(self) -> Message:
        while not self._queue:
            if self.error is not None:
                return {"type": "http.disconnect"}
            if self._opener.done:
                return await self._receive()  # only http.disconnect from now on
            message = await self._receive()
            if message["type"] != "http.request":
                return message
            try:
                self._queue.extend(e for e in self._opener.feed(message.get("body", b""))
                                   if isinstance(e, BodyData))
                if not message.get("more_body", False) and not self._opener.done:
                    self._opener.end()
            except HTTPBindingError as exc:
                # A bad record mid-stream: the app's body ends as if the client left.
                self.error = exc
                self._queue.clear()
        event = self._queue.popleft()
        return {"type": "http.request", "body": event.data, "more_body": not event.final}


class _SealedSend:
    """The app's ``send``: seals the response start and body pieces."""

    def __init__(self, send: Send, sealer: Any, body: _SealedReceive) -> None:
        self._send = send
        self._sealer = sealer
        self._body = body
        self._start: Message | None = None
        self.started = False
        self.finished = False

    async def reply(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._start is not None:
                raise RuntimeError("http.response.start sent twice")
            self._start = message
            return
        if kind != "http.response.body":
            raise RuntimeError(f"ASGI message {kind!r} cannot be sealed")
        if self._start is None:
            raise RuntimeError("http.response.body before http.response.start")
        if self.finished:
            return
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self.started and self._body.error is not None:
            # The request body failed after the app started: answer with the
            # binding's error, not with whatever the app made of the cut body.
            self.started = self.finished = True
            await _send_reply(self._send, error_reply(self._body.error))
            return
        if not self.started:
            status = int(self._start["status"])
            headers = self._sealer.start(status, list(self._start.get("headers", [])))
            if not more:
                headers.append((b"content-length", str(self._sealer.sealed_length(len(body)))
                                .encode()))
            self.started = True
            await self._send({"type": "http.response.start",
                              "status": self._sealer.outer_status, "headers": headers})
        self.finished = not more
        await self._send({"type": "http.response.body", "body": self._sealer.seal(body, not more),
                          "more_body": more})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client disconnected; raises
    BodyTooLarge beyond ``limit`` (checked as bytes arrive)."""
    parts = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge("handshake body too large")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _send_reply(send: Send, reply: Reply) -> None:
    headers = list(reply.headers)
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})

