"""The example service and client of ``examples/`` work as their README says:
secrets created with the CLI, ``inspect --check`` clean, ``rolewire serve``
+ ``rolewire call``, a certificate rotation picked up by ``watch = true``, a
SIGHUP reload and a SIGTERM drain."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.serve_helpers import ServeProcess, cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = [
    pytest.mark.skipif(not EXAMPLES.exists(), reason="tests run outside the source tree"),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]


def test_example_service_and_client(tmp_path):
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work)
    env = {"ORDERS_ADMIN_PASSWORD": "correct horse battery staple"}

    def run(*args: str):
        done = cli(*args, cwd=work, env=env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    run("keygen", "secrets/orders-client.key")
    run("ca", "init", "pki/orders-ca", "--name", "orders CA")
    run("ca", "issue", "pki/orders-ca", "orders", "--ttl", "1h")
    checked = run("inspect", "service.toml", "--check", "--warn-days", "0")
    assert "0 problem(s)" in checked.stdout and checked.stderr == ""
    run("inspect", "client.toml", "--check")

    with ServeProcess("orders:service", work / "service.toml", work, env) as server:
        order = run("call", server.address, "place_order", "one book", "--config", "client.toml")
        assert order.stdout == '{"id": 1, "item": "one book"}'
        assert run("call", server.address, "list_orders", "--config",
                   "client.toml").stdout.startswith('[{"id": 1')
        refused = cli("call", server.address, "refund", "1", "--config", "client.toml",
                      cwd=work, env=env)
        assert refused.returncode == 3 and refused.stderr.startswith("rolewire: Forbidden")
        run("ca", "rotate", "pki/orders-ca", "orders", "--force")
        server.wait_for("reloaded (files changed)")
        assert run("call", server.address, "health", "--config", "client.toml").stdout == "ok"
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded (SIGHUP)")
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        server.wait_for("stopped")
