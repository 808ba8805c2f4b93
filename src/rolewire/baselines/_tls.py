"""TLS 1.3 contexts and errors of the baselines (private): certificates
from PEM paths or :class:`~rolewire.pki.Issued`, reloadable, and OpenSSL
failures mapped to typed :class:`~rolewire.errors.HandshakeError`\\ s."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rolewire import pki
from rolewire.errors import CertificateRejected, ConfigurationError, HandshakeError

__all__ = [
    "AnchorSource",
    "CertSource",
    "PathLike",
    "TLSCertificateRejected",
    "TLSHandshakeFailed",
    "client_context",
    "reload_chain",
    "server_context",
    "tls_error",
]

PathLike = str | os.PathLike[str]
#: A certificate with its key: PEM paths, or an :class:`~rolewire.pki.Issued`.
CertSource = PathLike | pki.Issued
#: A trust anchor: PEM path, certificate, or the CA's :class:`~rolewire.pki.Issued`.
AnchorSource = PathLike | pki.Issued | x509.Certificate


# --- errors -------------------------------------------------------------------------


class TLSHandshakeFailed(HandshakeError):
    """The TLS handshake (or the server greeting right after it) failed.

    ``reason`` is OpenSSL's short reason code (e.g.
    ``"TLSV13_ALERT_CERTIFICATE_REQUIRED"``) or a short description; it never
    contains key material."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class TLSCertificateRejected(TLSHandshakeFailed, CertificateRejected):
    """A certificate was refused: ours by the server (its alert names why:
    unknown CA, expired, missing...) or the server's by us (untrusted,
    expired, wrong name)."""


def tls_error(exc: BaseException) -> TLSHandshakeFailed:
    """Map an exception raised while connecting over TLS to a typed error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or "verification failed"
        return TLSCertificateRejected(f"server certificate rejected: {detail}",
                                      reason=str(exc.reason or "CERTIFICATE_VERIFY_FAILED"))
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or type(exc).__name__)
        if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
            return TLSCertificateRejected(f"the server refused our certificate ({reason})",
                                          reason=reason)
        return TLSHandshakeFailed(f"TLS handshake failed ({reason})", reason=reason)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return TLSHandshakeFailed("TLS handshake timed out", reason="TIMEOUT")
    return TLSHandshakeFailed(
        "the server closed the connection during the TLS handshake "
        "(it may have refused our certificate)", reason="CONNECTION_CLOSED")


# --- TLS contexts -------------------------------------------------------------------


def _load_chain(context: ssl.SSLContext, cert: CertSource, key: PathLike | None) -> None:
    """``load_cert_chain`` from paths or from an :class:`~rolewire.pki.Issued`
    (written to a private temporary directory, removed right after)."""
    if isinstance(cert, pki.Issued):
        if key is not None:
            raise ConfigurationError("pass key=None with an Issued certificate")
        directory = tempfile.mkdtemp(prefix="rolewire-tls-")
        try:
            cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
            cert_path.write_bytes(cert.certificate_pem())
            pki.write_private_key(key_path, cert.private_key)
            context.load_cert_chain(cert_path, key_path)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    if key is None:
        raise ConfigurationError("a certificate path needs its key path")
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"cannot load certificate {os.fspath(cert)}: "
                                 f"{getattr(exc, 'reason', None) or exc.strerror}") from None


def _load_anchor(context: ssl.SSLContext, ca: AnchorSource) -> None:
    if isinstance(ca, pki.Issued):
        ca = ca.certificate
    if isinstance(ca, x509.Certificate):
        context.load_verify_locations(
            cadata=ca.public_bytes(serialization.Encoding.PEM).decode("ascii"))
        return
    try:
        context.load_verify_locations(cafile=os.fspath(ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"cannot load trust anchor {os.fspath(ca)}") from exc


def _tls13(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def server_context(cert: CertSource, key: PathLike | None = None, *,
                   ca: AnchorSource | None, require_client_certificate: bool = True
                   ) -> ssl.SSLContext:
    """TLS 1.3 server context presenting ``cert``. With
    ``require_client_certificate`` (the mTLS baseline) clients must present a
    certificate that chains to ``ca``; without it (the JWT baseline's
    transport) the server authenticates itself only."""
    context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, cert, key)
    if require_client_certificate:
        if ca is None:
            raise ConfigurationError("mTLS needs a trust anchor (ca=...)")
        context.verify_mode = ssl.CERT_REQUIRED
        _load_anchor(context, ca)
    return context


def client_context(cert: CertSource | None, key: PathLike | None = None, *,
                   ca: AnchorSource, check_hostname: bool = False) -> ssl.SSLContext:
    """TLS 1.3 client context: verifies the server against ``ca`` (and its
    name if ``check_hostname``), presents ``cert`` if given."""
    context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    _load_anchor(context, ca)
    if cert is not None:
        _load_chain(context, cert, key)
    return context


def reload_chain(context: ssl.SSLContext, cert: CertSource, key: PathLike | None) -> None:
    """Replace the certificate a live context presents (new handshakes use
    it; established connections keep theirs). Loads into a scratch context
    first, so a bad file raises :class:`ConfigurationError` and never
    half-replaces the working certificate."""
    _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
    _load_chain(context, cert, key)
