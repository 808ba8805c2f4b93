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
    assert set(report["ratios"]) == {"stream64_vs_tls", "stream16k_vs_tls", "auth_vs_jwt",
                                     "connect_vs_mtls", "stream64_notify_vs_tls"}
    # The four targets; the notify-mode ratio is reported without one.
    assert report["targets"] == {"stream64_vs_tls": 2.0, "stream16k_vs_tls": 1.5,
                                 "auth_vs_jwt": 100.0, "connect_vs_mtls": 1.0}
    assert set(report["targets_met"]) == set(report["targets"])
    results = report["results"]
    assert set(results) == {"channel", "auth", "connect"}
    systems = results["channel"]["systems"]
    assert {"tcp", "mtls", "jwt", "rolewire", "rolewire-aegis"} <= set(systems)
    for name in ("tcp", "mtls", "jwt"):
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
    else:
        assert all(v is not None and v > 0 for v in report["ratios"].values())
    json.dumps(report)  # JSON-ready


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
