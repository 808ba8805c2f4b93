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

Handshake hooks: the handshake machine (:mod:`rolewire.handshake.machine`)
never asks which class a role is. Each kind says, through the hooks of
:class:`Role`, where it is named and proven (:attr:`Role.proof_channel`),
whether its proof travels with credentials (:attr:`Role.sends_credentials`,
:meth:`Role.credentials`), and how it proves and verifies
(:meth:`Role.prove`, :meth:`Role.verify_proof`); kinds proven in a J-PAKE
slot also charge their password budget (:meth:`Role.password_locked_for`,
:meth:`Role.charge`) and join the slot's exchange (:meth:`Role.exchange`,
:meth:`Role.assign_slot`). A new kind implements these and the machine
runs it unchanged (docs/architecture.md, "Role kinds").
"""

from __future__ import annotations

import abc
import datetime
import enum
import hashlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from rolewire.errors import ConfigurationError, RoleProofInvalid

if TYPE_CHECKING:  # only for annotations: password imports this module
    from rolewire.roles.password import PasswordAttempt, PasswordExchange

__all__ = [
    "HINT_SIZE",
    "MAX_ROLES",
    "MAX_ROLE_NAME",
    "PROOF_LABEL",
    "ROLE_ID_SIZE",
    "Direction",
    "ProofChannel",
    "Role",
    "RoleKind",
    "RoleSet",
    "password_hint",
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


class ProofChannel(enum.Enum):
    """Where in the handshake a role kind is named and proven
    (docs/PROTOCOL.md, "Role hints" and "J-PAKE")."""

    #: Named by a keyed hint in the Hello (:meth:`Role.hint_keys`); its role
    #: entries and proofs travel in the encrypted parts of messages 2 to 5,
    #: made by :meth:`Role.prove` and checked by :meth:`Role.verify_proof`.
    HINT = "hint"
    #: Run in one J-PAKE slot of the Hello and named (by
    #: :func:`password_hint`) only in message 3; proven by the slot's
    #: key confirmation (:meth:`Role.exchange`, :meth:`Role.assign_slot`),
    #: every run charged to a password budget (:meth:`Role.charge`).
    PASSWORD_SLOT = "password-slot"


class Direction(enum.IntEnum):
    """Who proves: bound into every proof so a proof cannot be reflected."""

    INITIATOR = 0x49  # "I"
    RESPONDER = 0x52  # "R"


def role_id(kind: RoleKind, name: str) -> bytes:
    """``BLAKE2b-256(kind u8 || utf8(name), person="rolewire1roleid")``.

    Public: derived from the name only, never from the role's secret."""
    return hashlib.blake2b(bytes((kind,)) + name.encode("utf-8"), digest_size=ROLE_ID_SIZE,
                           person=b"rolewire1roleid").digest()


def role_hint(hint_key: bytes, nonce: bytes, kind: int, flags: int, rid: bytes) -> bytes:
    """A key or certificate role's offer in the Hello (docs/PROTOCOL.md,
    "Role hints")::

        BLAKE2b-128(key=hint_key, data=initiator_random | kind u8 | flags u8
                    | role_id, person="rolewire2hint")

    ``hint_key`` is derived from the role's key (key roles) or from one of
    its anchors' public keys (certificate roles), never from the name alone,
    so a dictionary of names does not recognise it. It changes with every
    handshake (the initiator random), and it carries the kind and flags, so
    neither travels in the clear."""
    return _hint_finish(_hint_prefix(hint_key, nonce), kind, flags, rid)


def _hint_prefix(hint_key: bytes, nonce: bytes) -> hashlib.blake2b:
    """The keyed BLAKE2b state of :func:`role_hint` after the nonce (shared
    by a role's hints for every flag combination)."""
    return hashlib.blake2b(nonce, key=hint_key, digest_size=HINT_SIZE, person=b"rolewire2hint")


def _hint_finish(prefix: hashlib.blake2b, kind: int, flags: int, rid: bytes) -> bytes:
    h = prefix.copy()
    h.update(bytes((kind, flags)) + rid)
    return h.digest()


def password_hint(rid: bytes, h: bytes, slot: int) -> bytes:
    """A password role's name in message 3 (encrypted), for one J-PAKE slot:
    ``BLAKE2b-128(key=role_id, data=h | slot u8, person="rolewire2pwhint")``
    with ``h`` the transcript hash after message 2. Keyed with the name (a
    password must never key anything an attacker sees); it travels only
    encrypted, after the key exchange, so only the peer of this handshake
    can test a name against it."""
    return hashlib.blake2b(h + bytes((slot,)), key=rid, digest_size=HINT_SIZE,
                           person=b"rolewire2pwhint").digest()


def proof_input(kind: RoleKind, direction: Direction, rid: bytes, h: bytes) -> bytes:
    """The bytes every role proof covers::

        "rolewire/1 role proof" 0x00 | kind u8 | direction u8 | role_id[32] | h[64]

    ``h`` is the transcript hash at the point of the proof (it covers both key
    shares, both randoms, the suite list and choice, and every earlier
    message); ``direction`` stops a proof being reflected back to its maker;
    ``role_id`` stops a proof for one role being used for another."""
    return PROOF_LABEL + bytes((kind, direction)) + rid + h


