"""One TOML file per service: its roles, where their secrets come from, who
may call which operation, and the peers it calls.

Secrets are never inline: a role names a key file, an environment variable,
or certificate/key PEM files; paths are relative to the TOML file. Example::

    [service]
    name = "payment"
    listen = "127.0.0.1:7001"
    drain_timeout = 10.0           # seconds in-flight calls get on SIGTERM

    [[role]]                       # proven with a pre-shared key
    name = "payment"
    kind = "key"
    key_file = "secrets/payment.key"

    [[role]]                       # proven with a password (J-PAKE)
    name = "approval"
    kind = "password"
    password_env = "APPROVAL_PASSWORD"

    [[role]]                       # proven with a certificate chaining to the anchor
    name = "shipping"
    kind = "certificate"
    anchor = "pki/ca.pem"
    cert = "pki/payment.pem"       # omit cert/key to only verify the role
    key = "pki/payment.key"
    crl = ["pki/ca.crl"]           # revocation lists (PEM or DER), optional
    watch = true                   # reload when these files change


    [access]                       # operation -> roles (or "any-authenticated"/"unrestricted")
    charge = ["payment"]

    [peers.shipping]
    address = "127.0.0.1:7002"

Unknown keys are errors (a typo must not silently weaken a policy). Every
key is listed, with type and default, in docs/config.md.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rolewire.errors import ConfigurationError, RolewireError
from rolewire.handshake.config import HandshakeConfig
from rolewire.roles.base import Role
from rolewire.roles.certificate import CertificateRole
from rolewire.roles.key import KeyRole
from rolewire.roles.password import PasswordRole
from rolewire.services import Access, Service

if TYPE_CHECKING:
    from rolewire.pool import Pool

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "CheckReport",
    "ClientSettings",
    "RoleSpec",
    "ServerSettings",
    "ServiceConfig",
    "check_config",
    "load_config",
    "parse_address",
]

ROLE_KINDS = ("key", "password", "certificate")
_ROLE_KEYS = {
    "key": {"name", "kind", "key_file", "key_env"},
    "password": {"name", "kind", "password_env"},
    "certificate": {"name", "kind", "anchor", "cert", "key", "crl", "watch"},
}
_SERVICE_KEYS = {"name", "listen", "drain_timeout", "handshake_timeout", "idle_timeout",
                 "max_connections", "max_inflight", "watch_interval", "handshake_rate"}
_CLIENT_KEYS = {"connect_timeout", "call_timeout"}


def parse_address(text: str, where: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"{where}: address must look like HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class RoleSpec:
    """Where one role's secret comes from (no secret in here)."""

    name: str
    kind: str
    sources: dict[str, str]
    crls: tuple[str, ...] = ()
    watch: bool = False

    @property
    def files(self) -> tuple[str, ...]:
        """Every file this role is read from (secrets, certificates, CRLs)."""
        return tuple(v for k, v in sorted(self.sources.items())
                     if not k.endswith("_env")) + self.crls

    def describe(self) -> str:
        """What ``rolewire inspect`` shows: kind and secret *locations* only."""
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.sources.items()))
        if self.crls:
            parts += ", crl=" + "|".join(self.crls)
        if self.watch:
            parts += ", watched"
        return f"{self.name} ({self.kind}: {parts})"

    @property
    def claims(self) -> bool:
        """True if this process can prove the role (not just verify it)."""
        return self.kind != "certificate" or "cert" in self.sources

    def load(self) -> Role:
        """Read the secret and build the role. Raises ConfigurationError with
        the file or variable name (never its content)."""
        src = self.sources
        if self.kind == "key":
            if "key_file" in src:
                return KeyRole.from_file(self.name, src["key_file"])
            return KeyRole.from_env(self.name, src["key_env"])
        if self.kind == "password":
            return PasswordRole.from_env(self.name, src["password_env"])
        for label in ("anchor", "cert", "key"):
            if label in src and not Path(src[label]).is_file():
                raise ConfigurationError(
                    f"role {self.name!r}: {label} file {src[label]!r} does not exist")
        for crl in self.crls:
            if not Path(crl).is_file():
                raise ConfigurationError(f"role {self.name!r}: crl file {crl!r} does not exist")
        return CertificateRole.from_files(self.name, anchors=src["anchor"],
                                          cert=src.get("cert"), key=src.get("key"),
                                          crls=self.crls, watch=self.watch)


