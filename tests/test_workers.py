"""The password budget shared by processes (server workers) through
:class:`rolewire.roles.budget.SqliteBudgetStore`: charges made by several
processes at once never exceed the role's budget."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from rolewire.errors import PasswordAttemptsExceeded
from rolewire.roles.budget import BudgetRecord, SqliteBudgetStore
from rolewire.roles.password import PasswordRateLimiter

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
