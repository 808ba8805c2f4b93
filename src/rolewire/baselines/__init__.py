"""The two mechanisms rolewire is compared against (docs/baselines.md).

- :mod:`rolewire.baselines.mtls`: mutual TLS 1.3 with a self-hosted PKI;
  roles written into each service's certificate.
- :mod:`rolewire.baselines.jwt`: self-signed JWTs per request over
  server-authenticated TLS 1.3, with nested end-user tokens and
  :mod:`rolewire.baselines.audit` for non-repudiation (needs PyJWT: the
  ``baselines`` extra).

Both offer the same ``serve``/``connect`` shape as :mod:`rolewire.aio`, so
the same :class:`~rolewire.services.Service` runs behind each.
"""

from __future__ import annotations

from rolewire.baselines._client import BaselineClient, connect_plain
from rolewire.baselines._framing import MAX_FRAME
from rolewire.baselines._server import BaselineServer, serve_plain
from rolewire.baselines._tls import TLSCertificateRejected, TLSHandshakeFailed

__all__ = [
    "MAX_FRAME",
    "BaselineClient",
    "BaselineServer",
    "TLSCertificateRejected",
    "TLSHandshakeFailed",
    "connect_plain",
    "serve_plain",
]
