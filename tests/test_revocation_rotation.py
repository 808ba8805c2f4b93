"""Certificate revocation (issue 11 section 5) and certificates that rotate
(issue 17 section 4): CRLs for a role's anchor and intermediates, re-read on
reload, no validation cache outliving a reload; chain and key swapped
atomically for new handshakes while live sessions keep working, with
certificates valid for seconds rotated under traffic."""

from __future__ import annotations

import asyncio
import datetime
import signal
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rolewire import (
    CertificateRejected,
    CertificateRole,
    ConfigurationError,
    HandshakeConfig,
    HandshakeError,
    HandshakeRejected,
    KeyRole,
    Service,
    connect,
    serve,
)
from rolewire.handshake.reasons import RejectReason
from rolewire.pki import Issued, create_ca, create_crl, issue, write_atomically
from rolewire.roles.certificate import load_crl
from tests.serve_helpers import ServeProcess, cli

NOW = datetime.datetime.now(datetime.timezone.utc)


def intermediate(root: Issued, name: str = "intermediate CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(root.certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            root.private_key.public_key()), critical=False)
        .sign(root.private_key, hashes.SHA256())
    )
    return Issued(cert, key)


@pytest.fixture(scope="module")
def pki_tree():
    root = create_ca("root", path_length=1)
    mid = intermediate(root)
    leaf = issue(mid, "holder")
    other_leaf = issue(mid, "other")
    return root, mid, leaf, other_leaf


def role_for(root, crls=()):
    return CertificateRole("holder", anchors=[root.certificate], crls=crls)


def chain_of(*certs: Issued) -> list[bytes]:
    return [c.certificate.public_bytes(serialization.Encoding.DER) for c in certs]


# --- CRLs, sans IO -----------------------------------------------------------------------

def test_revoked_leaf_is_rejected(pki_tree):
    root, mid, leaf, other = pki_tree
    crl = create_crl(mid, [leaf.certificate])
    role = role_for(root, [crl])
    with pytest.raises(CertificateRejected, match="leaf certificate .* is revoked"):
        role.validate_chain(chain_of(leaf, mid), NOW)
    role.validate_chain(chain_of(other, mid), NOW)  # not revoked: still fine


def test_revoked_intermediate_is_rejected(pki_tree):
    root, mid, leaf, other = pki_tree
    role = role_for(root, [create_crl(root, [mid.certificate])])
    for holder in (leaf, other):
        with pytest.raises(CertificateRejected, match="intermediate certificate .* is revoked"):
            role.validate_chain(chain_of(holder, mid), NOW)


def test_crl_with_a_forged_signature_is_refused_or_ignored(pki_tree):
    root, mid, leaf, _ = pki_tree
    impostor = Issued(root.certificate, ec.generate_private_key(ec.SECP256R1()))
    forged = create_crl(impostor, [mid.certificate])
    # Naming the anchor as issuer with a bad signature: a configuration error.
    with pytest.raises(ConfigurationError, match="signature does not verify"):
        role_for(root, [forged])
    # For an intermediate, the CRL is checked against the issuing
    # certificate at validation time: a forged one revokes nothing.
    fake_mid = Issued(mid.certificate, ec.generate_private_key(ec.SECP256R1()))
    role = role_for(root, [create_crl(fake_mid, [leaf.certificate])])
    role.validate_chain(chain_of(leaf, mid), NOW)


def test_policy_built_once_still_takes_each_validations_time(pki_tree):
    """A role builds its path-validation policy once (issue 13); each
    validation still applies its own time, and with the cache off nothing
    of an earlier success carries over."""
    root, mid, leaf, _other = pki_tree
    role = CertificateRole("holder", anchors=[root.certificate], cache_size=0)
    chain = chain_of(leaf, mid)
    role.validate_chain(chain, NOW)
    for at in (NOW + datetime.timedelta(days=60), NOW - datetime.timedelta(days=1)):
        with pytest.raises(CertificateRejected):
            role.validate_chain(chain, at)
    role.validate_chain(chain, NOW)
    revoking = CertificateRole("holder", anchors=[root.certificate], cache_size=0,
                               crls=[create_crl(mid, [leaf.certificate])])
    for _ in range(2):
        with pytest.raises(CertificateRejected, match="revoked"):
            revoking.validate_chain(chain, NOW)


