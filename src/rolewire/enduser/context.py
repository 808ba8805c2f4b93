"""The end user a call acts for, as handlers see it, and its propagation.

A verified end-user context (:class:`EndUser`) is what a handler reads as
``call.end_user``. While a handler runs, its context is the *current* one
(a :mod:`contextvars` variable, so it follows ``await`` and tasks the
handler starts); every call the handler makes on a
:class:`~rolewire.aio.Channel` then carries it on automatically:
:func:`propagation_metadata` adds the token (metadata key ``rw-user``) and
the hops so far with the current service on top (``rw-act``, nested like
RFC 8693's ``act`` claim: ``{"sub": "payment", "act": {"sub": "user-api"}}``).

This module needs no JWT library; verification lives in
:mod:`rolewire.enduser.tokens`.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rolewire.errors import RolewireError

__all__ = [
    "ACT_KEY",
    "MAX_HOPS",
    "USER_KEY",
    "ClaimRequirement",
    "EndUser",
    "EndUserClaimMissing",
    "EndUserContextMismatch",
    "EndUserRejected",
    "EndUserRequired",
    "Hop",
    "acting_for",
    "current_end_user",
    "has_current",
    "parse_act",
    "propagation_metadata",
    "require_claim",
    "token_metadata",
]

#: Metadata key of the end user's token (compact JWS, ASCII).
USER_KEY = "rw-user"
#: Metadata key of the hop chain (JSON, RFC 8693 ``act`` nesting).
ACT_KEY = "rw-act"
#: Longest hop chain accepted or produced.
MAX_HOPS = 16


class EndUserRejected(RolewireError):
    """An end-user context was refused. Subclasses say why; messages never
    contain the token."""


class EndUserRequired(EndUserRejected):
    """The operation needs an end-user context and the call carries none
    (or it was stripped on the way)."""


class EndUserClaimMissing(EndUserRejected):
    """The verified end user lacks a claim value the operation requires."""


class EndUserContextMismatch(EndUserRejected):
    """The context does not belong to this call: a per-hop token exchanged
    for another caller or audience, or a malformed hop chain."""


@dataclass(frozen=True)
class Hop:
    """One service the context passed through: its name as it was recorded
    and, where known, the roles it proved (to the next hop, or to the STS
    that exchanged the token). ``verified``: the name/roles come from a
    signature (a per-hop token's ``act``) or from this receiver's own
    handshake (the immediate caller's roles), not only from a caller's word."""

    service: str
    roles: frozenset[str] = frozenset()
    verified: bool = False


@dataclass(frozen=True)
class EndUser:
    """A verified end-user context.

    Attributes:
        subject: the user (``sub``).
        issuer: the identity provider / STS that signed the token (``iss``).
        claims: every claim of the token (read-only).
        chain: the services the context passed through, the immediate caller
            first (see :class:`Hop`).
        exchanged: the token was exchanged for this hop (thesis variant b,
            bound to this service); False: forwarded unchanged (variant a).
        expires_at: ``exp``.
        token: the raw token, to pass on.
        digest: SHA-256 of the token (what signed calls cover).
    """

    subject: str
    issuer: str
    claims: Mapping[str, Any] = field(repr=False)
    chain: tuple[Hop, ...] = ()
    exchanged: bool = False
    expires_at: float = 0.0
    token: str = field(default="", repr=False)
    digest: bytes = field(default=b"", repr=False)

    @cached_property
    def scope(self) -> frozenset[str]:
        """The space-separated ``scope`` claim as a set."""
        value = self.claims.get("scope")
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(str(v) for v in value)
        return frozenset()

    def has(self, claim: str, value: Any = None) -> bool:
        """True if the claim is present and (if ``value`` is given) holds it:
        for ``scope`` or a list-valued claim, as one of its values."""
        if claim not in self.claims:
            return False
        if value is None:
            return True
        if claim == "scope":
            return str(value) in self.scope
        actual = self.claims[claim]
        if isinstance(actual, list):
            return value in actual
        return bool(actual == value)

    @property
    def path(self) -> tuple[str, ...]:
        """The services' names, the immediate caller first."""
        return tuple(hop.service for hop in self.chain)


@dataclass(frozen=True)
class ClaimRequirement:
    """What an operation requires of the end user (``user=`` of
    :meth:`rolewire.services.Service.operation`): a verified context whose
    claims hold every ``(claim, value)`` pair."""

    claims: tuple[tuple[str, Any], ...] = ()

    def check(self, user: EndUser | None) -> None:
        """Raises :class:`EndUserRequired` or :class:`EndUserClaimMissing`."""
        if user is None:
            raise EndUserRequired("this operation requires an end-user context")
        for claim, value in self.claims:
            if not user.has(claim, value):
                wanted = claim if value is None else f"{claim}={value}"
                raise EndUserClaimMissing(f"the end user lacks {wanted}")

    def describe(self) -> str:
        if not self.claims:
            return "an end user"
        return ", ".join(c if v is None else f"{c}={v}" for c, v in self.claims)


def require_claim(claim: str | None = None, value: Any = None,
                  **more: Any) -> ClaimRequirement:
    """A requirement on the end user: ``require_claim("scope", "orders:write")``
    (the scope holds that value), ``require_claim("email_verified", True)``,
    ``require_claim()`` (any verified end user), or several at once as
    keywords (``require_claim(scope="orders:write", tier="gold")``)."""
    pairs: list[tuple[str, Any]] = []
    if claim is not None:
        pairs.append((claim, value))
    pairs.extend(more.items())
    return ClaimRequirement(tuple(pairs))


# --- the current context ------------------------------------------------------------

_current: contextvars.ContextVar[tuple[EndUser, str] | None] = contextvars.ContextVar(
    "rolewire_end_user", default=None)


def has_current() -> bool:
    """True while a handler with an end-user context runs (cheap check for
    the channel's fast path)."""
    return _current.get() is not None


def current_end_user() -> EndUser | None:
    """The end user of the call being handled (None outside a handler or
    for a call without one)."""
    value = _current.get()
    return value[0] if value is not None else None


@contextmanager
def acting_for(user: EndUser | None, service: str) -> Iterator[None]:
    """Make ``user`` the current context of ``service`` for the ``with``
    block (the service layer does this around each handler; use it to act
    for a user outside one)."""
    token = _current.set((user, service) if user is not None else None)
    try:
        yield
    finally:
        _current.reset(token)


def set_current(user: EndUser | None, service: str) -> contextvars.Token[Any]:
    """:func:`acting_for` without the ``with`` (the service layer's fast
    path); undo with :func:`reset_current`."""
    return _current.set((user, service) if user is not None else None)


def reset_current(token: contextvars.Token[Any]) -> None:
    _current.reset(token)


def _act_json(chain: tuple[Hop, ...]) -> dict[str, Any] | None:
    act: dict[str, Any] | None = None
    for hop in reversed(chain[:MAX_HOPS]):
        entry: dict[str, Any] = {"sub": hop.service}
        if act is not None:
            entry["act"] = act
        act = entry
    return act


def token_metadata(token: str, chain: tuple[Hop, ...] = ()) -> dict[str, bytes]:
    """The metadata entries that carry ``token`` (and a hop chain)."""
    meta = {USER_KEY: token.encode("ascii")}
    act = _act_json(chain)
    if act is not None:
        meta[ACT_KEY] = json.dumps(act, separators=(",", ":")).encode()
    return meta


def propagation_metadata(metadata: Mapping[str, bytes]) -> Mapping[str, bytes]:
    """``metadata`` plus the current end-user context, with the current
    service recorded as the latest hop. Unchanged outside a handler with a
    context, or if the caller set ``rw-user`` itself (e.g. a token it
    exchanged for the next hop)."""
    value = _current.get()
    if value is None or USER_KEY in metadata:
        return metadata
    user, service = value
    if user.exchanged:
        # A per-hop token is bound to *this* service: forwarding it would be
        # refused. The handler must exchange it for the next audience.
        return metadata
    chain = (Hop(service),) + user.chain
    if len(chain) > MAX_HOPS:
        raise EndUserContextMismatch(f"the end-user context passed more than {MAX_HOPS} hops")
    out = dict(metadata)
    out.update(token_metadata(user.token, chain))
    return out


def parse_act(value: Any) -> tuple[Hop, ...]:
    """An ``act`` nesting (RFC 8693) as hops, the latest first. The optional
    ``rw_roles`` member (a list) gives the roles an STS saw the actor prove.
    Raises :class:`EndUserContextMismatch` if malformed or too deep."""
    hops: list[Hop] = []
    while value is not None:
        if not isinstance(value, dict) or not isinstance(value.get("sub"), str) \
                or len(hops) >= MAX_HOPS:
            raise EndUserContextMismatch("malformed or too deep act chain")
        roles = value.get("rw_roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise EndUserContextMismatch("malformed rw_roles in act chain")
        hops.append(Hop(value["sub"], frozenset(roles)))
        value = value.get("act")
    return tuple(hops)


def parse_act_metadata(raw: bytes | None) -> tuple[Hop, ...]:
    """The ``rw-act`` metadata entry as hops (empty if absent)."""
    if raw is None:
        return ()
    try:
        return parse_act(json.loads(raw))
    except (ValueError, UnicodeDecodeError):
        raise EndUserContextMismatch("rw-act is not JSON") from None
