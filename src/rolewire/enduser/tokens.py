"""Verifying end-user tokens: standard JWTs from configured issuers, keys
from JWKS files (PyJWT; ``pip install 'rolewire[enduser]'``).

An :class:`Issuer` is a name (the tokens' ``iss``) and its JSON Web Key Set.
:class:`EndUserVerifier` checks, for a token received in call metadata:

1. size (≤ 8 KiB) and form (compact JWS);
2. ``iss`` is a configured issuer (:class:`EndUserUnknownIssuer`);
3. the signature, with the issuer's key named by ``kid`` (or its only key),
   with the algorithm that key's type implies — RSA → ``RS256``, EC P-256 →
   ``ES256``, Ed25519 → ``EdDSA``; a header naming another algorithm (``none``,
   ``HS256`` with the public key as secret, ...) is refused
   (:class:`EndUserTokenInvalid`);
4. ``exp`` (:class:`EndUserTokenExpired`) and ``nbf``/``iat``
   (:class:`EndUserTokenNotYetValid`) with the configured clock skew;
5. ``aud`` holds this service's name or one of the audiences accepted for
   forwarded tokens (:class:`EndUserAudienceMismatch`);
6. per-hop tokens (thesis variant b: ``aud`` = this service and an ``act``
   chain): the latest actor's ``rw_roles`` (the roles the STS saw it prove)
   must all have been proven by the caller to *this* receiver too
   (:class:`~rolewire.enduser.context.EndUserContextMismatch`);
   ``require_exchanged=True`` refuses forwarded tokens altogether.

Steps 1–4 are cached per connection, keyed by the token's SHA-256, until the
token expires (step 5–6 are set lookups and run on every call).

:class:`TokenService` is a minimal identity provider / STS for tests and the
demo: it issues tokens, exchanges them per hop (RFC 8693 style) and writes
its JWKS.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from rolewire.enduser.context import (
    ACT_KEY,
    USER_KEY,
    EndUser,
    EndUserContextMismatch,
    EndUserRejected,
    Hop,
    parse_act,
    parse_act_metadata,
)
from rolewire.errors import ConfigurationError

__all__ = [
    "ALGORITHMS",
    "MAX_TOKEN",
    "EndUserAudienceMismatch",
    "EndUserScopeWidened",
    "EndUserTokenExpired",
    "EndUserTokenInvalid",
    "EndUserTokenNotYetValid",
    "EndUserUnknownIssuer",
    "EndUserVerifier",
    "Issuer",
    "TokenService",
]

#: JWS algorithms accepted for end-user tokens.
ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: Largest end-user token accepted, bytes.
MAX_TOKEN = 8 * 1024
#: Verified tokens remembered per connection.
CACHE_ENTRIES = 64


class EndUserTokenInvalid(EndUserRejected):
    """Not a compact JWS, a bad signature, an algorithm the key does not
    imply, an unknown ``kid``, or required claims missing."""


class EndUserUnknownIssuer(EndUserRejected):
    """``iss`` is not one of the configured issuers."""


class EndUserTokenExpired(EndUserRejected):
    """``exp`` has passed (beyond the clock skew)."""


class EndUserTokenNotYetValid(EndUserRejected):
    """``nbf`` or ``iat`` lies in the future (beyond the clock skew)."""


class EndUserAudienceMismatch(EndUserRejected):
    """The token is addressed to another audience."""


def _algorithm_of(key: Any) -> str:
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        if key.key_size < 2048:
            raise ConfigurationError("RSA issuer keys must have at least 2048 bits")
        return "RS256"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and \
            isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "EdDSA"
    raise ConfigurationError("issuer keys must be RSA, EC P-256 or Ed25519")


@dataclass(frozen=True)
class _Key:
    kid: str | None
    algorithm: str
    key: Any = field(repr=False)


class Issuer:
    """A trusted token issuer: its ``iss`` name and public keys (a JWKS)."""

    def __init__(self, name: str, jwks: Mapping[str, Any]) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("an issuer needs a name (its tokens' iss)")
        self.name = name
        self._keys: list[_Key] = []
        keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
        if not isinstance(keys, list) or not keys:
            raise ConfigurationError(f"JWKS of {name!r} has no keys")
        for data in keys:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                jwk = pyjwt.PyJWK(data)
            except pyjwt.PyJWTError as exc:
                raise ConfigurationError(f"JWKS of {name!r}: bad key ({exc})") from None
            algorithm = _algorithm_of(jwk.key)
            if data.get("alg") not in (None, algorithm):
                raise ConfigurationError(
                    f"JWKS of {name!r}: key {data.get('kid')!r} says alg {data.get('alg')!r} "
                    f"but its type implies {algorithm}")
            self._keys.append(_Key(data.get("kid"), algorithm, jwk.key))
        if not self._keys:
            raise ConfigurationError(f"JWKS of {name!r} has no signature keys")

    @classmethod
    def from_jwks_file(cls, name: str, path: str | os.PathLike[str]) -> Issuer:
        """Load the issuer's keys from a JWKS JSON file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot read the JWKS {os.fspath(path)}: {type(exc).__name__}") from None
        return cls(name, data)

    def key_for(self, kid: Any) -> _Key:
        if kid is None and len(self._keys) == 1:
            return self._keys[0]
        for key in self._keys:
            if key.kid == kid:
                return key
        raise EndUserTokenInvalid("no key of the issuer matches the token's kid")


