"""Signing keys of certificate roles for non-repudiation, and checking a
signer's certificate chain against a role's trust anchors.

Three algorithms (all from ``cryptography``):

=====  ====================  ==========================================
id     name                  leaf certificate key / signature
=====  ====================  ==========================================
1      ``ecdsa-p256``        EC P-256; ECDSA with SHA-256 (DER)
2      ``ed25519``           Ed25519; 64 bytes
3      ``ed25519+mldsa65``   Ed25519, plus an ML-DSA-65 public key in the
                             leaf's :data:`MLDSA65_KEY_OID` extension;
                             Ed25519 (64 bytes) || ML-DSA-65 (3309 bytes),
                             **both** must verify
=====  ====================  ==========================================

For ``ecdsa-p256`` the certificate of a handshake certificate role can sign
directly; Ed25519 and the hybrid need a signing certificate from the same
role CA (:func:`issue_signer`), since handshake certificate roles accept
only ECDSA and RSA leaves. The hybrid's ML-DSA key is bound to the holder by
the CA's signature over the leaf (a classical signature today: the chain is
as strong as the CA's algorithm; the post-quantum part protects the call
signatures themselves).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from rolewire.errors import ConfigurationError, RolewireError

__all__ = [
    "MAX_CHAIN",
    "MLDSA65_KEY_OID",
    "Algorithm",
    "SignatureInvalid",
    "Signer",
    "SignerNotTrusted",
    "chain_digest",
    "issue_signer",
    "validate_chain",
    "verify_signature",
]

#: Private OID (UUID arc, ITU-T X.667) of the leaf extension holding the
#: raw ML-DSA-65 public key of a hybrid signer.
MLDSA65_KEY_OID = x509.ObjectIdentifier("2.25.191062745463580237290113574519384817925")
#: Longest signer chain accepted (leaf first).
MAX_CHAIN = 8
_ED25519_SIG = 64
_MLDSA65_SIG = 3309


class SignatureInvalid(RolewireError):
    """A batch signature does not verify with the signer's certificate key
    (for the hybrid: either of its two signatures)."""


class SignerNotTrusted(RolewireError):
    """The signer's certificate chain does not lead to the role's trust
    anchors (at the time of signing), or its leaf key does not fit the
    algorithm."""


class Algorithm(enum.IntEnum):
    ECDSA_P256 = 1
    ED25519 = 2
    ED25519_MLDSA65 = 3

    @property
    def label(self) -> str:
        return {1: "ecdsa-p256", 2: "ed25519", 3: "ed25519+mldsa65"}[int(self)]

    @classmethod
    def parse(cls, name: str | int | Algorithm) -> Algorithm:
        if isinstance(name, (int, Algorithm)):
            return cls(name)
        for algorithm in cls:
            if algorithm.label == name:
                return algorithm
        raise ConfigurationError(
            f"signature algorithm must be one of {', '.join(a.label for a in cls)}")


def chain_digest(chain_der: Sequence[bytes]) -> bytes:
    """SHA-256 over the chain (each DER certificate length-prefixed)."""
    h = hashlib.sha256(b"rolewire-nonrep-chain/1\x00")
    for der in chain_der:
        h.update(len(der).to_bytes(4, "big") + der)
    return h.digest()


@dataclass(frozen=True)
class Signer:
    """The signing side of a certificate role: the role's name, the chain
    (leaf first) and the leaf's private key(s)."""

    role: str
    chain: tuple[x509.Certificate, ...]
    private_key: Any = field(repr=False)
    mldsa_key: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.chain or len(self.chain) > MAX_CHAIN:
            raise ConfigurationError(f"a signer needs a chain of 1..{MAX_CHAIN} certificates")
        self.algorithm  # noqa: B018 - validates the key types

    @property
    def algorithm(self) -> Algorithm:
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return Algorithm.ECDSA_P256
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return Algorithm.ED25519_MLDSA65 if self.mldsa_key is not None else \
                Algorithm.ED25519
        raise ConfigurationError("signing keys are EC P-256 or Ed25519 (+ ML-DSA-65)")

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.chain)

    def sign(self, data: bytes) -> bytes:
        algorithm = self.algorithm
        if algorithm is Algorithm.ECDSA_P256:
            return bytes(self.private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        signature = bytes(self.private_key.sign(data))
        if algorithm is Algorithm.ED25519_MLDSA65:
            signature += bytes(self.mldsa_key.sign(data))
        return signature

    @classmethod
    def from_files(cls, role: str, cert: str, key: str, mldsa_key: str | None = None) -> Signer:
        """Load a PEM chain (leaf first), its PEM private key and, for the
        hybrid, the ML-DSA-65 private key (PEM)."""
        from pathlib import Path

        chain = tuple(x509.load_pem_x509_certificates(Path(cert).read_bytes()))
        private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
        pq = serialization.load_pem_private_key(Path(mldsa_key).read_bytes(), None) \
            if mldsa_key else None
        return cls(role, chain, private, pq)


def issue_signer(ca_certificate: x509.Certificate, ca_key: Any, role: str, holder: str, *,
                 algorithm: str | Algorithm = "ed25519", days: int = 365,
                 not_before: datetime.datetime | None = None) -> Signer:
    """A signing certificate for ``holder`` under the role CA (``ca_key``
    signs it), with a fresh key of ``algorithm``."""
    algo = Algorithm.parse(algorithm)
    key: Any = ec.generate_private_key(ec.SECP256R1()) if algo is Algorithm.ECDSA_P256 \
        else ed25519.Ed25519PrivateKey.generate()
    pq = mldsa.MLDSA65PrivateKey.generate() if algo is Algorithm.ED25519_MLDSA65 else None
    now = datetime.datetime.now(datetime.timezone.utc)
    start = not_before or now - datetime.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, holder)]))
        .issuer_name(ca_certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + datetime.timedelta(days=days),
                             ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
    )
    if pq is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(
            MLDSA65_KEY_OID, pq.public_key().public_bytes_raw()), critical=False)
    ca_hash = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(ca_key, ca_hash)
    return Signer(role, (cert,), key, pq)


