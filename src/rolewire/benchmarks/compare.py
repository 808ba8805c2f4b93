"""``rolewire bench channel|auth|connect``: rolewire against the baselines,
assembled into one report (JSON), a table and an optional chart.

:func:`run` returns::

    {"benchmark": "compare", "which": [...], "quick": bool,
     "machine": {...},
     "results": {"channel": {...}, "auth": {...}, "connect": {...}},
     "ratios": {"stream64_vs_tls", "stream16k_vs_tls", "auth_vs_jwt",
                "connect_vs_mtls"},
     "targets": {...}, "targets_met": {...}, "notes": [...]}

Ratios (> 1 means rolewire is better; ``None`` when not measured in this run
or rolewire was unavailable):

- ``stream64_vs_tls``: rolewire (default suite, ChaCha20-Poly1305) one-way
  messages/s ÷ TLS 1.3 (the mTLS connection; once connected mTLS is plain
  TLS) at 64 B, both sent with ``send_many`` (one write per 256 messages);
- ``stream16k_vs_tls``: the same at 16 KiB with rolewire's AEGIS-256 suite;
- ``stream64_notify_vs_tls`` (no target): 64 B sent with one ``await
  notify()`` per message on both sides;
- ``auth_vs_jwt``: PyJWT EdDSA sign+verify time ÷ rolewire seal+open time
  per 64-byte message;
- ``connect_vs_mtls``: mTLS connect-to-first-reply time ÷ rolewire's.
"""

from __future__ import annotations

import os
import platform
import ssl
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from rolewire.errors import ConfigurationError

__all__ = [
    "HANDSHAKE_TARGETS",
    "KINDS",
    "LOWER_IS_BETTER",
    "TARGETS",
    "merge_ratios",
    "plot",
    "print_report",
    "ratio_ranges",
    "ratios",
    "render_table",
    "round_ratios",
    "run",
]

KINDS = ("channel", "auth", "connect", "fleet")
#: What the project aims for (ratios, higher is better, except
#: ``memory_per_conn_vs_tls``: lower is better, see LOWER_IS_BETTER).
TARGETS = {
    "stream64_vs_tls": 2.0,
    "stream16k_vs_tls": 1.5,
    "auth_vs_jwt": 100.0,
    "connect_vs_mtls": 1.0,
    # Against the honest baselines (issue 13): the minimal TLS echo and gRPC.
    "stream64_batch_vs_tls_min": 1.0,
    "stream64_notify_vs_tls_min": 2.5,
    "calls_seq_vs_tls_min": 1.2,
    "calls16_vs_tls_min": 1.5,
    "calls16_vs_grpc_mtls": 10.0,
    "stream64_vs_grpc_mtls": 30.0,
    "stream16k_vs_tls_min": 1.5,
    "aggregate500_vs_tls": 1.5,
    "memory_per_conn_vs_tls": 0.1,
}
#: Handshake ratios (from ``rolewire bench handshake``; merged into the
#: ``bench all`` report by :func:`merge_ratios`).
HANDSHAKE_TARGETS = {
    "handshake_key_vs_mtls": 2.5,
    "handshake_cert_nocache_vs_mtls": 1.5,
    "handshake_password_vs_mtls": 1.0,
}
LOWER_IS_BETTER = frozenset({"memory_per_conn_vs_tls"})
Progress = Callable[[str], None]


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "openssl_ssl_module": ssl.OPENSSL_VERSION,
    }
    try:
        import cryptography

        info["cryptography"] = cryptography.__version__
    except ImportError:  # pragma: no cover - a hard dependency
        pass
    try:
        import jwt

        info["pyjwt"] = jwt.__version__
    except ImportError:
        info["pyjwt"] = None
    return info


