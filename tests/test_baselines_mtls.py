"""The mTLS baseline: roles from certificates, refusals, rotation, framing.

Real sockets on 127.0.0.1 (port 0); each test drives its own event loop
with ``asyncio.run``."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rolewire import pki
from rolewire.baselines import mtls
from rolewire.baselines.mtls import TLSCertificateRejected, TLSHandshakeFailed
from rolewire.errors import ConfigurationError, ConnectionClosed, Forbidden, HandshakeError
from rolewire.services import CallContext, Service

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.create_ca("shop CA")


@pytest.fixture(scope="module")
def certs(ca: pki.Issued) -> dict[str, pki.Issued]:
    issue = mtls.issue_service_certificate
    return {
        "payment": issue(ca, "payment", ["payment", "approval"]),
        "shipping": issue(ca, "shipping", ["shipping"]),
        "user-api": issue(ca, "user-api", ["user-info", "payment"]),
        "suggestion": issue(ca, "suggestion", ["user-info"]),
    }


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def shipping_service() -> Service:
    svc = Service("shipping")

    @svc.operation("ship", roles=["approval"])
    def ship(call: CallContext, body: bytes) -> bytes:
        return b"shipped " + body + b" for " + ",".join(sorted(call.peer_roles)).encode()

    return svc


def payment_service(ca: pki.Issued, me: pki.Issued, shipping_port: Callable[[], int]
                    ) -> Service:
    """payment.charge (role payment) charges, then asks shipping (which needs
    role approval: payment holds it, the caller does not)."""
    svc = Service("payment")

    @svc.operation("charge", roles=["payment"])
    async def charge(call: CallContext, body: bytes) -> bytes:
        async with mtls.connect("127.0.0.1", shipping_port(), cert=me, ca=ca) as shipping:
            return b"charged " + body + b"; " + await shipping.call("ship", body)

    @svc.operation("refund", roles=["admin"])
    def refund(call: CallContext, body: bytes) -> bytes:
        return b"refunded"

    return svc


def test_three_services_roles_from_certificates(ca: pki.Issued,
                                                certs: dict[str, pki.Issued]) -> None:
    async def main() -> None:
        async with mtls.serve(shipping_service(), cert=certs["shipping"], ca=ca) as shipping:
            pay = payment_service(ca, certs["payment"], lambda: shipping.port)
            async with mtls.serve(pay, cert=certs["payment"], ca=ca) as payment:
                async with mtls.connect("127.0.0.1", payment.port, cert=certs["user-api"],
                                        ca=ca) as client:
                    assert client.peer_roles == {"payment", "approval"}
                    assert client.peer_name == "payment"
                    reply = await client.call("charge", b"42")
                    assert reply == b"charged 42; shipped 42 for approval,payment"
                    with pytest.raises(Forbidden):
                        await client.call("refund")  # user-api lacks "admin"
                # suggestion holds user-info only: payment refuses it.
                async with mtls.connect("127.0.0.1", payment.port, cert=certs["suggestion"],
                                        ca=ca) as breached:
                    with pytest.raises(Forbidden):
                        await breached.call("charge", b"1")
                # user-api cannot reach shipping directly (approval missing).
                async with mtls.connect("127.0.0.1", shipping.port, cert=certs["user-api"],
                                        ca=ca) as direct:
                    with pytest.raises(Forbidden):
                        await direct.call("ship", b"x")
                    assert payment.stats.refused == 0  # Forbidden is dispatch, not TLS

    run(main())


def echo_service(notes: list[bytes] | None = None) -> Service:
    """echo (request) and note (notification, appended to ``notes``)."""
    svc = Service("echo")
    received = notes if notes is not None else []

    @svc.operation("echo", roles=["payment"])
    def echo(call: CallContext, body: bytes) -> bytes:
        return body

    @svc.operation("note", roles=["payment"])
    def note(call: CallContext, body: bytes) -> None:
        received.append(body)

    return svc


def expect_refused(server_cert: pki.Issued, client: dict[str, Any], ca: pki.Issued,
                   error: type[Exception]) -> tuple[Exception, str, int]:
    """Connect with ``client`` kwargs; returns the client's error, the
    server's last handshake failure reason and how many calls it served."""
    async def main() -> tuple[Exception, str, int]:
        async with mtls.serve(echo_service(), cert=server_cert, ca=ca) as server:
            with pytest.raises(error) as info:
                await mtls.connect("127.0.0.1", server.port, timeout=5, **client)
            await asyncio.sleep(0.05)  # let the server side finish its failure
            return info.value, server.last_handshake_failure, server.stats.requests

    return run(main())  # type: ignore[no-any-return]