def test_verifier_reused_within_one_second_only(pki_tree):
    """The path verifier is built once per whole second of validation time
    (the verifier drops the microseconds itself): within the second a
    certificate's last valid second passes, from the next second on it is
    refused, and a validation at another second builds a new verifier."""
    root, mid, _leaf, _other = pki_tree
    not_after = NOW.replace(microsecond=0) + datetime.timedelta(days=1)
    short = issue(mid, "short", not_before=NOW - datetime.timedelta(days=1), not_after=not_after)
    role = CertificateRole("holder", anchors=[root.certificate], cache_size=0)
    chain = chain_of(short, mid)
    role.validate_chain(chain, not_after)
    first = role._verifier
    role.validate_chain(chain, not_after + datetime.timedelta(microseconds=999_999))
    assert role._verifier is first  # same second: same verifier
    with pytest.raises(CertificateRejected):
        role.validate_chain(chain, not_after + datetime.timedelta(seconds=1))
    assert role._verifier is not first
    with pytest.raises(CertificateRejected):
        role.validate_chain(chain, short.certificate.not_valid_before_utc
                            - datetime.timedelta(microseconds=1))
    role.validate_chain(chain, not_after - datetime.timedelta(seconds=5))


def test_parsed_certificates_remembered_but_validated_every_time(pki_tree, monkeypatch):
    """A role parses the same peer certificate bytes once (bounded); every
    validation of them still checks the path, the dates and the CRLs."""
    root, mid, leaf, other = pki_tree
    parsed = []
    real = x509.load_der_x509_certificate

    def counting(der):
        parsed.append(der)
        return real(der)

    monkeypatch.setattr(x509, "load_der_x509_certificate", counting)
    role = CertificateRole("holder", anchors=[root.certificate], cache_size=0,
                           crls=[create_crl(mid, [other.certificate])])
    chain = chain_of(leaf, mid)
    for _ in range(3):
        role.validate_chain(chain, NOW)
    assert len(parsed) == 2  # leaf and intermediate, once each
    with pytest.raises(CertificateRejected):  # the remembered parse is re-validated
        role.validate_chain(chain, NOW + datetime.timedelta(days=400))
    with pytest.raises(CertificateRejected, match="revoked"):
        role.validate_chain(chain_of(other, mid), NOW)
    with pytest.raises(CertificateRejected, match="revoked"):
        role.validate_chain(chain_of(other, mid), NOW)
    assert len(parsed) == 3  # only the new leaf was parsed
    for i in range(70):  # bounded: the oldest parses are dropped
        role._parse(issue(mid, f"peer {i}").certificate.public_bytes(serialization.Encoding.DER))
    assert len(role._parsed) == 64
    role.validate_chain(chain, NOW)
    assert len(parsed) == 3 + 70 + 2


