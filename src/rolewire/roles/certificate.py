"""Certificate roles: an X.509 certificate chaining to the role's trust
anchors proves the role.

The holder signs ``proof_input(CERTIFICATE, direction, role_id, h)`` with the
certificate's private key; its chain (leaf first, at most 8 certificates)
travels encrypted in the handshake. The verifier

1. parses the chain and accepts only ECDSA P-256 / P-384 and RSA (>= 2048
   bit) leaf keys;
2. validates the path with ``cryptography.x509.verification`` against *this
   role's* anchors only (a certificate from another role's CA fails), at the
   current time: validity dates of every certificate, CA basic constraints and
   path length, CA key usage (keyCertSign), the leaf's key usage (must allow
   digitalSignature) and, if present, its extended key usage (clientAuth,
   serverAuth or anyExtendedKeyUsage); names are not checked (role
   certificates need no subjectAltName);
3. verifies the signature with the leaf key: ECDSA with SHA-256 (P-256) or
   SHA-384 (P-384), RSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt.
   The algorithm follows from the leaf key, so nothing is negotiated.

A role built with anchors only can verify the role but not claim it.

Successful path validations are cached per role (keyed by the exact chain
bytes, bounded, for at most ``cache_ttl`` seconds and never past the chain's
validity window); the signature is verified on every handshake.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from rolewire.errors import CertificateRejected, ConfigurationError, RoleProofInvalid
from rolewire.roles.base import Direction, Role, RoleKind, proof_input

__all__ = ["MAX_CHAIN_DEPTH", "MIN_RSA_BITS", "CertificateRole"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

MAX_CHAIN_DEPTH = 8
MIN_RSA_BITS = 2048
_CURVE_HASH = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_EKU_OK = {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH,
           ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


def _check_key_usage(policy: Any, cert: x509.Certificate, ext: Any) -> None:
    if ext is None or not ext.digital_signature:
        raise ValueError("leaf key usage must allow digitalSignature")


def _check_eku(policy: Any, cert: x509.Certificate, ext: Any) -> None:
    if ext is not None and not _EKU_OK.intersection(ext):
        raise ValueError("leaf extended key usage allows neither clientAuth nor serverAuth")


def _ee_policy() -> ExtensionPolicy:
    return (ExtensionPolicy.webpki_defaults_ee()
            .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
            .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _check_key_usage)
            .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _check_eku))


_EE_POLICY = _ee_policy()
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


def _check_public_key(key: Any, where: str) -> None:
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if key.curve.name not in _CURVE_HASH:
            raise CertificateRejected(f"{where}: curve {key.curve.name} not accepted "
                                      "(P-256 and P-384 are)")
    elif isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateRejected(f"{where}: RSA key shorter than {MIN_RSA_BITS} bits")
    else:
        raise CertificateRejected(f"{where}: key type not accepted (ECDSA P-256/P-384, RSA)")


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_CURVE_HASH[key.curve.name]()))
    return key.sign(data, _PSS, hashes.SHA256())


def _verify(key: PublicKey, signature: bytes, data: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(_CURVE_HASH[key.curve.name]()))
    else:
        key.verify(signature, data, _PSS, hashes.SHA256())


def _load_pems(path: str | os.PathLike[str], what: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {os.fspath(path)!r}: {exc.strerror}"
                                 ) from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigurationError(f"{what} {os.fspath(path)!r}: no PEM certificate") from None
    return certs


def _utc(at: datetime.datetime) -> datetime.datetime:
    return at if at.tzinfo else at.replace(tzinfo=datetime.timezone.utc)


class CertificateRole(Role):
    """A role proven by an X.509 certificate chaining to ``anchors``.

    ``chain`` (leaf first, intermediates after; the anchor may be left out)
    and ``private_key`` are needed to *claim* the role; with ``anchors`` alone
    the process can only verify peers that claim it.
    """

    kind = RoleKind.CERTIFICATE
    __slots__ = (
        "_anchors",
        "_cache",
        "_cache_size",
        "_cache_ttl",
        "_chain",
        "_key",
        "_lock",
        "_max_depth",
        "_store",
        "chain_der",
    )

    def __init__(self, name: str, *, anchors: Sequence[x509.Certificate],
                 chain: Sequence[x509.Certificate] = (),
                 private_key: PrivateKey | None = None,
                 max_chain_depth: int = MAX_CHAIN_DEPTH,
                 cache_size: int = 128, cache_ttl: float = 300.0) -> None:
        super().__init__(name)
        anchors = list(anchors)
        if not anchors:
            raise ConfigurationError(f"certificate role {name!r} needs at least one anchor")
        if not all(isinstance(a, x509.Certificate) for a in anchors):
            raise ConfigurationError("anchors must be cryptography x509.Certificate objects")
        chain = list(chain)
        if (private_key is None) != (not chain):
            raise ConfigurationError("a certificate role needs both a chain and its private "
                                     "key to be claimed (or neither, to only verify)")
        if len(chain) > MAX_CHAIN_DEPTH:
            raise ConfigurationError(f"certificate chain longer than {MAX_CHAIN_DEPTH}")
        if private_key is not None:
            try:
                _check_public_key(private_key, f"role {name!r}")
            except CertificateRejected as exc:
                raise ConfigurationError(str(exc)) from None
            if private_key.public_key() != chain[0].public_key():
                raise ConfigurationError(
                    f"role {name!r}: private key does not match the leaf certificate")
        if not 1 <= max_chain_depth <= MAX_CHAIN_DEPTH:
            raise ConfigurationError(f"max_chain_depth must be 1..{MAX_CHAIN_DEPTH}")
        self._anchors = tuple(anchors)
        self._store = Store(anchors)
        self._chain = tuple(chain)
        self.chain_der: tuple[bytes, ...] = tuple(
            c.public_bytes(serialization.Encoding.DER) for c in chain)
        self._key = private_key
        self._max_depth = max_chain_depth
        self._cache: OrderedDict[tuple[bytes, ...], tuple[PublicKey, datetime.datetime,
                                                          datetime.datetime,
                                                          datetime.datetime]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = datetime.timedelta(seconds=cache_ttl)
        self._lock = threading.Lock()

    @property
    def can_prove(self) -> bool:
        return self._key is not None

    @property
    def can_verify(self) -> bool:
        return True

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return self._anchors

    def hint_keys(self) -> tuple[bytes, ...]:
        """One Hello hint key per anchor: ``BLAKE2b-256(anchor SPKI DER,
        person="rolewire2crthint")`` (docs/PROTOCOL.md, "Role hints"), so
        only parties that hold the anchor recognise the role."""
        return tuple(hashlib.blake2b(
            a.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo),
            digest_size=32, person=b"rolewire2crthint").digest() for a in self._anchors)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    @classmethod
    def from_files(cls, name: str, *, anchors: str | os.PathLike[str],
                   cert: str | os.PathLike[str] | None = None,
                   key: str | os.PathLike[str] | None = None,
                   key_password: bytes | None = None, **kwargs: Any) -> CertificateRole:
        """Loads PEM files: ``anchors`` (one or more CA certificates),
        ``cert`` (leaf first, then intermediates) and ``key`` (PKCS#8 or
        traditional PEM, optionally encrypted with ``key_password``)."""
        anchor_certs = _load_pems(anchors, "anchor file")
        chain: list[x509.Certificate] = []
        private_key = None
        if (cert is None) != (key is None):
            raise ConfigurationError("give both cert and key, or neither")
        if cert is not None and key is not None:
            chain = _load_pems(cert, "certificate file")
            try:
                pk = serialization.load_pem_private_key(Path(key).read_bytes(), key_password)
            except OSError as exc:
                raise ConfigurationError(f"cannot read key file {os.fspath(key)!r}: "
                                         f"{exc.strerror}") from None
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise ConfigurationError(f"key file {os.fspath(key)!r}: not a usable PEM "
                                         "private key (or wrong password)") from None
            if not isinstance(pk, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
                raise ConfigurationError("certificate role keys must be ECDSA or RSA")
            private_key = pk
        return cls(name, anchors=anchor_certs, chain=chain, private_key=private_key, **kwargs)

    # --- proving -------------------------------------------------------------

    def prove(self, direction: Direction, h: bytes) -> bytes:
        if self._key is None:
            raise ConfigurationError(f"role {self.name!r} holds no private key")
        return _sign(self._key, proof_input(self.kind, direction, self.role_id, h))

    # --- verifying -----------------------------------------------------------

    def validate_chain(self, chain_der: Sequence[bytes], at: datetime.datetime) -> PublicKey:
        """Path-validates a peer's chain for this role at time ``at``; returns
        the leaf public key. Raises :class:`CertificateRejected`."""
        at = _utc(at)
        key = tuple(chain_der)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                pub, not_before, not_after, cached_at = hit
                if not_before <= at <= not_after and cached_at <= at < cached_at + self._cache_ttl:
                    self._cache.move_to_end(key)
                    return pub
                del self._cache[key]
        if not 1 <= len(key) <= MAX_CHAIN_DEPTH:
            raise CertificateRejected("certificate chain length out of range")
        try:
            certs = [x509.load_der_x509_certificate(der) for der in key]
        except ValueError:
            raise CertificateRejected("certificate could not be parsed") from None
        leaf = certs[0]
        try:
            leaf_key = leaf.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise CertificateRejected("leaf public key could not be loaded") from None
        _check_public_key(leaf_key, "leaf certificate")
        pub = cast(PublicKey, leaf_key)  # _check_public_key admitted only these
        verifier = (PolicyBuilder().store(self._store).time(at)
                    .max_chain_depth(self._max_depth)
                    .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                    .build_client_verifier())
        try:
            verified = verifier.verify(leaf, certs[1:])
        except VerificationError as exc:
            raise CertificateRejected(f"certificate chain rejected for role {self.name!r}: "
                                      f"{exc}") from None
        if self._cache_size > 0:
            path = verified.chain
            not_before = max(_utc(c.not_valid_before_utc) for c in path)
            not_after = min(_utc(c.not_valid_after_utc) for c in path)
            with self._lock:
                self._cache[key] = (pub, not_before, not_after, at)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return pub

    def verify(self, direction: Direction, h: bytes, chain_der: Sequence[bytes],
               signature: bytes, at: datetime.datetime) -> None:
        pub = self.validate_chain(chain_der, at)
        try:
            _verify(pub, signature, proof_input(self.kind, direction, self.role_id, h))
        except InvalidSignature:
            raise RoleProofInvalid("certificate role signature did not verify") from None

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def _now() -> datetime.datetime:  # pragma: no cover - convenience
    return datetime.datetime.now(datetime.timezone.utc)


WallClock = Callable[[], datetime.datetime]