def test_client_certificate_from_another_ca_is_refused(ca: pki.Issued,
                                                       certs: dict[str, pki.Issued]) -> None:
    other = pki.create_ca("rogue CA")
    rogue = mtls.issue_service_certificate(other, "user-api", ["payment"])
    exc, reason, served = expect_refused(certs["payment"], {"cert": rogue, "ca": ca}, ca,
                                         TLSHandshakeFailed)
    assert isinstance(exc, HandshakeError)
    assert "CERTIFICATE_VERIFY_FAILED" in reason
    assert served == 0


def test_server_certificate_from_another_ca_is_refused(ca: pki.Issued,
                                                       certs: dict[str, pki.Issued]) -> None:
    other = pki.create_ca("rogue CA")
    rogue_server = mtls.issue_service_certificate(other, "payment", ["payment"])
    exc, _, served = expect_refused(rogue_server, {"cert": certs["user-api"], "ca": ca}, ca,
                                    TLSCertificateRejected)
    assert "server certificate rejected" in str(exc)
    assert served == 0


def test_expired_client_certificate_is_refused(ca: pki.Issued,
                                               certs: dict[str, pki.Issued]) -> None:
    expired = mtls.issue_service_certificate(ca, "user-api", ["payment"],
                                             not_before=NOW - 3 * DAY, not_after=NOW - DAY)
    _, reason, served = expect_refused(certs["payment"], {"cert": expired, "ca": ca}, ca,
                                       TLSHandshakeFailed)
    assert "expired" in reason
    assert served == 0


def test_expired_server_certificate_is_refused(ca: pki.Issued,
                                               certs: dict[str, pki.Issued]) -> None:
    expired = mtls.issue_service_certificate(ca, "payment", ["payment"],
                                             not_before=NOW - 3 * DAY, not_after=NOW - DAY)
    exc, _, _ = expect_refused(expired, {"cert": certs["user-api"], "ca": ca}, ca,
                               TLSCertificateRejected)
    assert "expired" in str(exc)


def test_missing_client_certificate_is_refused(ca: pki.Issued,
                                               certs: dict[str, pki.Issued]) -> None:
    no_cert = mtls.client_context(None, ca=ca)
    _, reason, served = expect_refused(certs["payment"], {"ssl_context": no_cert}, ca,
                                       TLSHandshakeFailed)
    assert "CERTIFICATE" in reason
    assert served == 0


def test_tls12_is_refused(ca: pki.Issued, certs: dict[str, pki.Issued]) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(cadata=ca.certificate_pem().decode())
    expect_refused(certs["payment"], {"ssl_context": old}, ca, TLSHandshakeFailed)


def test_role_uris_round_trip(ca: pki.Issued) -> None:
    issued = mtls.issue_service_certificate(ca, "odd", ["a b/c", "ünïcode", "plain"])
    assert mtls.roles_of_certificate(issued.certificate) == {"a b/c", "ünïcode", "plain"}
    assert mtls.role_uri("a b/c") == "urn:rolewire:role:a%20b%2Fc"
    assert mtls.roles_of_certificate(pki.issue(ca, "no-roles").certificate) == frozenset()
    with pytest.raises(ConfigurationError):
        mtls.issue_service_certificate(ca, "x", "payment")  # a string, not a list


def test_server_certificate_reload_applies_to_new_connections(
        ca: pki.Issued, certs: dict[str, pki.Issued], tmp_path: Path) -> None:
    renewed = mtls.issue_service_certificate(ca, "payment", ["payment", "renewed"])
    renewed.save(tmp_path / "renewed.pem", tmp_path / "renewed.key")

    async def main() -> None:
        async with mtls.serve(echo_service(), cert=certs["payment"], ca=ca) as server:
            old = await mtls.connect("127.0.0.1", server.port, cert=certs["user-api"], ca=ca)
            assert "renewed" not in old.peer_roles
            with pytest.raises(ConfigurationError):  # a bad file changes nothing
                server.reload_certificate(tmp_path / "missing.pem", tmp_path / "missing.key")
            server.reload_certificate(tmp_path / "renewed.pem", tmp_path / "renewed.key")
            new = await mtls.connect("127.0.0.1", server.port, cert=certs["user-api"], ca=ca)
            assert new.peer_roles == {"payment", "renewed"}
            assert new.peer_certificate.serial_number == renewed.certificate.serial_number
            # The live connection continues on its session.
            assert await old.call("echo", b"still here") == b"still here"
            assert await new.call("echo", b"new") == b"new"
            await old.close()
            await new.close()

    run(main())


