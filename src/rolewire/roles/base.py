"""What every role has in common: its name, its handshake-bound name hint,
and the exact bytes a role proof covers (docs/PROTOCOL.md, "Roles").

A *role* is a name plus a way to prove it: a pre-shared key
(:class:`~rolewire.roles.key.KeyRole`), a password
(:class:`~rolewire.roles.password.PasswordRole`) or an X.509 certificate
chaining to the role's trust anchors
(:class:`~rolewire.roles.certificate.CertificateRole`). A process holds any
number of roles; the handshake proves all of them in parallel.

Role *identity* is ``(kind, name)``: a key role and a certificate role that
share a name are two different roles (a peer that knows one of them learns
nothing about the other).
"""

from __future__ import annotations

import abc
import enum
import hashlib
from collections.abc import Iterable, Iterator
from typing import ClassVar

from rolewire.errors import ConfigurationError

__all__ = [
    "HINT_SIZE",
    "MAX_ROLES",
    "MAX_ROLE_NAME",
    "PROOF_LABEL",
    "ROLE_ID_SIZE",
    "Direction",
    "Role",
    "RoleKind",
    "RoleSet",
    "proof_input",
    "role_hint",
    "role_id",
]

#: Most roles in one process's role set and in one handshake message.
MAX_ROLES = 64
#: Longest role name, in UTF-8 bytes.
MAX_ROLE_NAME = 255
ROLE_ID_SIZE = 32
HINT_SIZE = 16
#: Domain-separation prefix of every role proof (key MAC, password MAC, signature).
PROOF_LABEL = b"rolewire/1 role proof\x00"


class RoleKind(enum.IntEnum):
    """How a role is proven; the value is its wire id."""

    KEY = 1
    PASSWORD = 2
    CERTIFICATE = 3


class Direction(enum.IntEnum):
    """Who proves: bound into every proof so a proof cannot be reflected."""

    INITIATOR = 0x49  # "I"
    RESPONDER = 0x52  # "R"


def role_id(kind: RoleKind, name: str) -> bytes:
    """``BLAKE2b-256(kind u8 || utf8(name), person="rolewire1roleid")``.

    Public: derived from the name only, never from the role's secret."""
    return hashlib.blake2b(bytes((kind,)) + name.encode("utf-8"), digest_size=ROLE_ID_SIZE,
                           person=b"rolewire1roleid").digest()


def role_hint(rid: bytes, nonce: bytes) -> bytes:
    """The role's name on the wire for one handshake:
    ``BLAKE2b-128(key=role_id, data=initiator_random, person="rolewire1hint")``.

    Only a party that knows the role's kind and name can compute (and so
    recognise) it; it changes with every handshake, so hints cannot be linked
    across handshakes by a party that does not know the name. It is keyed with
    the name, never with the secret: a hint keyed with a password would let
    an eavesdropper test password guesses offline."""
    return hashlib.blake2b(nonce, key=rid, digest_size=HINT_SIZE,
                           person=b"rolewire1hint").digest()


def proof_input(kind: RoleKind, direction: Direction, rid: bytes, h: bytes) -> bytes:
    """The bytes every role proof covers::

        "rolewire/1 role proof" 0x00 | kind u8 | direction u8 | role_id[32] | h[64]

    ``h`` is the transcript hash at the point of the proof (it covers both key
    shares, both randoms, the suite list and choice, and every earlier
    message); ``direction`` stops a proof being reflected back to its maker;
    ``role_id`` stops a proof for one role being used for another."""
    return PROOF_LABEL + bytes((kind, direction)) + rid + h


class Role(abc.ABC):
    """Base class of the three role kinds."""

    kind: ClassVar[RoleKind]
    __slots__ = ("name", "role_id")

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("a role name must be a non-empty string")
        if len(name.encode("utf-8")) > MAX_ROLE_NAME:
            raise ConfigurationError(f"role name longer than {MAX_ROLE_NAME} bytes")
        self.name = name
        self.role_id = role_id(self.kind, name)

    @property
    @abc.abstractmethod
    def can_prove(self) -> bool:
        """This process can prove the role to a peer."""

    @property
    @abc.abstractmethod
    def can_verify(self) -> bool:
        """This process can verify a peer's proof of the role."""

    def hint(self, nonce: bytes) -> bytes:
        return role_hint(self.role_id, nonce)

    def __repr__(self) -> str:  # never shows secrets
        return f"{type(self).__name__}(name={self.name!r})"


class RoleSet:
    """An immutable collection of roles, unique by ``(kind, name)``."""

    __slots__ = ("_by_id", "_roles")

    def __init__(self, roles: Iterable[Role] = ()) -> None:
        items = tuple(roles)
        by_id: dict[bytes, Role] = {}
        for role in items:
            if not isinstance(role, Role):
                raise ConfigurationError(f"not a role: {role!r}")
            if role.role_id in by_id:
                raise ConfigurationError(
                    f"role {role.name!r} ({role.kind.name.lower()}) defined twice")
            by_id[role.role_id] = role
        if len(items) > MAX_ROLES:
            raise ConfigurationError(f"at most {MAX_ROLES} roles per process")
        self._roles = items
        self._by_id = by_id

    def __iter__(self) -> Iterator[Role]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def __bool__(self) -> bool:
        return bool(self._roles)

    def hints(self, nonce: bytes) -> dict[tuple[int, bytes], Role]:
        """``{(kind, hint): role}`` for one handshake."""
        return {(r.kind, r.hint(nonce)): r for r in self._roles}

    def __repr__(self) -> str:
        return f"RoleSet({list(self._roles)!r})"
