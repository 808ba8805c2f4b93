"""Baseline 2: self-signed JWTs per request (thesis, section 5.2), with PyJWT.

Every service holds its own signing key (:class:`ServiceIdentity`: Ed25519,
JWS ``EdDSA``, or P-256, ``ES256``). For **every request** the caller signs a
short-lived token and sends it in front of the call message, the way an HTTP
client sends ``Authorization: Bearer <jwt>``::

    frame payload = token_len u16 | token (ASCII) | call message (rolewire.rpc)

Claims: ``iss`` = ``sub`` = calling service, ``aud`` = called service,
``iat``, ``exp`` (60 s by default), ``jti`` (128 random bits, base64url) and
``rh``, the request hash (:func:`request_hash`: SHA-256 over the operation
and body), so a token cannot be moved to another request. The connection
itself is TLS 1.3 authenticating the *server* only (the server's certificate
must be issued to the audience name): TLS gives confidentiality and tells the
caller who it talks to, the token tells the callee who is calling.

The receiver (:class:`TokenVerifier`) looks the issuer up in a
:class:`KeyRegistry` (service name → public key + roles), verifies the
signature with that key only (the algorithm follows the key type: no
algorithm confusion), checks ``aud``, ``exp``/``iat`` with a small leeway,
the lifetime bound, ``sub == iss`` and ``rh``, then refuses a ``jti`` it has
seen (:class:`ReplayCache`, entries expire with their tokens). The caller's
roles are the registry's roles for ``iss``.

**End-user context** (thesis 5.1.2/5.2.2): a :class:`SecurityTokenService`
signs user tokens (``sub`` = user id, ``scope``). A service token carries the
user token nested as claim ``usr``. Two variants:

(a) *forwarded*: one user token (no ``aud``) travels unchanged through every
    hop;
(b) *per hop*: before each hop the caller exchanges the user token it
    received at the STS (:meth:`SecurityTokenService.exchange`, or over the
    network via :meth:`SecurityTokenService.as_service`) for a new one bound
    to the next audience, with an ``act`` chain naming the services the token
    passed through (RFC 8693 style). Receivers set ``require_user_audience``
    to accept only such tokens.

Either way the receiver verifies the nested token with the STS's key, rejects
it if bound to another audience, and, if it has an ``act`` chain, requires the
latest actor to be the caller. Handlers read the verified request with
:func:`request_context`.

**Non-repudiation**: give ``serve`` an :class:`~rolewire.baselines.audit.AuditStore`
and every accepted token is stored; :func:`rolewire.baselines.audit.verify`
later proves to a third party which service signed which request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
import os
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from rolewire import pki
from rolewire.baselines._client import BaselineClient, open_client
from rolewire.baselines._framing import MAX_FRAME, TLS13, Opening, log
from rolewire.baselines._server import BaselineServer, BaselineStats, current_authorization
from rolewire.baselines._tls import (
    AnchorSource,
    CertSource,
    PathLike,
    TLSCertificateRejected,
    TLSHandshakeFailed,
    client_context,
    server_context,
)
from rolewire.budgets import CallGuard
from rolewire.callstate import ConnectionState, VerifiedMetadata
from rolewire.errors import ConfigurationError, Forbidden, ProtocolViolation, RolewireError
from rolewire.protocol.wire import (
    NO_METADATA,
    PING_OPERATION,
    CallMessage,
    ErrorCode,
    MessageType,
)
from rolewire.services import ANY_AUTHENTICATED, CallContext, Operation, Refusal, Service

if TYPE_CHECKING:
    from rolewire.baselines.audit import AuditStore

__all__ = [
    "ALGORITHMS",
    "DEFAULT_LIFETIME",
    "TOKEN_KEY",
    "JwtClient",
    "JwtServer",
    "KeyRegistry",
    "MalformedToken",
    "NoRequestContext",
    "RegistryEntry",
    "ReplayCache",
    "ReplayCacheFull",
    "SecurityTokenService",
    "ServiceIdentity",
    "TLSCertificateRejected",
    "TLSHandshakeFailed",
    "TokenAudienceMismatch",
    "TokenAuthorizer",
    "TokenExpired",
    "TokenLifetimeTooLong",
    "TokenNotYetValid",
    "TokenRejected",
    "TokenReplayed",
    "TokenRequestMismatch",
    "TokenSignatureInvalid",
    "TokenSigner",
    "TokenVerifier",
    "UnknownIssuer",
    "UserContext",
    "UserTokenRejected",
    "VerifiedRequest",
    "connect",
    "exchange_token",
    "request_context",
    "request_hash",
    "serve",
    "verify_signed_token",
]

#: JWS algorithms supported: Ed25519 and ECDSA P-256 with SHA-256.
ALGORITHMS = ("EdDSA", "ES256")
#: Lifetime of a per-request service token, seconds.
DEFAULT_LIFETIME = 60
#: Largest token accepted (bytes); service token + nested user token fit easily.
MAX_TOKEN = 16 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: The call metadata key that carries a request's token (what
#: ``Authorization: Bearer <jwt>`` is to an HTTP request).
TOKEN_KEY = "authorization"
_RH_LABEL = b"rolewire-jwt-request-hash/1\x00"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


# --- errors -------------------------------------------------------------------------


class TokenRejected(RolewireError):
    """A token did not verify. Subclasses say why; messages never contain
    the token."""


class MalformedToken(TokenRejected):
    """Not a JWS compact token, missing or ill-typed claims, too long."""


class UnknownIssuer(TokenRejected):
    """The token's issuer is not in the key registry (or not an STS where a
    user token is expected)."""


class TokenSignatureInvalid(TokenRejected):
    """The signature does not verify with the issuer's registered key (signed
    by another service, altered, or a different algorithm)."""


class TokenExpired(TokenRejected):
    """``exp`` (plus the leeway) has passed."""


class TokenNotYetValid(TokenRejected):
    """``iat`` lies in the future (beyond the leeway)."""


class TokenLifetimeTooLong(TokenRejected):
    """``exp - iat`` exceeds what this receiver accepts (it bounds how long
    the replay cache must remember a ``jti``)."""


class TokenAudienceMismatch(TokenRejected):
    """The token is addressed to another service."""


class TokenRequestMismatch(TokenRejected):
    """The token's request hash ``rh`` does not match this request: it was
    signed for another operation or body."""


class TokenReplayed(TokenRejected):
    """This ``jti`` was already accepted from this issuer."""


class ReplayCacheFull(TokenRejected):
    """The replay cache holds its maximum of unexpired entries; new tokens
    are refused rather than accepted unchecked (fail closed)."""


class UserTokenRejected(TokenRejected):
    """The nested end-user token is invalid, missing where required, bound to
    another audience, or was exchanged for another caller."""


class NoRequestContext(RolewireError, LookupError):
    """:func:`request_context` was called outside a JWT-authenticated request."""


# --- keys ---------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            "service names are 1..128 characters of A-Z a-z 0-9 . _ - (not starting "
            "with . _ -)")
    return name


def _algorithm_for(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "EdDSA"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and \
            isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ConfigurationError("signing keys must be Ed25519 (EdDSA) or P-256 (ES256)")


@dataclass(frozen=True)
class ServiceIdentity:
    """A service's name and private signing key."""

    name: str
    private_key: PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        _algorithm_for(self.private_key)

    @classmethod
    def generate(cls, name: str, algorithm: str = "EdDSA") -> ServiceIdentity:
        """A new identity with a fresh key (``"EdDSA"`` or ``"ES256"``)."""
        if algorithm == "EdDSA":
            return cls(name, ed25519.Ed25519PrivateKey.generate())
        if algorithm == "ES256":
            return cls(name, ec.generate_private_key(ec.SECP256R1()))
        raise ConfigurationError(f"algorithm must be one of {', '.join(ALGORITHMS)}")

    @property
    def algorithm(self) -> str:
        return _algorithm_for(self.private_key)

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    def save(self, key_path: PathLike) -> None:
        """Write the private key (PKCS#8 PEM, mode 0600, never overwrites)."""
        pki.write_secret_file(key_path, self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    @classmethod
    def load(cls, name: str, key_path: PathLike) -> ServiceIdentity:
        try:
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
        except ValueError:
            raise ConfigurationError(f"cannot parse the key in {os.fspath(key_path)}") from None
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
            raise ConfigurationError("signing keys must be Ed25519 or P-256")
        return cls(name, key)


@dataclass(frozen=True)
class RegistryEntry:
    """One registered signer: a service (with the roles it holds) or an STS
    (``sts=True``: trusted to sign end-user tokens)."""

    name: str
    public_key: PublicKey = field(repr=False)
    roles: frozenset[str] = frozenset()
    sts: bool = False

    @property
    def algorithm(self) -> str:
        return _algorithm_for(self.public_key)


class KeyRegistry:
    """Service name → public key and roles: what every receiver trusts.

    On disk (:meth:`save`/:meth:`load`): one ``<name>.pub.pem`` per signer
    plus ``registry.json`` with the roles and STS flags. A directory with
    only ``*.pub.pem`` files loads too (no roles; enough for audit
    verification)."""

    def __init__(self, entries: Iterable[RegistryEntry] = ()) -> None:
        self._entries: dict[str, RegistryEntry] = {}
        for entry in entries:
            self._put(entry)

    def _put(self, entry: RegistryEntry) -> None:
        _check_name(entry.name)
        _algorithm_for(entry.public_key)
        if entry.name in self._entries:
            raise ConfigurationError(f"{entry.name!r} is already registered")
        self._entries[entry.name] = entry

    def add(self, name: str, public_key: PublicKey, roles: Iterable[str] = (), *,
            sts: bool = False) -> RegistryEntry:
        if isinstance(roles, str):
            raise ConfigurationError("roles must be a list of role names, not a string")
        entry = RegistryEntry(name, public_key, frozenset(roles), sts)
        self._put(entry)
        return entry

    def add_identity(self, identity: ServiceIdentity, roles: Iterable[str] = (), *,
                     sts: bool = False) -> RegistryEntry:
        return self.add(identity.name, identity.public_key, roles, sts=sts)

    def get(self, name: str) -> RegistryEntry | None:
        return self._entries.get(name)

    def roles(self, name: str) -> frozenset[str]:
        entry = self._entries.get(name)
        return entry.roles if entry is not None else frozenset()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Any:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def save(self, directory: PathLike) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"format": 1, "signers": {}}
        for entry in self._entries.values():
            (path / f"{entry.name}.pub.pem").write_bytes(entry.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            meta["signers"][entry.name] = {"roles": sorted(entry.roles), "sts": entry.sts}
        (path / "registry.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: PathLike) -> KeyRegistry:
        path = Path(directory)
        if not path.is_dir():
            raise ConfigurationError(f"{os.fspath(path)} is not a directory")
        meta_path = path / "registry.json"
        signers: dict[str, Any]
        if meta_path.exists():
            try:
                signers = dict(json.loads(meta_path.read_text())["signers"])
            except (ValueError, KeyError, TypeError):
                raise ConfigurationError(f"cannot parse {os.fspath(meta_path)}") from None
        else:
            signers = {p.name[: -len(".pub.pem")]: {} for p in sorted(path.glob("*.pub.pem"))}
        registry = cls()
        for name, info in signers.items():
            key_path = path / f"{_check_name(name)}.pub.pem"
            try:
                key = serialization.load_pem_public_key(key_path.read_bytes())
            except (OSError, ValueError):
                raise ConfigurationError(f"cannot read the public key {key_path}") from None
            if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
                raise ConfigurationError(f"{key_path}: not an Ed25519 or P-256 key")
            registry.add(name, key, info.get("roles", ()), sts=bool(info.get("sts", False)))
        return registry


# --- tokens -------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def request_hash(operation: str, body: bytes) -> str:
    """The ``rh`` claim: base64url(SHA-256(label || op_len u8 || op || body)).
    The length prefix keeps (operation, body) pairs from colliding."""
    op = operation.encode("utf-8")
    if len(op) > 255:
        raise ProtocolViolation("operation name longer than 255 bytes")
    return _b64url(hashlib.sha256(_RH_LABEL + bytes((len(op),)) + op + body).digest())


def new_token_id() -> str:
    """A fresh random ``jti`` (128 bits, base64url)."""
    return _b64url(os.urandom(16))


_new_jti = new_token_id


def peek_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS **without verifying it** (to find the key
    to verify it with). Raises :class:`MalformedToken`."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise MalformedToken("token missing or too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("not a compact JWS")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        raise MalformedToken("token payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise MalformedToken("token payload is not a JSON object")
    return claims


class TokenSigner:
    """Signs the per-request service tokens of one calling service."""

    def __init__(self, identity: ServiceIdentity, *, lifetime: int = DEFAULT_LIFETIME,
                 clock: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self.lifetime = lifetime
        self.clock = clock
        self._algorithm = identity.algorithm
        self._headers = {"typ": "JWT"}

    def sign(self, audience: str, operation: str, body: bytes, *,
             user_token: str | None = None, extra: Mapping[str, Any] | None = None) -> str:
        """A token for one request of ``operation`` with ``body`` to
        ``audience``; ``user_token`` is nested as claim ``usr``."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.identity.name, "sub": self.identity.name, "aud": audience,
            "iat": now, "exp": now + self.lifetime, "jti": _new_jti(),
            "rh": request_hash(operation, body),
        }
        if user_token is not None:
            claims["usr"] = user_token
        if extra:
            claims.update(extra)
        return pyjwt.encode(claims, self.identity.private_key, algorithm=self._algorithm,
                            headers=self._headers)


class ReplayCache:
    """Remembers accepted ``(issuer, jti)`` pairs until their token expires
    (plus the leeway). Bounded: at ``max_entries`` unexpired entries new
    tokens are refused (:class:`ReplayCacheFull`)."""

    def __init__(self, max_entries: int = 100_000, *, leeway: float = 5.0) -> None:
        self.max_entries = max_entries
        self.leeway = leeway
        self._seen: dict[tuple[str, str], float] = {}
        self._expiry: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _purge(self, now: float) -> None:
        expiry, seen = self._expiry, self._seen
        while expiry and expiry[0][0] < now:
            _, key = heapq.heappop(expiry)
            seen.pop(key, None)

    def add(self, issuer: str, jti: str, expires: float, now: float) -> None:
        """Record a token; raises :class:`TokenReplayed` if already seen."""
        self._purge(now)
        key = (issuer, jti)
        if key in self._seen:
            raise TokenReplayed("token already used (jti seen before)")
        if len(self._seen) >= self.max_entries:
            raise ReplayCacheFull("replay cache full; token refused")
        until = expires + self.leeway
        self._seen[key] = until
        heapq.heappush(self._expiry, (until, key))


@dataclass(frozen=True)
class UserContext:
    """A verified end-user token: ``user`` (its ``sub``), ``scope``, the
    ``audience`` it is bound to (None when forwarded unchanged), ``actors``:
    the services it was exchanged for, most recent first (empty when
    forwarded), and the raw ``token`` to pass on or exchange."""

    user: str
    scope: frozenset[str]
    audience: str | None
    actors: tuple[str, ...]
    issuer: str
    token: str = field(repr=False)
    claims: Mapping[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class VerifiedRequest:
    """What the receiver proved about one request."""

    caller: str
    roles: frozenset[str]
    jti: str
    issued_at: int
    expires_at: int
    request_hash: str
    token: str = field(repr=False)
    claims: Mapping[str, Any] = field(repr=False, default_factory=dict)
    user: UserContext | None = None


def _actors(act: Any) -> tuple[str, ...]:
    chain: list[str] = []
    while act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub"), str) or len(chain) > 32:
            raise UserTokenRejected("malformed act claim")
        chain.append(act["sub"])
        act = act.get("act")
    return tuple(chain)


def _scope(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    raise UserTokenRejected("scope must be a space-separated string")


_REQUIRED = ["iss", "sub", "aud", "iat", "exp", "jti", "rh"]


def verify_signed_token(token: str, entry: RegistryEntry, *, audience: str | None,
                        leeway: float, require: list[str],
                        verify_exp: bool = True) -> dict[str, Any]:
    """Verify ``token``'s signature with ``entry``'s key and its standard claims.

    The one place a JWT is checked: :class:`TokenVerifier`,
    :class:`SecurityTokenService` and the audit log
    (:func:`rolewire.baselines.audit.verify`) all call it. This checks only
    the signature, the issuer (``entry.name``), ``audience`` (skipped when
    ``None``), the ``require``-d claims and, unless ``verify_exp`` is false,
    the expiry with ``leeway`` seconds; replay, lifetime and request-hash
    checks are :class:`TokenVerifier`'s.

    Returns:
        The verified claims.

    Raises:
        TokenRejected: a subclass naming the failure (PyJWT's errors mapped).
    """
    options: Any = {"require": require, "verify_exp": verify_exp,
                               "verify_aud": audience is not None}
    try:
        claims: dict[str, Any] = pyjwt.decode(
            token, entry.public_key, algorithms=[entry.algorithm], audience=audience,
            issuer=entry.name, leeway=leeway, options=options)
    except pyjwt.ExpiredSignatureError:
        raise TokenExpired("token expired") from None
    except pyjwt.InvalidAudienceError:
        raise TokenAudienceMismatch("token is addressed to another service") from None
    except (pyjwt.ImmatureSignatureError, pyjwt.InvalidIssuedAtError):
        raise TokenNotYetValid("token issued in the future or with a bad iat") from None
    except (pyjwt.InvalidSignatureError, pyjwt.InvalidAlgorithmError):
        raise TokenSignatureInvalid(
            f"signature does not verify with the registered key of {entry.name!r}") from None
    except pyjwt.MissingRequiredClaimError as exc:
        raise MalformedToken(f"token lacks the {exc.claim!r} claim") from None
    except pyjwt.InvalidIssuerError:
        raise TokenSignatureInvalid("issuer claim does not match the signer") from None
    except pyjwt.InvalidTokenError as exc:
        raise MalformedToken(f"invalid token ({type(exc).__name__})") from None
    return claims


class TokenVerifier:
    """Verifies the tokens addressed to one service (``audience``).

    Args:
        registry: the signers this service trusts.
        leeway: clock skew tolerated on ``exp`` and ``iat``, seconds.
        max_lifetime: refuse tokens with ``exp - iat`` above this.
        replay_cache: shared cache (default: a new one).
        require_user: every request must carry a user token (``usr``).
        require_user_audience: user tokens must be bound to this service and
            exchanged by the caller (variant b); unbound forwarded tokens are
            refused.
        clock: wall-clock seconds (tests).
    """

    def __init__(self, audience: str, registry: KeyRegistry, *, leeway: float = 5.0,
                 max_lifetime: float = 300.0, replay_cache: ReplayCache | None = None,
                 require_user: bool = False, require_user_audience: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.audience = _check_name(audience)
        self.registry = registry
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.replay_cache = replay_cache or ReplayCache(leeway=leeway)
        self.require_user = require_user
        self.require_user_audience = require_user_audience
        self.clock = clock

    def _signer(self, claims: Mapping[str, Any], *, sts: bool) -> RegistryEntry:
        issuer = claims.get("iss")
        entry = self.registry.get(issuer) if isinstance(issuer, str) else None
        if entry is None or entry.sts != sts:
            kind = "token service" if sts else "service"
            raise UnknownIssuer(f"issuer is not a registered {kind}")
        return entry

    def _check_times(self, claims: Mapping[str, Any], now: float, *,
                     bound_lifetime: bool) -> None:
        """``iat``/``exp`` are integers, ``iat`` is not in the future, and
        (for service tokens, whose ``jti`` the replay cache must remember)
        the lifetime is within ``max_lifetime``."""
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise MalformedToken("iat and exp must be integers")
        if iat > now + self.leeway:
            raise TokenNotYetValid("token issued in the future")
        if bound_lifetime and exp - iat > self.max_lifetime:
            raise TokenLifetimeTooLong("token lifetime exceeds what this service accepts")

    def verify(self, token: str, operation: str, body: bytes) -> VerifiedRequest:
        """Verify the service token of one request. Raises a
        :class:`TokenRejected` subclass; on success the ``jti`` is consumed."""
        entry = self._signer(peek_claims(token), sts=False)
        claims = verify_signed_token(token, entry, audience=self.audience,
                                     leeway=self.leeway, require=_REQUIRED)
        now = self.clock()
        self._check_times(claims, now, bound_lifetime=True)
        if claims["sub"] != claims["iss"]:
            raise MalformedToken("a service token's sub must equal its iss")
        jti, rh = claims["jti"], claims["rh"]
        if not isinstance(jti, str) or not 16 <= len(jti) <= 64 or not isinstance(rh, str):
            raise MalformedToken("jti or rh malformed")
        if rh != request_hash(operation, body):
            raise TokenRequestMismatch("token was signed for another request")
        user = None
        nested = claims.get("usr")
        if nested is not None:
            if not isinstance(nested, str):
                raise UserTokenRejected("usr claim must be a compact JWT")
            user = self.verify_user_token(nested, caller=entry.name)
        elif self.require_user:
            raise UserTokenRejected("this service requires an end-user token")
        self.replay_cache.add(entry.name, jti, claims["exp"], now)
        return VerifiedRequest(entry.name, entry.roles, jti, claims["iat"], claims["exp"], rh,
                               token, claims, user)

    def verify_user_token(self, token: str, *, caller: str) -> UserContext:
        """Verify a nested user token presented by ``caller`` (see the module
        docs for the audience and ``act`` rules)."""
        try:
            entry = self._signer(peek_claims(token), sts=True)
            claims = verify_signed_token(token, entry, audience=None, leeway=self.leeway,
                                         require=["iss", "sub", "iat", "exp"])
            self._check_times(claims, self.clock(), bound_lifetime=False)
        except UserTokenRejected:
            raise
        except TokenRejected as exc:
            raise UserTokenRejected(f"user token rejected: {exc}") from None
        audience = claims.get("aud")
        if audience is not None and audience != self.audience:
            raise UserTokenRejected("user token is bound to another audience")
        actors = _actors(claims.get("act"))
        if self.require_user_audience and (audience is None or not actors):
            raise UserTokenRejected("this service requires a user token exchanged for it")
        if actors and actors[0] != caller:
            raise UserTokenRejected("user token was exchanged by another service")
        if not isinstance(claims["sub"], str):
            raise UserTokenRejected("user token sub must be a string")
        return UserContext(claims["sub"], _scope(claims.get("scope")), audience, actors,
                           entry.name, token, claims)


# --- security token service -------------------------------------------------------------


class SecurityTokenService:
    """Signs end-user tokens and exchanges them per hop (thesis figure 5.4).

    Register its key with ``registry.add_identity(sts.identity, sts=True)``.
    ``exchanges`` counts exchanges: with per-hop tokens the STS sees every
    hop, which is both its strength (central policy, a full trail) and its
    cost (a round trip and a signature per hop)."""

    def __init__(self, identity: ServiceIdentity, *, lifetime: int = 300,
                 leeway: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self.lifetime = lifetime
        self.leeway = leeway
        self.clock = clock
        self.exchanges = 0
        registry = KeyRegistry()
        registry.add_identity(identity, sts=True)
        self._self_entry = registry.get(identity.name)

    def issue(self, user: str, scope: Iterable[str] | str = (), *,
              audience: str | None = None) -> str:
        """A user token for ``user`` (after the user logged in elsewhere).
        Without ``audience`` it can be forwarded unchanged (variant a)."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.identity.name, "sub": user, "iat": now, "exp": now + self.lifetime,
            "jti": _new_jti(),
            "scope": scope if isinstance(scope, str) else " ".join(sorted(set(scope))),
        }
        if audience is not None:
            claims["aud"] = _check_name(audience)
        return pyjwt.encode(claims, self.identity.private_key,
                            algorithm=self.identity.algorithm)

    def exchange(self, user_token: str, *, actor: str, audience: str,
                 scope: Iterable[str] | None = None) -> str:
        """A new user token for the next hop (variant b): same user, bound to
        ``audience``, ``act`` = ``actor`` on top of the previous chain, expiry
        no later than the original's. The presented token must be this STS's,
        valid, and (if bound) bound to ``actor``. ``scope`` may narrow, never
        widen. Raises :class:`UserTokenRejected`."""
        assert self._self_entry is not None
        try:
            claims = verify_signed_token(user_token, self._self_entry, audience=None,
                                         leeway=self.leeway,
                                         require=["iss", "sub", "iat", "exp"])
        except TokenRejected as exc:
            raise UserTokenRejected(f"cannot exchange: {exc}") from None
        bound = claims.get("aud")
        if bound is not None and bound != actor:
            raise UserTokenRejected("cannot exchange a user token bound to another service")
        old_scope = _scope(claims.get("scope"))
        new_scope = old_scope if scope is None else frozenset(scope)
        if not new_scope <= old_scope:
            raise UserTokenRejected("an exchange cannot widen the scope")
        now = int(self.clock())
        act: dict[str, Any] = {"sub": _check_name(actor)}
        if "act" in claims:
            _actors(claims["act"])  # validate the chain
            act["act"] = claims["act"]
        new = {
            "iss": self.identity.name, "sub": claims["sub"], "aud": _check_name(audience),
            "iat": now, "exp": min(now + self.lifetime, int(claims["exp"])),
            "jti": _new_jti(), "scope": " ".join(sorted(new_scope)), "act": act,
        }
        self.exchanges += 1
        return pyjwt.encode(new, self.identity.private_key, algorithm=self.identity.algorithm)

    def as_service(self, name: str | None = None) -> Service:
        """This STS as a :class:`Service` to serve over the JWT baseline:
        operation ``exchange`` (any authenticated caller) takes
        ``{"token": ..., "audience": ..., ["scope": [...]]}`` as JSON and
        returns the new token. The actor is the verified caller, so a service
        can only exchange in its own name."""
        service = Service(name or self.identity.name)

        @service.operation("exchange", roles=ANY_AUTHENTICATED)
        def exchange(call: CallContext, body: bytes) -> bytes:
            request = request_context()
            data = json.loads(body)
            return self.exchange(data["token"], actor=request.caller,
                                 audience=data["audience"], scope=data.get("scope")
                                 ).encode("ascii")

        return service


async def exchange_token(client: JwtClient, user_token: str, audience: str,
                         scope: Iterable[str] | None = None) -> str:
    """Exchange ``user_token`` at a networked STS (``client`` connected to
    :meth:`SecurityTokenService.as_service`) for one bound to ``audience``."""
    request: dict[str, Any] = {"token": user_token, "audience": audience}
    if scope is not None:
        request["scope"] = sorted(scope)
    return (await client.call("exchange", json.dumps(request).encode())).decode("ascii")


def request_context() -> VerifiedRequest:
    """The verified request being handled (inside a handler served by the
    JWT baseline): caller, roles, user context, raw tokens to forward."""
    try:
        value = current_authorization()
    except LookupError:
        value = None
    if not isinstance(value, VerifiedRequest):
        raise NoRequestContext("not inside a request served by the JWT baseline")
    return value


# --- server and client ----------------------------------------------------------------


def _unchecked(call: CallContext, body: bytes) -> bytes:  # pragma: no cover - never runs
    raise ConfigurationError("a placeholder operation never runs")


class _TokenRefusal(NamedTuple):
    """Why a call's token was rejected (the admission check's evidence)."""

    code: ErrorCode
    text: str
    reason: str


def _refusal(code: ErrorCode, error: RolewireError) -> _TokenRefusal:
    # The text names the reason, never the token (errors never hold it).
    return _TokenRefusal(code, f"request refused: {error}", type(error).__name__)


class TokenAuthorizer:
    """The :class:`~rolewire.protocol.Authorizer` of a JWT server: the
    connection core asks it about every call, as it asks a plain
    :class:`~rolewire.services.Service`, and it checks the call's token.

    - Its ``connection_state`` installs an admission check
      (:attr:`rolewire.callstate.ConnectionState.admit`) that sees every
      REQUEST and NOTIFY with its body before dispatch and verifies the token
      in its metadata (:data:`TOKEN_KEY`) with the :class:`TokenVerifier`
      (signature, claims, request hash, nested user token, replay cache),
      then stores it in the ``audit`` store. The outcome travels as
      :class:`~rolewire.callstate.VerifiedMetadata` evidence (which a peer
      cannot send).
    - :meth:`authorize` defers to :meth:`call_context`: the caller's roles
      are per request, known once its token is verified (so a caller without
      a valid token learns nothing, not even which operations exist).
    - :meth:`call_context` refuses a call whose token was rejected
      (``Forbidden``, ``request refused: <reason>``; ``stats.refused``),
      then authorizes it with the service under the token's roles. Handlers
      get the :class:`VerifiedRequest` as ``CallContext.signed`` and through
      :func:`request_context`.
    """

    def __init__(self, service: Service, verifier: TokenVerifier,
                 audit: AuditStore | None = None, stats: BaselineStats | None = None) -> None:
        if service.signed_calls is not None:
            raise ConfigurationError("the JWT baseline does not combine with signed calls")
        self.service = service
        self.verifier = verifier
        self.audit = audit
        self.stats = stats if stats is not None else BaselineStats()

    # -- the admission check: tokens are verified with the call's body -----------------
    def connection_state(self, transcript_hash: bytes, peer_roles: frozenset[str],
                         peer: str = "") -> ConnectionState:
        state = self.service.connection_state(transcript_hash, peer_roles, peer)
        state.admit = self._admit
        return state

    def _admit(self, messages: Iterable[CallMessage]) -> Iterator[CallMessage]:
        request, notify = MessageType.REQUEST, MessageType.NOTIFY
        for message in messages:
            kind = message.type
            if (kind is notify or kind is request) and not (
                    kind is request and message.operation == PING_OPERATION):
                metadata = message.metadata
                rest = {k: v for k, v in metadata.items() if k != TOKEN_KEY} \
                    if len(metadata) > 1 else NO_METADATA
                message = message._replace(metadata=VerifiedMetadata(
                    rest, self._verify(message)))
            yield message

    def _verify(self, message: CallMessage) -> VerifiedRequest | _TokenRefusal:
        raw = message.metadata.get(TOKEN_KEY)
        try:
            if not raw:
                raise MalformedToken("request carries no token")
            try:
                token = raw.decode("ascii")
            except UnicodeDecodeError:
                raise MalformedToken("token is not ASCII") from None
            verified = self.verifier.verify(token, message.operation, message.body)
            if self.audit is not None:
                self.audit.record(verified, message.operation, message.body)
        except TokenRejected as exc:  # (TokenReplayed from the audit store too)
            return _refusal(ErrorCode.FORBIDDEN, exc)
        except RolewireError as exc:  # the audit store failed: not the caller's fault
            return _refusal(ErrorCode.UNAVAILABLE, exc)
        return verified

    # -- Authorizer --------------------------------------------------------------------------
    def authorize(self, operation: str, peer_roles: frozenset[str], peer: str = "",
                  guard: CallGuard | None = None, now: float = 0.0) -> Operation | Refusal:
        """The operation, unchecked: see :meth:`call_context`."""
        found = self.service.operations.get(operation)
        return found if found is not None else Operation(operation, _unchecked, frozenset())

    def needs_call_checks(self, operation: Operation) -> bool:
        return True  # every call carries its own token

    def request_context(self, operation: Operation, peer_roles: frozenset[str], peer: str,
                        call_id: int) -> CallContext:
        """Never asked (every operation needs call checks): a token-less
        call gets no context."""
        raise Forbidden("request carries no token")

    def call_context(self, operation: Operation, peer_roles: frozenset[str], peer: str = "",
                     call_id: int = 0, metadata: Mapping[str, bytes] = NO_METADATA, *,
                     state: ConnectionState | None = None, guard: CallGuard | None = None,
                     now: float = 0.0) -> CallContext | Refusal:
        """Refuse a call whose token was rejected; else authorize it with the
        service under the token's roles and return the handler's context."""
        evidence = metadata.evidence if isinstance(metadata, VerifiedMetadata) else None
        if not isinstance(evidence, VerifiedRequest):
            refusal = evidence if isinstance(evidence, _TokenRefusal) else _refusal(
                ErrorCode.FORBIDDEN, MalformedToken("request carries no token"))
            self.stats.refused += 1
            if (guard.refuse(now) if guard is not None else 0) is not None:
                log.warning("request refused", extra={
                    "event": "request_refused", "system": "jwt", "peer": peer,
                    "operation": operation.name, "reason": refusal.reason})
            return Refusal(refusal.code, refusal.text)
        roles = evidence.roles
        found = self.service.authorize(operation.name, roles, peer, guard, now)
        if isinstance(found, Refusal):
            return found
        return self.service.call_context(found, roles, peer, call_id, metadata, state=state,
                                         guard=guard, now=now)


class JwtServer(BaselineServer):
    """A service behind TLS (server-authenticated) with a token per request,
    checked by a :class:`TokenAuthorizer` (``server.authorizer``)."""

    system = "jwt"
    security = TLS13

    def __init__(self, service: Service, verifier: TokenVerifier,
                 audit: AuditStore | None = None, **kwargs: Any) -> None:
        super().__init__(service, **kwargs)
        self.authorizer = TokenAuthorizer(service, verifier, audit, self.stats)
        self.verifier = verifier
        self.audit = audit
        if audit is not None:  # tokens accepted before a restart stay single-use
            now = verifier.clock()
            for issuer, jti, expires in audit.unexpired(now - verifier.leeway):
                try:
                    verifier.replay_cache.add(issuer, jti, expires, now)
                except TokenReplayed:  # a cache shared with another server
                    pass


class JwtClient(BaselineClient):
    """One connection of a calling service to ``audience``; signs a token for
    every request and sends it in the call's metadata (:data:`TOKEN_KEY`).
    ``peer_roles``: the audience's registered roles (the TLS certificate
    proved the server is ``audience``)."""

    def __init__(self, *args: Any, signer: TokenSigner, audience: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signer = signer
        self.audience = audience

    def _token(self, operation: str, body: bytes, user_token: str | None) -> dict[str, bytes]:
        token = self.signer.sign(self.audience, operation, body,
                                 user_token=user_token).encode("ascii")
        if len(token) > MAX_TOKEN:
            raise ConfigurationError("token too long (nested user token too large?)")
        return {TOKEN_KEY: token}

    async def call(self, operation: str, body: bytes = b"", *, timeout: float | None = 10.0,
                   user_token: str | None = None) -> bytes:
        """Request/response with a fresh token (``user_token`` nested as
        ``usr``). Refused tokens come back as :class:`~rolewire.errors.Forbidden`
        naming the reason."""
        body = bytes(body)
        return await self._request(operation, body, timeout,
                                   self._token(operation, body, user_token))

    async def notify(self, operation: str, body: bytes = b"", *,
                     user_token: str | None = None) -> None:
        await self.send_many(operation, (body,), user_token=user_token)

    async def send_many(self, operation: str, bodies: Iterable[bytes], *,
                        user_token: str | None = None) -> None:
        """Many notifications in one write, one token each."""
        conn = self.connection
        conn.check_open()
        for body in bodies:
            body = bytes(body)
            conn.notify(operation, body, metadata=self._token(operation, body, user_token))
        self._send()
        await self._drain()


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 0, cert: CertSource,
          key: PathLike | None = None, registry: KeyRegistry, audience: str | None = None,
          audit: AuditStore | None = None, verifier: TokenVerifier | None = None,
          leeway: float = 5.0, max_lifetime: float = 300.0, require_user: bool = False,
          require_user_audience: bool = False, max_frame: int = MAX_FRAME,
          max_inflight: int = 64, handshake_timeout: float = 10.0,
          backlog: int = 1024) -> Opening[JwtServer]:
    """Serve ``service`` over TLS 1.3 (``cert`` issued to the audience name)
    accepting requests with valid tokens addressed to ``audience`` (default:
    the service name) from signers in ``registry``. ``audit``: store every
    accepted token (non-repudiation)."""
    context = server_context(cert, key, ca=None, require_client_certificate=False)
    check = verifier or TokenVerifier(
        audience or service.name, registry, leeway=leeway, max_lifetime=max_lifetime,
        require_user=require_user, require_user_audience=require_user_audience)

    async def start() -> JwtServer:
        server = JwtServer(service, check, audit, ssl_context=context, max_frame=max_frame,
                           max_inflight=max_inflight, handshake_timeout=handshake_timeout)
        await server.start(host, port, backlog)
        return server

    return Opening(start)


def connect(host: str, port: int, *, identity: ServiceIdentity, audience: str,
            ca: AnchorSource, registry: KeyRegistry | None = None,
            lifetime: int = DEFAULT_LIFETIME, signer: TokenSigner | None = None,
            ssl_context: ssl.SSLContext | None = None, timeout: float | None = 10.0,
            max_frame: int = MAX_FRAME) -> Opening[JwtClient]:
    """Connect as ``identity`` to the service ``audience``: TLS verifies the
    server certificate against ``ca`` *and its name against ``audience``*;
    every request then carries a token signed by ``identity``."""
    context = ssl_context or client_context(None, ca=ca, check_hostname=True)
    token_signer = signer or TokenSigner(identity, lifetime=lifetime)
    roles = registry.roles(audience) if registry is not None else frozenset()
    return Opening(lambda: open_client(
        JwtClient, host, port, ssl_context=context, server_hostname=audience,
        timeout=timeout, max_frame=max_frame, peer_roles=lambda _w: roles, security=TLS13,
        signer=token_signer, audience=audience))