class _CacheEntry:
    """A connection's cache entry: the verified token, and the EndUser built
    for the last (rw-act, caller roles) it came with (reused while they stay
    the same; EndUser is immutable)."""

    __slots__ = ("last", "verified")

    def __init__(self, verified: _Verified) -> None:
        self.verified = verified
        self.last: tuple[bytes | None, frozenset[str], EndUser] | None = None


@dataclass(frozen=True)
class _Verified:
    claims: Mapping[str, Any]
    issuer: str
    expires_at: float
    audiences: frozenset[str]
    act: tuple[Hop, ...]


class EndUserVerifier:
    """Verifies end-user tokens received by one service.

    Args:
        audience: this service's name; per-hop tokens must be bound to it.
        issuers: the trusted issuers.
        accept_audiences: audiences of tokens forwarded unchanged (variant a)
            that this service accepts too (e.g. the application's API name).
        clock_skew: seconds of tolerance on ``exp``/``nbf``/``iat``.
        require_exchanged: accept only per-hop tokens (variant b).
        clock: wall-clock seconds (tests).
    """

    def __init__(self, audience: str, issuers: Iterable[Issuer], *,
                 accept_audiences: Iterable[str] = (), clock_skew: float = 30.0,
                 require_exchanged: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.audience = audience
        self.issuers = {issuer.name: issuer for issuer in issuers}
        if not self.issuers:
            raise ConfigurationError("an end-user verifier needs at least one issuer")
        if isinstance(accept_audiences, str):
            raise ConfigurationError("accept_audiences is a list of names")
        self.accept_audiences = frozenset(accept_audiences)
        self.clock_skew = float(clock_skew)
        self.require_exchanged = require_exchanged
        self.clock = clock
        #: Full verifications done (signature checks); the cache saves the rest.
        self.verifications = 0

    # -- the expensive, cacheable part ------------------------------------------------
    def check_token(self, token: str) -> _Verified:
        """Steps 1-4 only (form, issuer, signature, times), uncached: what an
        STS checks before an exchange."""
        return self._verify_token(token)

    def _verify_token(self, token: str) -> _Verified:
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            raise EndUserTokenInvalid("end-user token missing, too long or not a compact JWS")
        try:
            header = pyjwt.get_unverified_header(token)
            unverified = pyjwt.decode(token, options={"verify_signature": False})
        except pyjwt.PyJWTError:
            raise EndUserTokenInvalid("end-user token is not a well-formed JWS") from None
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise EndUserUnknownIssuer("the end-user token's issuer is not trusted here")
        key = issuer.key_for(header.get("kid"))
        if header.get("alg") != key.algorithm:
            raise EndUserTokenInvalid("the token's algorithm is not the one of the issuer's key")
        self.verifications += 1
        try:
            claims: dict[str, Any] = pyjwt.decode(
                token, key.key, algorithms=[key.algorithm], issuer=issuer.name,
                leeway=self.clock_skew,
                options={"require": ["iss", "sub", "exp", "aud"], "verify_aud": False,
                         "verify_exp": False, "verify_nbf": False, "verify_iat": False})
        except pyjwt.InvalidSignatureError:
            raise EndUserTokenInvalid("the end-user token's signature does not verify") from None
        except pyjwt.MissingRequiredClaimError as exc:
            raise EndUserTokenInvalid(f"the end-user token lacks {exc.claim!r}") from None
        except pyjwt.PyJWTError as exc:
            raise EndUserTokenInvalid(f"invalid end-user token ({type(exc).__name__})") from None
        now = self.clock()
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise EndUserTokenInvalid("exp must be a number")
        if now > exp + self.clock_skew:
            raise EndUserTokenExpired("the end-user token has expired")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise EndUserTokenInvalid(f"{name} must be a number")
            if value > now + self.clock_skew:
                raise EndUserTokenNotYetValid(f"the end-user token's {name} is in the future")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise EndUserTokenInvalid("sub must be a non-empty string")
        aud = claims["aud"]
        audiences = frozenset([aud] if isinstance(aud, str) else
                              aud if isinstance(aud, list) and
                              all(isinstance(a, str) for a in aud) else ())
        if not audiences:
            raise EndUserTokenInvalid("aud must be a string or a list of strings")
        act = parse_act(claims["act"]) if "act" in claims else ()
        return _Verified(claims, issuer.name, float(exp), audiences, act)

    def verify(self, token: str, *, peer_roles: frozenset[str] = frozenset(),
               act: bytes | None = None,
               cache: MutableMapping[bytes, Any] | None = None) -> EndUser:
        """Verify ``token`` presented by a caller that proved ``peer_roles``;
        ``act``: the ``rw-act`` metadata (the hops of a forwarded context);
        ``cache``: the connection's cache. Raises an
        :class:`~rolewire.enduser.context.EndUserRejected` subclass."""
        if not isinstance(token, str):
            raise EndUserTokenInvalid("end-user token is not text")
        digest = hashlib.sha256(token.encode("ascii", "replace")).digest()
        entry: _CacheEntry | None = cache.get(digest) if cache is not None else None
        now = self.clock()
        if entry is not None and now <= entry.verified.expires_at + self.clock_skew:
            if entry.last is not None and entry.last[0] == act and entry.last[1] == peer_roles:
                return entry.last[2]  # the same context as on the last call
            verified = entry.verified
        else:
            verified = self._verify_token(token)
            entry = _CacheEntry(verified)
            if cache is not None:
                if len(cache) >= CACHE_ENTRIES:
                    cache.pop(next(iter(cache)))
                cache[digest] = entry
        user = self._context(verified, token, digest, peer_roles, act)
        entry.last = (act, peer_roles, user)
        return user

    def _context(self, verified: _Verified, token: str, digest: bytes,
                 peer_roles: frozenset[str], act: bytes | None) -> EndUser:
        """Steps 5-6 (audience, per-hop binding) and the handler's EndUser."""
        exchanged = bool(verified.act) and self.audience in verified.audiences
        if exchanged:
            latest = verified.act[0]
            if not latest.roles <= peer_roles:
                raise EndUserContextMismatch(
                    "the end-user token was exchanged for another caller")
            # The immediate caller is the signed latest actor; its roles are
            # checked against this receiver's handshake just above.
            chain = (Hop(latest.service, latest.roles, True),) + tuple(
                Hop(h.service, h.roles, True) for h in verified.act[1:])
        else:
            if self.require_exchanged:
                raise EndUserContextMismatch(
                    "this service accepts only end-user tokens exchanged for it")
            if verified.act:
                # An exchanged token bound elsewhere, replayed here.
                raise EndUserAudienceMismatch(
                    "the end-user token was exchanged for another audience")
            if self.audience not in verified.audiences and \
                    verified.audiences.isdisjoint(self.accept_audiences):
                raise EndUserAudienceMismatch("the end-user token is for another audience")
            hops = parse_act_metadata(act)
            if hops:
                # The caller's name is its own claim; its roles are what it
                # proved to us. Earlier hops are as the caller reports them.
                chain = (Hop(hops[0].service, peer_roles, False),) + hops[1:]
            else:
                chain = ()
        return EndUser(verified.claims["sub"], verified.issuer,
                       _ReadOnly(verified.claims), chain, exchanged, verified.expires_at,
                       token, digest)

    def from_metadata(self, metadata: Mapping[str, bytes], *,
                      peer_roles: frozenset[str] = frozenset(),
                      cache: MutableMapping[bytes, Any] | None = None) -> EndUser | None:
        """The verified end user of a call's metadata (None without ``rw-user``)."""
        raw = metadata.get(USER_KEY)
        if raw is None:
            if ACT_KEY in metadata:
                raise EndUserContextMismatch("rw-act without an end-user token")
            return None
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            raise EndUserTokenInvalid("end-user token is not ASCII") from None
        return self.verify(token, peer_roles=peer_roles, act=metadata.get(ACT_KEY), cache=cache)


class _ReadOnly(Mapping[str, Any]):
    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


# --- a minimal identity provider / STS -----------------------------------------------


class TokenService:
    """Signs end-user tokens and exchanges them per hop: a stand-in for an
    identity provider and a security token service (thesis figures 5.3 and
    5.4) in tests and the demo.

    ``key``: Ed25519 (EdDSA), EC P-256 (ES256) or RSA ≥ 2048 (RS256) private key.
    """

    def __init__(self, issuer: str, key: Any, *, kid: str = "k1", lifetime: int = 300,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self.key = key
        self.kid = kid
        self.algorithm = _algorithm_of(key)
        self.lifetime = lifetime
        self.clock = clock
        #: Exchanges done (the STS sees every hop in variant b).
        self.exchanges = 0

    @classmethod
    def generate(cls, issuer: str, algorithm: str = "EdDSA", **kwargs: Any) -> TokenService:
        """A token service with a fresh key of ``algorithm`` (RS256/ES256/EdDSA)."""
        if algorithm == "EdDSA":
            key: Any = ed25519.Ed25519PrivateKey.generate()
        elif algorithm == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "RS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ConfigurationError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        return cls(issuer, key, **kwargs)

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (``{"keys": [...]}``) receivers configure."""
        jwk: dict[str, Any] = json.loads(_jwk_json(self.key.public_key(), self.algorithm))
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.algorithm})
        return {"keys": [jwk]}

    def save_jwks(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.jwks(), indent=2) + "\n", encoding="utf-8")

    def issuer_config(self) -> Issuer:
        """This service as a trusted :class:`Issuer`."""
        return Issuer(self.issuer, self.jwks())

    def _sign(self, claims: dict[str, Any]) -> str:
        return pyjwt.encode(claims, self.key, algorithm=self.algorithm,
                            headers={"kid": self.kid, "typ": "JWT"})

    def issue(self, subject: str, *, audience: str | Sequence[str], scope: Iterable[str] = (),
              lifetime: int | None = None, **claims: Any) -> str:
        """A token for ``subject`` addressed to ``audience`` (forwardable
        unchanged to every service that accepts that audience: variant a)."""
        now = int(self.clock())
        body: dict[str, Any] = {
            "iss": self.issuer, "sub": subject,
            "aud": audience if isinstance(audience, str) else list(audience),
            "iat": now, "nbf": now, "exp": now + (lifetime or self.lifetime),
            "jti": os.urandom(16).hex(), "scope": " ".join(sorted(set(scope))),
        }
        body.update(claims)
        return self._sign(body)

    def exchange(self, token: str, *, actor: str, actor_roles: Iterable[str],
                 audience: str, verifier: EndUserVerifier,
                 scope: Iterable[str] | None = None) -> str:
        """A new token for the next hop (variant b): same subject, bound to
        ``audience``, ``act`` = ``{"sub": actor, "rw_roles": [...]}`` on top of
        the previous chain, never outliving the original, scope only
        narrowed. ``verifier`` checks the presented token's signature and
        times (the issuers this STS accepts); a token already exchanged must
        be bound to ``actor``. ``actor_roles`` are the roles the STS verified
        for the caller (its handshake)."""
        presented = verifier.check_token(token)
        if presented.act and actor not in presented.audiences:
            raise EndUserContextMismatch("cannot exchange a token bound to another service")
        old_scope = _scope_of(presented.claims)
        new_scope = old_scope if scope is None else frozenset(scope)
        if not new_scope <= old_scope:
            raise EndUserScopeWidened("an exchange cannot widen the scope")
        now = int(self.clock())
        act: dict[str, Any] = {"sub": actor, "rw_roles": sorted(actor_roles)}
        previous = presented.claims.get("act")
        if previous is not None:
            act["act"] = previous
        self.exchanges += 1
        return self._sign({
            "iss": self.issuer, "sub": presented.claims["sub"], "aud": audience, "iat": now,
            "nbf": now, "exp": min(now + self.lifetime, int(presented.expires_at)),
            "jti": os.urandom(16).hex(), "scope": " ".join(sorted(new_scope)), "act": act,
        })


class EndUserScopeWidened(EndUserRejected):
    """An exchange asked for a scope the presented token does not have."""


def _scope_of(claims: Mapping[str, Any]) -> frozenset[str]:
    value = claims.get("scope")
    return frozenset(value.split()) if isinstance(value, str) else frozenset()


def _jwk_json(public_key: Any, algorithm: str) -> str:
    algorithms: dict[str, Any] = {"RS256": pyjwt.algorithms.RSAAlgorithm,
                                  "ES256": pyjwt.algorithms.ECAlgorithm,
                                  "EdDSA": pyjwt.algorithms.OKPAlgorithm}
    return str(algorithms[algorithm].to_jwk(public_key))
