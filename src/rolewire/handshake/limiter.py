"""A bound on concurrent half-open handshakes (a responder-side DoS guard).

The adapter acquires a slot before it builds a
:class:`~rolewire.handshake.Responder` (or passes the limiter to the
Responder, which acquires and releases the slot itself). When no slot is
free the adapter answers with :func:`busy_reject` (a Reject with reason BUSY)
and closes, instead of keeping state for the new peer.

Memory per pending responder handshake (docs/PROTOCOL.md, "Policy"):
about 4 KiB with one key role, measured with tracemalloc
(tests/handshake/test_handshake.py::test_pending_handshake_memory asserts
< 16 KiB); so the default of 256 pending handshakes bounds this state to
about 1 MiB.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING

from rolewire.errors import ConfigurationError, TooManyHandshakes
from rolewire.handshake.messages import Reject
from rolewire.handshake.reasons import RejectReason

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["HandshakeLimiter", "HandshakeSlot", "busy_reject"]


def busy_reject() -> bytes:
    """The Reject message (reason BUSY) for a peer that got no slot."""
    return Reject(RejectReason.BUSY).encode()


class HandshakeSlot:
    """One acquired slot; :meth:`release` is idempotent."""

    __slots__ = ("_limiter", "_released", "peer")

    def __init__(self, limiter: HandshakeLimiter, peer: Hashable) -> None:
        self._limiter = limiter
        self.peer = peer
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self.peer)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class HandshakeLimiter:
    """At most ``max_pending`` handshakes in progress, and at most
    ``max_per_peer`` from one peer. Thread-safe."""

    def __init__(self, max_pending: int = 256, max_per_peer: int = 16) -> None:
        if max_pending < 1 or max_per_peer < 1:
            raise ConfigurationError("handshake limits must be >= 1")
        self.max_pending = max_pending
        self.max_per_peer = max_per_peer
        self._pending = 0
        self._per_peer: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    def acquire(self, peer: Hashable = None) -> HandshakeSlot:
        """Takes a slot or raises :class:`TooManyHandshakes`."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise TooManyHandshakes("too many handshakes in progress")
            if self._per_peer.get(peer, 0) >= self.max_per_peer:
                raise TooManyHandshakes("too many handshakes in progress from this peer")
            self._pending += 1
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return HandshakeSlot(self, peer)

    def _release(self, peer: Hashable) -> None:
        with self._lock:
            self._pending -= 1
            n = self._per_peer.get(peer, 0) - 1
            if n <= 0:
                self._per_peer.pop(peer, None)
            else:
                self._per_peer[peer] = n
