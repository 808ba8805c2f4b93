"""Attempt budgets for password guessing: sliding-window charges per scope,
lockouts, exponential back-off, and a small pluggable store.

A *scope* is one thing whose guesses are counted: "this peer (an IPv4
address or an IPv6 /64) against this role", or "anyone against this role".
An attempt is *charged* to every scope it belongs to before J-PAKE starts
(so attempts in flight count, and parallel handshakes cannot all pass a
check made before any of them failed), *refunded* when it cannot have
given anybody a guess (the peer's proof verified, or the handshake ended
before any proof was checked), and kept when it failed.

Invariant (``tests/handshake/test_password_budget.py`` holds it with
hypothesis): within any interval of ``window`` seconds, the charges of a
scope that were not refunded never exceed its ``limit``. So the number of
password guesses that can be checked against a role, online or offline,
is at most the role's global limit per window, whatever the attacker does
with addresses, parallelism or message flags.

The store is the only state. :class:`MemoryBudgetStore` (the default) keeps
it in this process; a shared store (another process, a database) implements
:class:`BudgetStore`'s single method, :meth:`BudgetStore.transact`, which
must run the update atomically for all keys it is given. Processes that
share a store must share the clock too (pass a wall clock to the limiter):
charge times are compared across them.
"""

from __future__ import annotations

import abc
import ipaddress
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from rolewire.errors import ConfigurationError

__all__ = [
    "BudgetRecord",
    "BudgetStore",
    "MemoryBudgetStore",
    "ScopePolicy",
    "SqliteBudgetStore",
    "peer_scope",
]

T = TypeVar("T")


def peer_scope(peer: Hashable) -> Hashable:
    """The unit a peer's guesses are counted in: an IPv4 address, the /64 of
    an IPv6 address (one host or LAN usually holds a whole /64), or the peer
    value itself when it is not an IP address (``"host:port"`` strings are
    reduced to the host)."""
    if peer is None:
        return None
    text = str(peer)
    candidates = [text]
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        candidates.append(text[1:text.index("]")])
    elif text.count(":") == 1:  # "v4:port"
        candidates.append(text.rsplit(":", 1)[0])
    for candidate in candidates:
        try:
            addr = ipaddress.ip_address(candidate.split("%", 1)[0])
        except ValueError:
            continue
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(ipaddress.IPv6Network((addr, 64), strict=False))
        return str(addr)
    return peer


@dataclass
class BudgetRecord:
    """The state of one scope. ``charges`` maps a ticket id to the time it
    was charged (oldest first); ``failed`` holds the ids of charges that are
    known failures; ``locked_until`` is the end of the current lockout and
    ``strikes`` the number of lockouts in a row (for back-off)."""

    charges: dict[int, float] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    locked_until: float = 0.0
    strikes: int = 0
    last_lock_end: float = 0.0

    def expire(self, now: float, window: float) -> None:
        """Drops charges older than ``window``."""
        horizon = now - window
        for tid, t in list(self.charges.items()):
            if t > horizon:
                break
            del self.charges[tid]
            self.failed.discard(tid)

    @property
    def idle(self) -> bool:
        return not self.charges and not self.strikes and not self.locked_until


class BudgetStore(abc.ABC):
    """Where budget records live. One method: run ``update`` on the records
    of ``keys`` (fresh :class:`BudgetRecord` objects for unknown keys),
    atomically with respect to every other ``transact`` on any of those
    keys, store the records, and return what ``update`` returned."""

    @abc.abstractmethod
    def transact(self, keys: Sequence[Hashable],
                 update: Callable[[list[BudgetRecord]], T]) -> T:
        """Atomically load, update and store the records of ``keys``."""


class MemoryBudgetStore(BudgetStore):
    """The default store: a dict in this process, under one lock. At most
    ``max_keys`` records are kept; idle ones go first, then the least
    recently used (a role's own record is used by every attempt against the
    role, so it is never the least recently used one)."""

    def __init__(self, max_keys: int = 65536) -> None:
        if max_keys < 2:
            raise ConfigurationError("max_keys must be >= 2")
        self.max_keys = max_keys
        self._records: OrderedDict[Hashable, BudgetRecord] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def transact(self, keys: Sequence[Hashable],
                 update: Callable[[list[BudgetRecord]], T]) -> T:
        with self._lock:
            records = []
            for key in keys:
                record = self._records.pop(key, None)
                if record is None:
                    record = BudgetRecord()
                self._records[key] = record
                records.append(record)
            result = update(records)
            for key, record in zip(keys, records):
                if record.idle:
                    self._records.pop(key, None)
            while len(self._records) > self.max_keys:
                self._records.popitem(last=False)
            return result


