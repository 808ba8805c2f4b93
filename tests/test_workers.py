"""Worker processes (:func:`rolewire.aio.serve_workers`) and the password
budget they share through :class:`rolewire.roles.budget.SqliteBudgetStore`:
connections land on every worker, charges made by several processes at once
never exceed the role's budget, a worker that fails or crashes is reported,
and no worker outlives its parent. Loopback, random ports, no timing
assertions; every test stops the processes it started."""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rolewire.aio import connect, serve, serve_workers
from rolewire.aio import workers as workers_module
from rolewire.aio.workers import reuse_port_available
from rolewire.errors import (
    ConfigurationError,
    PasswordAttemptsExceeded,
    WorkerFailed,
)
from rolewire.handshake import HandshakeConfig
from rolewire.roles import KeyRole, PasswordRole
from rolewire.roles.budget import BudgetRecord, SqliteBudgetStore
from rolewire.roles.password import PasswordExchange, PasswordRateLimiter
from rolewire.services import Service

ROLE_BUDGET = 8
PER_PEER = 2


def _limiter(path: str) -> PasswordRateLimiter:
    # A long window: every attempt of the test falls in it, however loaded
    # the machine is, so the expected counts are exact.
    return PasswordRateLimiter(max_failures=PER_PEER, window=3600.0, cooldown=3600.0,
                               clock=time.time, role_max_failures=ROLE_BUDGET,
                               store=SqliteBudgetStore(path))


def _guess(path: str, start, results) -> None:  # type: ignore[no-untyped-def]
    limiter = _limiter(path)
    start.wait(60)
    charged = 0
    for i in range(60):
        try:
            limiter.begin(f"10.0.{i % 30}.1", "admin")
        except PasswordAttemptsExceeded:
            continue
        charged += 1
    results.put(charged)


