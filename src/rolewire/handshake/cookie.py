"""The stateless cookie round trip (docs/PROTOCOL.md, "Cookie"), in the style
of WireGuard's cookie reply.

A responder under load (the adapter says so: ``Responder(...,
under_load=True)``) answers a Hello that carries no valid cookie MAC with a
:class:`~rolewire.handshake.messages.CookieReply` and keeps nothing for it:
no key exchange, no J-PAKE, no transcript. The initiator sends its Hello
again with ``cookie_mac = MAC(cookie, Hello)``; the responder checks it
and goes on. The cookie is a MAC over the peer's address under a secret
that rotates every ``rotation`` seconds (the previous secret stays valid
for one more period), so a cookie proves that the peer receives what is
sent to its address, and expires. Time is passed in (``now``); the object
never reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Hashable

from rolewire import entropy
from rolewire.errors import ConfigurationError

__all__ = ["COOKIE_SIZE", "CookieChecker", "cookie_mac"]

COOKIE_SIZE = 16
_SECRET_SIZE = 32


def cookie_mac(cookie: bytes, data: bytes) -> bytes:
    """``BLAKE2b-128(key=cookie, data=Hello body before the cookie field,
    person="rolewire2cookmac")``."""
    return hashlib.blake2b(data, key=cookie, digest_size=COOKIE_SIZE,
                           person=b"rolewire2cookmac").digest()


class CookieChecker:
    """Makes and checks cookies for one responder process (share one between
    its handshakes). Thread-safe.

    Args:
        rotation: seconds between secret rotations (WireGuard: 120).
    """

    def __init__(self, rotation: float = 120.0) -> None:
        if rotation <= 0:
            raise ConfigurationError("cookie rotation must be > 0 seconds")
        self.rotation = rotation
        self._secret = entropy.random_bytes(_SECRET_SIZE, "cookie secret")
        self._previous: bytes | None = None
        self._rotated: float | None = None
        self._lock = threading.Lock()

    def _secrets(self, now: float) -> tuple[bytes, bytes | None]:
        with self._lock:
            if self._rotated is None:
                self._rotated = now
            elapsed = now - self._rotated
            if elapsed >= self.rotation:
                # One period later the current secret becomes the previous one;
                # two periods later nothing made before is valid.
                self._previous = self._secret if elapsed < 2 * self.rotation else None
                self._secret = entropy.random_bytes(_SECRET_SIZE, "cookie secret")
                self._rotated = now
            return self._secret, self._previous

    @staticmethod
    def _make(secret: bytes, peer: Hashable) -> bytes:
        return hashlib.blake2b(str(peer).encode("utf-8", "replace"), key=secret,
                               digest_size=COOKIE_SIZE, person=b"rolewire2cookie").digest()

    def cookie(self, peer: Hashable, now: float) -> bytes:
        """The cookie for ``peer`` (its address) at time ``now``."""
        secret, _ = self._secrets(now)
        return self._make(secret, peer)

    def valid(self, peer: Hashable, mac: bytes, data: bytes, now: float) -> bool:
        """True if ``mac`` is ``cookie_mac(cookie, data)`` for a cookie of
        ``peer`` under the current or the previous secret."""
        if len(mac) != COOKIE_SIZE:
            return False
        ok = False
        for secret in self._secrets(now):
            if secret is not None:
                ok |= hmac.compare_digest(cookie_mac(self._make(secret, peer), data), mac)
        return ok