def leaf_with(issuer: Issued, key_usage: x509.KeyUsage | None,
              eku: list[x509.ObjectIdentifier] | None) -> Issued:
    """A leaf of ``issuer`` with the given key usage and extended key usage
    (None: the extension is left out)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.private_key.public_key()), critical=False))
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return Issued(builder.sign(issuer.private_key, hashes.SHA256()), key)


def _key_usage(digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=not digital_signature, data_encipherment=False,
                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


@pytest.mark.parametrize(("key_usage", "eku", "accepted"), [
    (True, [ExtendedKeyUsageOID.CLIENT_AUTH], True),
    (True, [ExtendedKeyUsageOID.SERVER_AUTH], True),
    (True, [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], True),
    (True, None, True),
    (True, [ExtendedKeyUsageOID.CODE_SIGNING], False),
    (True, [ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.TIME_STAMPING], False),
    (False, [ExtendedKeyUsageOID.CLIENT_AUTH], False),
    (None, [ExtendedKeyUsageOID.CLIENT_AUTH], False),
])
def test_leaf_key_usage_and_extended_key_usage(pki_tree, key_usage, eku, accepted):
    """The leaf's key usage must allow digitalSignature (and be present); an
    extended key usage, if present, must allow clientAuth, serverAuth or
    any: checked on every validation, a parsed certificate remembered or not."""
    root, mid, _leaf, _other = pki_tree
    leaf = leaf_with(mid, None if key_usage is None else _key_usage(key_usage), eku)
    role = CertificateRole("holder", anchors=[root.certificate], cache_size=0)
    for _ in range(2):
        if accepted:
            role.validate_chain(chain_of(leaf, mid), NOW)
        else:
            with pytest.raises(CertificateRejected):
                role.validate_chain(chain_of(leaf, mid), NOW)


def test_crl_signature_checked_once_revocation_every_time(pki_tree, monkeypatch):
    """A role remembers whether a CRL's signature verifies with an issuer's
    key (issue 13): checked once per (CRL, key), while every validation
    still looks the path up in the CRLs, and a forged CRL stays ignored."""
    from rolewire.roles import certificate

    root, mid, leaf, other = pki_tree
    calls = []
    real = certificate._crl_signed_by
    monkeypatch.setattr(certificate, "_crl_signed_by",
                        lambda crl, issuer: calls.append(issuer.subject) or real(crl, issuer))
    fake_mid = Issued(mid.certificate, ec.generate_private_key(ec.SECP256R1()))
    role = CertificateRole("holder", anchors=[root.certificate], cache_size=0,
                           crls=[create_crl(mid, [leaf.certificate]),
                                 create_crl(fake_mid, [other.certificate])])
    calls.clear()  # the constructor checks CRLs named after the anchor only
    for _ in range(3):
        with pytest.raises(CertificateRejected, match="leaf certificate .* is revoked"):
            role.validate_chain(chain_of(leaf, mid), NOW)
        role.validate_chain(chain_of(other, mid), NOW)  # the forged CRL revokes nothing
    assert len(calls) == 2  # each CRL's signature once, for mid's key
    # A new role (a reload) remembers nothing.
    fresh = CertificateRole("holder", anchors=[root.certificate], cache_size=0,
                            crls=[create_crl(mid, [leaf.certificate])])
    calls.clear()
    with pytest.raises(CertificateRejected, match="revoked"):
        fresh.validate_chain(chain_of(leaf, mid), NOW)
    assert len(calls) == 1


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_crl_files_pem_or_der(tmp_path, pki_tree, encoding):
    root, mid, leaf, _other = pki_tree
    path = tmp_path / "mid.crl"
    path.write_bytes(create_crl(mid, [leaf.certificate]).public_bytes(encoding))
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(root.certificate_pem())
    role = CertificateRole.from_files("holder", anchors=anchor, crls=[path])
    assert len(role.crls) == 1
    with pytest.raises(CertificateRejected):
        role.validate_chain(chain_of(leaf, mid), NOW)
    (tmp_path / "junk.crl").write_bytes(b"not a crl")
    with pytest.raises(ConfigurationError, match="not a PEM or DER"):
        load_crl(tmp_path / "junk.crl")


def test_reload_rereads_crls_and_drops_the_validation_cache(tmp_path, pki_tree):
    root, mid, leaf, _other = pki_tree
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(root.certificate_pem())
    crl_path = tmp_path / "mid.crl"
    write_atomically(crl_path, create_crl(mid, []).public_bytes(serialization.Encoding.PEM))
    role = CertificateRole.from_files("holder", anchors=anchor, crls=[crl_path])
    role.validate_chain(chain_of(leaf, mid), NOW)  # now cached as valid
    assert not role.files_changed()
    write_atomically(crl_path, create_crl(mid, [leaf.certificate]).public_bytes(
        serialization.Encoding.PEM))
    assert role.files_changed()
    fresh = role.reloaded()
    with pytest.raises(CertificateRejected, match="revoked"):
        fresh.validate_chain(chain_of(leaf, mid), NOW)
    # The old object is unchanged (handshakes that started with it finish
    # with it); the reloaded one never saw the cached success.
    role.validate_chain(chain_of(leaf, mid), NOW)


# --- CRLs over a real server --------------------------------------------------------------

def test_server_reload_config_applies_a_new_crl(pki_tree, caplog):
    root, mid, leaf, _other = pki_tree
    service = Service("s")
    service.add("ping", lambda call, body: b"pong", roles=["holder"])
    claim = HandshakeConfig(roles=[CertificateRole(
        "holder", anchors=[root.certificate], chain=[leaf.certificate, mid.certificate],
        private_key=leaf.private_key)], allow_anonymous=True)

    caplog.set_level("INFO", logger="rolewire")

    async def main():
        async with serve(service, HandshakeConfig(roles=[role_for(root)])) as server:
            live = await connect("127.0.0.1", server.port, claim, timeout=30)
            assert await live.call("ping") == b"pong"
            server.reload_config(HandshakeConfig(roles=[
                role_for(root, [create_crl(mid, [leaf.certificate])])]))
            with pytest.raises(HandshakeRejected) as rejected:
                # The server rejects our last handshake message: connect()
                # may return first, the Reject then fails the call.
                late = await connect("127.0.0.1", server.port, claim, timeout=30)
                await late.call("ping", timeout=30)
            # protocol 2: sent as AUTH_FAILED (the server's log says CERTIFICATE_REJECTED)
            assert rejected.value.reason_code == RejectReason.AUTH_FAILED
            failures = [r for r in caplog.records if getattr(r, "event", "") ==
                        "handshake_failed" and getattr(r, "side", "") == "responder"]
            assert failures and {r.reason for r in failures} == {"CERTIFICATE_REJECTED"}
            # The session established before the revocation is a live session
            # (revocation applies to new handshakes).
            assert await live.call("ping") == b"pong"
            await live.close()

    asyncio.run(asyncio.wait_for(main(), 120))


# --- rotation under traffic, rolewire serve + watch = true --------------------------------

ROTATING_TOML = """
[service]
name = "rotating"
listen = "127.0.0.1:1"
watch_interval = 0.1
handshake_rate = [1000.0, 1000]   # the test's clients all come from 127.0.0.1

