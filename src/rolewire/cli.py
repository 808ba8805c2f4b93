"""The ``rolewire`` command.

Exit codes: 0 success; 1 the command ran but its outcome was negative (a
demo check failed); 2 bad usage (argparse); 3 a rolewire error (bad input,
missing file, failed handshake...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rolewire import __version__
from rolewire.errors import RolewireError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _progress_runner(title: str, job: Any, **kwargs: Any) -> Any:
    """Run ``job(progress=callback, **kwargs)`` under a rich status line."""
    console = _console()
    with console.status(title) as status:
        return job(progress=lambda msg: status.update(f"{title}: {msg}"), **kwargs)


def _print_record_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rolewire bench record - seal+open, messages/s (median)")
    table.add_column("suite")
    table.add_column("implementation")
    sizes = sorted({int(s) for impls in report["results"].values() for r in impls.values()
                    for s in r})
    for size in sizes:
        table.add_column(f"{size} B", justify="right")
    for suite, impls in report["results"].items():
        for impl, rates in impls.items():
            table.add_row(suite, impl, *(f"{rates.get(str(s), 0):,.0f}" for s in sizes))
    console = Console()
    console.print(table)
    for name, value in report["ratios"].items():
        goal = report["targets"].get(name)
        verdict = "" if goal is None else (" (target >= %.2f: %s)" % (
            goal, "met" if value >= goal else "MISSED"))
        console.print(f"{name} = {value:.2f}{verdict}")


def cmd_bench(args: argparse.Namespace) -> int:
    from rolewire.benchmarks import record

    kinds = ["record"] if args.kind in ("record", "all") else []
    if not kinds:
        print(f"rolewire: bench {args.kind} is not available yet", file=sys.stderr)
        return EXIT_ERROR
    report: dict[str, Any] = {}
    if "record" in kinds:
        report["record"] = _progress_runner("bench record", record.run, quick=args.quick)
        _print_record_table(report["record"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report if len(report) > 1 else report["record"], handle, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Until the service demo exists: a record-layer round trip per suite and
    the quick record benchmark."""
    from rolewire.record import RecordLayer, Suite

    for suite in Suite:
        key_a, key_b = os.urandom(32), os.urandom(32)
        iv_a, iv_b = os.urandom(suite.iv_size), os.urandom(suite.iv_size)
        alice = RecordLayer(suite, send_key=key_a, send_iv=iv_a, recv_key=key_b, recv_iv=iv_b)
        bob = RecordLayer(suite, send_key=key_b, send_iv=iv_b, recv_key=key_a, recv_iv=iv_a)
        record = alice.seal(b"hello from alice")
        print(f"{suite.wire_name}: sealed {len(record)} bytes, bob opened "
              f"{bob.open(record)!r}; replay -> ", end="")
        try:
            bob.open(record)
            print("ACCEPTED (bug)")
            return EXIT_FAILED
        except RolewireError as exc:
            print(f"{type(exc).__name__}")
    args.kind, args.quick, args.json = "record", True, args.json
    return cmd_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolewire",
        description="Role-based secure channels for service-to-service calls.",
    )
    parser.add_argument("--version", action="version", version=f"rolewire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="measure rolewire against baselines in one run",
                           description="Measure throughput/latency as ratios against "
                                       "baselines measured in the same run.")
    bench.add_argument("kind", nargs="?", default="record",
                       choices=["record", "handshake", "channel", "auth", "all"],
                       help="what to measure (default: record)")
    bench.add_argument("--json", metavar="PATH", help="write every figure and ratio as JSON")
    bench.add_argument("--quick", action="store_true", help="short run (under a minute)")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="run the demo",
                          description="Seal and open records with each suite, show replay "
                                      "rejection, and run the quick record benchmark.")
    demo.add_argument("--json", metavar="PATH", help="write the benchmark figures as JSON")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RolewireError as exc:
        print(f"rolewire: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"rolewire: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
