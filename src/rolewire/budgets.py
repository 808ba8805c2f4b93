"""Per-connection and per-peer budgets against abuse (sans-IO).

Small policy objects that a transport (``rolewire.aio`` today, the
``protocol`` connection core tomorrow) consults. None of them reads a clock:
every call that depends on time takes ``now`` (seconds on any monotonic
origin, e.g. ``loop.time()``), so they are deterministic in tests.

- :class:`TokenBucket`: the primitive (``rate`` tokens per second, at most
  ``capacity``).
- :class:`CallGuard`: one per connection. Refused calls (forbidden or
  unknown operations) are charged to it; it decides which audit lines are
  written (the rest are counted, for one summary line) and when the
  connection has refused calls past its threshold and must be closed.
- :class:`PeerBudget`: a bounded table of buckets keyed by peer, e.g. the
  handshake-rate budget of a server.
- :func:`peer_group`: the key a per-peer budget uses for an address (IPv6
  peers grouped by /64, since one host usually owns a whole /64).

Records that fail to authenticate are counted by the session itself
(:data:`rolewire.session.INTEGRITY_LIMIT`), which closes past the limit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable

from rolewire.errors import ConfigurationError

__all__ = [
    "CallGuard",
    "PeerBudget",
    "TokenBucket",
    "peer_group",
]


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; starts full.

    Time that goes backwards (a ``now`` smaller than the last one) adds
    nothing, so a bad clock can only make the bucket stricter."""

    __slots__ = ("_stamp", "capacity", "rate", "tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        if rate < 0 or capacity < 1:
            raise ConfigurationError("a token bucket needs rate >= 0 and capacity >= 1")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self._stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self._stamp is None:
            self._stamp = now
            return
        elapsed = now - self._stamp
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
            self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; False otherwise
        (nothing taken)."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def full(self, now: float) -> bool:
        """True if the bucket has refilled completely (its state carries no
        information any more and may be forgotten)."""
        self._refill(now)
        return self.tokens >= self.capacity


class CallGuard:
    """The refused-call budget of one connection.

    Each refused call (a forbidden operation or an unknown one: the two are
    charged alike so that the guard's reaction does not tell them apart) is
    passed to :meth:`refuse`:

    - its audit line is written while the log budget lasts (``log_burst``
      lines, then ``log_per_second``); the others are counted, and the
      count goes into the next line written (field ``suppressed``) and into
      :attr:`suppressed_total` for one summary line when the connection
      closes;
    - the refusal budget (``max_refusals`` at once, refilled at
      ``refusals_per_second``) running out sets :attr:`exhausted`: the
      connection keeps sending refused calls and should be closed.

    Defaults: 20 audit lines, then one every 5 s; a connection is closed
    after more than 100 refused calls in a burst or a sustained rate above
    one per second.
    """

    __slots__ = ("_log", "_refusals", "_suppressed", "exhausted", "refused",
                 "suppressed_total")

    def __init__(self, *, max_refusals: int = 100, refusals_per_second: float = 1.0,
                 log_burst: int = 20, log_per_second: float = 0.2) -> None:
        self._refusals = TokenBucket(refusals_per_second, max_refusals)
        self._log = TokenBucket(log_per_second, log_burst)
        self._suppressed = 0
        #: Refused calls charged so far.
        self.refused = 0
        #: Audit lines dropped over the connection's life.
        self.suppressed_total = 0
        #: The refusal budget ran out: close the connection.
        self.exhausted = False

    def refuse(self, now: float) -> int | None:
        """Charge one refused call at time ``now``. Returns None if its audit
        line must be dropped, else the number of lines dropped since the
        last one written (usually 0)."""
        self.refused += 1
        if not self._refusals.take(now):
            self.exhausted = True
        if self._log.take(now):
            dropped, self._suppressed = self._suppressed, 0
            return dropped
        self._suppressed += 1
        self.suppressed_total += 1
        return None


class PeerBudget:
    """A token bucket per peer key (``rate`` per second, ``burst`` at once),
    in a table of at most ``max_peers`` entries: when it is full, buckets
    that have refilled are forgotten, and if none has, the oldest entries
    are (an attacker cycling through addresses then only resets buckets it
    would have refilled anyway after ``burst / rate`` seconds)."""

    def __init__(self, rate: float, burst: int, *, max_peers: int = 65536) -> None:
        if max_peers < 1:
            raise ConfigurationError("max_peers must be >= 1")
        TokenBucket(rate, burst)  # validates
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: dict[Hashable, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, peer: Hashable, now: float) -> bool:
        """Charge one event (e.g. a handshake) to ``peer``; False if its
        budget is spent."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= self.max_peers:
                self._prune(now)
            bucket = self._buckets[peer] = TokenBucket(self.rate, self.burst)
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
        excess = len(self._buckets) - self.max_peers + 1
        if excess > 0:
            for key in list(self._buckets)[:excess]:
                del self._buckets[key]


def peer_group(host: str) -> str:
    """The key that per-peer limits use for an address: an IPv4 address as
    is (also when IPv4-mapped in IPv6), an IPv6 address as its /64 prefix,
    anything else (a Unix socket path, "?") unchanged."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
