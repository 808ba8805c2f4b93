"""A pool of :class:`~rolewire.aio.Channel` connections to one peer, for many
concurrent callers: a bounded number of connections, reconnection with
exponential backoff and full jitter, typed errors instead of hangs, and an
opt-in single retry for idempotent calls.

Built on the public :func:`rolewire.connect` / :class:`~rolewire.Channel`
API only. Example::

    async with Pool("127.0.0.1", 7001, config, max_connections=4) as pool:
        reply = await pool.call("charge", b"19.90", timeout=5)
        rows = await pool.call("list", idempotent=True)   # retried once if the link dies

What happens when things break:

* the server closed an idle session (its ``idle_timeout``), restarted, or
  the network dropped: the dead channel leaves the pool; the next call opens
  a new one;
* a call in flight on a connection that dies fails with
  :class:`~rolewire.errors.ConnectionClosed` (never a hang); with
  ``idempotent=True`` it is sent once more, on another connection;
* connecting fails (refused, handshake rejected, timeout): the call fails
  with :class:`PeerUnavailable` (the cause attached), and the pool waits
  ``backoff(attempt)`` before the next attempt: ``uniform(0, min(max_backoff,
  initial_backoff * 2**attempt))`` ("full jitter"), so clients that lost the
  same server do not come back in lockstep. Calls made during the wait
  wait for it when their ``timeout`` allows, else fail at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rolewire.aio import Channel, connect
from rolewire.errors import (
    ConfigurationError,
    ConnectionClosed,
    HandshakeError,
    RolewireError,
    ServiceUnavailable,
)
from rolewire.handshake.config import HandshakeConfig

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["PeerUnavailable", "Pool", "backoff_delay"]


class PeerUnavailable(ConnectionClosed):
    """No connection to the peer could be opened (the cause is attached as
    ``__cause__``: refused, rejected handshake, timeout), or the pool is
    waiting out its reconnect backoff and the call's timeout ends first."""