[[role]]
name = "caller"
kind = "key"
key_file = "caller.key"

[[role]]
name = "rotating"
kind = "certificate"
anchor = "pki/ca.pem"
cert = "pki/rotating.pem"
key = "pki/rotating.key"
crl = "pki/ca.crl"
watch = true

[[role]]
name = "member"
kind = "certificate"
anchor = "members/ca.pem"
crl = "members/ca.crl"
watch = true

[access]
ping = ["caller"]
members = ["member"]
"""

ROTATING_MODULE = """
from rolewire import Service
service = Service("rotating")
service.add("ping", lambda call, body: b"pong " + ",".join(sorted(call.peer_roles)).encode(),
            roles=["caller"])
service.add("members", lambda call, body: b"member", roles=["member"])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_short_lived_certificates_rotate_under_traffic(tmp_path):
    """The service's certificate lives 8 seconds and is re-issued every
    second or so while clients keep opening sessions and a long-lived
    session keeps calling. Every new handshake verifies the service's
    certificate against the anchor at the current time, so once the first
    certificate has expired, handshakes succeed only if the service really
    switched. The long-lived session outlives several certificates."""
    import base64
    import time

    (tmp_path / "rotsvc.py").write_text(ROTATING_MODULE)
    (tmp_path / "service.toml").write_text(ROTATING_TOML)
    assert cli("keygen", str(tmp_path / "caller.key")).returncode == 0
    for ca in ("pki", "members"):
        assert cli("ca", "init", str(tmp_path / ca)).returncode == 0
        # an empty CRL to start with
        assert cli("ca", "issue", str(tmp_path / ca), "placeholder").returncode == 0
        assert cli("ca", "revoke", str(tmp_path / ca), "placeholder").returncode == 0
    assert cli("ca", "issue", str(tmp_path / "pki"), "rotating", "--ttl", "8s").returncode == 0
    assert cli("ca", "issue", str(tmp_path / "members"), "alice").returncode == 0

    from rolewire.pki import load_issued

    caller = KeyRole("caller", base64.b64decode((tmp_path / "caller.key").read_bytes()))
    verify = CertificateRole.from_files("rotating", anchors=tmp_path / "pki" / "ca.pem")
    client = HandshakeConfig(roles=[caller, verify])
    alice = load_issued(tmp_path / "members" / "alice.pem", tmp_path / "members" / "alice.key")
    member_anchor = load_issued(tmp_path / "members" / "ca.pem", tmp_path / "members" / "ca.key")
    alice_cfg = HandshakeConfig(roles=[CertificateRole(
        "member", anchors=[member_anchor.certificate], chain=[alice.certificate],
        private_key=alice.private_key), verify])
    first = x509.load_pem_x509_certificate((tmp_path / "pki" / "rotating.pem").read_bytes())
    ca_pair = load_issued(tmp_path / "pki" / "ca.pem", tmp_path / "pki" / "ca.key")

    with ServeProcess("rotsvc:service", tmp_path / "service.toml", tmp_path) as server:
        async def traffic(stop: asyncio.Event, counts: dict[str, int]) -> None:
            while not stop.is_set():
                async with connect(server.host, server.port, client, timeout=60) as ch:
                    assert ch.peer_roles == {"caller", "rotating"}
                    assert await ch.call("ping", timeout=60) == b"pong caller"
                counts["handshakes"] += 1
                await asyncio.sleep(0.05)

        async def scenario():
            live = await connect(server.host, server.port, client, timeout=60)
            stop = asyncio.Event()
            counts = {"handshakes": 0}
            workers = [asyncio.ensure_future(traffic(stop, counts)) for _ in range(3)]
            rotations = 0
            try:
                # Rotate until the first certificate is well past its expiry.
                while datetime.datetime.now(datetime.timezone.utc) < \
                        first.not_valid_after_utc + datetime.timedelta(seconds=2) \
                        or rotations < 4:
                    if rotations == 0:  # the CLI once, then the same steps in-process
                        done = await asyncio.to_thread(
                            cli, "ca", "rotate", str(tmp_path / "pki"), "rotating",
                            "--force", "--ttl", "8s")
                        assert done.returncode == 0, done.stderr
                    else:
                        # what `ca rotate` does, without an interpreter start per
                        # rotation (a loaded machine must not outlast the 8 s)
                        fresh = issue(ca_pair, "rotating", days=8 / 86400)
                        write_atomically(tmp_path / "pki" / "rotating.key",
                                         fresh.private_key_pem(), secret=True)
                        write_atomically(tmp_path / "pki" / "rotating.pem",
                                         fresh.certificate_pem())
                    rotations += 1
                    await asyncio.to_thread(server.wait_for, "reloaded (files changed)")
                    assert await live.call("ping", timeout=60) == b"pong caller"
                    await asyncio.sleep(0.3)
                    for w in workers:
                        if w.done():
                            w.result()  # a failed handshake fails the test here
                # New handshakes after the first certificate expired succeeded.
                before = counts["handshakes"]
                deadline = time.monotonic() + 60
                while counts["handshakes"] < before + 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert counts["handshakes"] >= before + 3
            finally:
                stop.set()
                await asyncio.gather(*workers)
            # The long-lived session outlived every certificate it started with.
            assert datetime.datetime.now(datetime.timezone.utc) > first.not_valid_after_utc
            assert await live.call("ping", timeout=60) == b"pong caller"

            # CRLs are watched too: revoke alice, and her next handshake fails
            # while her session from before stays up.
            member = await connect(server.host, server.port, alice_cfg, timeout=60)
            assert await member.call("members", timeout=60) == b"member"
            assert cli("ca", "revoke", str(tmp_path / "members"), "alice").returncode == 0
            await asyncio.to_thread(server.wait_for, "reloaded (files changed)")
            with pytest.raises(HandshakeError):
                late = await connect(server.host, server.port, alice_cfg, timeout=60)
                await late.call("members", timeout=60)
            assert await member.call("members", timeout=60) == b"member"
            await member.close()
            await live.close()
            return rotations, counts["handshakes"]

        rotations, handshakes = asyncio.run(asyncio.wait_for(scenario(), 300))
        assert rotations >= 4 and handshakes > rotations
        server.signal(signal.SIGTERM)
        assert server.wait() == 0