def test_two_processes_cannot_outrun_the_role_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "budget.sqlite")
    SqliteBudgetStore(path).close()  # create the table before the race
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_guess, args=(path, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    charged = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(charged) == ROLE_BUDGET
    limiter = _limiter(path)
    with pytest.raises(PasswordAttemptsExceeded):
        limiter.begin("10.9.9.9", "admin")


def test_two_stores_on_one_file_see_each_other(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "budget.sqlite"
    a, b = SqliteBudgetStore(path), SqliteBudgetStore(path)

    def charge(records: list[BudgetRecord]) -> int:
        records[0].charges[len(records[0].charges) + 1] = 1.0
        records[0].failed.add(1)
        return len(records[0].charges)

    assert a.transact([("role", "x")], charge) == 1
    assert b.transact([("role", "x")], charge) == 2
    assert a.transact([("role", "x")], lambda r: sorted(r[0].failed)) == [1]
    assert len(a) == 1


def test_failed_update_leaves_the_record_unchanged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SqliteBudgetStore(tmp_path / "budget.sqlite")

    def boom(records: list[BudgetRecord]) -> None:
        records[0].strikes = 5
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.transact([("role", "x")], boom)
    assert store.transact([("role", "x")], lambda r: r[0].strikes) == 0
    assert len(store) == 0


def test_idle_records_are_deleted_and_max_keys_holds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SqliteBudgetStore(tmp_path / "budget.sqlite", max_keys=3)

    def lock(records: list[BudgetRecord]) -> None:
        records[0].strikes = 1

    for i in range(10):
        store.transact([("peer", i)], lock)
    assert len(store) == 3
    assert store.transact([("peer", 9)], lambda r: r[0].strikes) == 1
    store.transact([("peer", 9)], lambda r: setattr(r[0], "strikes", 0))
    assert len(store) == 2


def test_sqlite_store_indexes_used(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    SqliteBudgetStore(tmp_path / "budget.sqlite").close()
    db = sqlite3.connect(tmp_path / "budget.sqlite")
    indexes = {row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'budget'")}
    db.close()
    assert "budget_used" in indexes


def test_sqlite_store_counts_rows_only_when_a_key_is_added(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SqliteBudgetStore(tmp_path / "budget.sqlite")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)

    def lock(records: list[BudgetRecord]) -> None:
        records[0].strikes += 1

    store.transact([("peer", 1)], lock)  # a new key: the table may be full
    assert any("COUNT(*)" in s for s in statements)
    statements.clear()
    store.transact([("peer", 1)], lock)  # the same key again: no full scan
    assert statements and not any("COUNT(*)" in s for s in statements)
    store.close()


# -- worker processes (rolewire.aio.serve_workers) --------------------------------------

OPS_KEY = bytes(range(32))
PUBLIC_KEY = bytes(range(32, 64))
SECRET = "tulip-7"
POOL_BUDGET = 16

_guesses = 0


def _pid_service() -> tuple[Service, HandshakeConfig]:
    """Each worker: ``pid`` answers the worker's process id."""
    svc = Service("pids")

    @svc.operation("pid", roles=["ops"])
    def pid(call, body):  # type: ignore[no-untyped-def]
        return str(os.getpid()).encode()

    return svc, HandshakeConfig(roles=[KeyRole("ops", OPS_KEY)])


def _budget_service() -> tuple[Service, HandshakeConfig]:
    """Each worker: a password role ``admin`` with a long window, and
    ``guesses`` (for the key role) answering "pid count", the number of
    J-PAKE runs this worker ran with the role's password (guesses)."""
    prove = PasswordExchange.prove

    def counting_prove(ex, direction, h):  # type: ignore[no-untyped-def]
        # The responder proves in every run it let use the real password
        # (a refused run proves with a dummy), before the initiator's
        # proof arrives (if it does: a wrong guess does not send one).
        global _guesses
        if not ex.initiator and ex.role is not None:
            _guesses += 1
        return prove(ex, direction, h)

    PasswordExchange.prove = counting_prove  # type: ignore[method-assign]
    svc = Service("budget")

    @svc.operation("guesses", roles=["ops"])
    def guesses(call, body):  # type: ignore[no-untyped-def]
        return f"{os.getpid()} {_guesses}".encode()

    limiter = PasswordRateLimiter(max_failures=PER_PEER, window=3600.0, cooldown=3600.0,
                                  role_max_failures=POOL_BUDGET)
    return svc, HandshakeConfig(roles=[KeyRole("ops", OPS_KEY), KeyRole("public", PUBLIC_KEY),
                                       PasswordRole("admin", SECRET, limiter=limiter)])


def _failing_service() -> tuple[Service, HandshakeConfig]:
    raise ConfigurationError("no such role file: roles/ops.key")


def _gone(pid: int) -> bool:
    """The process has exited (a zombie counts: nobody may have reaped it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} still running"
        time.sleep(0.05)


def _ops() -> HandshakeConfig:
    return HandshakeConfig(roles=[KeyRole("ops", OPS_KEY)])


async def _call_until_every_worker(port: int, operation: str, pids: list[int]
                                   ) -> dict[int, bytes]:
    """Calls ``operation`` on new connections until each worker answered
    (at most 200 connections); the answers by pid."""
    answers: dict[int, bytes] = {}
    for _ in range(200):
        async with connect("127.0.0.1", port, _ops(), timeout=60) as channel:
            reply = await channel.call(operation, b"", timeout=60)
        answers.setdefault(int(reply.split()[0]), reply)
        if set(answers) == set(pids):
            break
    return answers


needs_reuseport = pytest.mark.skipif(not reuse_port_available(),
                                     reason="worker processes need SO_REUSEPORT")


@needs_reuseport
def test_connections_land_on_every_worker() -> None:
    with serve_workers(_pid_service, workers=2, handshake_rate=None) as pool:
        assert len(pool.pids) == 2 and pool.port > 0
        answers = asyncio.run(_call_until_every_worker(pool.port, "pid", pool.pids))
        assert set(answers) == set(pool.pids)
        pids = pool.pids
    _wait_gone(pids)
    assert pool.exited == {}  # stopped, not crashed


@needs_reuseport
def test_password_budget_holds_across_workers() -> None:
    # The public role makes the server prove something this client can
    # check; the password guess rides along (and fails).
    guesser = HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY), PasswordRole(
        "admin", "not-the-password", limiter=PasswordRateLimiter(max_failures=1 << 20))])

    async def guess_and_count(port: int, pids: list[int]) -> dict[int, bytes]:
        for i in range(3 * POOL_BUDGET):
            # 24 source addresses, 2 guesses each: the per-address budget
            # (PER_PEER) is never what stops them, the role's budget is.
            async with connect("127.0.0.1", port, guesser, timeout=60,
                               local_addr=(f"127.0.0.{2 + i % 24}", 0)) as channel:
                assert channel.peer_roles == {"public"}
        return await _call_until_every_worker(port, "guesses", pids)

    with serve_workers(_budget_service, workers=2, handshake_rate=None) as pool:
        path = pool.budget_path
        assert path is not None and os.path.exists(path)
        answers = asyncio.run(guess_and_count(pool.port, pool.pids))
        assert set(answers) == set(pool.pids)
        counts = [int(reply.split()[1]) for reply in answers.values()]
        # One budget for both workers: exactly the role's budget was
        # checked, by both of them (a copy per worker lets each take it).
        assert sum(counts) == POOL_BUDGET, counts
        assert all(counts), counts
        store = SqliteBudgetStore(path)
        failed = store.transact([("role", "admin")], lambda r: len(r[0].failed))
        store.close()
        assert failed == POOL_BUDGET
    assert not os.path.exists(os.path.dirname(path))  # the parent removed it


def test_in_loop_serve_refuses_workers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    svc, cfg = _pid_service()
    if reuse_port_available():
        with pytest.raises(ConfigurationError, match="serve_workers"):
            serve(svc, cfg, workers=2)
    with pytest.raises(ConfigurationError, match=">= 1"):
        serve(svc, cfg, workers=0)
    monkeypatch.setattr(workers_module, "reuse_port_available", lambda: False)
    with pytest.raises(ConfigurationError, match="SO_REUSEPORT"):
        serve(svc, cfg, workers=2)
    with pytest.raises(ConfigurationError, match="SO_REUSEPORT"):
        serve_workers(_pid_service, workers=2)


def test_bad_factories_fail_in_the_caller() -> None:
    with pytest.raises(ConfigurationError, match="picklable"):
        serve_workers(lambda: _pid_service(), workers=1)
    with pytest.raises(ConfigurationError, match="no_such_option"):
        serve_workers(_pid_service, workers=1, no_such_option=1)


def test_a_worker_that_cannot_start_is_reported() -> None:
    with pytest.raises(WorkerFailed, match="no such role file"):
        serve_workers(_failing_service, workers=2)


@needs_reuseport
def test_without_restart_a_crashed_worker_is_logged_and_stays_down(caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="rolewire.aio")
    with serve_workers(_pid_service, workers=2, restart=False) as pool:
        victim = pool.pids[1]
        os.kill(victim, signal.SIGKILL)
        _wait_gone([victim])
        deadline = time.monotonic() + 60
        while 1 not in pool.exited:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert pool.exited == {1: -signal.SIGKILL} and pool.alive == 1
        # The other worker still serves.
        answers = asyncio.run(_call_until_every_worker(pool.port, "pid", [pool.pids[0]]))
        assert set(answers) == {pool.pids[0]}
    crashed = [r for r in caplog.records if getattr(r, "event", "") == "worker_exited"]
    assert crashed and crashed[0].levelno == logging.ERROR
    assert pool.restarts == {} and not _events(caplog, "worker_restarted")


def _events(caplog, event: str) -> list[logging.LogRecord]:  # type: ignore[no-untyped-def]
    return [r for r in caplog.records if getattr(r, "event", "") == event]


def _until(condition, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _on_restart(marker: str) -> tuple[Service, HandshakeConfig]:
    """``_pid_service``, unless the test wrote ``marker`` after the pool
    started (so only restarted workers see it): "crash" raises, "hang"
    never listens."""
    try:
        with open(marker) as f:
            mode = f.read()
    except FileNotFoundError:
        return _pid_service()
    if mode == "hang":
        time.sleep(3600)
    raise RuntimeError("this worker crashes when restarted")


@needs_reuseport
def test_a_killed_worker_is_restarted_on_the_same_port(caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="rolewire.aio")
    with serve_workers(_pid_service, workers=2, restart_backoff=0.05) as pool:
        port, budget_path = pool.port, pool.budget_path
        survivor, victim = pool.pids
        os.kill(victim, signal.SIGKILL)
        _until(lambda: pool.restarts.get(1) == 1, "worker 1's restart")
        new = pool.pids[1]
        assert new not in (victim, survivor) and pool.pids[0] == survivor
        assert pool.alive == 2 and pool.exited == {}
        assert pool.port == port and pool.budget_path == budget_path
        assert budget_path is not None and os.path.exists(budget_path)
        # New connections complete their handshakes and calls on both
        # workers, the restarted one included.
        answers = asyncio.run(_call_until_every_worker(pool.port, "pid", pool.pids))
        assert set(answers) == {survivor, new}
        pids = pool.pids
    _wait_gone([victim, *pids])
    assert pool.exited == {}  # a restarted worker is not lost
    restarted = _events(caplog, "worker_restarted")
    assert len(restarted) == 1
    record = restarted[0]
    assert (record.worker, record.pid, record.old_pid, record.exitcode) == (  # type: ignore[attr-defined]
        1, new, victim, -signal.SIGKILL)
    exited = _events(caplog, "worker_exited")
    assert exited[0].levelno == logging.ERROR and exited[0].restart_in == 0.05  # type: ignore[attr-defined]


@needs_reuseport
def test_a_restart_keeps_the_shared_password_budget() -> None:
    guesser = HandshakeConfig(roles=[KeyRole("public", PUBLIC_KEY), PasswordRole(
        "admin", "not-the-password", limiter=PasswordRateLimiter(max_failures=1 << 20))])

    async def guess(port: int, n: int) -> None:
        for i in range(n):
            async with connect("127.0.0.1", port, guesser, timeout=60,
                               local_addr=(f"127.0.0.{2 + i % 24}", 0)) as channel:
                assert channel.peer_roles == {"public"}

    with serve_workers(_budget_service, workers=2, handshake_rate=None,
                       restart_backoff=0.05) as pool:
        path = pool.budget_path
        asyncio.run(guess(pool.port, 3 * POOL_BUDGET))  # the role's budget is spent
        answers = asyncio.run(_call_until_every_worker(pool.port, "guesses", pool.pids))
        survivor, victim = pool.pids
        before = int(answers[survivor].split()[1])
        assert sum(int(a.split()[1]) for a in answers.values()) == POOL_BUDGET
        os.kill(victim, signal.SIGKILL)
        _until(lambda: pool.restarts.get(1) == 1, "worker 1's restart")
        assert pool.budget_path == path and path is not None and os.path.exists(path)
        asyncio.run(guess(pool.port, POOL_BUDGET))
        answers = asyncio.run(_call_until_every_worker(pool.port, "guesses", pool.pids))
        # The restarted worker charges the same, spent budget: it let no
        # guess be checked (a fresh budget would have let it check more).
        assert int(answers[pool.pids[1]].split()[1]) == 0
        assert int(answers[survivor].split()[1]) == before
        store = SqliteBudgetStore(path)
        failed = store.transact([("role", "admin")], lambda r: len(r[0].failed))
        store.close()
        assert failed == POOL_BUDGET


@needs_reuseport
def test_a_crash_loop_is_given_up(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="rolewire.aio")
    marker = tmp_path / "mode"
    with serve_workers(functools.partial(_on_restart, str(marker)), workers=2,
                       max_restarts=2, restart_window=3600, restart_backoff=0.02,
                       restart_backoff_max=0.05) as pool:
        survivor, victim = pool.pids
        marker.write_text("crash")  # every restart of worker 1 fails
        os.kill(victim, signal.SIGKILL)
        _until(lambda: 1 in pool.exited, "worker 1 given up")
        assert pool.exited == {1: 1} and pool.restarts == {}
        assert pool.alive == 1 and pool.pids[0] == survivor
        given_up = _events(caplog, "worker_given_up")
        assert len(given_up) == 1 and given_up[0].levelno == logging.ERROR
        assert given_up[0].worker == 1  # type: ignore[attr-defined]
        # The first exit and the two restarts that failed; none after.
        assert [r.worker for r in _events(caplog, "worker_exited")] == [1, 1, 1]  # type: ignore[attr-defined]
        assert "crashes when restarted" in _events(caplog, "worker_exited")[-1].getMessage()
        answers = asyncio.run(_call_until_every_worker(pool.port, "pid", [survivor]))
        assert set(answers) == {survivor}
        assert not pool.wait(0)  # worker 0 still serves
    assert pool.wait(60)


@needs_reuseport
@pytest.mark.parametrize("mode", ["backoff", "hang"])
def test_stop_while_a_worker_is_restarted_leaves_no_process(tmp_path, caplog, mode) -> None:  # type: ignore[no-untyped-def]
    # backoff: stop() while worker 1 waits for its respawn (not spawned);
    # hang: stop() while the respawned worker starts (it is stopped too).
    caplog.set_level(logging.INFO, logger="rolewire.aio")
    marker = tmp_path / "mode"
    backoff = 3600.0 if mode == "backoff" else 0.02
    pool = serve_workers(functools.partial(_on_restart, str(marker)), workers=2,
                         restart_backoff=backoff, restart_backoff_max=backoff)
    try:
        victim = pool.pids[1]
        marker.write_text(mode)
        os.kill(victim, signal.SIGKILL)
        if mode == "backoff":
            _until(lambda: _events(caplog, "worker_exited"), "worker 1's exit")
            assert pool.pids[1] == victim and pool.alive == 1
        else:
            _until(lambda: pool.pids[1] != victim, "worker 1's respawn")
            assert pool.alive == 2 and pool.restarts == {}  # spawned, not listening
    finally:
        pids = pool.pids
        pool.stop()
    assert pool.wait(60)
    _wait_gone([victim, *pids])
    assert not [p for p in multiprocessing.active_children()
                if p.name.startswith("rolewire-worker-")]
    assert pool.pids == pids  # nothing was spawned after stop()
    assert pool.exited == {} and pool.restarts == {}


def test_restart_settings_are_checked() -> None:
    for bad in ({"max_restarts": 0}, {"max_restarts": 1.5}, {"restart_window": 0},
                {"restart_backoff": -1}, {"restart_backoff_max": float("inf")},
                {"restart_backoff": 2, "restart_backoff_max": 1}, {"restart": "no"}):
        with pytest.raises(ConfigurationError):
            workers_module.WorkerPool(_pid_service, workers=1, **bad)  # type: ignore[arg-type]


PARENT = '''
import sys
from rolewire.aio import serve_workers

if __name__ == "__main__":
    pool = serve_workers("tests.test_workers:_pid_service", workers=2)
    print(pool.budget_path, " ".join(map(str, pool.pids)), flush=True)
    sys.stdin.read()
'''


@needs_reuseport
def test_workers_stop_when_the_parent_is_killed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, os.path.join(root, "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    pids: list[int] = []
    budget_dir = ""
    try:
        assert proc.stdout is not None
        path, *words = proc.stdout.readline().split()
        budget_dir = os.path.dirname(path)
        pids = [int(p) for p in words]
        assert len(pids) == 2 and os.path.isdir(budget_dir)
        proc.kill()  # no atexit, no SIGTERM to the workers
        proc.wait(30)
        _wait_gone(pids)
        # The parent could not remove its temporary budget file: the
        # orphaned workers did.
        assert not os.path.exists(budget_dir)
    finally:
        if budget_dir:
            shutil.rmtree(budget_dir, ignore_errors=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