def _get(tree: dict[str, Any], *path: str) -> float | None:
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """The four headline ratios from a ``results`` dict (None where a figure
    is missing)."""
    channel = results.get("channel", {}).get("systems", {})

    def stream(system: str, size: str, kind: str = "stream") -> float | None:
        return _get(channel, system, kind, size, "messages_per_s")

    connect = results.get("connect", {}).get("systems", {})
    fleet = results.get("fleet", {}).get("systems", {})
    return {
        "stream64_vs_tls": _div(stream("rolewire", "64"), stream("mtls", "64")),
        "stream16k_vs_tls": _div(stream("rolewire", "16384"), stream("mtls", "16384")),
        "stream64_notify_vs_tls": _div(stream("rolewire", "64", "stream_notify"),
                                       stream("mtls", "64", "stream_notify")),
        "auth_vs_jwt": _get(results, "auth", "ratios", "auth_vs_jwt"),
        "connect_vs_mtls": _div(_get(connect, "mtls", "ms"), _get(connect, "rolewire", "ms")),
        **{name: _median_or_none(values) for name, values in round_ratios(results).items()},
        "memory_per_conn_vs_tls": _div(
            _get(fleet, "rolewire", "server_memory_per_conn_bytes"),
            _get(fleet, "tls-min", "server_memory_per_conn_bytes")),
    }