# --- watch=True on a role, library API ------------------------------------------------------

def test_watch_true_role_swaps_chain_and_key_on_a_running_server(tmp_path):
    """A server started with ``CertificateRole.from_files(..., watch=True)``
    and ``watch_certificates``: rewriting the files swaps the role for new
    handshakes (clients see the new leaf: the old one has been revoked by
    the anchor's CRL the client applies), while an open session goes on."""
    from rolewire.serving import watch_certificates

    ca = create_ca("watched CA")
    anchor = tmp_path / "ca.pem"
    anchor.write_bytes(ca.certificate_pem())
    first = issue(ca, "svc")
    write_atomically(tmp_path / "svc.key", first.private_key_pem(), secret=True)
    write_atomically(tmp_path / "svc.pem", first.certificate_pem())
    role = CertificateRole.from_files("svc", anchors=anchor, cert=tmp_path / "svc.pem",
                                      key=tmp_path / "svc.key", watch=True)
    assert role.watch and not role.files_changed()
    service = Service("svc")
    service.add("serial", lambda call, body: b"ok", roles=["caller"])
    caller_key = KeyRole("caller", KeyRole.generate_key())

    def client(crls=()):
        return HandshakeConfig(roles=[caller_key, CertificateRole(
            "svc", anchors=[ca.certificate], crls=crls)])

    async def main():
        async with serve(service, HandshakeConfig(roles=[role, caller_key])) as server:
            swapped: list[list[str]] = []
            watcher = asyncio.create_task(watch_certificates(server, interval=0.05,
                                                             on_reload=swapped.append))
            try:
                live = await connect("127.0.0.1", server.port, client(), timeout=30)
                assert live.peer_roles == {"svc", "caller"}
                second = issue(ca, "svc")
                # the key first: for a moment key and certificate do not match
                write_atomically(tmp_path / "svc.key", second.private_key_pem(), secret=True)
                await asyncio.sleep(0.2)
                write_atomically(tmp_path / "svc.pem", second.certificate_pem())
                while not swapped:
                    await asyncio.sleep(0.02)
                assert swapped[-1] == ["svc"]
                (current,) = [r for r in server.config.roles if r.name == "svc"]
                assert current.chain[0] == second.certificate
                # A client refusing the first certificate still connects: the
                # server presents the second one now.
                strict = client([create_crl(ca, [first.certificate])])
                async with connect("127.0.0.1", server.port, strict, timeout=30) as fresh:
                    assert fresh.peer_roles == {"svc", "caller"}
                    assert await fresh.call("serial", timeout=30) == b"ok"
                assert await live.call("serial", timeout=30) == b"ok"
                await live.close()
            finally:
                watcher.cancel()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_watched_anchor_rotation_switches_the_trusted_ca(tmp_path):
    """Anchors rotate like chains: a verify-only role watching its anchor
    file trusts the new CA for new handshakes once the file changes."""
    from rolewire.serving import watch_certificates

    old_ca, new_ca = create_ca("old members CA"), create_ca("new members CA")
    anchor = tmp_path / "members.pem"
    write_atomically(anchor, old_ca.certificate_pem())
    verify = CertificateRole.from_files("member", anchors=anchor, watch=True)
    service = Service("svc")
    service.add("hello", lambda call, body: b"hi", roles=["member"])

    def member_of(ca):
        leaf = issue(ca, "alice")
        return HandshakeConfig(roles=[CertificateRole(
            "member", anchors=[ca.certificate], chain=[leaf.certificate],
            private_key=leaf.private_key)], allow_anonymous=True)

    async def attempt(port, config):
        async with connect("127.0.0.1", port, config, timeout=30) as channel:
            return await channel.call("hello", timeout=30)

    async def main():
        async with serve(service, HandshakeConfig(roles=[verify])) as server:
            swapped: list[list[str]] = []
            watcher = asyncio.create_task(watch_certificates(server, interval=0.05,
                                                             on_reload=swapped.append))
            try:
                assert await attempt(server.port, member_of(old_ca)) == b"hi"
                with pytest.raises(HandshakeError):
                    await attempt(server.port, member_of(new_ca))
                write_atomically(anchor, new_ca.certificate_pem())
                while not swapped:
                    await asyncio.sleep(0.02)
                assert await attempt(server.port, member_of(new_ca)) == b"hi"
                with pytest.raises(HandshakeError):
                    await attempt(server.port, member_of(old_ca))
            finally:
                watcher.cancel()

    asyncio.run(asyncio.wait_for(main(), 120))
