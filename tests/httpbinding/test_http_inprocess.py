"""The HTTP binding in process: FastAPI / Starlette / plain ASGI apps behind
RolewireMiddleware, called through rolewire.http.Transport over
httpx.ASGITransport. Every negative case checks the status, the client's
typed error, and that the application handler never ran."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from http_util import Counter, Tap, payment_config, resend, server_config
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.responses import JSONResponse
from starlette.routing import Route

from rolewire.errors import HandshakeError, HandshakeRejected, RolewireError
from rolewire.handshake import HandshakeConfig, RejectReason
from rolewire.http import (
    HANDSHAKE_PATH,
    HIDDEN_TARGET_PATH,
    BodyTooLarge,
    ChannelOptions,
    HTTPForbidden,
    NotSealed,
    RecordRejected,
    ResponseForged,
    RolewireMiddleware,
    RouteTable,
    ServerOptions,
    SessionIdInUse,
    Transport,
    require_roles,
)
from rolewire.http.wire import encode_session_id
from rolewire.roles import KeyRole, PasswordRole
from rolewire.services import ANY_AUTHENTICATED, UNRESTRICTED

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Payment = Annotated[Any, Depends(require_roles("payment"))]
Shipping = Annotated[Any, Depends(require_roles("shipping"))]
Anyone = Annotated[Any, Depends(require_roles())]


def fastapi_app(counter: Counter) -> FastAPI:
    api = FastAPI()

    @api.post("/charge")
    async def charge(request: Request, peer: Payment) -> Any:
        counter.calls += 1
        body = await request.json()
        return {"roles": sorted(peer.roles), "body": body, "query": request.url.query,
                "path": request.url.path, "ctype": request.headers.get("content-type"),
                "state_roles": sorted(request.state.rolewire.roles),
                "auth": request.auth.scopes, "user": request.user.is_authenticated}

    @api.put("/charge")
    async def charge_put(peer: Payment) -> Any:
        counter.calls += 1
        return {"put": True}

    @api.post("/refund")
    async def refund(peer: Payment) -> Any:
        counter.calls += 1
        return {"refund": True}

    @api.post("/ship")
    async def ship(peer: Shipping) -> Any:
        counter.calls += 1
        return {"shipped": True}

    @api.post("/echo")
    async def echo(request: Request, peer: Anyone) -> Any:
        counter.calls += 1
        return {"n": len(await request.body()), "h": request.headers.get("idempotency-key")}

    @api.post("/upload")
    async def upload(request: Request, peer: Payment) -> Any:
        counter.calls += 1
        pieces = [len(chunk) async for chunk in request.stream()]
        return {"total": sum(pieces), "pieces": len(pieces)}

    @api.get("/stream")
    async def stream(peer: Payment) -> StreamingResponse:
        counter.calls += 1

        async def gen() -> Any:
            for i in range(20):
                yield (f"line {i}\n" * 500).encode()

        return StreamingResponse(gen(), media_type="text/plain")

    return api


def setup(counter: Counter | None = None, *, server: HandshakeConfig | None = None,
          options: ServerOptions | None = None, client: HandshakeConfig | None = None,
          channel: ChannelOptions | None = None, clock: Clock | None = None,
          app: Any = None, rewrite: Any = None, **mw: Any) -> tuple[Any, Tap, Transport]:
    counter = counter or Counter()
    asgi = RolewireMiddleware(app or fastapi_app(counter), server or server_config(),
                              options=options, clock=clock or Clock(), **mw)
    tap = Tap(httpx.ASGITransport(app=asgi), rewrite=rewrite)
    transport = Transport(client or payment_config(), inner=tap, options=channel,
                          clock=clock or Clock())
    return asgi, tap, transport


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def raw_client(asgi: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://svc")


# -- it works ----------------------------------------------------------------------
def test_fastapi_roundtrip_roles_in_scope_and_one_handshake() -> None:
    counter = Counter()
    _asgi, tap, transport = setup(counter)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            for i in range(3):
                r = await client.post("/charge?order=7&x=%20y", json={"i": i})
                assert r.status_code == 200
                data = r.json()
                assert data["body"] == {"i": i}
                assert data["roles"] == data["state_roles"] == data["auth"] == ["payment"]
                assert data["user"] is True
                assert data["query"] == "order=7&x=%20y"
                assert data["ctype"] == "application/json"
                assert r.headers["content-type"] == "application/json"

    run(main())
    assert transport.handshakes == 1
    assert counter.calls == 3
    handshakes = [w for w in tap.log if w.url.path == HANDSHAKE_PATH]
    assert len(handshakes) == 2  # Hello, InitiatorAuth (3-message flow)
    for wire in tap.sealed():
        assert wire.headers and dict(wire.headers)[b"content-type"] == b"application/rolewire"
        assert b'"i"' not in wire.body and b"payment" not in wire.response_body
        assert dict(wire.response_headers)[b"content-type"] == b"application/rolewire"


def test_concurrent_requests_arrive_out_of_order() -> None:
    counter = Counter()
    _, _, transport = setup(counter)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            results = await asyncio.gather(*(client.post("/charge", json={"i": i})
                                             for i in range(25)))
        assert [r.json()["body"]["i"] for r in results] == list(range(25))

    run(main())
    assert transport.handshakes == 1 and counter.calls == 25


def test_password_role_five_message_flow() -> None:
    server = HandshakeConfig(roles=[PasswordRole("payment", "correct horse battery")])
    client = HandshakeConfig(roles=[PasswordRole("payment", "correct horse battery")])
    counter = Counter()
    _, tap, transport = setup(counter, server=server, client=client)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            assert (await c.post("/charge", json={})).status_code == 200

    run(main())
    assert counter.calls == 1
    # protocol 2: five handshake messages, three HTTP round trips
    assert len([w for w in tap.log if w.url.path == HANDSHAKE_PATH]) == 3


def test_streaming_request_and_response() -> None:
    counter = Counter()
    _, _tap, transport = setup(counter, channel=ChannelOptions(chunk_size=1000),
                              options=ServerOptions(chunk_size=4096))

    async def body() -> Any:
        for _ in range(30):
            yield os.urandom(700)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            r = await c.post("/upload", content=body())
            assert r.json()["total"] == 30 * 700
            async with c.stream("GET", "/stream") as r:
                text = b"".join([chunk async for chunk in r.aiter_raw()])
            assert text == b"".join((f"line {i}\n" * 500).encode() for i in range(20))

    run(main())
    assert counter.calls == 2


def test_hidden_target_option() -> None:
    counter = Counter()
    _, tap, transport = setup(counter, channel=ChannelOptions(hide_target=True))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            r = await c.post("/charge?secret=1", json={"a": 1})
            assert r.json()["path"] == "/charge" and r.json()["query"] == "secret=1"

    run(main())
    sealed = tap.sealed()
    assert [w.url.raw_path for w in sealed] == [HIDDEN_TARGET_PATH.encode()]
    assert counter.calls == 1


def test_plain_asgi_route_table() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hi " + scope["path"].encode()})

    routes = RouteTable([("POST", "/charge", ["payment"]), ("GET", "/ship/*", ["shipping"]),
                         ("*", "/status", ANY_AUTHENTICATED), ("*", "/free", UNRESTRICTED)])
    _, tap, transport = setup(app=app, routes=routes)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            assert (await c.post("/charge")).text == "hi /charge"
            assert (await c.get("/status")).status_code == 200
            assert (await c.get("/free")).status_code == 200
            for method, path in (("GET", "/ship/1"), ("GET", "/charge"), ("GET", "/nowhere")):
                with pytest.raises(HTTPForbidden):
                    await c.request(method, path)

    run(main())
    assert calls == ["/charge", "/status", "/free"]
    for wire in tap.sealed()[-3:]:
        assert wire.status == 403
        assert b"shipping" not in wire.response_body and b"payment" not in wire.response_body
        assert all(b"payment" not in v and b"shipping" not in v for _, v in wire.response_headers)


def test_starlette_requires_uses_scope_auth() -> None:
    @requires("payment")
    async def pay(request: Any) -> JSONResponse:
        return JSONResponse({"user": request.user.is_authenticated})

    @requires("shipping")
    async def ship(request: Any) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(routes=[Route("/pay", pay), Route("/ship", ship)])
    _, _, transport = setup(app=app)
    transport.raise_for_auth = False

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            assert (await c.get("/pay")).json() == {"user": True}
            assert (await c.get("/ship")).status_code == 403

    run(main())


def test_wrong_role_route_is_403_typed_and_handler_not_run() -> None:
    counter = Counter()
    _, tap, transport = setup(counter)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            with pytest.raises(HTTPForbidden) as info:
                await c.post("/ship", json={})
            assert "shipping" not in str(info.value)

    run(main())
    assert counter.calls == 0
    assert tap.sealed()[0].status == 403


def test_no_shared_role_handshake_rejected_with_status() -> None:
    counter = Counter()
    # allow_anonymous: the stranger goes on to the server's verdict (protocol
    # 2 runs the key exchange either way; the server rejects message 3)
    stranger = HandshakeConfig(roles=[KeyRole("warehouse", os.urandom(32))],
                               allow_anonymous=True)
    _, tap, transport = setup(counter, client=stranger)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            with pytest.raises(HandshakeRejected) as info:
                await c.post("/charge", json={})
            # protocol 2: every authentication failure is AUTH_FAILED on the wire
            assert info.value.reason_code == RejectReason.AUTH_FAILED

    run(main())
    assert counter.calls == 0
    last = tap.log[-1]
    assert last.status == 403
    assert dict(last.response_headers)[b"rolewire-reject"] == b"%d" % RejectReason.AUTH_FAILED


def test_wrong_key_client_fails_and_tells_the_server() -> None:
    counter = Counter()
    asgi, _tap, transport = setup(counter, client=HandshakeConfig(
        roles=[KeyRole("payment", os.urandom(32))]))

    async def main() -> None:
        with pytest.raises(HandshakeError):
            await _one_call(transport)

    run(main())
    assert counter.calls == 0
    assert asgi.endpoint.pending_count == 0  # the client's Reject ended the server's half
    assert asgi.endpoint.session_count == 0


# -- negative: requests ------------------------------------------------------------
async def _one_call(transport: Transport, path: str = "/charge", **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
        return await c.post(path, json={"amount": 1}, **kw)


def test_unsealed_request_401() -> None:
    counter = Counter()
    asgi, _, _ = setup(counter)

    async def main() -> None:
        async with raw_client(asgi) as c:
            r = await c.post("/charge", json={"amount": 1})
            assert r.status_code == 401
            assert r.headers["rolewire-error"] == "not-sealed"
            assert r.headers["www-authenticate"] == "Rolewire"

    run(main())
    assert counter.calls == 0


def test_replayed_request_rejected() -> None:
    counter = Counter()
    asgi, tap, transport = setup(counter)

    async def main() -> None:
        await _one_call(transport)
        wire = tap.sealed()[0]
        async with raw_client(asgi) as c:
            r = await c.send(resend(wire))
        assert r.status_code == 401 and r.headers["rolewire-error"] == "rejected"

    run(main())
    assert counter.calls == 1


@pytest.mark.parametrize("change", [{"path": "/refund"}, {"method": "PUT"},
                                    {"path": "/charge?amount=1000"}])
def test_body_moved_to_other_path_or_method(change: dict[str, str]) -> None:
    counter = Counter()
    _asgi, tap, transport = setup(counter)
    captured: list[httpx.Request] = []

    def rewrite(request: httpx.Request, body: bytes) -> httpx.Request | None:
        # Hold back the client's sealed request; the attacker sends it elsewhere.
        if request.url.path == "/charge" and not captured:
            from http_util import Wire
            moved = resend(Wire(request.method, request.url, list(request.headers.raw), body),
                           **change)
            captured.append(moved)
            return moved
        return None

    tap.rewrite = rewrite

    async def main() -> None:
        with pytest.raises(RecordRejected):
            await _one_call(transport)

    run(main())
    assert counter.calls == 0


def test_body_from_another_session() -> None:
    counter = Counter()
    asgi, tap, transport = setup(counter)
    tap_b = Tap(httpx.ASGITransport(app=asgi))
    other = Transport(payment_config(), inner=tap_b, clock=Clock())

    async def main() -> None:
        await _one_call(transport)
        await _one_call(other)
        mine = tap.sealed()[0]
        sid_b = dict(tap_b.sealed()[0].headers)[b"rolewire-session"]
        assert sid_b != dict(mine.headers)[b"rolewire-session"]
        # A sealed request of session A presented under session B's id.
        async with raw_client(asgi) as c:
            r = await c.send(resend(mine, headers={"rolewire-session": sid_b.decode()}))
        assert r.status_code == 401 and r.headers["rolewire-error"] == "rejected"

    run(main())
    assert counter.calls == 2


def test_bound_headers_are_checked() -> None:
    counter = Counter()
    opts = ServerOptions(bound_headers=("idempotency-key",))
    asgi, tap, transport = setup(counter, options=opts,
                                 channel=ChannelOptions(bound_headers=("idempotency-key",)))
    unbound = Transport(payment_config(), inner=httpx.ASGITransport(app=asgi), clock=Clock())

    async def main() -> None:
        r = await _one_call(transport, "/echo", headers={"idempotency-key": "k1"})
        assert r.json()["h"] == "k1"
        async with raw_client(asgi) as c:
            r = await c.send(resend(tap.sealed()[0], headers={"idempotency-key": "k2"}))
        assert r.status_code == 401
        with pytest.raises(RecordRejected):
            await _one_call(unbound, "/echo", headers={"idempotency-key": "k1"})

    run(main())
    assert counter.calls == 1


def test_truncated_body_400() -> None:
    counter = Counter()
    asgi, tap, transport = setup(counter)

    async def main() -> None:
        await _one_call(transport)
        wire = tap.sealed()[0]
        transport2 = Transport(payment_config(), inner=httpx.ASGITransport(app=asgi),
                               clock=Clock())
        await _one_call(transport2)
        # A fresh request, cut short (reuse the tap: seal one more and cut it).
        tap.rewrite = lambda req, body: resend(
            __import__("http_util").Wire(req.method, req.url, list(req.headers.raw), body),
            body=body[:-5]) if req.url.path == "/charge" else None
        with pytest.raises(RolewireError) as info:
            await _one_call(transport)
        assert info.value.status == 400 and info.value.code == "truncated"  # type: ignore
        assert wire.status == 200

    run(main())
    assert counter.calls == 2


@pytest.mark.parametrize("verify_before_app", [1 << 20, 0])
def test_multi_record_body_missing_final_record(verify_before_app: int) -> None:
    counter = Counter()
    _asgi, tap, transport = setup(counter, channel=ChannelOptions(chunk_size=100),
                                 options=ServerOptions(verify_before_app=verify_before_app))

    def rewrite(req: httpx.Request, body: bytes) -> httpx.Request | None:
        if req.url.path != "/echo":
            return None
        # Drop the last framed record.
        records, pos = [], 0
        while pos < len(body):
            n = int.from_bytes(body[pos:pos + 4], "big")
            records.append(body[pos:pos + 4 + n])
            pos += 4 + n
        from http_util import Wire
        return resend(Wire(req.method, req.url, list(req.headers.raw), body),
                      body=b"".join(records[:-1]))

    tap.rewrite = rewrite

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            with pytest.raises(RolewireError) as info:
                await c.post("/echo", content=b"x" * 1000)
            assert info.value.code == "truncated"  # type: ignore[attr-defined]

    run(main())
    # Within verify_before_app nothing reaches the handler; a streamed body
    # reaches it and ends in http.disconnect (the client still gets 400).
    assert counter.calls == (0 if verify_before_app else 1)


def test_oversized_body_413_before_decryption() -> None:
    counter = Counter()
    _asgi, tap, transport = setup(counter, options=ServerOptions(max_body=4096))

    async def gen() -> Any:
        for _ in range(10):
            yield b"y" * 1000

    async def main() -> None:
        with pytest.raises(BodyTooLarge):
            await _one_call(transport, "/echo", content=b"x" * 10_000)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            with pytest.raises(BodyTooLarge):
                await c.post("/echo", content=gen())

    run(main())
    assert counter.calls == 0
    assert [w.status for w in tap.sealed()] == [413, 413]


def test_forged_record_byte_flips_rejected() -> None:
    counter = Counter()
    asgi, tap, transport = setup(counter)

    async def main() -> None:
        await _one_call(transport)
        wire = tap.sealed()[0]
        async with raw_client(asgi) as c:
            for pos in range(4, len(wire.body), max(1, len(wire.body) // 40)):
                body = bytearray(wire.body)
                body[pos] ^= 0x01
                r = await c.send(resend(wire, body=bytes(body)))
                assert r.status_code in (400, 401), pos

    run(main())
    assert counter.calls == 1


def test_expired_session_rehandshakes() -> None:
    counter = Counter()
    clock = Clock()
    asgi, tap, transport = setup(counter, clock=clock,
                                 options=ServerOptions(session_lifetime=100))
    transport._clock = lambda: 0.0  # the client does not notice the expiry itself

    async def main() -> None:
        await _one_call(transport)
        wire = tap.sealed()[0]
        clock.now += 101
        async with raw_client(asgi) as c:
            r = await c.send(resend(wire))
        assert r.status_code == 401 and r.headers["rolewire-error"] == "session-expired"
        assert (await _one_call(transport)).status_code == 200

    run(main())
    assert transport.handshakes == 2 and counter.calls == 2
    statuses = [w.status for w in tap.sealed()]
    assert statuses == [200, 401, 200] or statuses == [200, 200]


def test_client_renews_before_announced_lifetime() -> None:
    clock = Clock()
    _, _, transport = setup(clock=clock, options=ServerOptions(session_lifetime=100))

    async def main() -> None:
        await _one_call(transport)
        clock.now += 96
        await _one_call(transport)

    run(main())
    assert transport.handshakes == 2


# -- negative: responses -----------------------------------------------------------
class SwapTransport(httpx.AsyncBaseTransport):
    """Holds two concurrent sealed requests and swaps their responses."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.waiting: list[tuple[httpx.Request, asyncio.Future[httpx.Response]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == HANDSHAKE_PATH:
            return await self.inner.handle_async_request(request)
        response = await self.inner.handle_async_request(request)
        data = await response.aread()
        mine = httpx.Response(response.status_code, headers=response.headers, content=data)
        future: asyncio.Future[httpx.Response] = asyncio.get_running_loop().create_future()
        self.waiting.append((request, future))
        if len(self.waiting) == 2:
            (_, f1), (_, f2) = self.waiting
            first = self._first
            f1.set_result(mine)
            f2.set_result(first)
        else:
            self._first = mine
        return await future