@dataclass(frozen=True)
class ServerSettings:
    """``[service]`` settings of ``rolewire serve`` (besides name and listen)."""

    #: Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    drain_timeout: float = 10.0
    handshake_timeout: float = 10.0
    #: Seconds without traffic before an idle session is closed (0: never).
    idle_timeout: float = 300.0
    max_connections: int = 1024
    max_inflight: int = 64
    #: How often watched files are checked (seconds).
    watch_interval: float = 2.0
    #: ``(per_second, burst)`` handshakes one address may start; None: the
    #: server's default.
    handshake_rate: tuple[float, int] | None = None

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`rolewire.serve`."""
        options: dict[str, Any] = {
            "handshake_timeout": self.handshake_timeout,
            "idle_timeout": self.idle_timeout or None,
            "max_connections": self.max_connections, "max_inflight": self.max_inflight,
            "close_timeout": self.drain_timeout}
        if self.handshake_rate is not None:
            options["handshake_rate"] = self.handshake_rate
        return options


@dataclass(frozen=True)
class ClientSettings:
    """``[client]`` settings of ``rolewire call``."""

    connect_timeout: float = 10.0
    call_timeout: float = 30.0


@dataclass(frozen=True)
class ServiceConfig:
    """A parsed config file (:func:`load_config`); holds no secret."""

    name: str
    listen: tuple[str, int] | None
    roles: tuple[RoleSpec, ...]
    access: dict[str, frozenset[str] | Access] = field(default_factory=dict)
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    path: Path | None = None
    server: ServerSettings = field(default_factory=ServerSettings)
    client: ClientSettings = field(default_factory=ClientSettings)

    def load_roles(self) -> list[Role]:
        """Read every secret now (call again to hot-reload after rotation)."""
        return [spec.load() for spec in self.roles]

    def handshake_config(self, roles: list[Role] | None = None) -> HandshakeConfig:
        """A :class:`HandshakeConfig` holding this config's roles (read now
        unless ``roles`` are given)."""
        return HandshakeConfig(roles=self.load_roles() if roles is None else roles)

    def pool(self, peer: str, **options: Any) -> Pool:
        """A :class:`rolewire.pool.Pool` to ``[peers.<peer>]`` with this
        config's roles (read now); ``options`` go to ``Pool``
        (``max_connections``, backoff, ...; ``connect_timeout`` defaults to
        ``[client] connect_timeout``)."""
        from rolewire.pool import Pool  # at call time: it imports asyncio and the aio layer

        if peer not in self.peers:
            raise ConfigurationError(f"no [peers.{peer}] in {self.path or 'the config'}")
        host, port = self.peers[peer]
        options.setdefault("connect_timeout", self.client.connect_timeout)
        return Pool(host, port, self.handshake_config(), **options)

    @property
    def watched_files(self) -> tuple[str, ...]:
        """The files of every role marked ``watch = true``."""
        return tuple(f for spec in self.roles if spec.watch for f in spec.files)

    def undeclared_access_roles(self) -> list[tuple[str, str]]:
        """``(operation, role)`` pairs of ``[access]`` naming a role that no
        ``[[role]]`` declares (nobody could ever be verified in it)."""
        declared = {spec.name for spec in self.roles}
        return [(op, role) for op, allowed in sorted(self.access.items())
                if isinstance(allowed, frozenset) for role in sorted(allowed)
                if role not in declared]

    def apply_access(self, service: Service) -> None:
        """Make ``service`` enforce this config's ``[access]`` table: each
        operation listed gets the roles given here instead of those in the
        code; operations not listed keep theirs. An operation the service
        does not define, or a role no ``[[role]]`` declares, is an error."""
        unknown = sorted(set(self.access) - set(service.operations))
        if unknown:
            raise ConfigurationError(
                f"[access] names operation(s) {', '.join(map(repr, unknown))} that service "
                f"{service.name!r} does not define")
        undeclared = self.undeclared_access_roles()
        if undeclared:
            raise ConfigurationError("[access] names undeclared role(s): " + ", ".join(
                f"{op} -> {role!r}" for op, role in undeclared))
        for op, allowed in self.access.items():
            service.operations[op] = replace(service.operations[op], allowed=allowed)


def _role_spec(entry: Any, base: Path, index: int) -> RoleSpec:
    where = f"role #{index + 1}"
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: must be a table")
    kind, name = entry.get("kind"), entry.get("name")
    if kind not in ROLE_KINDS:
        raise ConfigurationError(f"{where}: kind must be one of {', '.join(ROLE_KINDS)}")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{where}: name is required")
    unknown = set(entry) - _ROLE_KEYS[kind]
    if unknown:
        if unknown & {"key_value", "password", "secret", "value"}:
            raise ConfigurationError(
                f"role {name!r}: secrets may not be written into the config; "
                "use a key file, an environment variable or PEM files")
        raise ConfigurationError(f"role {name!r}: unknown setting(s) {', '.join(sorted(unknown))}")
    sources: dict[str, str] = {}
    crls: tuple[str, ...] = ()
    watch = entry.get("watch", False)
    if not isinstance(watch, bool):
        raise ConfigurationError(f"role {name!r}: watch must be true or false")
    if "crl" in entry:
        value = entry["crl"]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            raise ConfigurationError(f"role {name!r}: crl must be a file name or a list of them")
        crls = tuple(str(base / v) for v in items)
    for key in _ROLE_KEYS[kind] - {"name", "kind", "crl", "watch"}:
        if key in entry:
            value = entry[key]
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"role {name!r}: {key} must be a non-empty string")
            sources[key] = value if key.endswith("_env") else str(base / value)
    if kind == "key" and len({"key_file", "key_env"} & set(sources)) != 1:
        raise ConfigurationError(f"role {name!r}: give exactly one of key_file, key_env")
    if kind == "password" and "password_env" not in sources:
        raise ConfigurationError(f"role {name!r}: password_env is required")
    if kind == "certificate":
        if "anchor" not in sources:
            raise ConfigurationError(f"role {name!r}: anchor is required")
        if ("cert" in sources) != ("key" in sources):
            raise ConfigurationError(f"role {name!r}: give both cert and key, or neither")
    return RoleSpec(name, kind, sources, crls, watch)


def _access(table: Any) -> dict[str, frozenset[str] | Access]:
    if not isinstance(table, dict):
        raise ConfigurationError("[access] must be a table")
    result: dict[str, frozenset[str] | Access] = {}
    for op, value in table.items():
        if isinstance(value, str):
            try:
                result[op] = Access(value)
            except ValueError:
                raise ConfigurationError(
                    f"access {op!r}: use a list of roles, 'any-authenticated' or "
                    "'unrestricted'") from None
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            result[op] = frozenset(value)
        else:
            raise ConfigurationError(f"access {op!r}: must be a non-empty list of role names")
    return result


def load_config(path: str | os.PathLike[str]) -> ServiceConfig:
    """Parse and validate a service config; reads no secret yet."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read config {os.fspath(path)!r}: {exc.strerror}") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config {os.fspath(path)!r} is not valid TOML: {exc}") from None
    unknown = set(data) - {"service", "client", "role", "access", "peers"}
    if unknown:
        raise ConfigurationError(f"unknown section(s): {', '.join(sorted(unknown))}")
    service = data.get("service")
    if not isinstance(service, dict) or not isinstance(service.get("name"), str):
        raise ConfigurationError("[service] with a name is required")
    unknown = set(service) - _SERVICE_KEYS
    if unknown:
        raise ConfigurationError(f"[service]: unknown setting(s) {', '.join(sorted(unknown))}")
    listen = parse_address(service["listen"], "service.listen") if "listen" in service else None
    rate = service.get("handshake_rate")
    if rate is not None:
        if not (isinstance(rate, list) and len(rate) == 2):
            raise ConfigurationError("service.handshake_rate must be [per_second, burst]")
        rate = (_number({"r": rate[0]}, "r", "service.handshake_rate", 1.0),
                _number({"b": rate[1]}, "b", "service.handshake_rate", 1))
    server = ServerSettings(handshake_rate=rate, **{
        k: _number(service, k, "service", getattr(ServerSettings, k))
        for k in _SERVICE_KEYS - {"name", "listen", "handshake_rate"} if k in service})
    client_table = data.get("client", {})
    if not isinstance(client_table, dict):
        raise ConfigurationError("[client] must be a table")
    unknown = set(client_table) - _CLIENT_KEYS
    if unknown:
        raise ConfigurationError(f"[client]: unknown setting(s) {', '.join(sorted(unknown))}")
    client = ClientSettings(**{k: _number(client_table, k, "client", 1.0)
                               for k in client_table})
    base = file.resolve().parent
    roles = tuple(_role_spec(entry, base, i) for i, entry in enumerate(data.get("role", [])))
    seen: set[tuple[str, str]] = set()
    for spec in roles:
        if (spec.kind, spec.name) in seen:
            raise ConfigurationError(f"role {spec.name!r} ({spec.kind}) is listed twice")
        seen.add((spec.kind, spec.name))
    peers_table = data.get("peers", {})
    if not isinstance(peers_table, dict):
        raise ConfigurationError("[peers] must be a table")
    peers = {}
    for peer, entry in peers_table.items():
        if not isinstance(entry, dict) or "address" not in entry:
            raise ConfigurationError(f"peer {peer!r}: address is required")
        peers[peer] = parse_address(entry["address"], f"peers.{peer}.address")
    return ServiceConfig(service["name"], listen, roles, _access(data.get("access", {})), peers,
                         file, server, client)


