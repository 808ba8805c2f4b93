"""A small self-hosted PKI for certificate roles (and the mTLS baseline).

``create_ca`` makes a root CA; ``issue`` signs a leaf certificate for a
service or role holder. Keys are ECDSA P-256 by default (P-384 and RSA-2048
on request); leaf certificates carry the extensions that
``cryptography.x509.verification`` requires (SAN, EKU client+server auth,
key usage, AKI/SKI), so they validate as role certificates and as TLS
certificates alike. Private keys are written readable by their owner only
(mode 0600 on POSIX, an owner-only ACL on Windows: :func:`write_secret_file`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rolewire.errors import ConfigurationError

__all__ = [
    "KEY_TYPES",
    "Issued",
    "check_dns_name",
    "check_ip_address",
    "create_ca",
    "create_crl",
    "issue",
    "load_issued",
    "owner_only",
    "write_atomically",
    "write_private_key",
    "write_secret_file",
]

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048")
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    private_key: PrivateKey

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (write it with
        :func:`write_secret_file` or ``write_atomically(..., secret=True)``)."""
        return self.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def save(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        Path(cert_path).write_bytes(self.certificate_pem())
        write_private_key(key_path, self.private_key)


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ConfigurationError(f"key type must be one of {', '.join(KEY_TYPES)}")


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def create_ca(common_name: str, *, key_type: str = "ec-p256", days: float = 3650,
              path_length: int | None = 0) -> Issued:
    """A self-signed root CA that may sign leaf certificates only (by default)."""
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rolewire PKI")])
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, _hash_for(key))
    )
    return Issued(cert, key)


def issue(ca: Issued, common_name: str, *, key_type: str = "ec-p256", days: float = 365,
          dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = (),
          uris: Iterable[str] = (), not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None) -> Issued:
    """A leaf certificate signed by ``ca`` for ``common_name``.

    The SAN always contains ``common_name`` as a DNS name (service names are
    DNS-safe labels) plus any extra names, IP addresses or URIs given.
    ``not_before``/``not_after`` override the validity window (default: from
    five minutes ago for ``days``, never past the CA's own expiry)."""
    key = _new_key(key_type)
    now = _now()
    names: list[x509.GeneralName] = [x509.DNSName(common_name)]
    names += [x509.DNSName(d) for d in dns_names if d != common_name]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or min(now + datetime.timedelta(days=days),
                                          ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                                     data_encipherment=False, key_agreement=False,
                                     key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                              ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.private_key.public_key()), critical=False)
        .sign(ca.private_key, _hash_for(ca.private_key))
    )
    return Issued(cert, key)


def create_crl(ca: Issued, revoked: Iterable[x509.Certificate | int] = (), *,
               days: float = 7.0,
               previous: x509.CertificateRevocationList | None = None
               ) -> x509.CertificateRevocationList:
    """A certificate revocation list signed by ``ca`` listing ``revoked``
    (certificates or serial numbers) plus every entry of ``previous``; valid
    (``nextUpdate``) for ``days``."""
    now = _now()
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.certificate.subject)
               .last_update(now - datetime.timedelta(minutes=5))
               .next_update(now + datetime.timedelta(days=days))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.private_key.public_key()), critical=False))
    serials: dict[int, datetime.datetime] = {}
    if previous is not None:
        for entry in previous:
            serials[entry.serial_number] = entry.revocation_date_utc
    for item in revoked:
        serial = item if isinstance(item, int) else item.serial_number
        serials.setdefault(serial, now)
    for serial, when in sorted(serials.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca.private_key, _hash_for(ca.private_key))


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def check_dns_name(name: str, what: str = "name") -> str:
    """``name`` if it is a DNS-safe host name (dot-separated labels of
    letters, digits and inner hyphens; at most 253 characters; a leading
    ``*.`` wildcard is not accepted): it becomes a file name and a SAN, so
    nothing else (no ``/``, ``..``, spaces) may pass."""
    if not isinstance(name, str) or not name or len(name) > 253 \
            or not all(_LABEL.match(label) for label in name.split(".")):
        raise ConfigurationError(f"{what} {name!r} is not a DNS-safe name (letters, digits, "
                                 "'-' inside labels, labels separated by '.')")
    return name


def check_ip_address(text: str) -> str:
    """``text`` if it is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigurationError(f"{text!r} is not an IP address") from None
    return text


def write_private_key(path: str | os.PathLike[str], key: PrivateKey) -> None:
    """Write an unencrypted PKCS#8 PEM key, readable by the owner only."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    write_secret_file(path, data)


def write_secret_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Create ``path`` readable by its owner only (refusing to overwrite) and
    write ``data``.

    POSIX: the file is created with mode 0600 in one ``open`` call, so it is
    never readable by others, whatever the umask. Windows has no mode bits:
    the file is created empty, its ACL is replaced by one entry granting the
    current user full control (inherited entries removed, with ``icacls``),
    and only then is the secret written. If the ACL cannot be set the file
    is removed and :class:`ConfigurationError` raised."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ConfigurationError(f"{os.fspath(path)} already exists; not overwriting a secret"
                                 ) from None
    with os.fdopen(fd, "wb") as handle:
        if sys.platform == "win32":  # pragma: no cover - exercised by the Windows CI job
            try:
                _restrict_windows_acl(path)
            except ConfigurationError:
                handle.close()
                os.unlink(path)
                raise
        handle.write(data)


def _restrict_windows_acl(path: str | os.PathLike[str]) -> None:  # pragma: no cover
    import getpass
    import subprocess

    user = getpass.getuser()
    try:
        done = subprocess.run(["icacls", os.fspath(path), "/inheritance:r", "/grant:r",
                               f"{user}:F"], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ConfigurationError(f"cannot restrict access to {os.fspath(path)}: {exc}") from None
    if done.returncode != 0:
        raise ConfigurationError(f"cannot restrict access to {os.fspath(path)}: "
                                 f"icacls said {done.stdout.strip() or done.stderr.strip()}")


def write_atomically(path: str | os.PathLike[str], data: bytes, *, secret: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step (a temporary file in the
    same directory, flushed, then renamed over it): a reader sees the old
    content or the new one, never a partial file. ``secret``: the file is
    created owner-only (:func:`write_secret_file`) before anything is
    written to it."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        if secret:
            write_secret_file(tmp, data)
        else:
            with open(tmp, "xb") as handle:
                handle.write(data)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def owner_only(path: str | os.PathLike[str]) -> bool:
    """True if no one but the file's owner (and, on Windows, the system and
    administrators, which the platform always allows) may read ``path``.

    POSIX: no group or other permission bit. Windows: the ACL, as listed by
    ``icacls``, grants no well-known group (Everyone, Users, Authenticated
    Users) any access."""
    if sys.platform != "win32":
        return os.stat(path).st_mode & 0o077 == 0
    import subprocess  # pragma: no cover

    listing = subprocess.run(["icacls", os.fspath(path)], capture_output=True, text=True,
                             check=False).stdout  # pragma: no cover
    return not any(group in listing for group in  # pragma: no cover
                   ("Everyone", "BUILTIN\\Users", "Authenticated Users"))


def load_issued(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Issued:
    """Load a certificate and its private key (PEM)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except ValueError as exc:
        raise ConfigurationError(f"cannot parse {os.fspath(cert_path)} / key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ConfigurationError("only ECDSA and RSA keys are supported")
    return Issued(cert, key)
