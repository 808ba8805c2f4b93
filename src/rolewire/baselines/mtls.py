"""Baseline 1: mutual TLS with a self-hosted PKI (thesis, section 5.1).

Every service holds one certificate from the deployment's CA
(:mod:`rolewire.pki`). Connections use Python's :mod:`ssl`: TLS 1.3 only,
a certificate required on both sides, the CA as the only trust anchor.

**Roles.** A service's roles are written into its certificate as SAN URIs
``urn:rolewire:role:<name>`` (the name percent-encoded);
:func:`issue_service_certificate` issues such certificates. The server
passes the roles of the client's (verified) certificate to
``Service.dispatch``; the client sees the server's roles in
``client.peer_roles``. The service name is the certificate's CN (also its
first DNS SAN); it is an identity for logs and hostname checks, not a role.
Changing a service's roles means issuing a new certificate.

**Rotation.** ``server.reload_certificate(cert, key)`` (and
:meth:`MtlsConnector.reload_certificate` for clients) loads a renewed
certificate into the live ``SSLContext``: new connections present it,
established ones keep the session they have.

Errors: :class:`TLSCertificateRejected` (a certificate was refused, by us
or by the peer: untrusted CA, expired, missing) and
:class:`TLSHandshakeFailed` (any other TLS failure), both
:class:`~rolewire.errors.HandshakeError`\\ s.

Example::

    ca = pki.create_ca("shop CA")
    pay = issue_service_certificate(ca, "payment", roles=["payment"])
    api = issue_service_certificate(ca, "user-api", roles=["user-info", "payment"])
    async with serve(payment_service, cert=pay, ca=ca) as server:
        async with connect("127.0.0.1", server.port, cert=api, ca=ca) as client:
            await client.call("charge", b"10")
"""

from __future__ import annotations

import datetime
import ssl
import urllib.parse
from collections.abc import Iterable
from typing import Any

from cryptography import x509

from rolewire import pki
from rolewire.baselines._client import BaselineClient, open_client
from rolewire.baselines._framing import MAX_FRAME, TLS13, Opening
from rolewire.baselines._server import BaselineServer, Peer, peer_address
from rolewire.baselines._tls import (
    AnchorSource,
    CertSource,
    PathLike,
    TLSCertificateRejected,
    TLSHandshakeFailed,
    client_context,
    reload_chain,
    server_context,
)
from rolewire.errors import ConfigurationError
from rolewire.services import Service

__all__ = [
    "ROLE_URI_PREFIX",
    "MtlsClient",
    "MtlsConnector",
    "MtlsServer",
    "TLSCertificateRejected",
    "TLSHandshakeFailed",
    "client_context",
    "connect",
    "issue_service_certificate",
    "role_uri",
    "roles_from_peercert",
    "roles_of_certificate",
    "serve",
    "server_context",
]

#: Prefix of the SAN URIs that carry roles.
ROLE_URI_PREFIX = "urn:rolewire:role:"

# --- certificates with roles --------------------------------------------------------


def role_uri(role: str) -> str:
    """``urn:rolewire:role:<role>`` with the name percent-encoded."""
    if not isinstance(role, str) or not role:
        raise ConfigurationError("a role name must be a non-empty string")
    return ROLE_URI_PREFIX + urllib.parse.quote(role, safe="")


def _role_from_uri(uri: str) -> str | None:
    if not uri.startswith(ROLE_URI_PREFIX):
        return None
    name = urllib.parse.unquote(uri[len(ROLE_URI_PREFIX):])
    return name or None


def issue_service_certificate(
    ca: pki.Issued, service_name: str, roles: Iterable[str], *, key_type: str = "ec-p256",
    days: int = 365, not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None, dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
) -> pki.Issued:
    """A leaf certificate for ``service_name`` signed by ``ca`` whose SAN
    carries one ``urn:rolewire:role:<name>`` URI per role.

    Same profile as :func:`rolewire.pki.issue` (CN and DNS SAN = service
    name, EKU client+server auth, key usage, SKI/AKI), plus the role URIs and
    by default the loopback address. ``not_before``/``not_after`` override
    the validity window (tests use them to make expired certificates)."""
    if isinstance(roles, str):
        raise ConfigurationError("roles must be a list of role names, not a string")
    return pki.issue(ca, service_name, key_type=key_type, days=days, dns_names=dns_names,
                     ip_addresses=ip_addresses,
                     uris=[role_uri(r) for r in sorted(set(roles))],
                     not_before=not_before, not_after=not_after)


