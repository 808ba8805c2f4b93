"""Metrics and traces through the OpenTelemetry API (issue 17 section 3).

rolewire depends only on ``opentelemetry-api`` (extra ``otel``); the
application installs and configures the SDK if it wants the data. Without a
configured SDK every instrument is the API's no-op, and a server built
without ``telemetry=`` does no telemetry work at all.

Usage::

    from rolewire.telemetry import Telemetry
    telemetry = Telemetry()                     # the global providers
    server = await serve(service, config, telemetry=telemetry)

What is measured (names follow the OpenTelemetry semantic conventions where
one exists: ``rpc.*``, ``network.peer.*``, ``error.type``):

========================================  =========================  =================================
instrument                                kind                       attributes
========================================  =========================  =================================
``rolewire.handshakes``                   counter                    ``rolewire.side``, ``rolewire.outcome``
                                                                     (``complete``/``failed``),
                                                                     ``rolewire.reason`` (failed),
                                                                     ``rolewire.suite``, ``rolewire.role.kind``
``rolewire.handshake.duration``           histogram (s)              same
``rolewire.sessions.active``              observable up-down counter ``rolewire.side``
``rolewire.records``                      observable counter         ``rolewire.direction``
                                                                     (``sealed``/``opened``/``rejected``),
                                                                     ``rolewire.reason`` (rejected:
                                                                     ``replay``/``auth_failed``/``other``)
``rolewire.rekeys``                       observable counter
``rolewire.calls.refused``                observable counter         (forbidden or unknown operation)
``rolewire.notifications``                observable counter
``rpc.server.call.duration``              histogram (s)              ``rpc.system`` = ``rolewire``,
                                                                     ``rpc.service``, ``rpc.method``,
                                                                     ``rolewire.outcome`` (``ok``,
                                                                     ``forbidden``, ``unknown``,
                                                                     ``error``), ``error.type``
``rolewire.password.events``              counter                    ``rolewire.event``
                                                                     (``password_failure``,
                                                                     ``password_lockout``,
                                                                     ``password_refused``)
========================================  =========================  =================================

Hot path: records and notifications are not counted by a Python call per
record. The servers already aggregate the record layer's batch results
(one native ``seal_many``/``open_many`` per chunk) into
:class:`~rolewire.aio.ServerStats`; the observable instruments read those
counters when the SDK collects. Requests (not notifications) get one span
and one histogram point each. An unknown operation's name is attacker
controlled, so it is reported as ``rpc.method = "_OTHER"``.

Spans: ``rolewire.handshake`` (kind SERVER) per handshake and
``<service>/<operation>`` (kind SERVER) per request, the current span while
its handler runs.

Trace context across calls: :meth:`Telemetry.instrument` adds an outgoing
hook to a :class:`~rolewire.aio.Channel` that sends the caller's current
span context (W3C ``traceparent``) in the call metadata key
``rw-traceparent``; a server with telemetry makes it the parent of the
request's span, so a chain of services (a handler calling the next
service) is one trace. The value is trusted no more than the peer is: it
only links spans.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from rolewire.errors import ConfigurationError

if TYPE_CHECKING:
    from rolewire.aio.server import ServerStats

__all__ = ["TRACEPARENT_KEY", "Telemetry"]

#: The call metadata key carrying the W3C ``traceparent`` (docs/PROTOCOL.md,
#: "Call metadata").
TRACEPARENT_KEY = "rw-traceparent"

_ROLE_KINDS = {1: "key", 2: "password", 3: "certificate"}


def _kind_name(kind: object) -> str:
    name = getattr(kind, "name", None)
    if isinstance(name, str):
        return name.lower()
    return _ROLE_KINDS.get(int(kind), str(kind)) if isinstance(kind, int) else str(kind)


class _PasswordEvents(logging.Handler):
    """Turns the password limiter's structured log events into a counter
    (the limiter logs them anyway; no second code path in the handshake)."""

    EVENTS = frozenset({"password_failure", "password_lockout", "password_refused"})

    def __init__(self, counter: Any) -> None:
        super().__init__(logging.DEBUG)
        self._counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event in self.EVENTS:
            self._counter.add(1, {"rolewire.event": event})


class Telemetry:
    """The instruments of one application (share it between servers).

    Args:
        meter_provider: an OpenTelemetry ``MeterProvider`` (default: the
            global one).
        tracer_provider: a ``TracerProvider`` (default: the global one).
        call_spans: one span per request (default True).
    """

    def __init__(self, *, meter_provider: Any = None, tracer_provider: Any = None,
                 call_spans: bool = True) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "rolewire.telemetry needs opentelemetry-api: pip install 'rolewire[otel]'"
            ) from exc
        from rolewire import __version__

        self._trace = trace
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("rolewire", __version__)
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(
            "rolewire", __version__)
        self.call_spans = call_spans
        self._sources: list[weakref.ref[Any]] = []
        self.handshakes = meter.create_counter(
            "rolewire.handshakes", unit="{handshake}",
            description="Handshakes that ended, by outcome")
        self.handshake_duration = meter.create_histogram(
            "rolewire.handshake.duration", unit="s",
            description="Time from the first byte to the end of the handshake")
        self.call_duration = meter.create_histogram(
            "rpc.server.call.duration", unit="s", description="Requests served, by outcome")
        self.password_events = meter.create_counter(
            "rolewire.password.events", unit="{event}",
            description="Password failures, lockouts and refused runs")
        meter.create_observable_up_down_counter(
            "rolewire.sessions.active", callbacks=[self._observe_sessions],
            unit="{session}", description="Sessions open")
        meter.create_observable_counter(
            "rolewire.records", callbacks=[self._observe_records], unit="{record}",
            description="Records sealed, opened and rejected")
        meter.create_observable_counter(
            "rolewire.rekeys", callbacks=[self._observe("rekeys")], unit="{rekey}",
            description="Send-key ratchets")
        meter.create_observable_counter(
            "rolewire.calls.refused", callbacks=[self._observe("forbidden_calls")],
            unit="{call}", description="Calls refused (forbidden or unknown operation)")
        meter.create_observable_counter(
            "rolewire.notifications", callbacks=[self._observe("notifications")],
            unit="{call}", description="Notifications received")
        self._password_handler = _PasswordEvents(self.password_events)
        logging.getLogger("rolewire.password").addHandler(self._password_handler)

    def close(self) -> None:
        """Stop bridging the password events (the instruments stay)."""
        logging.getLogger("rolewire.password").removeHandler(self._password_handler)

    # -- sources -------------------------------------------------------------------
    def watch(self, stats: ServerStats) -> None:
        """Report ``stats`` (a server's counters) through the observable
        instruments; held weakly."""
        self._sources.append(weakref.ref(stats))

    def _stats(self) -> list[ServerStats]:
        live = [s for s in (ref() for ref in self._sources) if s is not None]
        if len(live) != len(self._sources):
            self._sources = [weakref.ref(s) for s in live]
        return live

    def _observation(self, value: int, attributes: dict[str, str] | None = None) -> Any:
        from opentelemetry.metrics import Observation

        return Observation(value, attributes or {})

    def _observe_sessions(self, options: Any) -> Iterator[Any]:
        yield self._observation(sum(s.sessions_open for s in self._stats()),
                                {"rolewire.side": "responder"})

    def _observe_records(self, options: Any) -> Iterable[Any]:
        stats = self._stats()

        def total(name: str) -> int:
            return sum(getattr(s, name) for s in stats)

        return [
            self._observation(total("records_sealed"), {"rolewire.direction": "sealed"}),
            self._observation(total("records_opened"), {"rolewire.direction": "opened"}),
            self._observation(total("replays_rejected"), {"rolewire.direction": "rejected",
                                                          "rolewire.reason": "replay"}),
            self._observation(total("auth_failures"), {"rolewire.direction": "rejected",
                                                       "rolewire.reason": "auth_failed"}),
            self._observation(total("other_bad_records"), {"rolewire.direction": "rejected",
                                                           "rolewire.reason": "other"}),
        ]

    def _observe(self, name: str) -> Any:
        def callback(options: Any) -> Iterable[Any]:
            return [self._observation(sum(getattr(s, name) for s in self._stats()))]
        return callback

    # -- handshakes ----------------------------------------------------------------
    def start_handshake(self, peer_host: str, peer_port: int | None) -> Any:
        """The span of one responder handshake (ended by :meth:`end_handshake`)."""
        attributes: dict[str, Any] = {"rolewire.side": "responder",
                                      "network.peer.address": peer_host}
        if peer_port is not None:
            attributes["network.peer.port"] = peer_port
        return self.tracer.start_span("rolewire.handshake",
                                      kind=self._trace.SpanKind.SERVER, attributes=attributes)

    def end_handshake(self, span: Any, duration: float, *, complete: bool,
                      reason: str = "", suite: str = "",
                      role_kinds: Iterable[object] = ()) -> None:
        """Count one handshake and end its span. Role *kinds* only: role
        names are not put into telemetry (their cardinality and meaning
        belong to the application)."""
        attributes: dict[str, Any] = {"rolewire.side": "responder",
                                      "rolewire.outcome": "complete" if complete else "failed"}
        if reason:
            attributes["rolewire.reason"] = reason
        if suite:
            attributes["rolewire.suite"] = suite
        kinds = sorted({_kind_name(k) for k in role_kinds})
        if kinds:
            attributes["rolewire.role.kind"] = ",".join(kinds)
        self.handshakes.add(1, attributes)
        self.handshake_duration.record(duration, attributes)
        if span is not None:
            span.set_attributes(attributes)
            if not complete:
                span.set_attribute("error.type", reason or "failed")
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, reason))
            span.end()

    # -- trace context -------------------------------------------------------------
    def instrument(self, channel: Any) -> Any:
        """Send the current span context with every call and notification
        of ``channel`` (metadata ``rw-traceparent``); returns the channel.
        The hook runs before any other (a signing hook then covers it)."""
        channel.outgoing_hooks.insert(0, self._propagate)
        return channel

    def _propagate(self, channel: Any, kind: Any, call_id: int, operation: str, body: bytes,
                   meta: Any) -> Any:
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        value = carrier.get("traceparent")
        if not value:
            return meta
        return {**meta, TRACEPARENT_KEY: value.encode("ascii")}

    def _parent(self, metadata: Any) -> Any:
        raw = metadata.get(TRACEPARENT_KEY) if metadata else None
        if not raw:
            return None
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        try:
            text = bytes(raw).decode("ascii")
        except UnicodeDecodeError:
            return None
        return TraceContextTextMapPropagator().extract({"traceparent": text})

    # -- calls ---------------------------------------------------------------------
    def start_call(self, service: str, operation: str, known: bool, peer: str,
                   metadata: Any = None) -> Any:
        """The span of one request (None with ``call_spans=False``); its
        parent is the caller's span if the call carried ``rw-traceparent``."""
        if not self.call_spans:
            return None
        method = operation if known else "_OTHER"
        return self.tracer.start_span(
            f"{service}/{method}", context=self._parent(metadata),
            kind=self._trace.SpanKind.SERVER,
            attributes={"rpc.system": "rolewire", "rpc.service": service,
                        "rpc.method": method, "network.peer.address": peer.rsplit(":", 1)[0]})

    def use_span(self, span: Any) -> Any:
        """Context manager making ``span`` current (for the handler)."""
        return self._trace.use_span(span, end_on_exit=False)

    def end_call(self, span: Any, service: str, operation: str, known: bool,
                 outcome: str, duration: float) -> None:
        """Record one request's outcome (``ok``, ``forbidden``, ``unknown``,
        ``error``) and end its span."""
        attributes = {"rpc.system": "rolewire", "rpc.service": service,
                      "rpc.method": operation if known else "_OTHER",
                      "rolewire.outcome": outcome}
        if outcome != "ok":
            attributes["error.type"] = outcome
        self.call_duration.record(duration, attributes)
        if span is not None:
            span.set_attribute("rolewire.outcome", outcome)
            if outcome != "ok":
                span.set_attribute("error.type", outcome)
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, outcome))
            span.end()
