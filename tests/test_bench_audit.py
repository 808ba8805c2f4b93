"""``rolewire bench audit`` (issue 18) as a smoke test: tiny counts, the JSON
keys the issue names, no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys

from rolewire.benchmarks import audit


def test_audit_benchmark_keys(monkeypatch):
    monkeypatch.setenv("ROLEWIRE_BENCH_TINY", "1")
    result = audit.run(quick=True)
    assert set(result["ratios"]) >= {"nonrep_vs_jwt", "enduser_overhead"}
    assert all(v is not None and v > 0 for v in result["ratios"].values())
    assert set(result["results"]) >= {
        "jwt_eddsa_stored", "jwt_es256_stored", "rolewire_unsigned", "rolewire_signed_ecdsa-p256",
        "rolewire_signed_ed25519", "rolewire_signed_ed25519-mldsa65", "call_plain",
        "call_end_user"}
    assert result["end_user_token_verifications"] == 1  # the cache served every other call
    summary = {"audit": result}
    audit.merge_into(summary)
    assert set(summary["targets"]) == {"nonrep_vs_jwt", "enduser_overhead"}


def test_cli_bench_audit_json(tmp_path):
    out = tmp_path / "audit.json"
    env = {"ROLEWIRE_BENCH_TINY": "1", "PATH": "/usr/bin:/bin"}
    import os
    env.update({k: v for k, v in os.environ.items() if k not in env})
    proc = subprocess.run([sys.executable, "-m", "rolewire.cli", "bench", "audit", "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "audit"
    assert {"nonrep_vs_jwt", "enduser_overhead"} <= set(data["ratios"])