def test_expired_server_certificate_recovers_after_reload(
        ca: pki.Issued, certs: dict[str, pki.Issued]) -> None:
    expired = mtls.issue_service_certificate(ca, "payment", ["payment"],
                                             not_before=NOW - 3 * DAY, not_after=NOW - DAY)

    async def main() -> None:
        async with mtls.serve(echo_service(), cert=expired, ca=ca) as server:
            with pytest.raises(TLSCertificateRejected):
                await mtls.connect("127.0.0.1", server.port, cert=certs["user-api"], ca=ca)
            server.reload_certificate(certs["payment"])
            async with mtls.connect("127.0.0.1", server.port, cert=certs["user-api"],
                                    ca=ca) as client:
                assert await client.call("echo", b"ok") == b"ok"

    run(main())


def test_client_connector_reload(ca: pki.Issued, certs: dict[str, pki.Issued]) -> None:
    expired = mtls.issue_service_certificate(ca, "user-api", ["payment"],
                                             not_before=NOW - 3 * DAY, not_after=NOW - DAY)
    connector = mtls.MtlsConnector(expired, ca=ca)

    async def main() -> None:
        async with mtls.serve(echo_service(), cert=certs["payment"], ca=ca) as server:
            with pytest.raises(TLSHandshakeFailed):
                await connector.connect("127.0.0.1", server.port)
            connector.reload_certificate(certs["user-api"])
            async with connector.connect("127.0.0.1", server.port) as client:
                assert await client.call("echo", b"renewed") == b"renewed"

    run(main())


def test_server_name_is_checked_when_given(ca: pki.Issued,
                                           certs: dict[str, pki.Issued]) -> None:
    async def main() -> None:
        async with mtls.serve(echo_service(), cert=certs["payment"], ca=ca) as server:
            async with mtls.connect("127.0.0.1", server.port, cert=certs["user-api"], ca=ca,
                                    server_name="payment") as client:
                assert await client.call("echo", b"x") == b"x"
            with pytest.raises(TLSCertificateRejected):
                await mtls.connect("127.0.0.1", server.port, cert=certs["user-api"], ca=ca,
                                   server_name="shipping")

    run(main())


def test_pipelined_calls_and_notifications(ca: pki.Issued,
                                           certs: dict[str, pki.Issued]) -> None:
    notes: list[bytes] = []
    service = echo_service(notes)

    async def main() -> None:
        async with (
            mtls.serve(service, cert=certs["payment"], ca=ca) as server,
            mtls.connect("127.0.0.1", server.port, cert=certs["user-api"], ca=ca) as client,
        ):
            await client.send_many("note", [b"a", b"b"])
            await client.notify("note", b"c")
            replies = await asyncio.gather(*(client.call("echo", bytes([i]) * i)
                                             for i in range(50)))
            assert replies == [bytes([i]) * i for i in range(50)]
            big = b"z" * (1 << 20)
            assert await client.call("echo", big) == big
        assert notes == [b"a", b"b", b"c"]

    run(main())


def test_oversized_frame_closes_the_connection(ca: pki.Issued,
                                               certs: dict[str, pki.Issued]) -> None:
    async def main() -> None:
        server = await mtls.serve(echo_service(), cert=certs["payment"], ca=ca,
                                  max_frame=1024)
        try:
            client = await mtls.connect("127.0.0.1", server.port, cert=certs["user-api"], ca=ca)
            client._writer.write(struct.pack(">I", 1025))  # announces 1025 bytes
            for _ in range(100):
                if client.closed:
                    break
                await asyncio.sleep(0.01)
            assert server.stats.protocol_errors == 1
            with pytest.raises(ConnectionClosed):
                await client.call("echo", b"x")
            await client.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_server_close_fails_pending_clients(ca: pki.Issued,
                                            certs: dict[str, pki.Issued]) -> None:
    async def main() -> None:
        server = await mtls.serve(echo_service(), cert=certs["payment"], ca=ca)
        client = await mtls.connect("127.0.0.1", server.port, cert=certs["user-api"], ca=ca)
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionClosed):
            for _ in range(100):
                await client.call("echo", b"x", timeout=2)
                await asyncio.sleep(0.01)
        await client.close()

    run(main())
