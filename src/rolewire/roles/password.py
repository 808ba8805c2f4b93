"""Password roles: EC J-PAKE (RFC 8236 over the Ed25519 prime-order group,
:mod:`rolewire.roles.jpake`) turns a shared low-entropy password into
high-entropy key material; that key then proves the role exactly like a key
role (a MAC over the transcript hash, bound to role and direction), which is
also J-PAKE's key confirmation.

An attacker gets one password guess per J-PAKE run it takes to the
proof (no offline dictionary attack), so runs are budgeted by a
:class:`PasswordRateLimiter` (docs/PROTOCOL.md, "Password budget"):

- every run is *charged* before J-PAKE starts, to the peer's scope (its
  IPv4 address or IPv6 /64, see :func:`~rolewire.roles.budget.peer_scope`)
  for this role and to the role itself (all peers together);
- a charge is *refunded* when the peer's proof verified, or when the
  handshake ended before any proof was checked (a run without a checked
  proof gives nobody a guess: the responder proves only after the
  initiator's proof verified); it is kept as a failure when the proof did
  not verify;
- a scope refuses new runs while its charges in the window (failures and
  runs in flight) reach its limit, and is locked out when its failures do:
  a peer for ``cooldown`` seconds, the role for ``role_cooldown`` seconds
  doubled with every lockout in a row, up to ``role_max_cooldown``.

Refused runs do not run J-PAKE. Every failure, lockout and refusal is
logged on the ``rolewire.password`` logger as a structured event (the
``extra`` fields ``event``, ``peer``, ``role``, ``failures``,
``locked_for``, ``scope``); secrets never appear in logs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable

from rolewire import entropy
from rolewire.errors import ConfigurationError, PasswordAttemptsExceeded, RoleProofInvalid
from rolewire.roles.base import Direction, ProofChannel, Role, RoleKind, proof_input
from rolewire.roles.budget import (
    BudgetRecord,
    BudgetStore,
    MemoryBudgetStore,
    ScopePolicy,
    new_ticket_id,
    peer_scope,
)
from rolewire.roles.jpake import JPake

__all__ = [
    "JPAKE_ID_INITIATOR",
    "JPAKE_ID_RESPONDER",
    "PASSWORD_PROOF_SIZE",
    "PasswordAttempt",
    "PasswordExchange",
    "PasswordRateLimiter",
    "PasswordRole",
    "logger",
    "share_budget",
]

PASSWORD_PROOF_SIZE = 32
#: J-PAKE participant ids: fixed, distinct (RFC 8236 requires it).
JPAKE_ID_INITIATOR = b"rolewire/1 initiator"
JPAKE_ID_RESPONDER = b"rolewire/1 responder"

logger = logging.getLogger("rolewire.password")


def _peer_label(peer: Hashable) -> str:
    return "unknown" if peer is None else str(peer)


class PasswordAttempt:
    """One charged password run (see :meth:`PasswordRateLimiter.begin`).
    Exactly one of :meth:`succeeded`, :meth:`failed` or :meth:`abandoned`
    takes effect; later calls do nothing."""

    __slots__ = ("_done", "_id", "_limiter", "peer", "role")

    def __init__(self, limiter: PasswordRateLimiter, peer: Hashable, role: str,
                 ticket: int) -> None:
        self._limiter = limiter
        self.peer = peer
        self.role = role
        self._id = ticket
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def recheck(self) -> None:
        """Before the proof is checked: raises
        :class:`PasswordAttemptsExceeded` if the peer or role was locked out
        since the charge (the caller then abandons the attempt)."""
        if not self._done:
            self._limiter._recheck(self)

    def succeeded(self) -> None:
        """The peer's proof verified: the charge is refunded."""
        if not self._done:
            self._done = True
            self._limiter._settle(self, failed=False)

    def abandoned(self) -> None:
        """The run ended before any proof was checked: refunded."""
        self.succeeded()

    def failed(self) -> None:
        """The peer's proof did not verify: the charge stays, as a failure."""
        if not self._done:
            self._done = True
            self._limiter._settle(self, failed=True)


