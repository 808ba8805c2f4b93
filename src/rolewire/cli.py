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
        verdict = "" if goal is None else (
            f" (target >= {goal:.2f}: {'met' if value >= goal else 'MISSED'})")
        console.print(f"{name} = {value:.2f}{verdict}")


def _print_ratios(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    for name, value in report.get("ratios", {}).items():
        goal = report.get("targets", {}).get(name)
        verdict = "" if goal is None else (
            f" (target >= {goal:.2f}: {'met' if value >= goal else 'MISSED'})")
        console.print(f"{name} = {value:.2f}{verdict}")


def _print_handshake_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rolewire bench handshake - full handshakes/s, both sides (median)")
    table.add_column("suite")
    kinds = list(next(iter(report["rolewire"].values())))
    for kind in kinds:
        table.add_column(kind, justify="right")
    for suite, rates in report["rolewire"].items():
        table.add_row(suite, *(f"{rates[k]:,.0f}" for k in kinds))
    table.add_row("TLS 1.3 mTLS P-256 (ssl, memory BIO)",
                  f"{report['tls13_mtls_p256']:,.0f}", *([""] * (len(kinds) - 1)))
    Console().print(table)
    _print_ratios(report)


BENCH_KINDS = ("record", "handshake", "channel", "auth", "connect", "fleet", "all")
COMPARE_KINDS = ("channel", "auth", "connect", "fleet")


def cmd_bench(args: argparse.Namespace) -> int:
    kinds = ["record", "handshake", *COMPARE_KINDS] if args.kind == "all" else [args.kind]
    wanted = [k for k in kinds if k in COMPARE_KINDS]
    if getattr(args, "plot", None) and not wanted:
        print("rolewire: --plot applies to channel, auth, connect and all", file=sys.stderr)
        return EXIT_USAGE
    report: dict[str, Any] = {}
    if "record" in kinds:
        from rolewire.benchmarks import record

        report["record"] = _progress_runner("bench record", record.run, quick=args.quick)
        _print_record_table(report["record"])
    if "handshake" in kinds:
        from rolewire.benchmarks import handshake

        report["handshake"] = _progress_runner("bench handshake", handshake.run,
                                               quick=args.quick)
        _print_handshake_table(report["handshake"])
    if wanted:
        # One run for channel+auth+connect: servers start once, ratios from the same run.
        try:
            from rolewire.benchmarks import compare
        except ImportError as exc:
            print(f"rolewire: bench {args.kind} needs the baselines extra "
                  f"(pip install 'rolewire[baselines]'): {exc}", file=sys.stderr)
            return EXIT_ERROR
        result = _progress_runner(f"bench {'+'.join(wanted)}", compare.run, which=wanted,
                                  quick=args.quick)
        compare.print_report(result)
        report["compare" if len(kinds) > 1 else wanted[0]] = result
        if getattr(args, "plot", None):
            compare.plot(result, args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
    if len(kinds) > 1 and wanted:
        # bench all: every ratio of the issue by its name, in one place.
        report.update(compare.merge_ratios(report))
        compare.print_report({k: report[k] for k in ("ratios", "ratio_ranges", "targets")},
                             table=False)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report if len(report) > 1 else report[kinds[0]], handle, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """``rolewire demo [webshop|record]``."""
    if args.scene == "record":
        return _demo_record(args)
    from rolewire.demo import webshop

    console = _console()
    with console.status("web shop demo") as status:
        report = webshop.run(say=lambda msg: status.update(f"web shop: {msg}"))
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(webshop.render(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _demo_record(args: argparse.Namespace) -> int:
    """A record-layer round trip per suite, replay rejection, and the quick
    record benchmark."""
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
    args.kind, args.quick = "record", True
    args.json = args.json_path
    return cmd_bench(args)


def cmd_keygen(args: argparse.Namespace) -> int:
    """A new 32-byte role key, base64, in a file only the owner can read."""
    import base64

    from rolewire.pki import write_secret_file
    from rolewire.roles.key import KeyRole

    write_secret_file(args.path, base64.b64encode(KeyRole.generate_key()) + b"\n")
    print(f"wrote role key {args.path} (mode 0600)")
    return EXIT_OK


def cmd_ca_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rolewire.pki import create_ca

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.pem", directory / "ca.key"
    if cert.exists() or key.exists():
        print(f"rolewire: error: {directory} already holds a CA", file=sys.stderr)
        return EXIT_ERROR
    create_ca(args.name, key_type=args.key_type, days=args.days).save(cert, key)
    print(f"created CA {args.name!r}: {cert} (trust anchor), {key} (mode 0600)")
    return EXIT_OK


def cmd_ca_issue(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rolewire.pki import issue, load_issued

    directory = Path(args.dir)
    ca = load_issued(directory / "ca.pem", directory / "ca.key")
    out = Path(args.out) if args.out else directory
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / f"{args.name}.pem", out / f"{args.name}.key"
    issued = issue(ca, args.name, key_type=args.key_type, days=args.days,
                   dns_names=tuple(args.dns), ip_addresses=tuple(args.ip))
    issued.save(cert, key)
    print(f"issued {args.name!r}: {cert}, {key} (mode 0600), valid until "
          f"{issued.certificate.not_valid_after_utc:%Y-%m-%d}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    """What a service claims and accepts. Reads secrets only with --check,
    and never prints them."""
    from rolewire.config import load_config

    config = load_config(args.config)
    report: dict[str, Any] = {
        "service": config.name,
        "listen": f"{config.listen[0]}:{config.listen[1]}" if config.listen else None,
        "claims": [s.describe() for s in config.roles if s.claims],
        "verifies_only": [s.describe() for s in config.roles if not s.claims],
        "access": {op: (sorted(v) if isinstance(v, frozenset) else v.value)
                   for op, v in sorted(config.access.items())},
        "peers": {p: f"{h}:{port}" for p, (h, port) in sorted(config.peers.items())},
    }
    if args.check:
        config.load_roles()  # raises ConfigurationError naming the missing source
        report["secrets"] = "all readable"
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"service {report['service']}" + (f" listening on {report['listen']}"
                                            if report["listen"] else ""))
    print("  claims (can prove):")
    for line in report["claims"] or ["(none)"]:
        print(f"    {line}")
    print("  verifies only:")
    for line in report["verifies_only"] or ["(none)"]:
        print(f"    {line}")
    print("  accepts:")
    for op, who in report["access"].items() or [("(no operations)", "")]:
        print(f"    {op}: {' | '.join(who) if isinstance(who, list) else who}")
    if report["peers"]:
        print("  calls:")
        for peer, address in report["peers"].items():
            print(f"    {peer} at {address}")
    if args.check:
        print("  secrets: all readable")
    return EXIT_OK


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
    bench.add_argument("kind", nargs="?", default="record", choices=BENCH_KINDS,
                       help="what to measure (default: record)")
    bench.add_argument("--json", metavar="PATH", help="write every figure and ratio as JSON")
    bench.add_argument("--quick", action="store_true", help="short run (under two minutes)")
    bench.add_argument("--plot", metavar="PNG",
                       help="channel/auth/connect/all: also draw a chart (needs the plot extra)")
    bench.set_defaults(func=cmd_bench)

    keygen = sub.add_parser("keygen", help="create a role key file",
                            description="Write a new random 32-byte role key (base64) to PATH "
                                        "with mode 0600. Refuses to overwrite.")
    keygen.add_argument("path", metavar="PATH")
    keygen.set_defaults(func=cmd_keygen)

    from rolewire.pki import KEY_TYPES

    ca = sub.add_parser("ca", help="self-hosted PKI for certificate roles",
                        description="A small certificate authority for certificate roles.")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    ca_init = ca_sub.add_parser("init", help="create a CA (ca.pem, ca.key) in DIR",
                                description="Create a root CA in DIR: ca.pem is the trust "
                                            "anchor to configure, ca.key stays private.")
    ca_init.add_argument("dir", metavar="DIR")
    ca_init.add_argument("--name", default="rolewire CA", help="CA common name")
    ca_init.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256")
    ca_init.add_argument("--days", type=int, default=3650)
    ca_init.set_defaults(func=cmd_ca_init)
    ca_issue = ca_sub.add_parser("issue", help="issue a certificate signed by the CA in DIR",
                                 description="Issue NAME.pem and NAME.key signed by DIR/ca.*")
    ca_issue.add_argument("dir", metavar="DIR")
    ca_issue.add_argument("name", metavar="NAME", help="service or holder name (DNS-safe)")
    ca_issue.add_argument("--out", metavar="OUTDIR", help="where to write (default: DIR)")
    ca_issue.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256")
    ca_issue.add_argument("--days", type=int, default=365)
    ca_issue.add_argument("--dns", action="append", default=[], help="extra DNS SAN")
    ca_issue.add_argument("--ip", action="append", default=[], help="IP address SAN")
    ca_issue.set_defaults(func=cmd_ca_issue)

    inspect = sub.add_parser("inspect", help="show what a service config claims and accepts",
                             description="Show the roles a service claims, the roles it only "
                                         "verifies, who may call each operation, and its "
                                         "peers. Never prints secrets.")
    inspect.add_argument("config", metavar="CONFIG")
    inspect.add_argument("--check", action="store_true",
                         help="also read every secret source (exit 3 if one is missing)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=cmd_inspect)

    from rolewire.baselines.audit import add_audit_parser

    add_audit_parser(sub)

    demo = sub.add_parser("demo", help="run a demo (default: the web shop)",
                          description="webshop: five services, four roles, one purchase and "
                                      "a breached service that must not escalate (exit 0 only "
                                      "if the purchase succeeded and every escalation was "
                                      "denied). record: seal/open per suite and the quick "
                                      "record benchmark.")
    demo.add_argument("scene", nargs="?", default="webshop", choices=["webshop", "record"])
    demo.add_argument("--json", action="store_true",
                      help="webshop: print the outcome as JSON instead of the report")
    demo.add_argument("--json-path", metavar="PATH",
                      help="record: write the benchmark figures as JSON")
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
