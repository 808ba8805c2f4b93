"""httpx transports: the client side of the HTTP binding.

::

    async with httpx.AsyncClient(transport=rolewire.http.Transport(config)) as client:
        r = await client.post("http://payment:8000/charge", json={"amount": 1})

:class:`Transport` (``httpx.AsyncBaseTransport``) and :class:`SyncTransport`
(``httpx.BaseTransport``) wrap an inner transport (default: httpx's own
``AsyncHTTPTransport`` / ``HTTPTransport``; any transport works, e.g.
``httpx.ASGITransport`` in tests). Per origin, the first request runs the
handshake (POSTs to ``/.well-known/rolewire/handshake``) and later requests
reuse the session; it is run again when the server's announced lifetime
ends or the server no longer knows the session (then a request with a
replayable body is re-sent once: the server guarantees it never reached the
application).

Errors are typed (all :class:`~rolewire.errors.RolewireError`): a failed
handshake raises a :class:`~rolewire.errors.HandshakeError`
(``HandshakeRejected`` with the server's reason code); a response that does
not open or is not bound to its request raises
:class:`~rolewire.http.ResponseForged`; the binding's 401/400/409/413 raise
the matching :class:`~rolewire.http.HTTPBindingError`; a 403 of the server's
role policy raises :class:`~rolewire.http.HTTPForbidden` (unless
``raise_for_auth=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from rolewire.errors import HandshakeError
from rolewire.handshake import HandshakeConfig
from rolewire.http.client import (
    ChannelOptions,
    ClientChannel,
    ClientHandshake,
    ResponseData,
    ResponseOpener,
    ResponseVerified,
    SealedRequest,
)
from rolewire.http.errors import HTTPBindingError, HTTPForbidden, ResponseForged
from rolewire.http.wire import HANDSHAKE_PATH, HEADER_ERROR, header_value

__all__ = ["SyncTransport", "Transport"]

Origin = tuple[bytes, bytes, int]


def _origin(url: httpx.URL) -> Origin:
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.raw_scheme, url.raw_host, port


def _handshake_request(url: httpx.URL, hs: ClientHandshake, body: bytes) -> httpx.Request:
    return httpx.Request("POST", url.copy_with(raw_path=HANDSHAKE_PATH.encode()),
                         headers=hs.headers(), content=body)


def _outer_request(request: httpx.Request, sealed: SealedRequest, content: Any) -> httpx.Request:
    url = request.url
    if sealed.outer_target != url.raw_path:  # hidden target (copy_with re-parses: slow)
        url = url.copy_with(raw_path=sealed.outer_target)
    return httpx.Request(request.method, url, headers=sealed.outer_headers, content=content,
                         extensions=request.extensions)


def _replayable(request: httpx.Request) -> bytes | None:
    """The body as bytes if it can be sent twice (not a stream)."""
    if isinstance(request.stream, httpx.ByteStream):
        return b"".join(request.stream)
    return None


def _forbidden(verified: ResponseVerified) -> bool:
    return verified.status == 403 and header_value(
        verified.headers, HEADER_ERROR.encode()) == b"forbidden"


class _Base:
    def __init__(self, config: HandshakeConfig, *, options: ChannelOptions | None,
                 raise_for_auth: bool, clock: Callable[[], float]) -> None:
        if not isinstance(config, HandshakeConfig):
            raise TypeError("config must be a rolewire.handshake.HandshakeConfig")
        self.config = config
        self.options = options or ChannelOptions()
        self.raise_for_auth = raise_for_auth
        self._clock = clock
        self._channels: dict[Origin, ClientChannel] = {}
        #: Completed handshakes (for tests and metrics).
        self.handshakes = 0

    def _usable(self, origin: Origin) -> ClientChannel | None:
        channel = self._channels.get(origin)
        if channel is not None and channel.expired(self._clock()):
            self._drop(origin, channel)
            return None
        return channel

    def _drop(self, origin: Origin, channel: ClientChannel) -> None:
        if self._channels.get(origin) is channel:
            del self._channels[origin]
        channel.close()

    def peer_roles(self, url: str | httpx.URL) -> frozenset[str] | None:
        """The roles the server at ``url``'s origin proved, once connected."""
        channel = self._channels.get(_origin(httpx.URL(url)))
        return channel.peer_roles if channel is not None else None


