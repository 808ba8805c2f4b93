"""Issue 11 section 4, "log flooding": one authenticated peer sending
forbidden or unknown calls must not flood the audit log, and a connection
that keeps doing it is closed. Sans-IO (Service + CallGuard, time passed in)
and over a real loopback server."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolewire import errors
from rolewire.aio import connect, serve
from rolewire.budgets import CallGuard, PeerBudget, TokenBucket, peer_group
from rolewire.handshake import HandshakeConfig
from rolewire.roles.key import KeyRole
from rolewire.rpc import CallMessage, ErrorCode, MessageType, parse_error
from rolewire.services import REFUSED_TEXT, Service

SHOP_KEY = os.urandom(32)
ADMIN_KEY = os.urandom(32)
SERVER_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY), KeyRole("admin", ADMIN_KEY)])
SHOP_CFG = HandshakeConfig(roles=[KeyRole("shop", SHOP_KEY)])


def run(coro, timeout: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def make_service() -> Service:
    service = Service("flood")
    service.add("admin_op", lambda call, body: b"done", roles=["admin"])
    service.add("echo", lambda call, body: body, roles=["shop"])
    return service


def audit_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rolewire.audit"]


# -- sans-IO ------------------------------------------------------------------------------


def test_forbidden_flood_writes_a_bounded_number_of_audit_lines(caplog):
    """The attack: 20k forbidden or unknown notifications in one burst. Old
    code wrote one WARNING line each; now the guard lets 20 through, counts
    the rest and says the connection must be closed."""
    service = make_service()
    guard = CallGuard()
    roles = frozenset({"shop"})
    n = 20_000
    with caplog.at_level(logging.WARNING, logger="rolewire.audit"):
        for i in range(n):
            op = "admin_op" if i % 2 else f"missing-{i}"
            message = CallMessage(MessageType.NOTIFY, 0, op, b"x")
            assert service._dispatch_nowait(message, roles, "p", guard, 0.0) is None
    assert len(audit_lines(caplog)) == 20
    assert guard.refused == n and guard.suppressed_total == n - 20
    assert guard.exhausted


def test_audit_budget_refills_and_reports_what_it_dropped(caplog):
    service = make_service()
    guard = CallGuard(log_burst=2, log_per_second=1.0, max_refusals=1000)
    roles = frozenset({"shop"})
    request = CallMessage(MessageType.REQUEST, 5, "admin_op")
    with caplog.at_level(logging.WARNING, logger="rolewire.audit"):
        for _ in range(10):
            reply = service._dispatch_nowait(request, roles, "p", guard, 100.0)
            # Every refused request is still answered, logged or not.
            assert parse_error(reply) == (ErrorCode.FORBIDDEN, REFUSED_TEXT)
        service._dispatch_nowait(request, roles, "p", guard, 101.5)
    lines = audit_lines(caplog)
    assert len(lines) == 3 and getattr(lines[-1], "suppressed", 0) == 8
    assert not guard.exhausted


def test_guard_threshold_is_a_rate_not_a_lifetime_count():
    """A long-lived connection that makes an occasional refused call is
    never closed; a burst or a sustained rate above the budget is."""
    slow = CallGuard(max_refusals=10, refusals_per_second=1.0)
    for i in range(1000):
        slow.refuse(float(i * 2))  # one every 2 s
    assert not slow.exhausted
    fast = CallGuard(max_refusals=10, refusals_per_second=1.0)
    for i in range(30):
        fast.refuse(i * 0.1)
    assert fast.exhausted


def test_unknown_and_forbidden_are_charged_alike():
    service = make_service()
    a, b = CallGuard(max_refusals=5), CallGuard(max_refusals=5)
    roles = frozenset({"shop"})
    for _ in range(6):
        service._dispatch_nowait(CallMessage(MessageType.NOTIFY, 0, "admin_op"), roles, "", a)
        service._dispatch_nowait(CallMessage(MessageType.NOTIFY, 0, "nope"), roles, "", b)
    assert (a.refused, a.exhausted) == (b.refused, b.exhausted) == (6, True)


@given(st.lists(st.floats(0, 50, allow_nan=False), min_size=1, max_size=200),
       st.floats(0.1, 20), st.integers(1, 50))
def test_token_bucket_never_grants_more_than_its_budget(gaps, rate, capacity):
    bucket = TokenBucket(rate, capacity)
    now = 0.0
    granted = 0
    for gap in gaps:
        now += gap
        granted += bucket.take(now)
    assert granted <= capacity + rate * now + 1e-6


def test_peer_budget_table_is_bounded():
    budget = PeerBudget(1.0, 3, max_peers=100)
    for i in range(10_000):
        budget.take(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(budget) <= 100
    assert [budget.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take("a", 1.0)


def test_peer_group_ipv6_by_64():
    assert peer_group("2001:db8:1:2:aaaa::1") == peer_group("2001:db8:1:2:bbbb::9")
    assert peer_group("2001:db8:1:3::1") != peer_group("2001:db8:1:2::1")
    assert peer_group("::ffff:192.0.2.7") == "192.0.2.7" == peer_group("192.0.2.7")
    assert peer_group("fe80::1%eth0") == peer_group("fe80::2")
    assert peer_group("?") == "?"


# -- a real server ---------------------------------------------------------------------------


def test_forbidden_flood_over_loopback_is_throttled_then_closed(caplog):
    """The attack of the issue over a real server: an authenticated peer
    streams forbidden and unknown notifications. The server writes a
    bounded number of audit lines plus one summary, closes that connection,
    and keeps serving everyone else."""
    service = make_service()
    n = 20_000

    async def main():
        async with serve(service, SERVER_CFG) as server:
            bystander = await connect("127.0.0.1", server.port, SHOP_CFG)
            attacker = await connect("127.0.0.1", server.port, SHOP_CFG)
            await attacker.send_many("admin_op", [b"x"] * (n // 2))
            await attacker.send_many("no-such-op", [b"x"] * (n // 2))
            with pytest.raises((errors.ConnectionClosed, errors.ServiceUnavailable)):
                for _ in range(200):  # the server closes it once the flood is read
                    await attacker.call("echo", b"still there?", timeout=10)
                    await asyncio.sleep(0.05)
            await attacker.close()
            assert await bystander.call("echo", b"hi") == b"hi"
            await bystander.close()
            await asyncio.sleep(0.1)
            return server.stats

    with caplog.at_level(logging.WARNING, logger="rolewire.audit"):
        stats = run(main())
    lines = audit_lines(caplog)
    events = [getattr(r, "event", "") for r in lines]
    assert stats.refusal_closes == 1
    assert stats.forbidden_calls >= 101  # counted even when not logged
    # 20 audit lines, the close decision and one summary (old code: 20000).
    assert len(lines) <= 22, events[:5]
    assert events.count("refused_calls_limit") == 1
    (summary,) = [r for r in lines if getattr(r, "event", "") == "audit_suppressed"]
    assert summary.suppressed == summary.refused - 20
