"""Service configs, the PKI and the CLI commands built on them."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap

import pytest

from rolewire import errors
from rolewire.config import load_config
from rolewire.pki import create_ca, issue
from rolewire.roles.certificate import CertificateRole
from tests.conftest import assert_owner_only


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rolewire.cli", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **(env or {})),
                          check=False)


def test_pki_certificates_validate_as_role_certificates(tmp_path):
    ca = create_ca("test CA")
    leaf = issue(ca, "shipping")
    role = CertificateRole("shipping", anchors=[ca.certificate], chain=[leaf.certificate],
                           private_key=leaf.private_key)
    now = datetime.datetime.now(datetime.timezone.utc)
    role.validate_chain(role.chain_der, now)
    other = create_ca("other CA")
    with pytest.raises(errors.HandshakeError):
        CertificateRole("shipping", anchors=[other.certificate]).validate_chain(role.chain_der,
                                                                               now)


@pytest.mark.parametrize("key_type", ["ec-p384", "rsa-2048"])
def test_pki_key_types(key_type):
    ca = create_ca("ca", key_type=key_type)
    leaf = issue(ca, "svc", key_type=key_type)
    CertificateRole("svc", anchors=[ca.certificate], chain=[leaf.certificate],
                    private_key=leaf.private_key)


def test_cli_keygen_and_ca(tmp_path):
    key = tmp_path / "role.key"
    assert cli("keygen", str(key)).returncode == 0
    assert_owner_only(key)
    assert len(key.read_bytes().strip()) == 44  # base64 of 32 bytes
    again = cli("keygen", str(key))
    assert again.returncode == 3 and "already exists" in again.stderr
    pki = tmp_path / "pki"
    assert cli("ca", "init", str(pki)).returncode == 0
    assert cli("ca", "init", str(pki)).returncode == 3
    assert cli("ca", "issue", str(pki), "payment").returncode == 0
    assert_owner_only(pki / "payment.key")
    assert cli("ca", "issue", str(tmp_path / "nope"), "x").returncode == 3
    assert cli("ca", "bogus").returncode == 2


CONFIG = """
[service]
name = "payment"
listen = "127.0.0.1:7001"

[[role]]
name = "payment"
kind = "key"
key_file = "payment.key"

[[role]]
name = "approval"
kind = "password"
password_env = "RW_TEST_APPROVAL"

[[role]]
name = "shipping"
kind = "certificate"
anchor = "pki/ca.pem"

[access]
charge = ["payment"]
health = "unrestricted"

[peers.shipping]
address = "127.0.0.1:7002"
"""


@pytest.fixture
def service_dir(tmp_path):
    (tmp_path / "payment.toml").write_text(CONFIG)
    assert cli("keygen", str(tmp_path / "payment.key")).returncode == 0
    assert cli("ca", "init", str(tmp_path / "pki")).returncode == 0
    return tmp_path


def test_config_loads_roles(service_dir, monkeypatch):
    monkeypatch.setenv("RW_TEST_APPROVAL", "correct horse")
    config = load_config(service_dir / "payment.toml")
    assert config.name == "payment" and config.listen == ("127.0.0.1", 7001)
    assert [r.name for r in config.load_roles()] == ["payment", "approval", "shipping"]
    assert config.peers == {"shipping": ("127.0.0.1", 7002)}


def test_inspect_shows_no_secrets(service_dir):
    secret_key = (service_dir / "payment.key").read_text().strip()
    result = cli("inspect", str(service_dir / "payment.toml"), "--check",
                 env={"RW_TEST_APPROVAL": "hunter2-secret"})
    assert result.returncode == 0, result.stderr
    assert "charge: payment" in result.stdout and "secrets: all readable" in result.stdout
    assert secret_key not in result.stdout + result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    data = json.loads(cli("inspect", str(service_dir / "payment.toml"), "--json").stdout)
    assert data["verifies_only"][0].startswith("shipping")


def test_inspect_missing_secret_file(service_dir):
    (service_dir / "payment.key").unlink()
    result = cli("inspect", str(service_dir / "payment.toml"), "--check",
                 env={"RW_TEST_APPROVAL": "x"})
    assert result.returncode == 3 and "payment.key" in result.stderr


def test_inspect_missing_env(service_dir):
    env = dict(os.environ)
    env.pop("RW_TEST_APPROVAL", None)
    result = subprocess.run([sys.executable, "-m", "rolewire.cli", "inspect",
                             str(service_dir / "payment.toml"), "--check"],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 3 and "RW_TEST_APPROVAL" in result.stderr


@pytest.mark.parametrize(
    "snippet, message",
    [
        ('[[role]]\nname = "x"\nkind = "key"\nkey_value = "c2VjcmV0"\n', "may not be written"),
        ('[[role]]\nname = "x"\nkind = "password"\npassword = "pw"\n', "may not be written"),
        ('[[role]]\nname = "x"\nkind = "magic"\n', "kind must be"),
        ('[[role]]\nname = "x"\nkind = "key"\n', "exactly one"),
        ('[[role]]\nname = "x"\nkind = "certificate"\ncert = "a.pem"\nanchor = "c.pem"\n',
         "both cert and key"),
        ('[access]\nop = []\n', "non-empty"),
        ('[access]\nop = "everyone"\n', "any-authenticated"),
        ('[typo]\n', "unknown section"),
        ('[peers.x]\naddress = "nohost"\n', "HOST:PORT"),
    ],
)
def test_config_rejects(tmp_path, snippet, message):
    path = tmp_path / "bad.toml"
    path.write_text('[service]\nname = "s"\n' + textwrap.dedent(snippet))
    with pytest.raises(errors.ConfigurationError, match=message):
        load_config(path)


def test_config_not_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("this is = = not toml")
    with pytest.raises(errors.ConfigurationError, match="not valid TOML"):
        load_config(path)
    result = cli("inspect", str(path))
    assert result.returncode == 3
    assert cli("inspect", str(tmp_path / "missing.toml")).returncode == 3
