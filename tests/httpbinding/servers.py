"""Real servers for the integration tests: uvicorn on a random loopback
port (in a thread of the test process, so tests can read the app's
counters) and nginx from the system package, in the foreground with its own
prefix and config in a temp dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Uvicorn:
    """One uvicorn server (real HTTP/1.1 server, h11 or httptools) in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Uvicorn:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@contextmanager
def uvicorn_server(app: Any) -> Iterator[Uvicorn]:
    server = Uvicorn(app).start()
    try:
        yield server
    finally:
        server.stop()


def nginx_binary() -> str:
    for candidate in NGINX_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    pytest.skip("nginx is not installed (Debian: apt-get install -y nginx; .ci/run installs it)")
    raise AssertionError  # pragma: no cover


NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # What an operator's log would show of the traffic: method, target,
    # the session header, which replica served it, and the request body.
    log_format wire '$request $status sid=$http_rolewire_session up=$upstream_addr '
                    'len=$request_length body=$request_body';
    access_log {prefix}/access.log wire;
    client_body_buffer_size 1m;
    client_max_body_size 64m;
    upstream replicas {{
        # Sticky sessions: every handshake step and every request of a
        # session carry Rolewire-Session, so they reach the same replica.
        hash $http_rolewire_session consistent;
{servers}
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 5s;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, prefix: Path, upstream_ports: list[int]) -> None:
        self.binary = nginx_binary()
        self.prefix = prefix
        self.port = _free_port()
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;"
                            for p in upstream_ports)
        user = "user root;" if os.geteuid() == 0 else ""
        (prefix / "conf").mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "conf" / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, port=self.port,
                                               servers=servers))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_with(self, *needles: str, count: int = 1, timeout: float = 60.0) -> str:
        """The access log once it holds every needle ``count`` times (nginx
        writes a line after the response went out, so the client can be
        faster); after ``timeout`` whatever it holds."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.access_log
            if all(log.count(n) >= count for n in needles) or time.monotonic() > deadline:
                return log
            time.sleep(0.05)

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-e",
             str(self.prefix / "error.log")], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        try:
            _wait_listening(self.port)
        except OSError:
            self.stop()
            err = (self.prefix / "error.log").read_text(errors="replace") \
                if (self.prefix / "error.log").exists() else ""
            raise RuntimeError(f"nginx did not start: {err[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@contextmanager
def nginx_proxy(prefix: Path, upstream_ports: list[int]) -> Iterator[Nginx]:
    proxy = Nginx(prefix, upstream_ports).start()
    try:
        yield proxy
    finally:
        proxy.stop()
