"""``rolewire bench http --json PATH`` (tiny run: the keys and shape the
issue names, not the figures — no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_http_json(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    env = dict(os.environ, ROLEWIRE_BENCH_TINY="1")
    result = subprocess.run([sys.executable, "-m", "rolewire.cli", "bench", "http", "--json",
                             str(out)], capture_output=True, text=True, timeout=600, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "http"
    assert set(data["systems"]) == {"plain", "mtls", "jwt", "rolewire"}
    for entry in data["systems"].values():
        for size in ("64", "16384"):
            calls = entry["calls"][size]
            assert calls["calls_per_s"] > 0 and 0 < calls["p50_ms"] <= calls["p99_ms"]
        assert entry["connect"]["ms"] > 0
    for key in ("http_calls_vs_mtls", "http_connect_vs_mtls", "http_calls_vs_jwt"):
        assert data["ratios"][key] > 0 and key in data["targets"]