def _number(table: dict[str, Any], key: str, section: str, like: float) -> Any:
    """A positive number of the type of ``like`` (``idle_timeout`` may be 0)."""
    value = table[key]
    integral = isinstance(like, int) and not isinstance(like, bool)
    ok_type = isinstance(value, int) if integral else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        kind = "an integer" if integral else "a number of seconds"
        raise ConfigurationError(f"{section}.{key} must be {kind}")
    if value < 0 or (value == 0 and key != "idle_timeout"):
        raise ConfigurationError(f"{section}.{key} must be > 0")
    return int(value) if integral else float(value)


@dataclass
class CheckReport:
    """What :func:`check_config` found: ``problems`` make
    ``rolewire inspect --check`` fail; ``warnings`` do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    roles: list[Role] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_config(config: ServiceConfig, *, warn_days: float = 30.0,
                 now: datetime.datetime | None = None,
                 owner_only: Callable[[str], bool] | None = None) -> CheckReport:
    """Check everything a config depends on, reporting *every* problem (not
    just the first):

    * each role's secret is readable (file exists, variable set, parses);
    * each certificate chains to its role's anchor and is valid now (not
      expired, not yet valid, not revoked by a configured CRL); a warning when
      a certificate or anchor expires within ``warn_days`` days, or a CRL is
      past its ``nextUpdate``;
    * each role named in ``[access]`` is declared by a ``[[role]]``;
    * key files are readable by their owner only (a warning otherwise).
    """
    from rolewire import pki

    now = now or datetime.datetime.now(datetime.timezone.utc)
    private = owner_only or pki.owner_only
    soon = now + datetime.timedelta(days=warn_days)
    report = CheckReport()
    for op, undeclared in config.undeclared_access_roles():
        report.problems.append(
            f"[access] {op}: role {undeclared!r} is not declared by any [[role]]")
    for spec in config.roles:
        try:
            role = spec.load()
        except RolewireError as exc:
            report.problems.append(str(exc))
            continue
        report.roles.append(role)
        secret_files = [spec.sources[k] for k in ("key_file", "key") if k in spec.sources]
        for path in secret_files:
            try:
                if not private(path):
                    report.warnings.append(f"role {spec.name!r}: secret file {path!r} is "
                                           "readable by others")
            except OSError:
                pass
        if isinstance(role, CertificateRole):
            _check_certificate_role(role, spec, now, soon, report)
    return report


def _check_certificate_role(role: CertificateRole, spec: RoleSpec, now: datetime.datetime,
                            soon: datetime.datetime, report: CheckReport) -> None:
    where = f"role {spec.name!r}"
    for anchor in role.anchors:
        label = f"{where}: anchor {anchor.subject.rfc4514_string()}"
        if anchor.not_valid_after_utc < now:
            report.problems.append(f"{label} expired on {anchor.not_valid_after_utc:%Y-%m-%d}")
        elif anchor.not_valid_after_utc < soon:
            report.warnings.append(f"{label} expires on {anchor.not_valid_after_utc:%Y-%m-%d}")
    for crl_path, crl in zip(spec.crls, role.crls):
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            report.warnings.append(f"{where}: CRL {crl_path!r} is past its next update "
                                   f"({crl.next_update_utc:%Y-%m-%d %H:%M} UTC)")
    if not role.can_prove:
        return
    label = f"{where}: certificate {spec.sources.get('cert')!r}"
    for cert in role.chain:
        subject = cert.subject.rfc4514_string()
        if cert.not_valid_after_utc < now:
            report.problems.append(f"{label}: {subject} expired on "
                                   f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
            return
        if cert.not_valid_before_utc > now:
            report.problems.append(f"{label}: {subject} is not valid before "
                                   f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
            return
    try:
        role.validate_chain(role.chain_der, now)
    except RolewireError as exc:
        report.problems.append(f"{label} does not validate: {exc}")
        return
    expiry = min(c.not_valid_after_utc for c in role.chain)
    if expiry < soon:
        left = (expiry - now).total_seconds()
        when = f"{left / 86400:.1f} days" if left >= 86400 else f"{left / 3600:.1f} hours"
        report.warnings.append(f"{label} expires on {expiry:%Y-%m-%d %H:%M} UTC (in {when})")
