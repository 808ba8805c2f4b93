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

Revocation: ``crls`` are certificate revocation lists (PEM or DER) issued
by the role's anchor or by an intermediate of the chain. After the path
validates, every certificate of the path below the anchor is looked up in
the CRL of its issuer (the CRL's signature checked with the issuer's key);
a listed serial number rejects the chain with :class:`CertificateRejected`
(CERTIFICATE_REJECTED on the wire). A CRL past its ``nextUpdate`` is still
applied (the newest revocations known are better than none);
``rolewire inspect --check`` warns about it.

Rotation: a role object never changes. To rotate (new chain and key, new
anchors or CRLs), build a new role (``CertificateRole.from_files`` again, or
:meth:`reloaded`) and hand a new ``HandshakeConfig`` to
``Server.reload_config``: each handshake uses the one role object it
started with, so chain and key always match, sessions already open are
untouched, and the new role starts with an empty validation cache.

Successful path validations are cached per role (keyed by the exact chain
bytes, bounded, for at most ``cache_ttl`` seconds and never past the chain's
validity window); the signature is verified on every handshake. With or
without that cache, a role remembers the last 64 peer certificates it
parsed (by their exact DER bytes; parsing only, no validation result).
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
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

from rolewire import entropy
from rolewire.errors import CertificateRejected, ConfigurationError, RoleProofInvalid
from rolewire.roles.base import Direction, Role, RoleKind, proof_input