class PasswordRateLimiter:
    """The guessing budget of one or more password roles.

    Args:
        max_failures: charges per peer scope (and role) per ``window``.
        window: seconds a charge counts.
        cooldown: seconds a peer scope is locked out once ``max_failures``
            of its charges failed.
        clock: seconds, monotonic (a wall clock if ``store`` is shared
            between processes).
        max_peers: records kept by the default store.
        role_max_failures: charges per role per ``window``, from all peers
            together (default ``4 * max_failures``). It also bounds the
            password handshakes of the role in flight at once.
        role_cooldown: first lockout of a role, doubled for each lockout in
            a row ...
        role_max_cooldown: ... up to this.
        store: where the counts live (default: a
            :class:`~rolewire.roles.budget.MemoryBudgetStore`).

    Thread-safe; share one limiter between roles and handshakes (each
    :class:`PasswordRole` gets its own unless given one). Budgets are kept
    per role name, so one limiter may serve several roles.
    """

    def __init__(self, max_failures: int = 5, window: float = 60.0, cooldown: float = 300.0,
                 *, clock: Callable[[], float] = time.monotonic,
                 max_peers: int = 65536, role_max_failures: int | None = None,
                 role_cooldown: float = 60.0, role_max_cooldown: float = 3600.0,
                 store: BudgetStore | None = None) -> None:
        if max_failures < 1 or window <= 0 or cooldown <= 0 or max_peers < 1:
            raise ConfigurationError("rate limiter parameters must be positive")
        if role_max_failures is None:
            role_max_failures = 4 * max_failures
        self.max_failures = max_failures
        self.window = window
        self.cooldown = cooldown
        self.clock = clock
        self.max_peers = max_peers
        self.peer_policy = ScopePolicy(max_failures, window, cooldown)
        self.role_policy = ScopePolicy(role_max_failures, window, role_cooldown,
                                       backoff=True, max_cooldown=max(role_max_cooldown,
                                                                      role_cooldown))
        self.store = store if store is not None else MemoryBudgetStore(max(max_peers, 2))
        self._lock = threading.Lock()
        #: Role names this limiter has charged (for the role-less queries).
        self._seen: set[str] = set()

    # -- keys ----------------------------------------------------------------------
    @staticmethod
    def _keys(peer: Hashable, role: str) -> tuple[Hashable, Hashable]:
        return (("peer", role, peer_scope(peer)), ("role", role))

    def _policies(self) -> tuple[ScopePolicy, ScopePolicy]:
        return (self.peer_policy, self.role_policy)

    # -- queries -------------------------------------------------------------------
    def locked_for(self, peer: Hashable, role: str | None = None) -> float:
        """Seconds the peer (for ``role``, or for any role this limiter has
        seen it fail if ``role`` is None) remains locked out, including a
        lockout of the role itself (0.0 if none)."""
        now = self.clock()
        if role is None:
            return self._any_lock(peer, now)

        def update(records: list[BudgetRecord]) -> float:
            return max(0.0, *(r.locked_until - now for r in records))

        return self.store.transact(self._keys(peer, role), update)

    def _any_lock(self, peer: Hashable, now: float) -> float:
        with self._lock:
            roles = tuple(self._seen)
        return max([0.0, *(self.locked_for(peer, r) for r in roles)])

    def failures(self, peer: Hashable, role: str | None = None) -> int:
        """Failures counted for the peer's scope in the current window
        (summed over roles if ``role`` is None)."""
        roles = [role] if role is not None else sorted(self._seen)
        now = self.clock()
        total = 0
        for r in roles:
            def update(records: list[BudgetRecord]) -> int:
                records[0].expire(now, self.window)
                return len(records[0].failed)
            total += self.store.transact(self._keys(peer, r)[:1], update)
        return total

    def role_failures(self, role: str) -> int:
        """Failures counted for ``role`` from all peers in the window."""
        now = self.clock()

        def update(records: list[BudgetRecord]) -> int:
            records[0].expire(now, self.window)
            return len(records[0].failed)

        return self.store.transact((("role", role),), update)

    # -- charging ------------------------------------------------------------------
    def _refusal(self, peer: Hashable, role: str, left: float, scope: str) -> None:
        logger.warning(
            "password attempt refused: budget exhausted",
            extra={"event": "password_refused", "peer": _peer_label(peer), "role": role,
                   "locked_for": round(max(left, 0.0), 3), "scope": scope})
        raise PasswordAttemptsExceeded("too many password attempts; try later")

    def begin(self, peer: Hashable, role: str) -> PasswordAttempt:
        """Charges one run of ``role`` for ``peer`` and returns it, or raises
        :class:`PasswordAttemptsExceeded` (and logs the refusal) if the
        peer's scope or the role is locked out or has no budget left in the
        window. Call it before running J-PAKE."""
        with self._lock:
            self._seen.add(role)
        now = self.clock()
        ticket = new_ticket_id()
        policies = self._policies()

        def update(records: list[BudgetRecord]) -> tuple[str, float] | None:
            for record, policy, scope in zip(records, policies, ("peer", "role")):
                record.expire(now, policy.window)
                if record.locked_until > now:
                    return scope, record.locked_until - now
                if len(record.charges) >= policy.limit:
                    oldest = next(iter(record.charges.values()))
                    return scope, oldest + policy.window - now
            for record in records:
                record.charges[ticket] = now
            return None

        refused = self.store.transact(self._keys(peer, role), update)
        if refused is not None:
            self._refusal(peer, role, refused[1], refused[0])
        return PasswordAttempt(self, peer, role, ticket)

    def check(self, peer: Hashable, role: str) -> None:
        """Raises :class:`PasswordAttemptsExceeded` (and logs the refusal) if
        a run of ``role`` for ``peer`` would be refused now; charges nothing."""
        now = self.clock()
        policies = self._policies()

        def update(records: list[BudgetRecord]) -> tuple[str, float] | None:
            for record, policy, scope in zip(records, policies, ("peer", "role")):
                record.expire(now, policy.window)
                if record.locked_until > now:
                    return scope, record.locked_until - now
                if len(record.charges) >= policy.limit:
                    return scope, 0.0
            return None

        refused = self.store.transact(self._keys(peer, role), update)
        if refused is not None:
            self._refusal(peer, role, refused[1], refused[0])

    def record_failure(self, peer: Hashable, role: str) -> None:
        """Counts one failed run that was not charged with :meth:`begin`
        (the initiator's side: the responder's proof did not verify)."""
        with self._lock:
            self._seen.add(role)
        attempt = PasswordAttempt(self, peer, role, new_ticket_id())
        now = self.clock()

        def update(records: list[BudgetRecord]) -> None:
            for record in records:
                record.charges[attempt._id] = now

        self.store.transact(self._keys(peer, role), update)
        attempt.failed()

    def _recheck(self, attempt: PasswordAttempt) -> None:
        now = self.clock()

        def update(records: list[BudgetRecord]) -> tuple[str, float] | None:
            for record, scope in zip(records, ("peer", "role")):
                if record.locked_until > now:
                    return scope, record.locked_until - now
            return None

        refused = self.store.transact(self._keys(attempt.peer, attempt.role), update)
        if refused is not None:
            self._refusal(attempt.peer, attempt.role, refused[1], refused[0])

    def _settle(self, attempt: PasswordAttempt, *, failed: bool) -> None:
        now = self.clock()
        policies = self._policies()
        ticket = attempt._id

        def update(records: list[BudgetRecord]) -> list[tuple[str, int, float]]:
            out = []
            for record, policy, scope in zip(records, policies, ("peer", "role")):
                if ticket not in record.charges:
                    continue  # expired from the window meanwhile
                if not failed:
                    del record.charges[ticket]
                    continue
                record.failed.add(ticket)
                record.expire(now, policy.window)
                count = len(record.failed)
                locked = 0.0
                if count >= policy.limit and record.locked_until <= now:
                    if record.last_lock_end and now - record.last_lock_end > policy.max_cooldown:
                        record.strikes = 0
                    record.strikes += 1
                    locked = policy.lock_duration(record.strikes)
                    record.locked_until = now + locked
                    record.last_lock_end = record.locked_until
                out.append((scope, count, locked))
            return out

        results = self.store.transact(self._keys(attempt.peer, attempt.role), update)
        if not failed:
            return
        for scope, count, locked in results:
            if scope == "peer":
                logger.warning("password role proof failed",
                               extra={"event": "password_failure",
                                      "peer": _peer_label(attempt.peer), "role": attempt.role,
                                      "failures": count, "scope": scope})
            if locked:
                logger.error("password budget exhausted: locked out",
                             extra={"event": "password_lockout",
                                    "peer": _peer_label(attempt.peer), "role": attempt.role,
                                    "failures": count, "locked_for": locked, "scope": scope})