def roles_of_certificate(certificate: x509.Certificate) -> frozenset[str]:
    """The roles a certificate carries (its ``urn:rolewire:role:`` SAN URIs).
    Does not validate the certificate."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return frozenset(r for r in map(_role_from_uri, uris) if r)


def roles_from_peercert(peercert: dict[str, Any] | None) -> frozenset[str]:
    """Roles from ``SSLSocket.getpeercert()`` (a certificate the TLS stack
    already verified)."""
    if not peercert:
        return frozenset()
    return frozenset(r for kind, value in peercert.get("subjectAltName", ())
                     if kind == "URI" and (r := _role_from_uri(value)))


def _name_from_peercert(peercert: dict[str, Any] | None) -> str:
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


# --- server and client ----------------------------------------------------------------


def _identify(writer: Any) -> Peer:
    peercert = writer.get_extra_info("peercert")
    return Peer(peer_address(writer), roles_from_peercert(peercert),
                _name_from_peercert(peercert))


class MtlsServer(BaselineServer):
    """A service behind mTLS. Callers' roles come from their certificates
    (given to each connection's core as its peer roles)."""

    system = "mtls"
    security = TLS13


class MtlsClient(BaselineClient):
    """One mTLS connection. ``peer_roles``: the server's certificate roles;
    ``peer_certificate``: its verified certificate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        der = self._writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.peer_certificate = x509.load_der_x509_certificate(der)
        self.peer_name = _name_from_peercert(self._writer.get_extra_info("peercert"))


class MtlsConnector:
    """Client-side credentials shared by many connections; reloadable."""

    def __init__(self, cert: CertSource, key: PathLike | None = None, *, ca: AnchorSource,
                 check_hostname: bool = False) -> None:
        self.context = client_context(cert, key, ca=ca, check_hostname=check_hostname)

    def reload_certificate(self, cert: CertSource, key: PathLike | None = None) -> None:
        """Present a renewed certificate on new connections (a bad file
        raises :class:`ConfigurationError` and changes nothing)."""
        reload_chain(self.context, cert, key)

    def connect(self, host: str, port: int, *, server_name: str | None = None,
                timeout: float | None = 10.0, max_frame: int = MAX_FRAME
                ) -> Opening[MtlsClient]:
        """Open one connection with these credentials."""
        return connect(host, port, connector=self, server_name=server_name, timeout=timeout,
                       max_frame=max_frame)


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 0,
          cert: CertSource, key: PathLike | None = None, ca: AnchorSource,
          max_frame: int = MAX_FRAME, max_inflight: int = 64,
          handshake_timeout: float = 10.0, backlog: int = 1024) -> Opening[MtlsServer]:
    """Serve ``service`` over mTLS. ``cert``/``key``: PEM paths, or an
    :class:`~rolewire.pki.Issued` (then ``key=None``); ``ca``: the trust
    anchor (PEM path, certificate or the CA's ``Issued``). Use as
    ``server = await serve(...)`` or ``async with serve(...) as server``."""
    context = server_context(cert, key, ca=ca)

    async def start() -> MtlsServer:
        server = MtlsServer(service, ssl_context=context, identify=_identify,
                            max_frame=max_frame, max_inflight=max_inflight,
                            handshake_timeout=handshake_timeout)
        await server.start(host, port, backlog)
        return server

    return Opening(start)


def connect(host: str, port: int, *, cert: CertSource | None = None,
            key: PathLike | None = None, ca: AnchorSource | None = None,
            connector: MtlsConnector | None = None, ssl_context: ssl.SSLContext | None = None,
            server_name: str | None = None, timeout: float | None = 10.0,
            max_frame: int = MAX_FRAME) -> Opening[MtlsClient]:
    """Connect over mTLS with ``cert``/``key`` trusted by ``ca`` (or a shared
    :class:`MtlsConnector`, or a ready ``ssl_context``). With
    ``server_name`` the server certificate must be issued to that name.
    Raises :class:`TLSCertificateRejected` / :class:`TLSHandshakeFailed`."""
    if ssl_context is None:
        if connector is not None:
            ssl_context = connector.context
        else:
            if ca is None or cert is None:
                raise ConfigurationError("mTLS connect needs cert and ca (or a connector)")
            ssl_context = client_context(cert, key, ca=ca, check_hostname=server_name is not None)
    if server_name is not None and not ssl_context.check_hostname:
        raise ConfigurationError("server_name needs a context that checks host names "
                                 "(MtlsConnector(..., check_hostname=True))")
    context = ssl_context

    return Opening(lambda: open_client(
        MtlsClient, host, port, ssl_context=context, server_hostname=server_name or host,
        timeout=timeout, max_frame=max_frame, security=TLS13,
        peer_roles=lambda w: roles_from_peercert(w.get_extra_info("peercert"))))