def test_response_swapped_between_concurrent_requests() -> None:
    counter = Counter()
    asgi = RolewireMiddleware(fastapi_app(counter), server_config(), clock=Clock())
    transport = Transport(payment_config(), inner=SwapTransport(httpx.ASGITransport(app=asgi)))

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            results = await asyncio.gather(c.post("/charge", json={"a": 1}),
                                           c.post("/charge", json={"a": 2}),
                                           return_exceptions=True)
        assert all(isinstance(r, ResponseForged) for r in results), results

    run(main())


def test_tampered_and_unsealed_responses_rejected() -> None:
    counter = Counter()
    asgi = RolewireMiddleware(fastapi_app(counter), server_config(), clock=Clock())
    mode = {"m": "flip"}

    class Evil(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await httpx.ASGITransport(app=asgi).handle_async_request(request)
            data = await response.aread()
            if request.url.path == HANDSHAKE_PATH:
                return httpx.Response(response.status_code, headers=response.headers,
                                      content=data)
            if mode["m"] == "flip":
                body = bytearray(data)
                body[-3] ^= 1
                return httpx.Response(response.status_code, headers=response.headers,
                                      content=bytes(body))
            if mode["m"] == "status":
                return httpx.Response(201, headers=response.headers, content=data)
            return httpx.Response(200, json={"fake": True})

    transport = Transport(payment_config(), inner=Evil())

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            for m in ("flip", "status", "unsealed"):
                mode["m"] = m
                with pytest.raises(ResponseForged):
                    await c.post("/charge", json={"a": 1})

    run(main())


# -- negative: handshake -----------------------------------------------------------
def test_forged_handshake_steps() -> None:
    counter = Counter()

    def flip_second(req: httpx.Request, body: bytes) -> httpx.Request | None:
        if req.url.path == HANDSHAKE_PATH and body[0] != 1:  # not the Hello
            from http_util import Wire
            forged = bytearray(body)
            forged[-1] ^= 1
            return resend(Wire(req.method, req.url, list(req.headers.raw), body),
                          body=bytes(forged))
        return None

    asgi, tap, transport = setup(counter, rewrite=flip_second)

    async def main() -> None:
        with pytest.raises(HandshakeRejected) as info:
            await _one_call(transport)
        assert info.value.reason_code == RejectReason.DECRYPT_ERROR
        last = tap.log[-1]
        assert last.status == 403
        assert dict(last.response_headers)[b"rolewire-reject"] == b"%d" % RejectReason.DECRYPT_ERROR
        async with raw_client(asgi) as c:
            r = await c.post(HANDSHAKE_PATH, content=b"\x01\x00\x00\x05hello",
                             headers={"content-type": "application/rolewire-handshake",
                                      "rolewire-session": encode_session_id(os.urandom(16))})
            assert r.status_code == 400 and r.headers["rolewire-reject"] == "1"
            r = await c.post(HANDSHAKE_PATH, content=b"x", headers={"rolewire-session": "bad"})
            assert r.status_code == 400

    run(main())
    assert counter.calls == 0


def test_forged_responder_hello_fails_client() -> None:
    counter = Counter()
    asgi = RolewireMiddleware(fastapi_app(counter), server_config(), clock=Clock())

    class Evil(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await httpx.ASGITransport(app=asgi).handle_async_request(request)
            data = bytearray(await response.aread())
            if request.url.path == HANDSHAKE_PATH and data:
                data[-1] ^= 1
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=bytes(data))

    async def main() -> None:
        with pytest.raises(HandshakeError):
            await _one_call(Transport(payment_config(), inner=Evil()))

    run(main())
    assert counter.calls == 0


def test_session_id_in_use_and_busy() -> None:
    asgi, tap, transport = setup(options=ServerOptions(max_pending_handshakes=1))

    async def main() -> None:
        await _one_call(transport)
        hello = tap.log[0]
        async with raw_client(asgi) as c:
            r = await c.send(resend(hello))
            assert r.status_code == SessionIdInUse.status == 409
            headers = {"rolewire-session": encode_session_id(os.urandom(16))}
            assert (await c.send(resend(hello, headers=headers))).status_code == 200
            headers = {"rolewire-session": encode_session_id(os.urandom(16))}
            r = await c.send(resend(hello, headers=headers))
            assert r.status_code == 503
            assert r.headers["rolewire-reject"] == str(int(RejectReason.BUSY))

    run(main())


def test_websocket_and_handshake_get_refused() -> None:
    asgi, _, _ = setup()

    async def main() -> None:
        async with raw_client(asgi) as c:
            assert (await c.get(HANDSHAKE_PATH)).status_code == 405
            assert (await c.get("/charge")).status_code == NotSealed.status

    run(main())
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    asyncio.run(asgi({"type": "websocket", "path": "/ws", "headers": []}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_error_replies_never_echo_input() -> None:
    asgi, _, _ = setup()

    async def main() -> None:
        async with raw_client(asgi) as c:
            r = await c.post("/charge", content=b"payment secret",
                             headers={"content-type": "application/rolewire",
                                      "rolewire-session": encode_session_id(os.urandom(16))})
            assert r.status_code == 401 and r.text == "session-unknown\n"

    run(main())


def test_app_exception_gives_sealed_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    _, _tap, transport = setup(app=app)

    async def main() -> None:
        r = await _one_call(transport)
        assert r.status_code == 500

    with pytest.raises(RuntimeError):
        run(main())


def test_json_report_shape_of_errors_is_typed() -> None:
    # Every binding error class round-trips from status+token to the same class.
    from rolewire.http import errors

    for cls in (errors.NotSealed, errors.UnknownSession, errors.SessionExpired,
                errors.RecordRejected, errors.MalformedBody, errors.BodyTruncated,
                errors.BodyTooLarge, errors.SessionIdInUse):
        err = errors.error_for(cls.status, cls.code)
        assert type(err) is cls and isinstance(err, RolewireError)
    assert errors.error_for(401, "nonsense") is None
    assert json.dumps({"ok": True})


# -- replicas, back-pressure ------------------------------------------------------------
class Switch(httpx.AsyncBaseTransport):
    """Routes to one of two replicas; ``target`` is changed by the test (a
    replica failing over)."""

    def __init__(self, a: Any, b: Any) -> None:
        self.replicas = [httpx.ASGITransport(app=a), httpx.ASGITransport(app=b)]
        self.target = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.replicas[self.target].handle_async_request(request)


def test_session_unknown_on_other_replica_rehandshakes_once() -> None:
    counter = Counter()
    a = RolewireMiddleware(fastapi_app(counter), server_config(), clock=Clock())
    b = RolewireMiddleware(fastapi_app(counter), server_config(), clock=Clock())
    switch = Switch(a, b)
    transport = Transport(payment_config(), inner=switch)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            assert (await c.post("/charge", json={"n": 1})).status_code == 200
            switch.target = 1
            assert (await c.post("/charge", json={"n": 2})).status_code == 200

            async def stream() -> Any:
                yield b"{}"

            switch.target = 0  # a streamed body cannot be re-sent: typed error instead
            from rolewire.http import UnknownSession
            with pytest.raises(UnknownSession):
                await c.post("/charge", content=stream())

    run(main())
    assert transport.handshakes == 2 and counter.calls == 2
    assert a.endpoint.stats["session_unknown"] == 1 and b.endpoint.stats["session_unknown"] == 1


def test_request_body_back_pressure_and_streamed_response() -> None:
    """The middleware pulls one more body message from the server only when
    the app asks for more; response pieces go out as the app sends them."""
    from rolewire.http import ClientHandshake

    pulls = {"n": 0}
    log: list[tuple[str, int]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            log.append(("app-read", pulls["n"]))
            await send({"type": "http.response.body", "body": message["body"],
                        "more_body": True})
            if not message["more_body"]:
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    asgi = RolewireMiddleware(app, server_config(), clock=Clock(),
                              options=ServerOptions(verify_before_app=0))

    async def main() -> None:
        hs = ClientHandshake(payment_config())
        body = hs.next_body()
        async with raw_client(asgi) as c:
            while body is not None:
                r = await c.post(HANDSHAKE_PATH, content=body, headers={
                    k.decode(): v.decode() for k, v in hs.headers()})
                body = hs.receive(r.status_code, list(r.headers.raw), r.content)
        channel = hs.channel(now=0.0, options=ChannelOptions(chunk_size=10))
        sealed = channel.seal_request(b"POST", b"/up", [])
        messages = [sealed.seal(b"p" * 10, final=False) for _ in range(9)]
        messages.append(sealed.seal(b"p" * 10, final=True))
        queue = list(messages)

        async def receive() -> Any:
            pulls["n"] += 1
            chunk = queue.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/up", "raw_path": b"/up",
                 "query_string": b"", "headers": sealed.outer_headers, "client": None}
        await asgi(scope, receive, send)
        # Never more than one body message ahead of the app.
        for index, (_, pulled) in enumerate(log):
            assert pulled <= index + 1
        bodies = [m for m in sent if m["type"] == "http.response.body"]
        assert len(bodies) == 11  # streamed piece by piece, not buffered
        opener = sealed.open_response(sent[0]["status"], list(sent[0]["headers"]))
        data = b""
        for m in bodies:
            for event in opener.feed(m["body"]):
                data += getattr(event, "data", b"")
        opener.end()
        assert data == b"p" * 100

    run(main())


def test_bodyless_statuses_travel_sealed_as_200() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = int(scope["path"].strip("/"))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    _, tap, transport = setup(app=app)

    async def main() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            assert (await c.delete("/204")).status_code == 204
            assert (await c.get("/304")).status_code == 304
            assert (await c.get("/202")).status_code == 202

    run(main())
    assert [w.status for w in tap.sealed()] == [200, 200, 202]
