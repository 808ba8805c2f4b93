"""The rolewire command, run as a user would (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rolewire.aio.workers import reuse_port_available
from rolewire.benchmarks import workers as workers_bench


def rolewire(*args, env_extra=None):
    env = dict(os.environ, ROLEWIRE_BENCH_TINY="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "rolewire.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)


def test_help():
    result = rolewire("--help")
    assert result.returncode == 0 and "bench" in result.stdout
    for sub in ("bench", "demo"):
        assert rolewire(sub, "--help").returncode == 0


def test_bad_arguments_exit_2():
    assert rolewire("no-such-command").returncode == 2
    assert rolewire("bench", "nonsense").returncode == 2


def test_bench_record_json(tmp_path):
    out = tmp_path / "out.json"
    result = rolewire("bench", "record", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    for name in ("record_batch64_vs_raw", "record_single64_vs_cryptography",
                 "aegis_batch64_vs_chacha_batch64", "aegis_raw64_vs_chacha_raw64"):
        assert report["ratios"][name] > 0
    impls = report["results"]["CHACHA20-POLY1305"]
    assert set(impls) == {"raw_c", "single", "batch", "pure", "cryptography"}


def test_bench_unwritable_json_path(tmp_path):
    result = rolewire("bench", "record", "--json", str(tmp_path / "missing" / "x.json"))
    assert result.returncode == 3 and "error" in result.stderr


def test_demo_record(tmp_path):
    result = rolewire("demo", "record", "--json-path", str(tmp_path / "r.json"),
                      )
    assert result.returncode == 0, result.stderr
    assert "ReplayDetected" in result.stdout


def test_demo_rejects_unknown_scene():
    assert rolewire("demo", "nope").returncode == 2


@pytest.mark.skipif(not reuse_port_available(), reason="worker processes need SO_REUSEPORT")
def test_bench_all_json_has_every_section_and_every_ratio_at_the_top(tmp_path):
    """bench all (tiny): one JSON with each benchmark's section, and at its
    top every ratio that has a target, with that target and whether it is
    met, as the section reported it (what closing notes and the README
    quote)."""
    out = tmp_path / "all.json"
    result = rolewire("bench", "all", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert {"http", "record", "handshake", "workers", "audit", "nats", "compare"} <= set(report)
    for name in ("http", "record", "nats", "compare", "audit"):
        section = report[name]
        for key, target in section["targets"].items():
            assert report["targets"][key] == target, key
            assert report["ratios"][key] == section["ratios"][key], key
            assert report["targets_met"][key] == section["targets_met"][key], key
    for key in ("handshake_key_vs_mtls", "handshake_cert_nocache_vs_mtls",
                "handshake_password_vs_mtls"):
        assert report["ratios"][key] == report["handshake"]["ratios"][key]
        assert key in report["targets_met"]
    assert report["ratios"]["workers2_vs_workers1"] == report["workers"]["workers2_vs_workers1"]
    assert set(report["targets_met"]) == set(report["targets"])
    assert {"enduser_overhead", "memory_per_conn_vs_tls"} <= set(report["lower_is_better"])
    # The printed summary (the last line naming each ratio) says what the
    # JSON says: the direction of the target and met or missed.
    printed = {}
    for line in result.stdout.splitlines():
        name, sep, _ = line.partition(" = ")
        if sep and name in report["targets"]:
            printed[name] = line
    assert set(printed) == {k for k, v in report["ratios"].items()
                            if k in report["targets"] and v is not None}
    for name, line in printed.items():
        sign = "<=" if name in report["lower_is_better"] else ">="
        verdict = "met" if report["targets_met"][name] else "MISSED"
        assert f"(target {sign} " in line and line.endswith(f": {verdict})"), line


@pytest.mark.skipif(not reuse_port_available(), reason="worker processes need SO_REUSEPORT")
def test_bench_workers_json(tmp_path):
    out = tmp_path / "workers.json"
    result = rolewire("bench", "workers", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["handshakes_per_s_workers1"] > 0
    assert report["handshakes_per_s_workers2"] > 0
    assert report["workers2_vs_workers1"] == report["ratios"]["workers2_vs_workers1"] > 0
    assert len(report["runs"]["workers1"]) == len(report["runs"]["workers2"]) == report["rounds"]
    # What bench all takes from it (no target: the clients share the cores).
    summary: dict = {"workers": report, "ratios": {}, "targets": {}}
    workers_bench.merge_into(summary)
    assert summary["workers1_handshakes_per_s"] == report["handshakes_per_s_workers1"]
    assert summary["workers2_handshakes_per_s"] == report["handshakes_per_s_workers2"]
    assert summary["ratios"]["workers2_vs_workers1"] == report["workers2_vs_workers1"]
    assert summary["ratio_ranges"]["workers2_vs_workers1"] == (
        report["ratio_ranges"]["workers2_vs_workers1"])
    assert summary["targets"] == {}
