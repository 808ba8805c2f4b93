"""Role authorization per route: a route table for plain ASGI apps and a
dependency for FastAPI (``Depends(require_roles("payment"))``).

Semantics are the services' (rolewire.services): a caller needs **at least
one** of the listed roles; :data:`~rolewire.services.ANY_AUTHENTICATED` and
:data:`~rolewire.services.UNRESTRICTED` stand instead of a list. A refusal is
HTTP 403 with ``Rolewire-Error: forbidden`` and never names a role.

This module deliberately has no ``from __future__ import annotations``: the
dependency's ``request`` annotation must be a real class for FastAPI.
"""

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rolewire.errors import ConfigurationError
from rolewire.services import ANY_AUTHENTICATED, UNRESTRICTED, Access

__all__ = ["FORBIDDEN_BODY", "RouteTable", "peer_of", "require_roles"]

audit_log = logging.getLogger("rolewire.audit")

#: The body of every 403 the binding produces (no role names, no detail).
FORBIDDEN_BODY = b'{"detail":"forbidden"}'

Allowed = frozenset[str] | Access


def _allowed(roles: Iterable[str] | Access | str) -> Allowed:
    if isinstance(roles, Access):
        return roles
    if isinstance(roles, str):
        if roles == UNRESTRICTED.value:
            return UNRESTRICTED
        if roles == ANY_AUTHENTICATED.value:
            return ANY_AUTHENTICATED
        roles = [roles]
    allowed = frozenset(roles)
    if not allowed:
        raise ConfigurationError("a route needs at least one role (or an Access marker)")
    return allowed


def permits(allowed: Allowed, roles: frozenset[str]) -> bool:
    """Whether a caller holding ``roles`` passes ``allowed``."""
    if allowed is UNRESTRICTED:
        return True
    if allowed is ANY_AUTHENTICATED:
        return bool(roles)
    assert isinstance(allowed, frozenset)
    return not allowed.isdisjoint(roles)


class RouteTable:
    """Who may call which route, for :class:`~rolewire.http.RolewireMiddleware`.

    Rules are ``(method, pattern, roles)``: ``method`` an HTTP method or
    ``"*"``; ``pattern`` an exact path or a prefix ending in ``/*``. The
    first matching rule decides; a request no rule matches is refused (there
    is no default, as for services). A mapping ``{pattern: roles}`` means
    method ``"*"``.

    Example::

        RouteTable([("POST", "/charge", ["payment"]),
                    ("GET", "/status", ANY_AUTHENTICATED),
                    ("*", "/public/*", UNRESTRICTED)])
    """

    def __init__(self, rules: Mapping[str, Any] | Iterable[tuple[str, str, Any]]) -> None:
        if isinstance(rules, Mapping):
            items = [("*", pattern, roles) for pattern, roles in rules.items()]
        else:
            items = list(rules)
        self._rules: list[tuple[str, str, bool, Allowed]] = []
        for method, pattern, roles in items:
            if not pattern.startswith("/"):
                raise ConfigurationError(f"route pattern must start with '/': {pattern!r}")
            prefix = pattern.endswith("/*")
            self._rules.append((method.upper(), pattern[:-1] if prefix else pattern, prefix,
                                _allowed(roles)))

    def lookup(self, method: str, path: str) -> Allowed | None:
        """The access rule for a request, or None if no rule matches."""
        method = method.upper()
        for rule_method, pattern, prefix, allowed in self._rules:
            if rule_method not in ("*", method):
                continue
            if (path.startswith(pattern) if prefix else path == pattern):
                return allowed
        return None

    def permits(self, method: str, path: str, roles: frozenset[str]) -> bool:
        allowed = self.lookup(method, path)
        return allowed is not None and permits(allowed, roles)


def peer_of(scope: Mapping[str, Any]) -> Any:
    """The :class:`~rolewire.http.PeerIdentity` the middleware put into an
    ASGI scope, or None."""
    return scope.get("rolewire")


def require_roles(*roles: str) -> Callable[..., Any]:
    """A FastAPI dependency: the request must come from a peer holding at
    least one of ``roles`` (no argument: any verified role). Returns the
    :class:`~rolewire.http.PeerIdentity`; raises HTTP 403 otherwise::

        @app.post("/charge")
        async def charge(peer = Depends(require_roles("payment"))): ...
    """
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    allowed: Allowed = frozenset(roles) if roles else ANY_AUTHENTICATED

    def dependency(request: Request) -> Any:
        peer = request.scope.get("rolewire")
        if peer is None or not permits(allowed, peer.roles):
            audit_log.warning("http request forbidden", extra={
                "event": "forbidden", "path": request.url.path,
                "session": getattr(peer, "session_id", "")})
            raise HTTPException(403, detail="forbidden", headers={"Rolewire-Error": "forbidden"})
        return peer

    dependency.__name__ = "require_roles"
    return dependency