class SqliteBudgetStore(BudgetStore):
    """A store shared by processes on one host (e.g. server workers): one
    SQLite file, each :meth:`transact` one ``BEGIN IMMEDIATE`` transaction,
    so the charge-then-check of :meth:`PasswordRateLimiter.begin` is atomic
    across every process that opens ``path``. Records are stored as JSON
    (never pickled: a file another process can write must not run code
    here). Idle records are deleted; beyond ``max_keys`` the least recently
    used ones go. Processes sharing it must share a clock: a wall clock
    (``clock=time.time``) in general; the workers of one
    :func:`rolewire.aio.serve_workers` pool may keep ``time.monotonic``
    (one clock per host there, and they share their parent's). Not
    picklable: open one per process."""

    def __init__(self, path: str | os.PathLike[str], max_keys: int = 65536,
                 timeout: float = 30.0) -> None:
        if max_keys < 2:
            raise ConfigurationError("max_keys must be >= 2")
        self.max_keys = max_keys
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS budget (key TEXT PRIMARY KEY, "
                             "record TEXT NOT NULL, used INTEGER NOT NULL)")
            # MAX(used) on every charge and the least-recently-used eviction
            # read this index instead of scanning the table.
            self._db.execute("CREATE INDEX IF NOT EXISTS budget_used ON budget (used)")

    def close(self) -> None:
        """Closes this process's connection to the file."""
        with self._lock:
            self._db.close()

    @staticmethod
    def _encode(record: BudgetRecord) -> str:
        return json.dumps({"charges": [[t, c] for t, c in record.charges.items()],
                           "failed": sorted(record.failed), "locked_until": record.locked_until,
                           "strikes": record.strikes, "last_lock_end": record.last_lock_end})

    @staticmethod
    def _decode(text: str) -> BudgetRecord:
        data = json.loads(text)
        return BudgetRecord(charges={int(t): float(c) for t, c in data["charges"]},
                            failed={int(t) for t in data["failed"]},
                            locked_until=float(data["locked_until"]),
                            strikes=int(data["strikes"]),
                            last_lock_end=float(data["last_lock_end"]))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM budget").fetchone()[0])

    def transact(self, keys: Sequence[Hashable],
                 update: Callable[[list[BudgetRecord]], T]) -> T:
        # repr() of the limiter's keys (tuples of str/None) is deterministic
        # across processes, unlike hash().
        names = [repr(key) for key in keys]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                records = []
                known = []
                for name in names:
                    row = db.execute("SELECT record FROM budget WHERE key = ?",
                                     (name,)).fetchone()
                    records.append(self._decode(row[0]) if row else BudgetRecord())
                    known.append(row is not None)
                result = update(records)
                used = db.execute("SELECT COALESCE(MAX(used), 0) + 1 FROM budget").fetchone()[0]
                inserted = False
                for name, record, was_known in zip(names, records, known):
                    if record.idle:
                        if was_known:
                            db.execute("DELETE FROM budget WHERE key = ?", (name,))
                    else:
                        db.execute("INSERT OR REPLACE INTO budget (key, record, used) "
                                   "VALUES (?, ?, ?)", (name, self._encode(record), used))
                        inserted = inserted or not was_known
                if inserted:
                    # Only a new key can take the table past max_keys; COUNT(*)
                    # is a full scan in SQLite, so it is not run on every charge.
                    excess = (db.execute("SELECT COUNT(*) FROM budget").fetchone()[0]
                              - self.max_keys)
                    if excess > 0:
                        db.execute("DELETE FROM budget WHERE key IN (SELECT key FROM budget "
                                   "ORDER BY used LIMIT ?)", (excess,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return result


@dataclass(frozen=True)
class ScopePolicy:
    """How one class of scopes is limited: at most ``limit`` charges per
    ``window`` seconds; reaching ``limit`` failures locks the scope for
    ``cooldown`` seconds, doubled for every lockout in a row
    (``backoff=True``) up to ``max_cooldown``. A scope whose last lockout
    ended more than ``max_cooldown`` ago starts again from ``cooldown``."""

    limit: int
    window: float
    cooldown: float
    backoff: bool = False
    max_cooldown: float = 0.0

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window <= 0 or self.cooldown <= 0:
            raise ConfigurationError("budget limit, window and cooldown must be positive")
        if self.backoff and self.max_cooldown < self.cooldown:
            raise ConfigurationError("max_cooldown must be >= cooldown")

    def lock_duration(self, strikes: int) -> float:
        if not self.backoff:
            return self.cooldown
        return min(self.cooldown * float(2 ** min(strikes - 1, 32)), self.max_cooldown)


def new_ticket_id() -> int:
    """A random 64-bit id for one charge (unique across processes sharing a
    store, without coordination)."""
    return int.from_bytes(os.urandom(8), "big")
