"""Issue 17 section 3: metrics and spans through the OpenTelemetry API
(collected here with the SDK's in-memory reader and exporter), log lines
readable with a plain handler, the JSON formatter, no secret in any log
line, and the Prometheus collector on a private registry."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys

import prometheus_client
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from rolewire import errors
from rolewire.aio import connect, serve
from rolewire.handshake import HandshakeConfig
from rolewire.logs import JsonFormatter
from rolewire.roles import PasswordRateLimiter
from rolewire.roles.key import KeyRole
from rolewire.roles.password import PasswordRole
from rolewire.services import Service
from rolewire.telemetry import Telemetry

KEY = os.urandom(32)
PASSWORD = "correct horse battery staple"
SERVER_CFG = HandshakeConfig(roles=[KeyRole("svc", KEY)])
CLIENT_CFG = HandshakeConfig(roles=[KeyRole("svc", KEY)])
STRANGER_CFG = HandshakeConfig(roles=[KeyRole("svc", os.urandom(32))])


def make_service() -> Service:
    service = Service("shop")
    service.add("echo", lambda call, body: body, roles=["svc"])
    service.add("admin", lambda call, body: b"", roles=["admin"])

    async def boom(call, body):
        raise RuntimeError("handler bug")

    service.add("boom", boom, roles=["svc"])
    service.add("sink", lambda call, body: None, roles=["svc"])
    return service


def telemetry():
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]),
                    tracer_provider=tracer_provider)
    return tel, reader, exporter


def points(reader, name):
    data = reader.get_metrics_data()
    out = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    out.extend(metric.data.data_points)
    return out


def value_where(reader, name, **attributes):
    total = 0
    for point in points(reader, name):
        attrs = dict(point.attributes)
        if all(attrs.get(k) == v for k, v in attributes.items()):
            total += getattr(point, "value", None) if hasattr(point, "value") else point.count
    return total


async def traffic(port):
    async with connect("127.0.0.1", port, CLIENT_CFG) as channel:
        assert await channel.call("echo", b"hi") == b"hi"
        with pytest.raises(errors.Forbidden):
            await channel.call("admin")
        with pytest.raises(errors.Forbidden):
            await channel.call("no-such-operation")
        with pytest.raises(errors.RemoteCallError):
            await channel.call("boom")
        await channel.send_many("sink", [b"x"] * 50)
        assert await channel.call("echo", b"done") == b"done"
    with pytest.raises(errors.HandshakeError):
        await connect("127.0.0.1", port, STRANGER_CFG)


def test_metrics_and_spans_through_the_sdk():
    tel, reader, exporter = telemetry()

    async def main():
        async with serve(make_service(), SERVER_CFG, telemetry=tel) as server:
            await traffic(server.port)
            await asyncio.sleep(0.1)
            return server.stats

    try:
        stats = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        tel.close()
    assert value_where(reader, "rolewire.handshakes", **{"rolewire.outcome": "complete",
                                                          "rolewire.role.kind": "key"}) == 1
    assert value_where(reader, "rolewire.handshakes", **{"rolewire.outcome": "failed"}) == 1
    assert len(points(reader, "rolewire.handshake.duration")) == 2
    calls = "rpc.server.call.duration"
    assert value_where(reader, calls, **{"rolewire.outcome": "ok", "rpc.method": "echo"}) == 2
    assert value_where(reader, calls, **{"rolewire.outcome": "forbidden"}) == 1
    assert value_where(reader, calls, **{"rolewire.outcome": "unknown",
                                         "rpc.method": "_OTHER"}) == 1
    assert value_where(reader, calls, **{"rolewire.outcome": "error"}) == 1
    # Observable instruments read the server's counters (no per-record call).
    assert value_where(reader, "rolewire.records", **{"rolewire.direction": "opened"}) \
        == stats.records_opened >= 6  # 5 calls + the 50 notifications in containers
    assert value_where(reader, "rolewire.notifications") == 50
    assert value_where(reader, "rolewire.calls.refused") == 2
    spans = exporter.get_finished_spans()
    names = sorted(s.name for s in spans)
    assert names.count("rolewire.handshake") == 2
    assert {"shop/echo", "shop/admin", "shop/_OTHER", "shop/boom"} <= set(names)
    echo = next(s for s in spans if s.name == "shop/echo")
    assert echo.attributes["rpc.system"] == "rolewire" and echo.attributes["rpc.method"] == "echo"
    assert echo.attributes["network.peer.address"] == "127.0.0.1"
    failed = [s for s in spans if s.name == "rolewire.handshake"
              and s.attributes.get("rolewire.outcome") == "failed"]
    assert failed and failed[0].status.status_code.name == "ERROR"
    # No role name in any metric attribute (kinds only).
    for name in ("rolewire.handshakes", calls):
        for point in points(reader, name):
            assert "svc" not in json.dumps(dict(point.attributes))


def test_password_failures_and_lockouts_are_counted():
    tel, reader, _ = telemetry()
    limiter = PasswordRateLimiter(max_failures=2)
    server_cfg = HandshakeConfig(roles=[PasswordRole("approval", PASSWORD, limiter=limiter)])
    wrong = HandshakeConfig(roles=[PasswordRole("approval", "wrong password",
                                                limiter=PasswordRateLimiter())])

    async def main():
        async with serve(make_service(), server_cfg, telemetry=tel) as server:
            for _ in range(3):
                with pytest.raises(errors.HandshakeError):
                    await connect("127.0.0.1", server.port, wrong)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        tel.close()
    assert value_where(reader, "rolewire.password.events",
                       **{"rolewire.event": "password_failure"}) >= 2
    assert value_where(reader, "rolewire.password.events",
                       **{"rolewire.event": "password_lockout"}) >= 1


def test_no_telemetry_means_no_instruments_touched():
    """The default server does no telemetry work (and needs no SDK)."""
    async def main():
        async with serve(make_service(), SERVER_CFG) as server:
            assert server.telemetry is None
            await traffic(server.port)

    asyncio.run(asyncio.wait_for(main(), 60))


# -- logs --------------------------------------------------------------------------------


def capture(formatter: logging.Formatter, level=logging.DEBUG):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    return stream, lambda: (root.removeHandler(handler), root.setLevel(old_level))


def run_logged_traffic():
    async def main():
        async with serve(make_service(), SERVER_CFG) as server:
            await traffic(server.port)
            await asyncio.sleep(0.1)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_plain_basic_config_shows_host_peer_roles_and_reason():
    stream, undo = capture(logging.Formatter(logging.BASIC_FORMAT), logging.INFO)
    try:
        run_logged_traffic()
    finally:
        undo()
    lines = stream.getvalue().splitlines()
    failed = [line for line in lines if "handshake failed" in line]
    assert failed and all("peer=127.0.0.1" in line and "reason=" in line for line in failed)
    complete = [line for line in lines if "handshake complete" in line]
    assert any("peer_roles=svc" in line for line in complete)
    forbidden = [line for line in lines if "forbidden call" in line]
    assert forbidden and "required=admin" in forbidden[0] and "operation=admin" in forbidden[0]


def test_basic_config_in_a_fresh_process():
    """Exactly ``logging.basicConfig()`` (nothing else configured)."""
    code = (
        "import asyncio, logging, os\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from rolewire.aio import connect, serve\n"
        "from rolewire.handshake import HandshakeConfig\n"
        "from rolewire.roles.key import KeyRole\n"
        "from rolewire.services import Service\n"
        "async def main():\n"
        "    cfg = HandshakeConfig(roles=[KeyRole('svc', os.urandom(32))])\n"
        "    other = HandshakeConfig(roles=[KeyRole('svc', os.urandom(32))])\n"
        "    async with serve(Service('s'), cfg) as server:\n"
        "        try:\n"
        "            await connect('127.0.0.1', server.port, other)\n"
        "        except Exception:\n"
        "            pass\n"
        "        await asyncio.sleep(0.1)\n"
        "asyncio.run(main())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    line = next(line for line in result.stderr.splitlines()
                if "handshake failed" in line and "side=responder" in line)
    assert "peer=127.0.0.1:" in line and "reason=" in line


def test_json_formatter_one_object_per_line_with_fields():
    stream, undo = capture(JsonFormatter(), logging.INFO)
    try:
        run_logged_traffic()
    finally:
        undo()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [r for r in records if r.get("event") == "handshake_failed"]
    assert failed and failed[0]["message"] == "handshake failed"
    assert failed[0]["peer"].startswith("127.0.0.1") and failed[0]["level"] == "INFO"
    forbidden = next(r for r in records if r.get("event") == "forbidden")
    assert forbidden["logger"] == "rolewire.audit" and forbidden["required"] == "admin"


def test_no_key_material_or_password_in_any_log_line():
    stream, undo = capture(JsonFormatter(), logging.DEBUG)
    plain, undo_plain = capture(logging.Formatter(logging.BASIC_FORMAT), logging.DEBUG)
    limiter = PasswordRateLimiter(max_failures=1)
    server_cfg = HandshakeConfig(roles=[KeyRole("svc", KEY),
                                        PasswordRole("approval", PASSWORD, limiter=limiter)])
    wrong = HandshakeConfig(roles=[PasswordRole("approval", "hunter2 is wrong",
                                                limiter=PasswordRateLimiter())])

    async def main():
        async with serve(make_service(), server_cfg) as server:
            await traffic(server.port)
            for _ in range(2):
                with pytest.raises(errors.HandshakeError):
                    await connect("127.0.0.1", server.port, wrong)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        undo()
        undo_plain()
    text = stream.getvalue() + plain.getvalue()
    assert "handshake" in text
    for secret in (KEY.hex(), KEY.hex()[:16], repr(KEY)[2:20], PASSWORD, "hunter2"):
        assert secret not in text


# -- Prometheus ---------------------------------------------------------------------------


def test_prometheus_collector_on_a_private_registry():
    import rolewire.prometheus as rp

    # Importing registered nothing on the global registry.
    assert not any(name.startswith("rolewire") for name in
                   prometheus_client.REGISTRY._names_to_collectors)

    async def main():
        async with serve(make_service(), SERVER_CFG) as server:
            registry = CollectorRegistry()
            registry.register(rp.ServerCollector(server, prefix_labels={"service": "shop"}))
            await traffic(server.port)
            await asyncio.sleep(0.1)
            return generate_latest(registry).decode()

    text = asyncio.run(asyncio.wait_for(main(), 60))
    assert 'rolewire_sessions_total{service="shop"} 1.0' in text
    assert 'rolewire_refused_calls_total{service="shop"} 2.0' in text
    assert 'rolewire_notifications_total{service="shop"} 50.0' in text
    assert not any(name.startswith("rolewire") for name in
                   prometheus_client.REGISTRY._names_to_collectors)


def test_trace_context_travels_in_call_metadata():
    """A caller's span is the parent of the server's request span (W3C
    traceparent in metadata ``rw-traceparent``): one trace across hops."""
    tel, _, exporter = telemetry()

    async def main():
        async with (
            serve(make_service(), SERVER_CFG, telemetry=tel) as server,
            connect("127.0.0.1", server.port, CLIENT_CFG) as channel,
        ):
            tel.instrument(channel)
            with tel.tracer.start_as_current_span("caller") as parent:
                assert await channel.call("echo", b"traced") == b"traced"
            assert await channel.call("echo", b"untraced") == b"untraced"
            return parent.get_span_context()

    try:
        parent = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        tel.close()
    echoes = [s for s in exporter.get_finished_spans() if s.name == "shop/echo"]
    traced, untraced = echoes
    assert traced.context.trace_id == parent.trace_id
    assert traced.parent is not None and traced.parent.span_id == parent.span_id
    assert untraced.context.trace_id != parent.trace_id  # no current span: a new trace
