"""``rolewire demo webshop --nats``: the paper's scene over a real
nats-server (started by the demo), payment as a queue group of two, a
wiretap on every subject."""

from __future__ import annotations

import json

from rolewire.cli import main
from rolewire.demo import webshop
from rolewire.nats import NatsServer


def test_webshop_over_nats_on_a_given_broker(nats_server: NatsServer):
    report = webshop.run(transport="nats", nats_url=nats_server.url)
    assert report.purchase == "ok", report.purchase_detail
    assert report.ok
    assert len(report.breach) == 5
    assert all(entry["result"] == "denied" for entry in report.breach)
    assert report.wiretap is not None
    assert report.wiretap["packets"] > 20
    assert report.wiretap["plaintext_seen"] is False


def test_webshop_nats_command_starts_its_own_broker(nats_server: NatsServer, capsys):
    # (the fixture only proves nats-server is installed; the demo starts its own)
    assert main(["demo", "webshop", "--nats", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["purchase"] == "ok"
    assert [b["result"] for b in out["breach"]] == ["denied"] * 5
    assert out["wiretap"]["plaintext_seen"] is False
