"""Mutual TLS between NATS clients and the broker, for the comparison the
docs and the benchmark make: a private CA (:mod:`rolewire.pki`), a server
certificate for 127.0.0.1 and a client certificate, and the ``ssl`` contexts
nats-py takes. This protects each hop to the broker only; rolewire's records
are end to end through it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from rolewire import pki
from rolewire.nats.broker import NatsTLS

__all__ = ["BrokerPKI", "make_broker_pki"]


@dataclass(frozen=True)
class BrokerPKI:
    """Files of a broker PKI written by :func:`make_broker_pki`."""

    server: NatsTLS
    client_cert: Path
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl`` context for nats-py: verifies the broker against the
        CA and presents the client certificate."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.server.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_broker_pki(directory: Path) -> BrokerPKI:
    """Create a CA, a broker certificate (SAN 127.0.0.1, localhost) and a
    client certificate under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.create_ca("rolewire-nats-ca")
    server = pki.issue(ca, "localhost", ip_addresses=("127.0.0.1",))
    client = pki.issue(ca, "nats-client")
    (directory / "ca.pem").write_bytes(ca.certificate_pem())
    server.save(directory / "server.pem", directory / "server.key")
    client.save(directory / "client.pem", directory / "client.key")
    return BrokerPKI(NatsTLS(directory / "server.pem", directory / "server.key",
                             directory / "ca.pem"),
                     directory / "client.pem", directory / "client.key")