class Role(abc.ABC):
    """Base class of the role kinds.

    Besides its name and :attr:`kind` (the wire id: it is part of the role
    id, the hints and every proof), a kind carries its own *handshake
    hooks*: the methods and class attributes below, from
    :attr:`proof_channel` on. The handshake machine calls only these, so a
    new kind (a subclass with an unused kind id) needs no change there.
    The defaults are those of a ``HINT`` kind without credentials (a key
    role); such a kind implements :meth:`hint_keys`, :meth:`prove` and
    :meth:`verify_proof`.
    """

    kind: ClassVar[RoleKind]
    __slots__ = ("name", "role_id")

    #: Where the role is named and proven (see :class:`ProofChannel`).
    proof_channel: ClassVar[ProofChannel] = ProofChannel.HINT
    #: ``HINT`` kinds only: the prover's role entry carries
    #: :meth:`credentials` (a certificate chain) that the verifier needs
    #: with the proof. Such credentials and their proof may wait for a
    #: peer that authenticated (withheld by a responder, deferred by an
    #: initiator); a role entry of any other kind must carry no data.
    sends_credentials: ClassVar[bool] = False

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

    def hint_keys(self) -> tuple[bytes, ...]:
        """The keys this role's Hello hints are made with (one per anchor
        for certificate roles; none for password roles, which are named
        only after the key exchange)."""
        return ()

    def hints(self, nonce: bytes, flags: int) -> list[bytes]:
        """This role's hints for one Hello (one per hint key)."""
        return [role_hint(k, nonce, self.kind, flags, self.role_id) for k in self.hint_keys()]

    # -- handshake hooks: HINT kinds -------------------------------------------

    def prove(self, direction: Direction, h: bytes) -> bytes:
        """Our proof of the role at transcript hash ``h`` (bound to
        ``direction``); called only if :attr:`can_prove`. It must cover
        :func:`proof_input` so it cannot stand in for another role,
        direction or handshake."""
        raise ConfigurationError(f"role {self.name!r}: its kind has no proof of its own")

    def credentials(self) -> tuple[bytes, ...]:
        """With :attr:`sends_credentials`: what our role entry carries
        (DER certificates, leaf first); the machine encodes it as a chain
        (docs/PROTOCOL.md, "Messages"). Empty by default."""
        return ()

    def verify_proof(self, direction: Direction, h: bytes, proof: bytes,
                     credentials: Sequence[bytes],
                     wall_clock: Callable[[], datetime.datetime]) -> None:
        """Checks the peer's ``proof`` of the role at transcript hash ``h``;
        raises :class:`~rolewire.errors.RoleProofInvalid` (or a subclass,
        such as ``CertificateRejected``) if it does not verify.
        ``credentials`` is the peer's parsed chain (empty unless
        :attr:`sends_credentials`); ``wall_clock`` gives the UTC time for
        validity checks (call it only if needed). Compare in constant time."""
        raise RoleProofInvalid("role proof did not verify")

    # -- handshake hooks: PASSWORD_SLOT kinds ------------------------------------

    def password_locked_for(self, peer: Hashable) -> float:
        """Seconds the password budget refuses runs of this role with
        ``peer`` (0.0: none). An initiator does not offer a locked role."""
        return 0.0

    def charge(self, peer: Hashable) -> PasswordAttempt:
        """The responder's side: charges one run with ``peer`` to the
        budget before J-PAKE goes on, and returns the charge (settled by the
        machine); raises ``PasswordAttemptsExceeded`` if refused."""
        raise ConfigurationError(f"role {self.name!r} is not proven in a password slot")

    def exchange(self, *, initiator: bool, context: bytes) -> PasswordExchange:
        """The initiator's side: starts this role's J-PAKE run in one slot
        (``context`` binds it to the handshake and slot)."""
        raise ConfigurationError(f"role {self.name!r} is not proven in a password slot")

    def assign_slot(self, exchange: PasswordExchange) -> None:
        """The responder's side: the slot of ``exchange`` (round 1 already
        sent) names this role; it continues with this role's password."""
        raise ConfigurationError(f"role {self.name!r} is not proven in a password slot")

    def __repr__(self) -> str:  # never shows secrets
        return f"{type(self).__name__}(name={self.name!r})"


class RoleSet:
    """An immutable collection of roles, unique by ``(kind, name)``."""

    __slots__ = ("_by_id", "_hint_keys", "_roles")

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
        self._hint_keys = [(r, r.hint_keys()) for r in items]

    def __iter__(self) -> Iterator[Role]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def __bool__(self) -> bool:
        return bool(self._roles)

    def hints(self, nonce: bytes) -> dict[bytes, tuple[Role, int]]:
        """``{hint: (role, initiator flags)}`` for one Hello: every hint an
        initiator could send for one of our key or certificate roles, with
        any of the three flag combinations."""
        out: dict[bytes, tuple[Role, int]] = {}
        for role, keys in self._hint_keys:
            for key in keys:
                # role_hint for the three flags: the keyed state after the
                # nonce is computed once and copied.
                prefix = _hint_prefix(key, nonce)
                for flags in (1, 2, 3):
                    out[_hint_finish(prefix, role.kind, flags, role.role_id)] = (role, flags)
        return out

    def password_hints(self, h: bytes, slot: int) -> dict[bytes, Role]:
        """``{hint: role}`` of our password roles for one J-PAKE slot."""
        return {password_hint(r.role_id, h, slot): r for r in self._roles
                if r.kind == RoleKind.PASSWORD}

    def __repr__(self) -> str:
        return f"RoleSet({list(self._roles)!r})"
