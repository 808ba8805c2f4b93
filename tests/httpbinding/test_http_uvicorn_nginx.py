"""The HTTP binding for real: uvicorn servers on random loopback ports, and
nginx (Debian's package) as a reverse proxy in front of two uvicorn replicas
of one service, routing sticky on the Rolewire-Session header
(``hash $http_rolewire_session consistent``).

Proves: requests through nginx work (sync and async httpx clients); nginx's
log shows only ciphertext bodies; a captured request is never accepted
twice — replayed through nginx, to the replica that holds its session, or to
the other replica; a replica failing over makes the client re-handshake on
the other one and the request runs exactly once."""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from http_util import payment_config, server_config
from servers import nginx_proxy, uvicorn_server

from rolewire.http import (
    BodyTooLarge,
    ChannelOptions,
    HTTPForbidden,
    RolewireMiddleware,
    ServerOptions,
    SyncTransport,
    Transport,
    require_roles,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

Payment = Annotated[Any, Depends(require_roles("payment"))]
Shipping = Annotated[Any, Depends(require_roles("shipping"))]

SECRET = "order-4711-secret-plaintext"


def replica(name: str, executions: collections.Counter[str], **options: Any) -> Any:
    api = FastAPI()

    @api.post("/charge")
    async def charge(request: Request, peer: Payment) -> Any:
        body = await request.json()
        executions[body["id"]] += 1
        return {"replica": name, "id": body["id"], "note": SECRET}

    @api.delete("/order", status_code=204)
    async def delete(peer: Payment) -> None:
        executions["delete"] += 1

    @api.post("/ship")
    async def ship(peer: Shipping) -> Any:
        executions["ship"] += 1
        return {}

    @api.post("/upload")
    async def upload(request: Request, peer: Payment) -> Any:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return {"total": total, "replica": name}

    @api.get("/download")
    async def download(peer: Payment, n: int = 10) -> StreamingResponse:
        async def gen() -> Any:
            for i in range(n):
                yield bytes([i % 256]) * 100_000

        return StreamingResponse(gen(), media_type="application/octet-stream")

    return RolewireMiddleware(api, server_config(), options=ServerOptions(**options))


class Capture(httpx.BaseTransport):
    """Sync inner transport that keeps a copy of every outer request."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[tuple[str, httpx.URL, list[tuple[bytes, bytes]], bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.requests.append((request.method, request.url, list(request.headers.raw), body))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def replay(url: str, captured: tuple[str, httpx.URL, list[tuple[bytes, bytes]], bytes]
           ) -> httpx.Response:
    method, old, headers, body = captured
    target = httpx.URL(url).copy_with(raw_path=old.raw_path)
    keep = [(k, v) for k, v in headers if k.lower() not in (b"host", b"content-length")]
    with httpx.Client() as client:
        return client.request(method, target, headers=keep, content=body)


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    executions: collections.Counter[str] = collections.Counter()
    with uvicorn_server(replica("a", executions)) as a, \
            uvicorn_server(replica("b", executions)) as b, \
            nginx_proxy(tmp_path / "nginx", [a.port, b.port]) as proxy:
        yield a, b, proxy, executions


def test_uvicorn_direct_sync_and_async(tmp_path: Path) -> None:
    executions: collections.Counter[str] = collections.Counter()
    with uvicorn_server(replica("a", executions, max_body=2_000_000)) as server:
        with httpx.Client(transport=SyncTransport(payment_config()),
                          base_url=server.url, timeout=60) as client:
            assert client.post("/charge", json={"id": "s1"}).json()["id"] == "s1"
            assert client.delete("/order").status_code == 204  # bodyless: sealed as 200
            with pytest.raises(HTTPForbidden):
                client.post("/ship", json={})
            # A streamed upload of 1.5 MB in records of 64 KiB, and a streamed download.
            chunks = (os.urandom(50_000) for _ in range(30))
            assert client.post("/upload", content=chunks).json()["total"] == 1_500_000
            with client.stream("GET", "/download?n=12") as r:
                got = b"".join(r.iter_raw())
            assert len(got) == 1_200_000 and got[:3] == b"\x00\x00\x00"
            with pytest.raises(BodyTooLarge):
                client.post("/upload", content=b"x" * 2_100_000)
            unsealed = httpx.post(server.url + "/charge", json={"id": "u"})
            assert unsealed.status_code == 401

        async def main() -> None:
            transport = Transport(payment_config())
            async with httpx.AsyncClient(transport=transport, base_url=server.url,
                                         timeout=60) as client:
                results = await asyncio.gather(*(client.post("/charge", json={"id": f"a{i}"})
                                                 for i in range(20)))
            assert sorted(r.json()["id"] for r in results) == sorted(f"a{i}" for i in range(20))
            assert transport.handshakes == 1

        asyncio.run(main())
    assert executions["s1"] == 1 and executions["ship"] == 0 and executions["u"] == 0
    assert all(executions[f"a{i}"] == 1 for i in range(20))


def test_through_nginx_sticky_sessions_and_ciphertext_logs(cluster: Any) -> None:
    _a, _b, proxy, executions = cluster
    served: collections.Counter[str] = collections.Counter()
    # Clients until both replicas served one (random session ids hash apart).
    for n in range(64):
        with httpx.Client(transport=SyncTransport(payment_config()), base_url=proxy.url,
                          timeout=60) as client:
            replicas = {client.post("/charge", json={"id": f"c{n}-{i}"}).json()["replica"]
                        for i in range(3)}
            # Every handshake step and request of one session reached one replica.
            assert len(replicas) == 1
            served[replicas.pop()] += 1
        if len(served) == 2:
            break
    assert set(served) == {"a", "b"}
    assert all(count == 1 for count in executions.values())
    requests = sum(executions.values())
    log = proxy.log_with("POST /charge", count=requests)
    assert log.count("POST /charge") == requests
    assert "/.well-known/rolewire/handshake" in log and "POST /charge" in log
    assert "body=\\x" in log  # nginx logged the (binary) bodies ...
    assert SECRET not in log and '"id"' not in log and "c0-0" not in log  # ... ciphertext only


def test_no_request_accepted_twice_across_replicas(cluster: Any) -> None:
    a, b, proxy, executions = cluster
    capture = Capture()
    with httpx.Client(transport=SyncTransport(payment_config(), inner=capture),
                      base_url=proxy.url, timeout=60) as client:
        owner = client.post("/charge", json={"id": "once"}).json()["replica"]
    sealed = next(r for r in capture.requests if r[1].path == "/charge")
    other = b if owner == "a" else a
    mine = a if owner == "a" else b
    r = replay(proxy.url, sealed)  # through nginx: the owner sees a replay
    assert r.status_code == 401 and r.headers["rolewire-error"] == "rejected"
    r = replay(mine.url, sealed)
    assert r.status_code == 401 and r.headers["rolewire-error"] == "rejected"
    r = replay(other.url, sealed)  # the other replica has no such session
    assert r.status_code == 401 and r.headers["rolewire-error"] == "session-unknown"
    assert executions["once"] == 1


def test_replica_failover_rehandshakes_and_runs_once(cluster: Any) -> None:
    a, b, proxy, executions = cluster
    transport = SyncTransport(payment_config())
    with httpx.Client(transport=transport, base_url=proxy.url, timeout=60) as client:
        owner = client.post("/charge", json={"id": "f1"}).json()["replica"]
        (a if owner == "a" else b).stop()
        survivor = "b" if owner == "a" else "a"
        r = client.post("/charge", json={"id": "f2"})
        assert r.json()["replica"] == survivor
    assert executions["f1"] == 1 and executions["f2"] == 1
    assert transport.handshakes == 2


def test_hidden_target_through_nginx(cluster: Any) -> None:
    _, _, proxy, executions = cluster
    options = ChannelOptions(hide_target=True)
    with httpx.Client(transport=SyncTransport(payment_config(), options=options),
                      base_url=proxy.url, timeout=60) as client:
        assert client.post("/charge?coupon=x", json={"id": "h1"}).status_code == 200
    assert executions["h1"] == 1
    log = proxy.log_with("POST /.well-known/rolewire/request")
    assert "/charge" not in log and "coupon" not in log
    assert "POST /.well-known/rolewire/request" in log