__all__ = ["MAX_CHAIN_DEPTH", "MIN_RSA_BITS", "CertificateRole", "load_crl"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

MAX_CHAIN_DEPTH = 8
#: Most (CRL, issuer key) signature checks a role remembers.
_MAX_CRL_SIGNATURES = 256
#: Most parsed peer certificates a role remembers (by their exact DER bytes).
_MAX_PARSED = 64
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


# Signature algorithm objects are immutable descriptors: built once, not
# per signature (two per handshake and side).
_ECDSA = {curve: ec.ECDSA(hash_type()) for curve, hash_type in _CURVE_HASH.items()}
_ECDSA_DETERMINISTIC = {curve: ec.ECDSA(hash_type(), deterministic_signing=True)
                        for curve, hash_type in _CURVE_HASH.items()}
_SHA256 = hashes.SHA256()


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        table = _ECDSA_DETERMINISTIC if entropy.deterministic_signatures() else _ECDSA
        return key.sign(data, table[key.curve.name])
    return key.sign(data, _PSS, _SHA256)


def _verify(key: PublicKey, signature: bytes, data: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, _ECDSA[key.curve.name])
    else:
        key.verify(signature, data, _PSS, _SHA256)


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


def load_crl(path: str | os.PathLike[str]) -> x509.CertificateRevocationList:
    """One certificate revocation list from a PEM or DER file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read CRL file {os.fspath(path)!r}: {exc.strerror}"
                                 ) from None
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise ConfigurationError(f"CRL file {os.fspath(path)!r}: not a PEM or DER "
                                 "certificate revocation list") from None


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return bool(crl.is_signature_valid(cast(Any, issuer.public_key())))
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def _stamps(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    result: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            result.append(None)
            continue
        result.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)


def _utc(at: datetime.datetime) -> datetime.datetime:
    return at if at.tzinfo else at.replace(tzinfo=datetime.timezone.utc)


class CertificateRole(Role):
    """A role proven by an X.509 certificate chaining to ``anchors``.

    ``chain`` (leaf first, intermediates after; the anchor may be left out)
    and ``private_key`` are needed to *claim* the role; with ``anchors`` alone
    the process can only verify peers that claim it.
    """

    kind = RoleKind.CERTIFICATE
    #: Handshake hook: the chain travels in the role entry (and may be
    #: withheld or deferred until the peer authenticated).
    sends_credentials = True
    __slots__ = (
        "_anchors",
        "_builder",
        "_cache",
        "_cache_size",
        "_cache_ttl",
        "_chain",
        "_crl_signatures",
        "_crls",
        "_files",
        "_hint_keys",
        "_key",
        "_lock",
        "_max_depth",
        "_parsed",
        "_store",
        "_verifier",
        "chain_der",
    )

    def __init__(self, name: str, *, anchors: Sequence[x509.Certificate],
                 chain: Sequence[x509.Certificate] = (),
                 private_key: PrivateKey | None = None,
                 max_chain_depth: int = MAX_CHAIN_DEPTH,
                 cache_size: int = 128, cache_ttl: float = 300.0,
                 crls: Sequence[x509.CertificateRevocationList] = ()) -> None:
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
        crls = list(crls)
        if not all(isinstance(c, x509.CertificateRevocationList) for c in crls):
            raise ConfigurationError("crls must be cryptography CertificateRevocationList objects")
        for crl in crls:
            for anchor in anchors:
                if crl.issuer == anchor.subject and not _crl_signed_by(crl, anchor):
                    raise ConfigurationError(
                        f"role {name!r}: a CRL names the anchor {anchor.subject.rfc4514_string()}"
                        " as issuer but its signature does not verify with the anchor's key")
        self._crls = tuple(crls)
        self._files: dict[str, Any] | None = None
        self._anchors = tuple(anchors)
        self._store = Store(anchors)
        # Public per-role work, done once: the hint keys of the anchors and
        # the verifier policy without its time (each validation adds the
        # time of that handshake).
        self._hint_keys = tuple(hashlib.blake2b(
            a.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo),
            digest_size=32, person=b"rolewire2crthint").digest() for a in self._anchors)
        self._builder = (PolicyBuilder().store(self._store).max_chain_depth(max_chain_depth)
                         .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY))
        #: (validation second, verifier built for it): the verifier compares
        #: validity dates at whole seconds (it drops the microseconds of its
        #: time), so every validation within one second uses the same one.
        self._verifier: tuple[datetime.datetime, Any] | None = None
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
        #: DER bytes -> the parsed certificate (see :meth:`_parse`).
        self._parsed: OrderedDict[bytes, x509.Certificate] = OrderedDict()
        #: (CRL index, issuer SPKI DER) -> the CRL's signature verifies.
        self._crl_signatures: OrderedDict[tuple[int, bytes], bool] = OrderedDict()

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
        return self._hint_keys

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    @property
    def crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        """The revocation lists this role applies."""
        return self._crls

    @property
    def source_files(self) -> tuple[Path, ...]:
        """The files this role was loaded from (``from_files``), else ()."""
        if self._files is None:
            return ()
        return tuple(self._files["paths"])

    @property
    def watch(self) -> bool:
        """Loaded with ``from_files(..., watch=True)``."""
        return bool(self._files is not None and self._files["watch"])

    def files_changed(self) -> bool:
        """True if a file this role was loaded from changed (size, mtime or
        inode) or vanished since it was loaded. Cheap: one ``stat`` a file."""
        if self._files is None:
            return False
        return bool(_stamps(self._files["paths"]) != self._files["stamps"])

    def reloaded(self) -> CertificateRole:
        """A new role read from the same files (a rotated chain and key, new
        anchors or CRLs); this one is left as it was. Raises
        :class:`ConfigurationError` if the files are unusable (for example a
        certificate written before its key: call again once both are in
        place)."""
        if self._files is None:
            raise ConfigurationError(f"role {self.name!r} was not loaded from files")
        return CertificateRole.from_files(self.name, **self._files["args"])

    @classmethod
    def from_files(cls, name: str, *, anchors: str | os.PathLike[str],
                   cert: str | os.PathLike[str] | None = None,
                   key: str | os.PathLike[str] | None = None,
                   key_password: bytes | None = None,
                   crls: Sequence[str | os.PathLike[str]] = (),
                   watch: bool = False,
                   **kwargs: Any) -> CertificateRole:
        """Loads PEM files: ``anchors`` (one or more CA certificates),
        ``cert`` (leaf first, then intermediates) and ``key`` (PKCS#8 or
        traditional PEM, optionally encrypted with ``key_password``);
        ``crls``: revocation list files, PEM or DER. The role remembers the
        files (:meth:`files_changed`, :meth:`reloaded`). ``watch=True`` marks
        it for :func:`rolewire.serving.watch_certificates`, which swaps in
        :meth:`reloaded` on a running server when the files change."""
        paths = [Path(anchors), *(Path(p) for p in crls)]
        stamps = _stamps(paths + [Path(p) for p in (cert, key) if p is not None])
        anchor_certs = _load_pems(anchors, "anchor file")
        chain: list[x509.Certificate] = []
        private_key = None
        if (cert is None) != (key is None):
            raise ConfigurationError("give both cert and key, or neither")
        if cert is not None and key is not None:
            paths += [Path(cert), Path(key)]
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
        crl_list = [load_crl(p) for p in crls]
        role = cls(name, anchors=anchor_certs, chain=chain, private_key=private_key,
                   crls=crl_list, **kwargs)
        role._files = {"paths": paths, "stamps": stamps, "watch": watch,
                       "args": {"anchors": anchors, "cert": cert, "key": key,
                                "key_password": key_password, "crls": tuple(crls),
                                "watch": watch, **kwargs}}
        return role

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
        if self._cache_size > 0:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    pub, not_before, not_after, cached_at = hit
                    if (not_before <= at <= not_after
                            and cached_at <= at < cached_at + self._cache_ttl):
                        self._cache.move_to_end(key)
                        return pub
                    del self._cache[key]
        if not 1 <= len(key) <= MAX_CHAIN_DEPTH:
            raise CertificateRejected("certificate chain length out of range")
        try:
            certs = [self._parse(der) for der in key]
        except ValueError:
            raise CertificateRejected("certificate could not be parsed") from None
        leaf = certs[0]
        try:
            leaf_key = leaf.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise CertificateRejected("leaf public key could not be loaded") from None
        _check_public_key(leaf_key, "leaf certificate")
        pub = cast(PublicKey, leaf_key)  # _check_public_key admitted only these
        second = at.replace(microsecond=0)
        built = self._verifier
        if built is not None and built[0] == second:
            verifier = built[1]
        else:
            verifier = self._builder.time(second).build_client_verifier()
            self._verifier = (second, verifier)
        try:
            verified = verifier.verify(leaf, certs[1:])
        except VerificationError as exc:
            raise CertificateRejected(f"certificate chain rejected for role {self.name!r}: "
                                      f"{exc}") from None
        if self._crls:
            self._check_revocation(verified.chain)
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

    # --- handshake hooks -----------------------------------------------------

    def credentials(self) -> tuple[bytes, ...]:
        """Handshake hook: our chain (DER, leaf first) for the role entry."""
        return self.chain_der

    def verify_proof(self, direction: Direction, h: bytes, proof: bytes,
                     credentials: Sequence[bytes],
                     wall_clock: Callable[[], datetime.datetime]) -> None:
        """Handshake hook: :meth:`verify` of the peer's chain and signature,
        path-validated at ``wall_clock()``."""
        self.verify(direction, h, credentials, proof, wall_clock())

    def _parse(self, der: bytes) -> x509.Certificate:
        """The certificate of ``der``, parsed once per role for the same
        bytes (bounded, least recently used out): parsing is a function of
        the bytes, and a parsed certificate keeps its loaded public key, so a
        peer that comes back skips both (~35 us per handshake in a loaded
        process). Nothing of a validation is remembered here: the path,
        dates, key usage and CRLs are checked on every use."""
        if type(der) is not bytes:
            der = bytes(der)
        with self._lock:
            cert = self._parsed.get(der)
            if cert is not None:
                self._parsed.move_to_end(der)
                return cert
        cert = x509.load_der_x509_certificate(der)  # ValueError: the caller rejects
        with self._lock:
            self._parsed[der] = cert
            while len(self._parsed) > _MAX_PARSED:
                self._parsed.popitem(last=False)
        return cert

    def _check_revocation(self, path: Sequence[x509.Certificate]) -> None:
        """``path`` is leaf first, anchor last; each certificate below the
        anchor is checked against the CRLs of its issuer."""
        for cert, issuer in itertools.pairwise(path):
            for index, crl in enumerate(self._crls):
                if crl.issuer != issuer.subject or not self._crl_signed_by(index, crl, issuer):
                    continue
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    what = "leaf" if cert is path[0] else "intermediate"
                    raise CertificateRejected(
                        f"certificate chain rejected for role {self.name!r}: the {what} "
                        f"certificate (serial {cert.serial_number:x}) is revoked")

    def _crl_signed_by(self, index: int, crl: x509.CertificateRevocationList,
                       issuer: x509.Certificate) -> bool:
        """:func:`_crl_signed_by`, remembered per (CRL, issuer public key):
        whether a fixed CRL's signature verifies with a given key never
        changes, so it is checked once, not in every handshake. (The path
        is still validated and looked up in the CRL every time; a new role,
        as after a reload, starts with nothing remembered.)"""
        try:
            spki = issuer.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        except (ValueError, UnsupportedAlgorithm):
            return False
        key = (index, spki)
        with self._lock:
            known = self._crl_signatures.get(key)
        if known is None:
            known = _crl_signed_by(crl, issuer)
            with self._lock:
                self._crl_signatures[key] = known
                while len(self._crl_signatures) > _MAX_CRL_SIGNATURES:
                    self._crl_signatures.popitem(last=False)
        return known

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def _now() -> datetime.datetime:  # pragma: no cover - convenience
    return datetime.datetime.now(datetime.timezone.utc)


WallClock = Callable[[], datetime.datetime]