class PasswordExchange:
    """One J-PAKE run in one *slot* of one handshake (docs/PROTOCOL.md,
    "Password roles"). The initiator knows its role from the start; the
    responder runs round 1 before it knows which role (if any) the slot
    names and :meth:`assign` s it later. A slot without a role (padding, or
    a name the responder does not hold or may not run now) runs J-PAKE with
    a random password, so on the wire it looks like a wrong password."""

    __slots__ = ("_jpake", "_key", "initiator", "role")

    def __init__(self, role: PasswordRole | None, *, initiator: bool, context: bytes,
                 deferred: bool = False) -> None:
        self.role = role
        self.initiator = initiator
        my_id, peer_id = ((JPAKE_ID_INITIATOR, JPAKE_ID_RESPONDER) if initiator
                          else (JPAKE_ID_RESPONDER, JPAKE_ID_INITIATOR))
        password: bytes | None
        if deferred:
            password = None
        else:
            password = (role._password if role is not None
                        else entropy.random_bytes(32, "padding slot password"))
        self._jpake = JPake(password, my_id=my_id, peer_id=peer_id, context=context)
        self._key: bytes | None = None

    def assign(self, role: PasswordRole | None) -> None:
        """The responder's side: the slot names ``role`` (None: a dummy)."""
        self.role = role
        self._jpake.set_password(role._password if role is not None
                                 else entropy.random_bytes(32, "padding slot password"))

    def round1(self) -> bytes:
        return self._jpake.round1()

    def round2(self, peer_round1: bytes) -> bytes:
        return self._jpake.round2(peer_round1)

    def finish(self, peer_round2: bytes) -> None:
        material = self._jpake.finish(peer_round2)
        self._key = hashlib.blake2b(material, person=b"rolewire1pwmac").digest()

    def _mac(self, direction: Direction, h: bytes) -> bytes:
        if self._key is None or self.role is None:
            raise ConfigurationError("J-PAKE not finished")
        return hashlib.blake2b(proof_input(RoleKind.PASSWORD, direction, self.role.role_id, h),
                               key=self._key, digest_size=PASSWORD_PROOF_SIZE,
                               person=b"rolewire1pwprf").digest()

    def prove(self, direction: Direction, h: bytes) -> bytes:
        """Our confirmation MAC; random bytes for a slot without a role."""
        if self.role is None:
            return entropy.random_bytes(PASSWORD_PROOF_SIZE, "padding slot proof")
        return self._mac(direction, h)

    def verify(self, direction: Direction, h: bytes, proof: bytes) -> None:
        if self.role is None or not hmac.compare_digest(self._mac(direction, h), proof):
            raise RoleProofInvalid("password role proof did not verify")