def backoff_delay(attempt: int, initial: float, maximum: float,
                  rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 for the first
    retry): full jitter, ``rand() * min(maximum, initial * 2**attempt)``."""
    if attempt < 0 or initial <= 0 or maximum < initial:
        raise ConfigurationError("backoff needs attempt >= 0 and 0 < initial <= maximum")
    ceiling = maximum if attempt >= 64 else min(maximum, initial * (2 ** attempt))
    return rand() * ceiling


_RETRYABLE = (ConnectionClosed, ServiceUnavailable)


class Pool:
    """Up to ``max_connections`` channels to ``host:port``.

    A call goes to the open channel with the fewest calls pending; a new
    connection is opened only when every channel has calls pending and the
    bound allows it (so a lightly loaded pool uses one connection).

    Args:
        config: the :class:`HandshakeConfig` every connection uses.
        max_connections: bound on connections (open or being opened).
        connect_timeout: seconds for TCP connect plus handshake.
        initial_backoff: the first reconnect backoff after a failed
            connection attempt (see :func:`backoff_delay`); a successful
            connection resets it.
        max_backoff: the longest backoff.
        rand: the jitter source (tests pass a fixed one).
    """

    def __init__(self, host: str, port: int, config: HandshakeConfig, *,
                 max_connections: int = 4, connect_timeout: float = 10.0,
                 initial_backoff: float = 0.1, max_backoff: float = 10.0,
                 rand: Callable[[], float] = random.random) -> None:
        if max_connections < 1:
            raise ConfigurationError("max_connections must be >= 1")
        if connect_timeout <= 0:
            raise ConfigurationError("connect_timeout must be > 0")
        backoff_delay(0, initial_backoff, max_backoff)  # validates the pair
        self.host, self.port, self.config = host, port, config
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.initial_backoff, self.max_backoff = initial_backoff, max_backoff
        self._rand = rand
        self._channels: list[Channel] = []
        self._connecting = 0
        self._failures = 0
        self._next_attempt = 0.0  # loop time before which no attempt is made
        self._changed = asyncio.Event()
        self._closed = False
        #: Counters: connections opened, connection attempts that failed,
        #: calls retried (idempotent), dead channels dropped.
        self.stats = {"connects": 0, "connect_failures": 0, "retries": 0, "dropped": 0}

    # -- public ---------------------------------------------------------------------------
    @property
    def connections(self) -> int:
        """Open channels right now."""
        self._prune()
        return len(self._channels)

    async def call(self, operation: str, body: bytes = b"", *, timeout: float | None = None,
                   idempotent: bool = False,
                   metadata: Mapping[str, bytes] | None = None) -> bytes:
        """:meth:`Channel.call` on a pooled connection. ``timeout`` bounds
        the whole call, waiting for a connection included. ``idempotent``:
        if the connection dies before the reply (or the server answers
        UNAVAILABLE because it is draining), send it once more on another
        connection.

        Raises what :meth:`Channel.call` raises, plus :class:`PeerUnavailable`;
        ``TimeoutError`` when ``timeout`` ends first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            channel = await self._acquire(deadline)
            left = None if deadline is None else max(deadline - loop.time(), 0.001)
            try:
                return await channel.call(operation, body, timeout=left, metadata=metadata)
            except _RETRYABLE:
                self._drop(channel)
                if attempt + 1 == attempts:
                    raise
                self.stats["retries"] += 1
        raise AssertionError("unreachable")  # pragma: no cover

    async def notify(self, operation: str, body: bytes = b"", *,
                     timeout: float | None = None) -> None:
        """:meth:`Channel.notify` on a pooled connection (never retried: a
        notification has no reply that would say whether it arrived)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        channel = await self._acquire(deadline)
        try:
            if timeout is None:
                await channel.notify(operation, body)
            else:
                await asyncio.wait_for(channel.notify(operation, body),
                                       max(deadline - loop.time(), 0.001))  # type: ignore[operator]
        except ConnectionClosed:
            self._drop(channel)
            raise

    async def close(self, timeout: float = 5.0) -> None:
        """Close every channel gracefully (calls in flight finish first)."""
        self._closed = True
        channels, self._channels = self._channels, []
        self._changed.set()
        if channels:
            await asyncio.gather(*(c.close(timeout) for c in channels), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"Pool({self.host}:{self.port}, connections={len(self._channels)}/"
                f"{self.max_connections})")

    # -- internals ------------------------------------------------------------------------
    def _prune(self) -> None:
        alive = [c for c in self._channels if not c.closed]
        self.stats["dropped"] += len(self._channels) - len(alive)
        self._channels = alive

    def _drop(self, channel: Channel) -> None:
        if channel in self._channels:
            self._channels.remove(channel)
            self.stats["dropped"] += 1
            channel.abort()
            self._changed.set()

    def _pick(self) -> Channel | None:
        self._prune()
        if not self._channels:
            return None
        return min(self._channels, key=lambda c: c.pending_calls)

    async def _acquire(self, deadline: float | None) -> Channel:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ConnectionClosed("the pool is closed")
            best = self._pick()
            room = len(self._channels) + self._connecting < self.max_connections
            if best is not None and (best.pending_calls == 0 or not room):
                return best
            if room:
                wait = self._next_attempt - loop.time()
                if wait > 0:
                    if best is not None:
                        return best  # backing off: use what we have
                    if deadline is not None and loop.time() + wait > deadline:
                        raise PeerUnavailable(
                            f"{self.host}:{self.port}: reconnecting in {wait:.2f}s, after "
                            "the call's timeout")
                    await asyncio.sleep(wait)
                    continue
                return await self._open(deadline)
            # Every slot is being connected: wait for one to finish.
            self._changed.clear()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError("no pooled connection became available in time")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                raise TimeoutError("no pooled connection became available in time") from None

    async def _open(self, deadline: float | None) -> Channel:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout
        if deadline is not None:
            timeout = max(min(timeout, deadline - loop.time()), 0.001)
        self._connecting += 1
        try:
            channel = await connect(self.host, self.port, self.config, timeout=timeout)
        except (RolewireError, OSError, asyncio.TimeoutError) as exc:
            self.stats["connect_failures"] += 1
            self._next_attempt = loop.time() + backoff_delay(
                min(self._failures, 64), self.initial_backoff, self.max_backoff, self._rand)
            self._failures += 1
            kind = "handshake failed" if isinstance(exc, HandshakeError) else "cannot connect"
            raise PeerUnavailable(f"{self.host}:{self.port}: {kind}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._connecting -= 1
            self._changed.set()
        if self._closed:
            await channel.close()
            raise ConnectionClosed("the pool is closed")
        self._failures = 0
        self._next_attempt = 0.0
        self.stats["connects"] += 1
        self._channels.append(channel)
        return channel
