"""Role-based authorization and the call message codec."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolewire import errors
from rolewire.rpc import CallMessage, ErrorCode, MessageType, decode, encode, parse_error
from rolewire.services import (
    ANY_AUTHENTICATED,
    REFUSED_TEXT,
    UNKNOWN_TEXT,
    UNRESTRICTED,
    Service,
)


def run(coro):
    return asyncio.run(coro)


def request(op, body=b"", call_id=7, kind=MessageType.REQUEST):
    return CallMessage(kind, call_id, op, body)


@pytest.fixture
def payment():
    service = Service("payment")

    @service.operation("charge", roles=["payment", "admin"])
    async def charge(call, body):
        return b"charged " + body + b" for " + ",".join(sorted(call.peer_roles)).encode()

    @service.operation(roles=ANY_AUTHENTICATED)
    def status(call, body):
        return b"ok"

    @service.operation(roles=UNRESTRICTED)
    def ping(call, body):
        return b"pong"

    @service.operation(roles=["payment"])
    def broken(call, body):
        raise KeyError("secret-detail")

    return service


def test_needs_one_of_the_roles(payment):
    reply = run(payment.dispatch(request("charge", b"10"), frozenset({"admin", "other"})))
    assert reply.type is MessageType.RESPONSE and reply.body == b"charged 10 for admin,other"
    assert reply.call_id == 7


def test_forbidden_reply_and_audit(payment, caplog):
    with caplog.at_level(logging.WARNING, logger="rolewire.audit"):
        reply = run(payment.dispatch(request("charge"), frozenset({"user-information"}),
                                     peer="10.0.0.1:5"))
    assert reply.type is MessageType.ERROR
    code, text = parse_error(reply)
    # Issue 11 section 3: the reply names no role (it used to say
    # "operation 'charge' requires admin | payment"); the audit log does.
    assert code == ErrorCode.FORBIDDEN and text == REFUSED_TEXT
    assert "payment" not in text and "admin" not in text and "charge" not in text
    event = next(r for r in caplog.records if getattr(r, "event", "") == "forbidden")
    assert event.operation == "charge" and event.peer_roles == ["user-information"]
    assert event.required == "admin | payment"


def test_markers(payment):
    assert run(payment.dispatch(request("status"), frozenset({"x"}))).body == b"ok"
    denied = run(payment.dispatch(request("status"), frozenset()))
    assert parse_error(denied)[0] == ErrorCode.FORBIDDEN
    assert run(payment.dispatch(request("ping"), frozenset())).body == b"pong"


def test_unknown_and_forbidden_look_the_same_by_default(payment, caplog):
    """A caller cannot tell an operation it may not call from one that does
    not exist: same code, same text, same reply bytes (issue 11 section 3);
    the audit log keeps the precise reason."""
    caller = frozenset({"user-information"})
    with caplog.at_level(logging.WARNING, logger="rolewire.audit"):
        refused = run(payment.dispatch(request("charge"), caller))
        missing = run(payment.dispatch(request("refund"), caller))
    assert encode(refused)[10 + len("charge"):] == encode(missing)[10 + len("refund"):]
    assert parse_error(refused) == parse_error(missing) == (ErrorCode.FORBIDDEN, REFUSED_TEXT)
    assert [r.event for r in caplog.records] == ["forbidden", "unknown_operation"]


def test_distinct_errors_is_an_opt_in(payment):
    service = Service("open", distinct_errors=True)
    service.add("charge", lambda c, b: b"", roles=["payment"])
    reply = run(service.dispatch(request("refund"), frozenset({"payment"})))
    assert parse_error(reply) == (ErrorCode.UNKNOWN_OPERATION, UNKNOWN_TEXT)
    reply = run(service.dispatch(request("charge"), frozenset({"other"})))
    assert parse_error(reply) == (ErrorCode.FORBIDDEN, REFUSED_TEXT)
    # The default service answers the missing operation like a refusal.
    reply = run(payment.dispatch(request("refund"), frozenset({"payment"})))
    assert parse_error(reply) == (ErrorCode.FORBIDDEN, REFUSED_TEXT)


def test_no_reply_names_a_role_whatever_the_operation():
    """Every refusal of every operation, for every caller role set, names
    neither a role nor the operation's access rule."""
    service = Service("s")
    roles = ["alpha", "beta-role", "gamma"]
    service.add("a_op", lambda c, b: b"", roles=["alpha"])
    service.add("b_op", lambda c, b: b"", roles=["beta-role", "gamma"])
    service.add("any_op", lambda c, b: b"", roles=ANY_AUTHENTICATED)
    texts = set()
    for op in ("a_op", "b_op", "any_op", "missing"):
        for held in (frozenset(), frozenset({"other"}), frozenset({"alpha"})):
            reply = run(service.dispatch(request(op), held))
            if reply.type is MessageType.ERROR:
                texts.add(parse_error(reply)[1])
    assert texts == {REFUSED_TEXT}
    assert not any(role in text for role in roles + ["any-authenticated"] for text in texts)


def test_handler_error_hides_details(payment):
    reply = run(payment.dispatch(request("broken"), frozenset({"payment"})))
    code, text = parse_error(reply)
    assert code == ErrorCode.HANDLER_FAILED and "secret-detail" not in text


