"""One TOML file per service: its roles, where their secrets come from, who
may call which operation, and the peers it calls.

Secrets are never inline: a role names a key file, an environment variable,
or certificate/key PEM files; paths are relative to the TOML file. Example::

    [service]
    name = "payment"
    listen = "127.0.0.1:7001"

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

    [access]                       # operation -> roles (or "any-authenticated"/"unrestricted")
    charge = ["payment"]

    [peers.shipping]
    address = "127.0.0.1:7002"

Unknown keys are errors (a typo must not silently weaken a policy).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolewire.errors import ConfigurationError
from rolewire.roles.base import Role
from rolewire.roles.certificate import CertificateRole
from rolewire.roles.key import KeyRole
from rolewire.roles.password import PasswordRole
from rolewire.services import Access

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["RoleSpec", "ServiceConfig", "load_config", "parse_address"]

ROLE_KINDS = ("key", "password", "certificate")
_ROLE_KEYS = {
    "key": {"name", "kind", "key_file", "key_env"},
    "password": {"name", "kind", "password_env"},
    "certificate": {"name", "kind", "anchor", "cert", "key"},
}


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

    def describe(self) -> str:
        """What ``rolewire inspect`` shows: kind and secret *locations* only."""
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.sources.items()))
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
        return CertificateRole.from_files(self.name, anchors=src["anchor"],
                                          cert=src.get("cert"), key=src.get("key"))


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    listen: tuple[str, int] | None
    roles: tuple[RoleSpec, ...]
    access: dict[str, frozenset[str] | Access] = field(default_factory=dict)
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    path: Path | None = None

    def load_roles(self) -> list[Role]:
        """Read every secret now (call again to hot-reload after rotation)."""
        return [spec.load() for spec in self.roles]


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
    for key in _ROLE_KEYS[kind] - {"name", "kind"}:
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
    return RoleSpec(name, kind, sources)


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
    unknown = set(data) - {"service", "role", "access", "peers"}
    if unknown:
        raise ConfigurationError(f"unknown section(s): {', '.join(sorted(unknown))}")
    service = data.get("service")
    if not isinstance(service, dict) or not isinstance(service.get("name"), str):
        raise ConfigurationError("[service] with a name is required")
    listen = parse_address(service["listen"], "service.listen") if "listen" in service else None
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
                         file)
