"""``rolewire demo webshop --http``: the paper's web shop as ASGI apps on
uvicorn behind the HTTP binding — one purchase end to end, then a breached
suggestion service that must not reach payment, shipping or warehouse."""

from __future__ import annotations

import json
import subprocess
import sys

from rolewire.demo import webshop, webshop_http


def test_purchase_succeeds_and_every_escalation_is_denied_over_http() -> None:
    report = webshop_http.run()
    assert report.purchase == "ok", report.purchase_detail
    hops = {(c.caller, c.callee, c.operation) for c in report.calls if c.result == "ok"}
    assert {("customer", "user-api", "purchase"), ("user-api", "suggestion", "suggest"),
            ("suggestion", "user-api", "profile"), ("user-api", "payment", "charge"),
            ("payment", "shipping", "ship"), ("shipping", "user-api", "profile"),
            ("shipping", "warehouse", "pick")} <= hops
    targets = {b["to"]: b for b in report.breach}
    assert set(targets) == {"payment", "shipping", "warehouse"}
    assert all(b["result"] == "denied" for b in report.breach)
    assert "handshake" in targets["payment"]["detail"]
    assert "handshake" in targets["warehouse"]["detail"]
    assert targets["shipping"]["detail"].startswith("Forbidden")
    role_names = ("user-info", "payment", "approval", "shipping")
    assert not any(name in targets["shipping"]["detail"] for name in role_names)
    assert report.ok
    assert "OK: the purchase succeeded" in webshop.render(report)


def test_cli_demo_webshop_http_json_same_shape() -> None:
    result = subprocess.run([sys.executable, "-m", "rolewire.cli", "demo", "webshop", "--http",
                             "--json"], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"purchase", "breach"} and data["purchase"] == "ok"
    assert [b["result"] for b in data["breach"]] == ["denied"] * 3
    assert all(set(b) == {"from", "to", "operation", "result", "detail"} for b in data["breach"])
