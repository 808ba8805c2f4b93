"""End-user context for rolewire calls (issue 18, thesis section 5.2.2).

A call may carry the end user it acts for: a token from an identity provider
or security token service in the call's metadata (``rw-user``), plus the
services it passed through (``rw-act``). A :class:`~rolewire.services.Service`
given an :class:`EndUserVerifier` verifies it (cached per connection until
the token expires) and hands it to handlers as ``call.end_user``; calls the
handler makes carry it on automatically, each hop recorded. Operations can
require it: ``@svc.operation("charge", roles=["payment"],
user=require_claim("scope", "orders:write"))``.

See docs/enduser.md. Token verification (:mod:`rolewire.enduser.tokens`)
needs PyJWT (``pip install 'rolewire[enduser]'``); it is imported on first use,
so the context API works without it.
"""

from __future__ import annotations

from typing import Any

from rolewire.enduser.context import (
    ACT_KEY,
    MAX_HOPS,
    USER_KEY,
    ClaimRequirement,
    EndUser,
    EndUserClaimMissing,
    EndUserContextMismatch,
    EndUserRejected,
    EndUserRequired,
    Hop,
    acting_for,
    current_end_user,
    propagation_metadata,
    require_claim,
    token_metadata,
)

__all__ = [
    "ACT_KEY",
    "MAX_HOPS",
    "USER_KEY",
    "ClaimRequirement",
    "EndUser",
    "EndUserAudienceMismatch",
    "EndUserClaimMissing",
    "EndUserContextMismatch",
    "EndUserRejected",
    "EndUserRequired",
    "EndUserScopeWidened",
    "EndUserTokenExpired",
    "EndUserTokenInvalid",
    "EndUserTokenNotYetValid",
    "EndUserUnknownIssuer",
    "EndUserVerifier",
    "Hop",
    "Issuer",
    "TokenService",
    "acting_for",
    "current_end_user",
    "propagation_metadata",
    "require_claim",
    "token_metadata",
]

_TOKENS = {"EndUserAudienceMismatch", "EndUserScopeWidened", "EndUserTokenExpired",
           "EndUserTokenInvalid", "EndUserTokenNotYetValid", "EndUserUnknownIssuer",
           "EndUserVerifier", "Issuer", "TokenService"}


def __getattr__(name: str) -> Any:
    if name in _TOKENS:
        from rolewire.enduser import tokens

        return getattr(tokens, name)
    raise AttributeError(f"module 'rolewire.enduser' has no attribute {name!r}")