class PasswordRole(Role):
    """A role proven with a shared password (J-PAKE + key confirmation)."""

    kind = RoleKind.PASSWORD
    #: Handshake hook: run in a J-PAKE slot, charged to :attr:`limiter`.
    proof_channel = ProofChannel.PASSWORD_SLOT
    __slots__ = ("_password", "limiter")

    def __init__(self, name: str, password: str | bytes, *,
                 limiter: PasswordRateLimiter | None = None) -> None:
        super().__init__(name)
        if isinstance(password, str):
            password = password.encode("utf-8")
        if not isinstance(password, (bytes, bytearray)) or not password:
            raise ConfigurationError("a role password must be a non-empty string")
        self._password = bytes(password)
        self.limiter = limiter if limiter is not None else PasswordRateLimiter()

    @property
    def can_prove(self) -> bool:
        return True

    @property
    def can_verify(self) -> bool:
        return True

    @classmethod
    def from_env(cls, name: str, variable: str, *,
                 limiter: PasswordRateLimiter | None = None) -> PasswordRole:
        """Reads the password from an environment variable."""
        value = os.environ.get(variable)
        if not value:
            raise ConfigurationError(f"environment variable {variable} is not set")
        return cls(name, value, limiter=limiter)

    def exchange(self, *, initiator: bool, context: bytes) -> PasswordExchange:
        """Starts J-PAKE for this role in one slot of one handshake (a
        responder charges the run with :meth:`PasswordRateLimiter.begin`
        first). ``context`` binds the Schnorr proofs to the handshake and
        slot; it never contains the role's name."""
        return PasswordExchange(self, initiator=initiator, context=context)

    # --- handshake hooks -------------------------------------------------------

    def password_locked_for(self, peer: Hashable) -> float:
        """Handshake hook: :meth:`PasswordRateLimiter.locked_for` of this role."""
        return self.limiter.locked_for(peer, self.name)

    def charge(self, peer: Hashable) -> PasswordAttempt:
        """Handshake hook: :meth:`PasswordRateLimiter.begin` of this role."""
        return self.limiter.begin(peer, self.name)

    def assign_slot(self, exchange: PasswordExchange) -> None:
        """Handshake hook: :meth:`PasswordExchange.assign` of this role."""
        exchange.assign(self)


def share_budget(roles: Iterable[Role], store: BudgetStore) -> int:
    """Point the limiter of every :class:`PasswordRole` in ``roles`` that
    keeps its counts in this process (a :class:`MemoryBudgetStore`) at
    ``store`` instead, so processes serving the same roles (server workers)
    charge one budget rather than one each. Limiters given another store
    keep it (their owner chose where the counts live). Returns how many
    limiters were switched. Call it before the roles serve handshakes: the
    counts already in the old store are not carried over.

    The limiters keep their clock. That is right for the workers of one
    pool: the default, ``time.monotonic``, is one clock for the whole host
    on the platforms with worker processes (Linux, macOS, the BSDs), and
    workers share their parent's time namespace. Unrelated processes
    sharing a store should use a wall clock (``clock=time.time``)."""
    switched = 0
    seen: set[int] = set()
    for role in roles:
        if not isinstance(role, PasswordRole) or id(role.limiter) in seen:
            continue
        seen.add(id(role.limiter))
        if isinstance(role.limiter.store, MemoryBudgetStore):
            role.limiter.store = store
            switched += 1
    return switched
