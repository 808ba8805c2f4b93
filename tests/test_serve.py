"""``rolewire serve`` and ``rolewire call`` as real subprocesses: config to a
running service, SIGTERM/SIGINT drain, SIGHUP reload with live sessions
kept. No timing assertions: the tests wait for events (files, output
lines), with generous timeouts."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rolewire import ConnectionClosed, HandshakeConfig, HandshakeError, KeyRole, connect, errors
from rolewire.aio.workers import reuse_port_available
from rolewire.errors import ServiceUnavailable
from rolewire.pki import write_atomically
from tests.serve_helpers import ServeProcess, cli

pytestmark = pytest.mark.skipif(sys.platform == "win32",
                                reason="POSIX signals (Windows has no SIGHUP/SIGTERM delivery)")

SERVICE_MODULE = '''
import asyncio, os, pathlib
from rolewire import Service, UNRESTRICTED

service = Service("held")
HERE = pathlib.Path(__file__).parent

@service.operation("echo", roles=["caller"])
def echo(call, body):
    return body

@service.operation("pid", roles=["caller"])
def pid(call, body):
    return str(os.getpid()).encode()

@service.operation("who", roles=UNRESTRICTED)
def who(call, body):
    return ",".join(sorted(call.peer_roles)).encode()

@service.operation("hold", roles=["caller"])
async def hold(call, body):
    """Marks that it started, then waits until the test releases it."""
    name = body.decode()
    (HERE / f"{name}.started").write_text("")
    while not (HERE / f"{name}.release").exists():
        await asyncio.sleep(0.02)
    return b"released " + body
'''

SERVICE_TOML = '''
[service]
name = "held"
listen = "127.0.0.1:1"
drain_timeout = 60.0

[[role]]
name = "caller"
kind = "key"
key_file = "caller.key"

[access]
echo = ["caller"]
'''

CLIENT_TOML = '''
[service]
name = "client"

[client]
call_timeout = 60.0

[[role]]
name = "caller"
kind = "key"
key_file = "caller.key"
'''


def read_key(path: Path) -> bytes:
    return base64.b64decode(path.read_bytes().strip())


@pytest.fixture
def app(tmp_path):
    (tmp_path / "heldsvc.py").write_text(SERVICE_MODULE)
    (tmp_path / "service.toml").write_text(SERVICE_TOML)
    (tmp_path / "client.toml").write_text(CLIENT_TOML)
    assert cli("keygen", str(tmp_path / "caller.key")).returncode == 0
    return tmp_path


def wait_file(path: Path, timeout: float = 60.0) -> None:
    async def poll():
        while not path.exists():
            await asyncio.sleep(0.02)
    asyncio.run(asyncio.wait_for(poll(), timeout))


def test_serve_and_call_print_reply_or_typed_error(app):
    with ServeProcess("heldsvc:service", app / "service.toml", app) as server:
        client = str(app / "client.toml")
        done = cli("call", server.address, "echo", "hello", "--config", client)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hello"
        (app / "named.toml").write_text(CLIENT_TOML + f'\n[peers.held]\naddress = "{server.address}"\n')
        done = cli("call", "held", "echo", "by name", "--config", str(app / "named.toml"))
        assert done.returncode == 0 and done.stdout == "by name", done.stderr
        done = cli("call", server.address, "echo", "-", "--config", client, stdin=b"from stdin")
        assert done.stdout == "from stdin"
        (app / "body.bin").write_bytes(b"from a file")
        assert cli("call", server.address, "echo", "@" + str(app / "body.bin"),
                   "--config", client).stdout == "from a file"
        done = cli("call", server.address, "nosuch", "--config", client)
        # (by default a refused and an unknown operation look the same to
        # the caller: issue 11 section 3)
        assert done.returncode == 3
        assert done.stderr.startswith(("rolewire: UnknownOperation", "rolewire: Forbidden"))
        # A caller without the role: the handshake verifies nothing; the
        # server refuses anonymous sessions, the client gets a typed error.
        (app / "other.toml").write_text(CLIENT_TOML.replace("caller.key", "other.key"))
        assert cli("keygen", str(app / "other.key")).returncode == 0
        done = cli("call", server.address, "echo", "x", "--config", str(app / "other.toml"))
        assert done.returncode == 3
        kind = done.stderr.split(":")[1].strip()
        assert issubclass(getattr(errors, kind), errors.HandshakeError), done.stderr
        assert "Traceback" not in done.stderr
        assert server.stop() == 0


def test_serve_refuses_access_to_unknown_operation_or_role(app):
    bad = app / "bad.toml"
    bad.write_text(SERVICE_TOML + 'nosuchop = ["caller"]\n')
    done = cli("serve", "heldsvc:service", "--config", str(bad), "--listen", "127.0.0.1:0",
               cwd=app)
    assert done.returncode == 3 and "nosuchop" in done.stderr
    bad.write_text(SERVICE_TOML.replace('echo = ["caller"]', 'echo = ["nosuchrole"]'))
    done = cli("serve", "heldsvc:service", "--config", str(bad), "--listen", "127.0.0.1:0",
               cwd=app)
    assert done.returncode == 3 and "nosuchrole" in done.stderr
    done = cli("serve", "heldsvc:nothing", "--config", str(app / "service.toml"), cwd=app)
    assert done.returncode == 3 and "has no 'nothing'" in done.stderr
    done = cli("serve", "nosuchmodule:service", "--config", str(app / "service.toml"),
               cwd=app)
    assert done.returncode == 3 and "cannot import" in done.stderr
    done = cli("serve", "heldsvc:service", "--config", str(app / "service.toml"),
               "--budget-file", str(app / "budget.sqlite"), cwd=app)
    assert done.returncode == 3 and "--budget-file applies to --workers" in done.stderr
    done = cli("serve", "heldsvc:service", "--config", str(app / "service.toml"),
               "--no-restart", cwd=app)
    assert done.returncode == 3 and "--no-restart applies to --workers" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_drains_calls_in_flight(app, signum):
    config = HandshakeConfig(roles=[KeyRole("caller", read_key(app / "caller.key"))])
    with ServeProcess("heldsvc:service", app / "service.toml", app) as server:
        async def scenario():
            channel = await connect(server.host, server.port, config, timeout=60)
            in_flight = asyncio.ensure_future(channel.call("hold", b"one", timeout=120))
            await asyncio.to_thread(wait_file, app / "one.started")
            server.signal(signum)
            await asyncio.to_thread(server.wait_for, "draining")
            # No new calls: a request on the draining session gets UNAVAILABLE
            # (or finds the session already closing) ...
            with pytest.raises((ServiceUnavailable, ConnectionClosed)):
                await channel.call("echo", b"late", timeout=60)
            # ... and no new connection is accepted.
            with pytest.raises((OSError, HandshakeError, ConnectionClosed)):
                late = await connect(server.host, server.port, config, timeout=30)
                await late.call("echo", b"x", timeout=30)
            assert not in_flight.done()
            (app / "one.release").write_text("")
            # The call that was running finishes and is answered ...
            assert await in_flight == b"released one"
            # ... then the server closes the session with CLOSE.
            for _ in range(3000):
                if channel.closed:
                    break
                await asyncio.sleep(0.02)
            assert channel.closed
            await channel.close()

        asyncio.run(asyncio.wait_for(scenario(), 180))
        assert server.wait() == 0
        server.wait_for("stopped")


def test_drain_cuts_calls_that_outlive_the_grace_period(app):
    (app / "service.toml").write_text(SERVICE_TOML.replace("drain_timeout = 60.0",
                                                           "drain_timeout = 0.5"))
    config = HandshakeConfig(roles=[KeyRole("caller", read_key(app / "caller.key"))])
    with ServeProcess("heldsvc:service", app / "service.toml", app) as server:
        async def scenario():
            channel = await connect(server.host, server.port, config, timeout=60)
            stuck = asyncio.ensure_future(channel.call("hold", b"never", timeout=120))
            await asyncio.to_thread(wait_file, app / "never.started")
            server.signal(signal.SIGTERM)
            # never released: the grace period ends, the call fails typed
            with pytest.raises(ConnectionClosed):
                await stuck
            await channel.close()

        asyncio.run(asyncio.wait_for(scenario(), 180))
        assert server.wait() == 0


def test_sighup_rereads_secrets_and_keeps_live_sessions(app):
    old_key = read_key(app / "caller.key")
    old = HandshakeConfig(roles=[KeyRole("caller", old_key)])
    with ServeProcess("heldsvc:service", app / "service.toml", app) as server:
        async def scenario():
            live = await connect(server.host, server.port, old, timeout=60)
            assert await live.call("echo", b"before") == b"before"
            new_key = os.urandom(32)
            write_atomically(app / "caller.key", base64.b64encode(new_key) + b"\n",
                             secret=True)
            # The access table changes too: "who" now needs the caller role.
            (app / "service.toml").write_text(SERVICE_TOML + 'who = ["caller"]\n')
            server.signal(signal.SIGHUP)
            await asyncio.to_thread(server.wait_for, "reloaded (SIGHUP)")
            # The session opened before the reload is untouched.
            assert await live.call("echo", b"after") == b"after"
            # New handshakes need the new key.
            with pytest.raises(HandshakeError):
                await connect(server.host, server.port, old, timeout=60)
            new = HandshakeConfig(roles=[KeyRole("caller", new_key)])
            async with connect(server.host, server.port, new, timeout=60) as fresh:
                assert await fresh.call("echo", b"fresh") == b"fresh"
                assert await fresh.call("who") == b"caller"
            await live.close()

        asyncio.run(asyncio.wait_for(scenario(), 180))
        assert server.stop() == 0


def test_sighup_with_a_broken_config_keeps_serving(app):
    config = HandshakeConfig(roles=[KeyRole("caller", read_key(app / "caller.key"))])
    with ServeProcess("heldsvc:service", app / "service.toml", app) as server:
        (app / "service.toml").write_text(SERVICE_TOML + "this is not = = toml\n")
        server.signal(signal.SIGHUP)
        line = server.wait_for("reload (SIGHUP) failed")
        assert "not valid TOML" in line

        async def still_serving():
            async with connect(server.host, server.port, config, timeout=60) as channel:
                return await channel.call("echo", b"still")

        assert asyncio.run(asyncio.wait_for(still_serving(), 120)) == b"still"
        assert server.stop() == 0


def test_serve_help_mentions_signals():
    done = cli("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "SIGTERM" in text and "SIGHUP" in text and "drain" in text


def test_call_errors_are_one_line(tmp_path):
    (tmp_path / "client.toml").write_text(textwrap.dedent(CLIENT_TOML))
    assert cli("keygen", str(tmp_path / "caller.key")).returncode == 0
    done = cli("call", "127.0.0.1:1", "echo", "--config", str(tmp_path / "client.toml"))
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = cli("call", "nohost", "echo", "--config", str(tmp_path / "client.toml"))
    assert done.returncode == 3 and "HOST:PORT" in done.stderr


@pytest.mark.skipif(not reuse_port_available(), reason="worker processes need SO_REUSEPORT")
def test_serve_with_workers(app):
    # --workers 2: connections land on both workers, SIGHUP reaches each
    # (each reloads), a killed worker is restarted, SIGTERM stops them all
    # and exits 0 (the restarted worker was not lost).
    caller = HandshakeConfig(roles=[KeyRole("caller", read_key(app / "caller.key"))])
    with ServeProcess("heldsvc:service", app / "service.toml", app, None,
                      "--workers", "2") as server:
        line = server.line_with("workers (pids")
        by_index = [int(p) for p in line.rsplit("(pids ", 1)[1].rstrip(")").split(", ")]
        pids = set(by_index)
        assert len(pids) == 2

        async def pids_seen(until):
            seen = set()
            for _ in range(200):
                async with connect(server.host, server.port, caller, timeout=60) as channel:
                    seen.add(int(await channel.call("pid", b"", timeout=60)))
                if until(seen):
                    break
            return seen

        assert asyncio.run(pids_seen(lambda seen: seen == pids)) == pids
        server.signal(signal.SIGHUP)
        reloaded = {server.wait_for("reloaded (SIGHUP)").split(":")[1].strip()
                    for _ in range(2)}
        assert reloaded == {"worker 0", "worker 1"}
        os.kill(by_index[1], signal.SIGKILL)
        server.wait_for("worker 1: serving", timeout=120)  # its restart listens
        seen = asyncio.run(pids_seen(lambda seen: len(seen) == 2 and seen != pids))
        assert by_index[0] in seen and by_index[1] not in seen and len(seen) == 2
        pids |= seen
        server.signal(signal.SIGTERM)
        assert server.wait(120) == 0
        assert any("stopped" in line for line in server.seen + list(server.lines.queue))
    for pid in pids:
        wait_gone(pid)


def wait_gone(pid: int, timeout: float = 60.0) -> None:
    """Until the process has exited (a zombie counts: nobody may reap it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.05)


def test_serve_workers_zero_is_an_error(app):
    done = cli("serve", "heldsvc:service", "--config", str(app / "service.toml"),
               "--workers", "0", cwd=app)
    assert done.returncode == 3 and "workers must be an integer >= 1" in done.stderr
    if reuse_port_available():  # a worker that cannot start: its error, exit 3
        done = cli("serve", "heldsvc:nothing", "--config", str(app / "service.toml"),
                   "--listen", "127.0.0.1:0", "--workers", "2", cwd=app)
        assert done.returncode == 3, done.stderr
        assert "failed to start" in done.stderr and "has no 'nothing'" in done.stderr
