"""A Prometheus collector of a server's counters (extra ``prometheus``).

Nothing is registered anywhere when this module is imported: the
application registers the collector on the registry it exposes (its own
``CollectorRegistry``, or ``prometheus_client.REGISTRY`` if it wants)::

    from prometheus_client import CollectorRegistry, start_http_server
    from rolewire.prometheus import ServerCollector

    registry = CollectorRegistry()
    registry.register(ServerCollector(server))
    start_http_server(9464, registry=registry)

The values are read from :class:`~rolewire.aio.ServerStats` at scrape time
(no work per record or per call). For metrics and spans per handshake and
per request use :mod:`rolewire.telemetry` (OpenTelemetry) instead; the
OpenTelemetry SDK's own Prometheus exporter serves those.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["ServerCollector"]

# (ServerStats field, metric name, help, kind) - counters get "_total".
_METRICS = (
    ("connections_open", "rolewire_connections_open", "TCP connections admitted and open",
     "gauge"),
    ("connections_total", "rolewire_connections", "TCP connections admitted", "counter"),
    ("sessions_open", "rolewire_sessions_open", "Sessions open", "gauge"),
    ("sessions_total", "rolewire_sessions", "Completed handshakes", "counter"),
    ("handshakes_failed", "rolewire_handshakes_failed", "Handshakes without a session",
     "counter"),
    ("handshake_timeouts", "rolewire_handshake_timeouts", "Handshakes that timed out",
     "counter"),
    ("busy_rejects", "rolewire_busy_rejects", "BUSY refusals", "counter"),
    ("evictions", "rolewire_evictions", "Unauthenticated connections evicted", "counter"),
    ("rate_limited", "rolewire_rate_limited", "Handshakes refused by the per-peer rate",
     "counter"),
    ("protocol_errors", "rolewire_protocol_errors", "Connections closed for garbage",
     "counter"),
    ("records_sealed", "rolewire_records_sealed", "Records sealed", "counter"),
    ("records_opened", "rolewire_records_opened", "Records opened", "counter"),
    ("replays_rejected", "rolewire_replays_rejected", "Replayed records dropped", "counter"),
    ("auth_failures", "rolewire_auth_failures", "Records failing authentication", "counter"),
    ("requests", "rolewire_requests", "Requests received", "counter"),
    ("notifications", "rolewire_notifications", "Notifications received", "counter"),
    ("forbidden_calls", "rolewire_refused_calls", "Calls refused (forbidden or unknown)",
     "counter"),
    ("refusal_closes", "rolewire_refusal_closes", "Connections closed for refused calls",
     "counter"),
    ("rekeys", "rolewire_rekeys", "Send-key ratchets", "counter"),
)


class ServerCollector:
    """A ``prometheus_client`` custom collector of one server's
    :class:`~rolewire.aio.ServerStats` (pass the server or its stats)."""

    def __init__(self, server: Any, *, prefix_labels: dict[str, str] | None = None) -> None:
        self._stats = getattr(server, "stats", server)
        self._labels = dict(prefix_labels or {})

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        names = sorted(self._labels)
        values = [self._labels[n] for n in names]
        for field, name, help_text, kind in _METRICS:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, help_text, labels=names)
            family.add_metric(values, getattr(self._stats, field, 0))
            yield family

    def describe(self) -> Iterator[Any]:
        return self.collect()