def test_notify_gets_no_reply_even_when_forbidden(payment):
    assert run(payment.dispatch(request("charge", kind=MessageType.NOTIFY), frozenset())) is None
    assert run(payment.dispatch(request("ping", kind=MessageType.NOTIFY), frozenset())) is None


def test_sync_dispatch_path_matches_dispatch(payment):
    """dispatch_nowait (used by the servers) answers synchronous handlers
    without a coroutine, hands back an awaitable for asynchronous ones, and
    both end in the same replies as dispatch."""
    roles = frozenset({"payment"})
    direct = payment.dispatch_nowait(request("ping"), roles)
    assert isinstance(direct, CallMessage) and direct == run(payment.dispatch(request("ping"),
                                                                              roles))
    pending = payment.dispatch_nowait(request("charge", b"5"), roles)
    assert not isinstance(pending, CallMessage) and pending is not None

    async def finish():
        return await pending

    assert run(finish()).body == b"charged 5 for payment"
    failed = payment.dispatch_nowait(request("broken"), roles)
    assert parse_error(failed)[0] == ErrorCode.HANDLER_FAILED


def test_async_handler_failure_and_sync_handler_returning_awaitable():
    service = Service("s")

    @service.operation(roles=["a"])
    async def explode(call, body):
        raise ValueError("secret-detail")

    @service.operation(roles=["a"])
    def deferred(call, body):
        async def later():
            return b"later " + body
        return later()

    reply = run(service.dispatch(request("explode"), frozenset({"a"})))
    code, text = parse_error(reply)
    assert code == ErrorCode.HANDLER_FAILED and "secret-detail" not in text
    assert run(service.dispatch(request("deferred", b"x"), frozenset({"a"}))).body == b"later x"


def test_notification_contexts_are_reused_and_bounded(monkeypatch):
    from rolewire import services

    seen = []
    service = Service("s")
    service.add("sink", lambda call, body: seen.append(call), roles=["a"])
    roles = frozenset({"a"})
    for _ in range(3):
        run(service.dispatch(request("sink", call_id=0, kind=MessageType.NOTIFY), roles, "p1"))
    run(service.dispatch(request("sink", call_id=0, kind=MessageType.NOTIFY), roles, "p2"))
    assert seen[0] is seen[1] is seen[2] and seen[3] is not seen[0]
    assert seen[3].peer == "p2" and seen[0].peer_roles == roles and seen[0].call_id == 0
    # Requests get a fresh context each (their call ids differ).
    service.add("get", lambda call, body: seen.append(call) or b"", roles=["a"])
    run(service.dispatch(request("get", call_id=1), roles))
    run(service.dispatch(request("get", call_id=2), roles))
    assert (seen[-2].call_id, seen[-1].call_id) == (1, 2)
    monkeypatch.setattr(services, "_CONTEXT_CACHE_SIZE", 4)
    for i in range(10):
        run(service.dispatch(request("sink", call_id=0, kind=MessageType.NOTIFY), roles, f"x{i}"))
    assert len(service._contexts) <= 4


def test_declaration_errors():
    service = Service("s")
    with pytest.raises(errors.ConfigurationError):
        service.add("op", lambda c, b: b"", roles=[])
    with pytest.raises(errors.ConfigurationError):
        service.add("op", lambda c, b: b"", roles="payment")
    service.add("op", lambda c, b: b"", roles=["a"])
    with pytest.raises(errors.ConfigurationError):
        service.add("op", lambda c, b: b"", roles=["a"])
    assert service.access_table() == {"op": "a"}


@given(st.sampled_from(list(MessageType)), st.integers(0, 2**64 - 1),
       st.text(max_size=60), st.binary(max_size=100))
def test_codec_roundtrip(kind, call_id, op, body):
    message = CallMessage(kind, call_id, op, body)
    assert decode(encode(message)) == message


@given(st.binary(max_size=40))
def test_codec_garbage_only_typed_errors(data):
    try:
        decode(data)
    except errors.ProtocolViolation:
        pass


def test_request_contexts_are_those_the_constructor_builds():
    import dataclasses

    from rolewire.services import CallContext, _request_context

    roles = frozenset({"shop"})
    fast = _request_context("svc", "op", roles, "peer", 7)
    slow = CallContext("svc", "op", roles, "peer", 7)
    assert type(fast) is CallContext
    names = [f.name for f in dataclasses.fields(CallContext)]
    assert [getattr(fast, n) for n in names] == [getattr(slow, n) for n in names]
    assert set(names) == set(vars(fast))
    assert fast == slow and hash(fast) == hash(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.call_id = 8


def test_request_context_is_what_call_context_gives_a_plain_request():
    """The connection's request fast path asks Service.request_context; for
    an operation checked by roles only and a request without metadata it
    must give what the general call_context gives."""
    import dataclasses

    from rolewire.services import CallContext, Service

    svc = Service("svc")
    svc.add("op", lambda call, body: body, roles={"shop"})
    op = svc.operations["op"]
    roles = frozenset({"shop"})
    assert not svc.needs_call_checks(op)
    fast = svc.request_context(op, roles, "peer", 9)
    slow = svc.call_context(op, roles, "peer", 9)
    assert isinstance(slow, CallContext)
    names = [f.name for f in dataclasses.fields(CallContext)]
    assert [getattr(fast, n) for n in names] == [getattr(slow, n) for n in names]
