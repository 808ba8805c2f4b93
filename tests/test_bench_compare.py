"""The comparison benchmark runs end to end at tiny size (no speed is
asserted) and produces the report's keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from rolewire.benchmarks import channel, compare
from rolewire.errors import ConfigurationError


@pytest.fixture(autouse=True)
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLEWIRE_BENCH_TINY", "1")


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROLEWIRE_BENCH_TINY", "1")
        return compare.run(["all"], quick=True)


def test_report_shape(report: dict[str, Any]) -> None:
    assert set(report) >= {"machine", "results", "ratios", "targets", "targets_met", "notes"}
    honest = {"stream64_batch_vs_tls_min", "stream64_notify_vs_tls_min",
              "calls_seq_vs_tls_min", "calls16_vs_tls_min", "calls16_vs_grpc_mtls",
              "stream64_vs_grpc_mtls", "stream16k_vs_tls_min", "aggregate500_vs_tls",
              "memory_per_conn_vs_tls"}
    assert set(report["ratios"]) == {"stream64_vs_tls", "stream16k_vs_tls", "auth_vs_jwt",
                                     "connect_vs_mtls", "stream64_notify_vs_tls"} | honest
    # Every ratio but the notify-vs-same-stack one has a target (issue 13's table).
    assert set(report["targets"]) == set(report["ratios"]) - {"stream64_notify_vs_tls"}
    assert report["targets"]["memory_per_conn_vs_tls"] == 0.1
    assert set(report["targets_met"]) == set(report["targets"])
    # Throughput ratios come with their range over the interleaved rounds.
    assert set(report["ratio_ranges"]) == honest - {"memory_per_conn_vs_tls"}
    results = report["results"]
    assert set(results) == {"channel", "auth", "connect", "fleet"}
    systems = results["channel"]["systems"]
    assert {"tcp", "tcp-min", "tls-min", "mtls", "grpc-mtls", "jwt", "rolewire",
            "rolewire-chacha"} <= set(systems)
    fleet = results["fleet"]["systems"]
    assert set(fleet) == set(channel.FLEET_SYSTEMS) - {n for n in fleet if "skipped" in fleet[n]}
    for name in ("tls-min", "rolewire"):
        assert fleet[name]["calls_per_s"] > 0 and fleet[name]["connections"] > 1
    for name in ("tcp", "mtls", "jwt", "tcp-min", "tls-min", "grpc-mtls"):
        if "skipped" in systems[name]:
            assert name == "grpc-mtls"  # only without grpcio
            continue
        assert systems[name]["stream_notify"]["64"]["messages_per_s"] > 0
        for size in ("64", "1024", "16384"):
            figures = systems[name]["stream"][size]
            assert figures["messages_per_s"] > 0 and figures["mb_per_s"] > 0
            assert systems[name]["calls"][size]["calls_per_s"] > 0
        assert systems[name]["pipelined"]["64"]["calls_per_s"] > 0
        assert results["connect"]["systems"][name]["ms"] > 0
    auth = results["auth"]["results"]
    assert {"jwt_eddsa", "jwt_es256", "jwt_eddsa_baseline", "rolewire_chacha20poly1305"} \
        <= set(auth)
    assert report["ratios"]["auth_vs_jwt"] > 0
    if "skipped" in systems["rolewire"]:
        assert report["ratios"]["stream64_vs_tls"] is None
        assert any("rolewire" in note for note in report["notes"])
    elif "skipped" not in systems["grpc-mtls"]:
        # Memory growth of a tiny in-process fleet can round to nothing.
        assert all(v is not None and v > 0 for k, v in report["ratios"].items()
                   if k != "memory_per_conn_vs_tls")
    json.dumps(report)  # JSON-ready


def test_merged_ratios_of_bench_all(report: dict[str, Any]) -> None:
    handshake = {"ratios": {"handshake_key_vs_mtls": 3.0, "handshake_cert_nocache_vs_mtls": 1.0,
                            "handshake_password_vs_mtls": None},
                 "ratio_ranges": {"handshake_key_vs_mtls": [2.9, 3.1]}}
    merged = compare.merge_ratios({"compare": report, "handshake": handshake})
    assert set(merged["ratios"]) >= set(compare.HANDSHAKE_TARGETS)
    assert merged["targets_met"]["handshake_key_vs_mtls"] is True
    assert merged["targets_met"]["handshake_cert_nocache_vs_mtls"] is False
    assert merged["targets_met"]["handshake_password_vs_mtls"] is None
    assert merged["ratio_ranges"]["handshake_key_vs_mtls"] == [2.9, 3.1]
    # Lower is better for memory.
    assert compare._met({"memory_per_conn_vs_tls": 0.05}, compare.TARGETS) == {
        "memory_per_conn_vs_tls": True}


def test_minimal_echo_baseline_over_tls(tmp_path: Path) -> None:
    """The hand-rolled baseline is correct: echo, in-order replies with
    many calls in flight, counted sinks (both write styles)."""
    import asyncio

    from rolewire.baselines import echo

    channel._write_pki(tmp_path)
    server_ctx, client_ctx = channel._min_contexts(tmp_path)

    async def main() -> None:
        server = await echo.serve(ssl_context=server_ctx)
        client = await echo.connect("127.0.0.1", server.port, ssl_context=client_ctx,
                                    server_hostname="bench")
        try:
            bodies = [bytes([i]) * (i * 100) for i in range(40)]
            replies = await asyncio.gather(*(client.call("echo", b) for b in bodies))
            assert replies == bodies
            await client.send_many("sink", [b"x" * 64] * 300)
            for _ in range(5):
                await client.notify("sink", b"y" * 10)
            assert await client.call("done", timeout=30) == b"305 19250"
            assert await client.call("done") == b"0 0"
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_table_and_report_render(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(record=True, width=140)
    compare.print_report(report, console)
    text = console.export_text()
    assert "stream msg/s" in text and "auth_vs_jwt" in text and "mtls" in text
    assert compare.render_table(report).row_count > 10


def test_plot(report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        compare.plot(report, tmp_path / "chart.png")
        assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigurationError, match=r"rolewire\[plot\]"):
        compare.plot(report, tmp_path / "none.png")


def test_registered_system_and_skips() -> None:
    from rolewire.baselines import connect_plain, serve_plain

    calls: list[str] = []

    def local_factory() -> channel.BenchSystem:
        async def serve(service: Any, directory: Path) -> Any:
            calls.append("serve")
            return await serve_plain(service, peer_roles=["bench"])

        async def connect(host: str, port: int, directory: Path) -> Any:
            return await connect_plain(host, port)

        return channel.BenchSystem("local", "a plug-in", lambda d: None, serve, connect)

    def missing() -> channel.BenchSystem:
        raise channel.SystemUnavailable("not installed here")

    channel.register_system("local", local_factory)
    channel.register_system("missing", missing)
    try:
        out = channel.run_suite({"channel", "connect"}, systems=["local", "missing"],
                                in_process=False)
    finally:
        del channel._SYSTEMS["local"], channel._SYSTEMS["missing"]
    # A local function cannot be imported by a server process: it ran here.
    assert out["channel"]["systems"]["local"]["server"] == "in-process"
    assert out["channel"]["systems"]["local"]["stream"]["64"]["messages_per_s"] > 0
    assert out["connect"]["systems"]["missing"] == {"skipped": "not installed here"}
    assert calls == ["serve"]  # one server for both measurements


def test_server_in_a_separate_process() -> None:
    out = channel.run_suite({"connect"}, systems=["tcp"], in_process=False)["connect"]
    assert out["server"] == "subprocess"
    assert out["systems"]["tcp"]["ms"] > 0


def test_bad_kind() -> None:
    with pytest.raises(ConfigurationError):
        compare.run(["bogus"])