class Transport(_Base, httpx.AsyncBaseTransport):
    """Async httpx transport sealing every request (see module doc).

    Args:
        config: this client's :class:`~rolewire.handshake.HandshakeConfig`.
        inner: the transport that moves the bytes (default
            ``httpx.AsyncHTTPTransport()``).
        options: :class:`~rolewire.http.ChannelOptions` (bound headers,
            hidden target, limits).
        raise_for_auth: raise :class:`HTTPForbidden` for a 403 of the
            server's role policy (default True).
        clock: monotonic time source for session lifetimes.
    """

    def __init__(self, config: HandshakeConfig, *, inner: httpx.AsyncBaseTransport | None = None,
                 options: ChannelOptions | None = None, raise_for_auth: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, options=options, raise_for_auth=raise_for_auth, clock=clock)
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._locks: dict[Origin, asyncio.Lock] = {}

    async def _channel(self, url: httpx.URL) -> ClientChannel:
        origin = _origin(url)
        channel = self._usable(origin)
        if channel is not None:
            return channel
        lock = self._locks.setdefault(origin, asyncio.Lock())
        async with lock:
            channel = self._usable(origin)
            if channel is not None:
                return channel
            hs = ClientHandshake(self.config, peer=origin)
            body = hs.next_body()
            while body is not None:
                response = await self._inner.handle_async_request(
                    _handshake_request(url, hs, body))
                try:
                    reply = await response.aread()
                finally:
                    await response.aclose()
                try:
                    body = hs.receive(response.status_code, list(response.headers.raw), reply)
                except HandshakeError:
                    if hs.pending_reject:
                        with contextlib.suppress(Exception):
                            sent = await self._inner.handle_async_request(
                                _handshake_request(url, hs, hs.pending_reject))
                            await sent.aclose()
                    raise
            channel = hs.channel(now=self._clock(), options=self.options)
            self._channels[origin] = channel
            self.handshakes += 1
            return channel

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        replay = _replayable(request)
        for attempt in (0, 1):
            channel = await self._channel(request.url)
            sealed = channel.seal_request(request.method.encode(), request.url.raw_path,
                                          list(request.headers.raw))
            content: Any = (sealed.seal(replay, final=True) if replay is not None
                            else self._seal_stream(request, sealed))
            response = await self._inner.handle_async_request(
                _outer_request(request, sealed, content))
            try:
                opener = sealed.open_response(response.status_code, list(response.headers.raw))
            except HTTPBindingError as exc:
                await response.aclose()
                if exc.retry_after_handshake:
                    self._drop(_origin(request.url), channel)
                    if attempt == 0 and replay is not None:
                        continue
                raise
            except BaseException:
                await response.aclose()
                raise
            return await self._open(response, opener)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _seal_stream(self, request: httpx.Request,
                           sealed: SealedRequest) -> AsyncIterator[bytes]:
        previous: bytes | None = None
        stream: Any = request.stream
        async for chunk in stream:
            if previous is not None:
                yield sealed.seal(previous, final=False)
            previous = bytes(chunk)
        yield sealed.seal(previous or b"", final=True)

    async def _open(self, response: httpx.Response, opener: ResponseOpener) -> httpx.Response:
        stream: Any = response.stream
        chunks = stream.__aiter__()
        ready: list[bytes] = []
        verified: ResponseVerified | None = None
        try:
            while verified is None:
                try:
                    data = await chunks.__anext__()
                except StopAsyncIteration:
                    opener.end()
                    raise ResponseForged("empty sealed response") from None
                for event in opener.feed(data):
                    if isinstance(event, ResponseVerified):
                        verified = event
                    elif event.data:
                        ready.append(event.data)
            if self.raise_for_auth and _forbidden(verified):
                raise HTTPForbidden()
        except BaseException:
            await response.aclose()
            raise
        return httpx.Response(verified.status, headers=verified.headers,
                              stream=_AsyncOpened(chunks, opener, ready, response),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        for origin, channel in list(self._channels.items()):
            self._drop(origin, channel)
        await self._inner.aclose()


class _AsyncOpened(httpx.AsyncByteStream):
    def __init__(self, chunks: Any, opener: ResponseOpener, ready: list[bytes],
                 response: httpx.Response) -> None:
        self._chunks = chunks
        self._opener = opener
        self._ready = ready
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for data in self._ready:
            yield data
        self._ready = []
        while True:
            try:
                data = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._opener.end()
                return
            for event in self._opener.feed(data):
                if isinstance(event, ResponseData) and event.data:
                    yield event.data

    async def aclose(self) -> None:
        await self._response.aclose()


class SyncTransport(_Base, httpx.BaseTransport):
    """Synchronous httpx transport (``httpx.Client``); thread-safe. Same
    arguments as :class:`Transport`, with ``inner`` an ``httpx.BaseTransport``
    (default ``httpx.HTTPTransport()``)."""

    def __init__(self, config: HandshakeConfig, *, inner: httpx.BaseTransport | None = None,
                 options: ChannelOptions | None = None, raise_for_auth: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, options=options, raise_for_auth=raise_for_auth, clock=clock)
        self._inner = inner if inner is not None else httpx.HTTPTransport()
        self._lock = threading.Lock()
        self._locks: dict[Origin, threading.Lock] = {}

    def _channel(self, url: httpx.URL) -> ClientChannel:
        origin = _origin(url)
        with self._lock:
            channel = self._usable(origin)
            if channel is not None:
                return channel
            lock = self._locks.setdefault(origin, threading.Lock())
        with lock:
            with self._lock:
                channel = self._usable(origin)
            if channel is not None:
                return channel
            hs = ClientHandshake(self.config, peer=origin)
            body = hs.next_body()
            while body is not None:
                response = self._inner.handle_request(_handshake_request(url, hs, body))
                try:
                    reply = response.read()
                finally:
                    response.close()
                try:
                    body = hs.receive(response.status_code, list(response.headers.raw), reply)
                except HandshakeError:
                    if hs.pending_reject:
                        with contextlib.suppress(Exception):
                            self._inner.handle_request(
                                _handshake_request(url, hs, hs.pending_reject)).close()
                    raise
            channel = hs.channel(now=self._clock(), options=self.options)
            with self._lock:
                self._channels[origin] = channel
                self.handshakes += 1
            return channel

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        replay = _replayable(request)
        for attempt in (0, 1):
            channel = self._channel(request.url)
            sealed = channel.seal_request(request.method.encode(), request.url.raw_path,
                                          list(request.headers.raw))
            content: Any = (sealed.seal(replay, final=True) if replay is not None
                            else self._seal_stream(request, sealed))
            response = self._inner.handle_request(_outer_request(request, sealed, content))
            try:
                opener = sealed.open_response(response.status_code, list(response.headers.raw))
            except HTTPBindingError as exc:
                response.close()
                if exc.retry_after_handshake:
                    with self._lock:
                        self._drop(_origin(request.url), channel)
                    if attempt == 0 and replay is not None:
                        continue
                raise
            except BaseException:
                response.close()
                raise
            return self._open(response, opener)
        raise AssertionError("unreachable")  # pragma: no cover

    def _seal_stream(self, request: httpx.Request, sealed: SealedRequest) -> Iterator[bytes]:
        previous: bytes | None = None
        stream: Any = request.stream
        for chunk in stream:
            if previous is not None:
                yield sealed.seal(previous, final=False)
            previous = bytes(chunk)
        yield sealed.seal(previous or b"", final=True)

    def _open(self, response: httpx.Response, opener: ResponseOpener) -> httpx.Response:
        stream: Any = response.stream
        chunks = iter(stream)
        ready: list[bytes] = []
        verified: ResponseVerified | None = None
        try:
            while verified is None:
                try:
                    data = next(chunks)
                except StopIteration:
                    opener.end()
                    raise ResponseForged("empty sealed response") from None
                for event in opener.feed(data):
                    if isinstance(event, ResponseVerified):
                        verified = event
                    elif event.data:
                        ready.append(event.data)
            if self.raise_for_auth and _forbidden(verified):
                raise HTTPForbidden()
        except BaseException:
            response.close()
            raise
        return httpx.Response(verified.status, headers=verified.headers,
                              stream=_SyncOpened(chunks, opener, ready, response),
                              extensions=response.extensions)

    def close(self) -> None:
        with self._lock:
            for origin, channel in list(self._channels.items()):
                self._drop(origin, channel)
        self._inner.close()


class _SyncOpened(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes], opener: ResponseOpener, ready: list[bytes],
                 response: httpx.Response) -> None:
        self._chunks = chunks
        self._opener = opener
        self._ready = ready
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        yield from self._ready
        self._ready = []
        for data in self._chunks:
            for event in self._opener.feed(data):
                if isinstance(event, ResponseData) and event.data:
                    yield event.data
        self._opener.end()

    def close(self) -> None:
        self._response.close()
