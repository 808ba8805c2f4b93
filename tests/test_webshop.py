"""The paper's web shop (section 6) as an integration test: real services on
127.0.0.1, one purchase end to end, then a breached suggestion service that
must not reach payment, shipping or warehouse."""

from __future__ import annotations

import json
import subprocess
import sys

from rolewire.demo import webshop


def test_purchase_succeeds_and_every_escalation_is_denied():
    report = webshop.run()
    assert report.purchase == "ok", report.purchase_detail
    # every hop of the purchase happened, with the role the paper assigns
    hops = {(c.caller, c.callee, c.operation) for c in report.calls if c.result == "ok"}
    assert {("customer", "user-api", "purchase"), ("user-api", "suggestion", "suggest"),
            ("suggestion", "user-api", "profile"), ("user-api", "payment", "charge"),
            ("payment", "shipping", "ship"), ("shipping", "user-api", "profile"),
            ("shipping", "warehouse", "pick")} <= hops
    targets = {b["to"]: b for b in report.breach}
    assert set(targets) == {"payment", "shipping", "warehouse", "user-api"}
    assert all(b["result"] == "denied" for b in report.breach)
    # payment and warehouse share no role with suggestion: the handshake
    # refuses; shipping shares user-info but `ship` needs approval: Forbidden
    assert "handshake" in targets["payment"]["detail"]
    assert "handshake" in targets["warehouse"]["detail"]
    assert targets["shipping"]["detail"].startswith("Forbidden")
    # ... and the reply names no role (issue 11 section 3: it used to print
    # "operation 'ship' requires approval")
    role_names = ("user-info", "payment", "approval", "shipping")
    assert not any(name in targets["shipping"]["detail"] for name in role_names)
    assert report.ok
    # issue 18: the customer's identity reached the warehouse through every hop
    receipt = json.loads(report.purchase_detail)["receipt"]
    assert receipt["shipment"]["parcel"].startswith("parcel-teapot")
    assert receipt["shipment"]["for"] == "alice"
    assert receipt["shipment"]["via"] == ["shipping", "payment", "user-api"]
    # ... and a forged or replayed customer context is refused by the user API
    contexts = [b for b in report.breach if b["to"] == "user-api"]
    assert [b["result"] for b in contexts] == ["denied", "denied"]
    assert "forged" in contexts[0]["detail"] and "signature" in contexts[0]["detail"]
    assert "captured" in contexts[1]["detail"] and "audience" in contexts[1]["detail"]
    text = webshop.render(report)
    assert "OK: the purchase succeeded" in text


def test_cli_demo_webshop_json():
    result = subprocess.run([sys.executable, "-m", "rolewire.cli", "demo", "webshop", "--json"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["purchase"] == "ok"
    assert [b["result"] for b in data["breach"]] == ["denied"] * 5
    assert {b["from"] for b in data["breach"]} == {"suggestion"}