def _median_or_none(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _runs(tree: dict[str, Any], *path: str) -> list[float] | None:
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return [float(v) for v in node] if isinstance(node, list) and node else None


def round_ratios(results: dict[str, Any]) -> dict[str, list[float] | None]:
    """The issue-13 throughput ratios per interleaved round (rolewire's
    figure of a round ÷ the baseline's of the same round): their median is
    the reported ratio, their min and max its range."""
    channel = results.get("channel", {}).get("systems", {})
    fleet = results.get("fleet", {}).get("systems", {})

    def per_round(ours: list[float] | None, theirs: list[float] | None) -> list[float] | None:
        if not ours or not theirs:
            return None
        return [a / b for a, b in zip(ours, theirs) if b]

    def ch(system: str, kind: str, size: str = "64") -> list[float] | None:
        return _runs(channel, system, kind, size, "runs")

    grpc_stream = [max(a, b) for a, b in zip(ch("grpc-mtls", "stream") or [],
                                              ch("grpc-mtls", "stream_notify") or [])]
    return {
        "stream64_batch_vs_tls_min": per_round(ch("rolewire", "stream"), ch("tls-min", "stream")),
        "stream64_notify_vs_tls_min": per_round(ch("rolewire", "stream_notify"),
                                                ch("tls-min", "stream_notify")),
        "calls_seq_vs_tls_min": per_round(ch("rolewire", "calls"), ch("tls-min", "calls")),
        "calls16_vs_tls_min": per_round(ch("rolewire", "pipelined"),
                                        ch("tls-min", "pipelined")),
        "calls16_vs_grpc_mtls": per_round(ch("rolewire", "pipelined"),
                                          ch("grpc-mtls", "pipelined")),
        # The fastest gRPC streaming style of each round (iterator or write()).
        "stream64_vs_grpc_mtls": per_round(ch("rolewire", "stream"), grpc_stream or None),
        "stream16k_vs_tls_min": per_round(ch("rolewire", "stream", "16384"),
                                          ch("tls-min", "stream", "16384")),
        "aggregate500_vs_tls": per_round(_runs(fleet, "rolewire", "runs"),
                                         _runs(fleet, "tls-min", "runs")),
    }


def ratio_ranges(results: dict[str, Any]) -> dict[str, list[float] | None]:
    """``[min, max]`` of each per-round ratio (see :func:`round_ratios`)."""
    return {name: [min(values), max(values)] if values else None
            for name, values in round_ratios(results).items()}


def merge_ratios(report: dict[str, Any]) -> dict[str, Any]:
    """The ``bench all`` summary: every ratio of the comparison and the
    handshake benchmarks by the issue's names, with targets and whether
    each is met (``memory_per_conn_vs_tls``: met when at or below)."""
    compare = report.get("compare", {})
    handshake = report.get("handshake", {})
    measured: dict[str, float | None] = dict(compare.get("ratios", {}))
    for name in HANDSHAKE_TARGETS:
        measured[name] = handshake.get("ratios", {}).get(name)
    targets = {**TARGETS, **HANDSHAKE_TARGETS}
    ranges = dict(compare.get("ratio_ranges", {}))
    ranges.update(handshake.get("ratio_ranges", {}))
    return {"ratios": measured, "ratio_ranges": ranges, "targets": targets,
            "targets_met": _met(measured, targets)}


def _met(measured: dict[str, float | None], targets: dict[str, float]
         ) -> dict[str, bool | None]:
    return {name: (None if value is None else
                   value <= targets[name] if name in LOWER_IS_BETTER else
                   value >= targets[name])
            for name, value in measured.items() if name in targets}


def run(which: Sequence[str] = KINDS, quick: bool = False,
        progress: Progress | None = None) -> dict[str, Any]:
    """Run the chosen benchmarks (``"channel"``, ``"auth"``, ``"connect"`` or
    ``"all"``) and assemble the report. ``ROLEWIRE_BENCH_TINY=1`` shrinks
    everything to a smoke test."""
    kinds = list(KINDS) if "all" in which else [k for k in KINDS if k in which]
    unknown = set(which) - set(KINDS) - {"all"}
    if unknown or not kinds:
        raise ConfigurationError(f"bench kinds are {', '.join(KINDS)} or all")
    results: dict[str, Any] = {}
    socket_kinds = {k for k in kinds if k in ("channel", "connect", "fleet")}
    if socket_kinds:
        from rolewire.benchmarks import channel

        results.update(channel.run_suite(socket_kinds, quick, progress))
    if "auth" in kinds:
        from rolewire.benchmarks import auth

        results["auth"] = auth.run(quick, progress)
    notes = []
    for kind in ("channel", "connect", "fleet"):
        for name, entry in results.get(kind, {}).get("systems", {}).items():
            if "skipped" in entry:
                notes.append(f"{kind}: {name} skipped: {entry['skipped']}")
    notes += results.get("auth", {}).get("notes", [])
    measured = ratios(results)
    return {
        "benchmark": "compare",
        "which": kinds,
        "quick": quick,
        "tiny": bool(os.environ.get("ROLEWIRE_BENCH_TINY")),
        "machine": _machine(),
        "results": results,
        "ratios": measured,
        "ratio_ranges": ratio_ranges(results),
        "targets": dict(TARGETS),
        "targets_met": _met(measured, TARGETS),
        "notes": notes,
    }


# --- presentation -----------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render_table(result: dict[str, Any]) -> Any:
    """A :class:`rich.table.Table` of every figure in ``result``."""
    from rich.table import Table

    results = result.get("results", {})
    channel = results.get("channel", {})
    sizes = [str(s) for s in channel.get("sizes", (64, 1024, 16384))]
    table = Table(title="rolewire bench - rolewire vs mTLS vs JWT (medians)")
    table.add_column("system")
    table.add_column("measure")
    for size in sizes:
        table.add_column(f"{int(size):,} B" if int(size) < 1024 else f"{int(size) // 1024} KiB",
                         justify="right")
    for name, entry in channel.get("systems", {}).items():
        if "skipped" in entry:
            table.add_row(name, f"skipped: {entry['skipped']}", *[""] * len(sizes))
            continue
        stream, calls = entry.get("stream", {}), entry.get("calls", {})
        table.add_row(name, "stream msg/s",
                      *(_fmt(_get(stream, s, "messages_per_s")) for s in sizes))
        table.add_row("", "stream MB/s", *(_fmt(_get(stream, s, "mb_per_s"), 1) for s in sizes))
        notify = entry.get("stream_notify", {})
        if notify:
            table.add_row("", "stream msg/s, notify() each",
                          *(_fmt(_get(notify, s, "messages_per_s")) for s in sizes))
        table.add_row("", "calls/s (sequential)",
                      *(_fmt(_get(calls, s, "calls_per_s")) for s in sizes))
        pipelined = entry.get("pipelined", {}).get("64", {})
        table.add_row("", f"calls/s ({pipelined.get('outstanding', 16)} outstanding)",
                      _fmt(pipelined.get("calls_per_s")), *[""] * (len(sizes) - 1))
    if channel:
        table.add_section()
    for name, entry in results.get("auth", {}).get("results", {}).items():
        table.add_row(name, "auth µs/msg (64 B)", _fmt(entry["us_per_message"], 2),
                      *[""] * (len(sizes) - 1))
    if "auth" in results:
        table.add_section()
    fleet = results.get("fleet", {})
    for name, entry in fleet.get("systems", {}).items():
        if "skipped" in entry:
            continue
        per_conn = entry.get("server_memory_per_conn_bytes")
        table.add_row(name, f"{entry.get('connections')} connections: calls/s, total",
                      _fmt(entry.get("calls_per_s")), *[""] * (len(sizes) - 1))
        table.add_row("", "server memory per connection, KiB",
                      _fmt(per_conn / 1024 if per_conn is not None else None, 1),
                      *[""] * (len(sizes) - 1))
    if fleet:
        table.add_section()
    for name, entry in results.get("connect", {}).get("systems", {}).items():
        if "skipped" in entry:
            table.add_row(name, f"connect skipped: {entry['skipped']}", *[""] * len(sizes))
        else:
            table.add_row(name, "connect + first call, ms", _fmt(entry["ms"], 2),
                          *[""] * (len(sizes) - 1))
    return table


def print_report(result: dict[str, Any], console: Any = None, *, table: bool = True) -> None:
    """Print the table (unless ``table`` is false), the ratios against their
    targets with their per-round ranges, and the notes. A ratio is better
    lower when it is in ``LOWER_IS_BETTER`` or the report's
    ``lower_is_better`` (``bench all``'s summary, which holds other
    benchmarks' ratios); whether it is met is the report's ``targets_met``
    where it has one (what the JSON says), else compared here."""
    from rich.console import Console

    out = console or Console()
    if table:
        out.print(render_table(result))
    lower_names = LOWER_IS_BETTER | frozenset(result.get("lower_is_better", ()))
    reported = result.get("targets_met", {})
    for name, value in result.get("ratios", {}).items():
        if value is None:
            continue
        goal = result.get("targets", {}).get(name)
        lower = name in lower_names
        met = reported.get(name)
        if met is None:
            met = goal is not None and (value <= goal if lower else value >= goal)
        verdict = "" if goal is None else (
            f" (target {'<=' if lower else '>='} {goal:.2f}: {'met' if met else 'MISSED'})")
        span = (result.get("ratio_ranges") or {}).get(name)
        extent = f" [{span[0]:.2f}-{span[1]:.2f}]" if span else ""
        out.print(f"{name} = {value:.2f}{extent}{verdict}")
    for note in result.get("notes", []):
        out.print(f"note: {note}")


def plot(result: dict[str, Any], png_path: str | os.PathLike[str],
         extra_panels: Sequence[Callable[[Any], None]] = ()) -> None:
    """Write a chart of ``result`` to ``png_path`` (needs matplotlib: the
    ``plot`` extra). Each of ``extra_panels`` draws one more panel on the
    axes it is given (``bench all``: the HTTP benchmark's)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError(
            "plotting needs matplotlib: pip install 'rolewire[plot]'") from None
    results = result.get("results", {})
    channel = {name: entry for name, entry in
               results.get("channel", {}).get("systems", {}).items() if "skipped" not in entry}
    panels = [p for p in ("stream", "calls", "auth", "connect")
              if (p in ("stream", "calls") and channel) or p in results]
    if not panels and not extra_panels:
        raise ConfigurationError("nothing to plot: the result holds no figures")
    count = len(panels) + len(extra_panels)
    fig, axes = plt.subplots(1, count, figsize=(5 * count, 4), squeeze=False)
    for ax, draw in zip(axes[0][len(panels):], extra_panels):
        draw(ax)
    for ax, panel in zip(axes[0], panels):
        if panel in ("stream", "calls"):
            sizes = [str(s) for s in results["channel"].get("sizes", (64, 1024, 16384))]
            width = 0.8 / max(len(channel), 1)
            key = "messages_per_s" if panel == "stream" else "calls_per_s"
            for i, (name, entry) in enumerate(channel.items()):
                values = [_get(entry, panel, s, key) or 0.0 for s in sizes]
                ax.bar([x + i * width for x in range(len(sizes))], values, width, label=name)
            ax.set_xticks([x + width * (len(channel) - 1) / 2 for x in range(len(sizes))])
            ax.set_xticklabels([f"{int(s)} B" for s in sizes])
            ax.set_yscale("log")
            ax.set_title("one-way messages/s" if panel == "stream" else "sequential calls/s")
            ax.legend(fontsize="small")
        elif panel == "auth":
            items = results["auth"]["results"]
            ax.barh(list(items), [v["us_per_message"] for v in items.values()])
            ax.set_xscale("log")
            ax.set_title("per-message authentication, µs (64 B)")
            ax.tick_params(axis="y", labelsize="small")
        else:
            items = {n: e for n, e in results["connect"]["systems"].items() if "ms" in e}
            ax.bar(list(items), [e["ms"] for e in items.values()])
            ax.set_title("connect + first call, ms")
            ax.tick_params(axis="x", labelrotation=25, labelsize="small")
    fig.tight_layout()
    fig.savefig(os.fspath(png_path), dpi=120)
    plt.close(fig)
