"""Password roles: EC J-PAKE (RFC 8236 over the Ed25519 prime-order group,
:mod:`rolewire.roles.jpake`) turns a shared low-entropy password into
high-entropy key material; that key then proves the role exactly like a key
role (a MAC over the transcript hash, bound to role and direction), which is
also J-PAKE's key confirmation.

An attacker gets one password guess per handshake it completes up to the
proof (no offline dictionary attack), so online guesses are counted: a
:class:`PasswordRateLimiter` refuses password attempts from a peer after
``max_failures`` failures within ``window`` seconds, for ``cooldown``
seconds, *without running J-PAKE*. Every failure, lockout and refusal is
logged on the ``rolewire.password`` logger as a structured event (the
``extra`` fields ``event``, ``peer``, ``role``, ``failures``,
``locked_for``); secrets never appear in logs.

What counts as a failure for a peer (docs/PROTOCOL.md, "Password roles"):
the peer's password proof did not verify, or we sent our own proof (which
lets the peer test one guess) and the handshake ended before the peer's
proof verified (rejected, timed out, abandoned).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from rolewire.errors import ConfigurationError, PasswordAttemptsExceeded, RoleProofInvalid
from rolewire.roles.base import Direction, Role, RoleKind, proof_input
from rolewire.roles.jpake import JPake

__all__ = [
    "JPAKE_ID_INITIATOR",
    "JPAKE_ID_RESPONDER",
    "PASSWORD_PROOF_SIZE",
    "PasswordExchange",
    "PasswordRateLimiter",
    "PasswordRole",
    "logger",
]

PASSWORD_PROOF_SIZE = 32
#: J-PAKE participant ids: fixed, distinct (RFC 8236 requires it).
JPAKE_ID_INITIATOR = b"rolewire/1 initiator"
JPAKE_ID_RESPONDER = b"rolewire/1 responder"

logger = logging.getLogger("rolewire.password")


def _peer_label(peer: Hashable) -> str:
    return "unknown" if peer is None else str(peer)


class PasswordRateLimiter:
    """Counts failed password attempts per peer and locks a peer out.

    After ``max_failures`` failures within ``window`` seconds the peer is
    refused for ``cooldown`` seconds. At most ``max_peers`` peers are tracked
    (least recently failing forgotten first) so the table cannot grow without
    bound. Thread-safe; share one limiter between roles and handshakes (each
    :class:`PasswordRole` gets its own unless given one).
    """

    def __init__(self, max_failures: int = 5, window: float = 60.0, cooldown: float = 300.0,
                 *, clock: Callable[[], float] = time.monotonic,
                 max_peers: int = 65536) -> None:
        if max_failures < 1 or window <= 0 or cooldown <= 0 or max_peers < 1:
            raise ConfigurationError("rate limiter parameters must be positive")
        self.max_failures = max_failures
        self.window = window
        self.cooldown = cooldown
        self.clock = clock
        self.max_peers = max_peers
        self._failures: OrderedDict[Hashable, deque[float]] = OrderedDict()
        self._locked: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def locked_for(self, peer: Hashable) -> float:
        """Seconds the peer remains locked out (0.0 if it is not)."""
        with self._lock:
            until = self._locked.get(peer)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left <= 0:
                del self._locked[peer]
                return 0.0
            return left

    def check(self, peer: Hashable, role: str) -> None:
        """Raises :class:`PasswordAttemptsExceeded` (and logs the refusal) if
        the peer is locked out."""
        left = self.locked_for(peer)
        if left > 0:
            logger.warning(
                "password attempt refused: peer locked out",
                extra={"event": "password_refused", "peer": _peer_label(peer), "role": role,
                       "locked_for": round(left, 3)})
            raise PasswordAttemptsExceeded("too many failed password attempts; try later")

    def record_failure(self, peer: Hashable, role: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._failures.pop(peer, None) or deque()
            times.append(now)
            while times and times[0] <= now - self.window:
                times.popleft()
            self._failures[peer] = times
            count = len(times)
            while len(self._failures) > self.max_peers:
                self._failures.popitem(last=False)
            locked = count >= self.max_failures
            if locked:
                self._locked[peer] = now + self.cooldown
                times.clear()
                if len(self._locked) > self.max_peers:  # drop expired lockouts
                    for p in [p for p, t in self._locked.items() if t <= now]:
                        del self._locked[p]
        logger.warning("password role proof failed",
                       extra={"event": "password_failure", "peer": _peer_label(peer),
                              "role": role, "failures": count})
        if locked:
            logger.error("peer locked out after repeated password failures",
                         extra={"event": "password_lockout", "peer": _peer_label(peer),
                                "role": role, "failures": count, "locked_for": self.cooldown})

    def failures(self, peer: Hashable) -> int:
        """Failures counted for the peer in the current window."""
        now = self.clock()
        with self._lock:
            times = self._failures.get(peer)
            return 0 if not times else sum(1 for t in times if t > now - self.window)


class PasswordExchange:
    """One J-PAKE run for one password role in one handshake."""

    __slots__ = ("_jpake", "_key", "initiator", "role")

    def __init__(self, role: PasswordRole, jpake: JPake, initiator: bool) -> None:
        self.role = role
        self._jpake = jpake
        self._key: bytes | None = None
        self.initiator = initiator

    def round1(self) -> bytes:
        return self._jpake.round1()

    def round2(self, peer_round1: bytes) -> bytes:
        return self._jpake.round2(peer_round1)

    def finish(self, peer_round2: bytes) -> None:
        material = self._jpake.finish(peer_round2)
        self._key = hashlib.blake2b(material, person=b"rolewire1pwmac").digest()

    def _mac(self, direction: Direction, h: bytes) -> bytes:
        if self._key is None:
            raise ConfigurationError("J-PAKE not finished")
        return hashlib.blake2b(proof_input(RoleKind.PASSWORD, direction, self.role.role_id, h),
                               key=self._key, digest_size=PASSWORD_PROOF_SIZE,
                               person=b"rolewire1pwprf").digest()

    def prove(self, direction: Direction, h: bytes) -> bytes:
        return self._mac(direction, h)

    def verify(self, direction: Direction, h: bytes, proof: bytes) -> None:
        if not hmac.compare_digest(self._mac(direction, h), proof):
            raise RoleProofInvalid("password role proof did not verify")


class PasswordRole(Role):
    """A role proven with a shared password (J-PAKE + key confirmation)."""

    kind = RoleKind.PASSWORD
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
        """Starts J-PAKE for one handshake (call :meth:`PasswordRateLimiter.check`
        first). ``context`` binds the Schnorr proofs to the handshake."""
        my_id, peer_id = ((JPAKE_ID_INITIATOR, JPAKE_ID_RESPONDER) if initiator
                          else (JPAKE_ID_RESPONDER, JPAKE_ID_INITIATOR))
        jpake = JPake(self._password, my_id=my_id, peer_id=peer_id,
                      context=context + self.role_id)
        return PasswordExchange(self, jpake, initiator)