@dataclass(frozen=True)
class SignerKey:
    """What a validated chain gives: the leaf's subject and public key(s)."""

    subject: str
    algorithm: Algorithm
    public_key: Any = field(repr=False)
    mldsa_key: Any = field(default=None, repr=False)


def _ee_policy() -> ExtensionPolicy:
    # Signing certificates need no names; the leaf key usage is checked
    # below (digitalSignature), other extensions may be present.
    return ExtensionPolicy.permit_all()


def validate_chain(chain_der: Sequence[bytes], anchors: Sequence[x509.Certificate],
                   algorithm: Algorithm, at: datetime.datetime) -> SignerKey:
    """Validate the signer chain against ``anchors`` at time ``at`` and
    return the leaf's key(s) for ``algorithm``. Raises :class:`SignerNotTrusted`."""
    if not chain_der or len(chain_der) > MAX_CHAIN or not anchors:
        raise SignerNotTrusted("empty or too long signer chain, or no anchors")
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError:
        raise SignerNotTrusted("signer chain does not parse") from None
    try:
        verifier = (PolicyBuilder().store(Store(list(anchors))).time(at)
                    .max_chain_depth(MAX_CHAIN)
                    .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                        ee_policy=_ee_policy())
                    .build_client_verifier())
        verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        raise SignerNotTrusted(f"signer chain not trusted for this role ({exc})") from None
    leaf = chain[0]
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise SignerNotTrusted("signer certificate does not allow digitalSignature")
    except x509.ExtensionNotFound:
        pass
    key = leaf.public_key()
    subject = leaf.subject.rfc4514_string()
    if algorithm is Algorithm.ECDSA_P256:
        if not isinstance(key, ec.EllipticCurvePublicKey) or \
                not isinstance(key.curve, ec.SECP256R1):
            raise SignerNotTrusted("ecdsa-p256 needs a P-256 leaf key")
        return SignerKey(subject, algorithm, key)
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignerNotTrusted(f"{algorithm.label} needs an Ed25519 leaf key")
    if algorithm is Algorithm.ED25519:
        return SignerKey(subject, algorithm, key)
    try:
        raw = leaf.extensions.get_extension_for_oid(MLDSA65_KEY_OID).value
        if not isinstance(raw, x509.UnrecognizedExtension):
            raise TypeError("unexpected extension type")
        pq = mldsa.MLDSA65PublicKey.from_public_bytes(raw.value)
    except (x509.ExtensionNotFound, ValueError, TypeError):
        raise SignerNotTrusted("hybrid signer certificate lacks its ML-DSA-65 key") from None
    return SignerKey(subject, algorithm, key, pq)


def verify_signature(key: SignerKey, signature: bytes, data: bytes) -> None:
    """Raises :class:`SignatureInvalid` unless ``signature`` verifies (for
    the hybrid: both parts)."""
    try:
        if key.algorithm is Algorithm.ECDSA_P256:
            key.public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif key.algorithm is Algorithm.ED25519:
            if len(signature) != _ED25519_SIG:
                raise InvalidSignature
            key.public_key.verify(signature, data)
        else:
            if len(signature) != _ED25519_SIG + _MLDSA65_SIG:
                raise InvalidSignature
            key.public_key.verify(signature[:_ED25519_SIG], data)
            key.mldsa_key.verify(signature[_ED25519_SIG:], data)
    except InvalidSignature:
        raise SignatureInvalid(f"the {key.algorithm.label} signature does not verify") from None
