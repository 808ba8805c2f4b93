"""``rolewire inspect --check`` fails on every bad case, listing all of them;
``rolewire ca init/issue/rotate/revoke`` validate their input, fail with one
line and leave nothing half-written."""

from __future__ import annotations

import datetime
import textwrap
from pathlib import Path

import pytest
from cryptography import x509

from rolewire.config import check_config, load_config
from rolewire.pki import create_ca, issue, load_issued
from tests.conftest import assert_owner_only
from tests.serve_helpers import cli

CONFIG = """
[service]
name = "svc"

[[role]]
name = "svc"
kind = "certificate"
anchor = "pki/ca.pem"
cert = "pki/svc.pem"
key = "pki/svc.key"

[[role]]
name = "caller"
kind = "key"
key_file = "caller.key"

[[role]]
name = "approval"
kind = "password"
password_env = "RW_TEST_INSPECT_PW"

[access]
charge = ["caller"]
"""


@pytest.fixture
def good(tmp_path):
    assert cli("ca", "init", str(tmp_path / "pki")).returncode == 0
    assert cli("ca", "issue", str(tmp_path / "pki"), "svc").returncode == 0
    assert cli("keygen", str(tmp_path / "caller.key")).returncode == 0
    (tmp_path / "svc.toml").write_text(CONFIG)
    return tmp_path


def check(directory: Path, *extra: str, env: dict[str, str] | None = None):
    return cli("inspect", str(directory / "svc.toml"), "--check", *extra,
               env={"RW_TEST_INSPECT_PW": "pw", **(env or {})})


def one_line_error(done) -> None:
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_good_config_passes(good):
    done = check(good)
    assert done.returncode == 0, done.stderr
    assert "0 problem(s)" in done.stdout and "secrets: all readable" in done.stdout


def test_certificate_from_another_ca_fails(good):
    other = create_ca("other")
    stranger = issue(other, "svc")
    (good / "pki" / "svc.pem").write_bytes(stranger.certificate_pem())
    (good / "pki" / "svc.key").unlink()
    (good / "pki" / "svc.key").write_bytes(stranger.private_key_pem())
    done = check(good)
    assert done.returncode == 3
    assert "does not validate" in done.stderr and "svc.pem" in done.stderr


def test_certificate_expired_at_issue_fails(good):
    ca = load_issued(good / "pki" / "ca.pem", good / "pki" / "ca.key")
    now = datetime.datetime.now(datetime.timezone.utc)
    dead = issue(ca, "svc", not_before=now - datetime.timedelta(days=2),
                 not_after=now - datetime.timedelta(days=1))
    (good / "pki" / "svc.pem").write_bytes(dead.certificate_pem())
    (good / "pki" / "svc.key").unlink()
    (good / "pki" / "svc.key").write_bytes(dead.private_key_pem())
    done = check(good)
    assert done.returncode == 3 and "expired on" in done.stderr


def test_expiry_warning_days_before(good):
    (good / "pki" / "svc.pem").unlink()
    (good / "pki" / "svc.key").unlink()
    assert cli("ca", "issue", str(good / "pki"), "svc", "--days", "5").returncode == 0
    done = check(good)
    assert done.returncode == 0 and "warning" in done.stderr and "expires" in done.stderr
    assert "expires" not in check(good, "--warn-days", "2").stderr


def test_undeclared_access_role_fails(good):
    (good / "svc.toml").write_text(CONFIG + 'refund = ["nosuchrole"]\n')
    done = check(good)
    assert done.returncode == 3 and "nosuchrole" in done.stderr
    # also without --check the config loads (inspect shows it) ...
    assert cli("inspect", str(good / "svc.toml")).returncode == 0


def test_every_missing_secret_is_listed(good, monkeypatch):
    (good / "caller.key").unlink()
    (good / "pki" / "svc.key").unlink()
    monkeypatch.delenv("RW_TEST_INSPECT_PW", raising=False)
    report = check_config(load_config(good / "svc.toml"))
    text = "\n".join(report.problems)
    assert len(report.problems) == 3, text
    assert "caller.key" in text and "svc.key" in text and "RW_TEST_INSPECT_PW" in text
    done = cli("inspect", str(good / "svc.toml"), "--check", "--json",
               env={"RW_TEST_INSPECT_PW": ""})
    assert done.returncode == 3


def test_group_readable_key_file_warns(good):
    import sys

    if sys.platform == "win32":
        pytest.skip("POSIX mode bits")
    (good / "caller.key").chmod(0o644)
    done = check(good)
    assert done.returncode == 0 and "readable by others" in done.stderr


# --- ca ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["issue", "{pki}", "../escape"], "DNS-safe"),
    (["issue", "{pki}", "a/b"], "DNS-safe"),
    (["issue", "{pki}", "ok", "--days", "0"], "--days must be > 0"),
    (["issue", "{pki}", "ok", "--days", "-3"], "--days must be > 0"),
    (["issue", "{pki}", "ok", "--ip", "300.1.1.1"], "not an IP address"),
    (["issue", "{pki}", "ok", "--dns", "bad name"], "DNS-safe"),
    (["issue", "{pki}", "ok", "--ttl", "soon"], "--ttl"),
    (["issue", "{pki}", "ok", "--ttl", "1h", "--days", "3"], "not both"),
    (["issue", "{tmp}/nope", "ok"], "holds no CA"),
    (["init", "{tmp}/new", "--days", "0"], "--days must be > 0"),
    (["init", "{pki}"], "already holds a CA"),
])
def test_ca_rejects_bad_input_with_one_line(tmp_path, args, message):
    pki = tmp_path / "pki"
    assert cli("ca", "init", str(pki)).returncode == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = cli("ca", *(a.format(pki=pki, tmp=tmp_path) for a in args))
    one_line_error(done)
    assert message in done.stderr
    # nothing written anywhere: no half-made directory, no stray file
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path.parent / "escape.pem").exists()


def test_ca_issue_refuses_to_overwrite_and_leaves_both_files(tmp_path):
    pki = tmp_path / "pki"
    assert cli("ca", "init", str(pki)).returncode == 0
    assert cli("ca", "issue", str(pki), "svc", "--out", str(tmp_path / "a" / "b")).returncode == 0
    pem = (tmp_path / "a" / "b" / "svc.pem").read_bytes()
    done = cli("ca", "issue", str(pki), "svc", "--out", str(tmp_path / "a" / "b"))
    one_line_error(done)
    assert (tmp_path / "a" / "b" / "svc.pem").read_bytes() == pem


def test_ca_issue_ttl_and_rotate(tmp_path):
    pki = tmp_path / "pki"
    assert cli("ca", "init", str(pki)).returncode == 0
    done = cli("ca", "issue", str(pki), "svc", "--ttl", "1h", "--ip", "127.0.0.1",
               "--dns", "svc.internal")
    assert done.returncode == 0, done.stderr
    first = x509.load_pem_x509_certificate((pki / "svc.pem").read_bytes())
    assert first.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) \
        < datetime.timedelta(hours=1, minutes=1)
    assert_owner_only(pki / "svc.key")
    # not due yet: nothing changes (cron-friendly exit 0)
    done = cli("ca", "rotate", str(pki), "svc")
    assert done.returncode == 0 and "not due" in done.stdout
    assert x509.load_pem_x509_certificate((pki / "svc.pem").read_bytes()) == first
    # due (less than 2h left): re-issued with the same names, new key
    old_key = (pki / "svc.key").read_bytes()
    done = cli("ca", "rotate", str(pki), "svc", "--renew-before", "2h")
    assert done.returncode == 0 and "rotated" in done.stdout, done.stderr
    second = x509.load_pem_x509_certificate((pki / "svc.pem").read_bytes())
    assert second.serial_number != first.serial_number
    assert (pki / "svc.key").read_bytes() != old_key
    assert_owner_only(pki / "svc.key")
    san = second.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"svc", "svc.internal"}
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    lifetime = second.not_valid_after_utc - second.not_valid_before_utc
    assert datetime.timedelta(minutes=59) < lifetime <= datetime.timedelta(hours=1, minutes=6)
    issued = load_issued(pki / "svc.pem", pki / "svc.key")
    assert issued.private_key.public_key() == second.public_key()
    # no temporary files left behind
    assert not [p for p in pki.iterdir() if p.name.startswith(".")]
    one_line_error(cli("ca", "rotate", str(pki), "nosuch"))


def test_ca_revoke_writes_a_crl(tmp_path):
    pki = tmp_path / "pki"
    assert cli("ca", "init", str(pki)).returncode == 0
    assert cli("ca", "issue", str(pki), "a").returncode == 0
    assert cli("ca", "issue", str(pki), "b").returncode == 0
    assert cli("ca", "revoke", str(pki), "a").returncode == 0
    done = cli("ca", "revoke", str(pki), str(pki / "b.pem"))
    assert done.returncode == 0, done.stderr
    crl = x509.load_pem_x509_crl((pki / "ca.crl").read_bytes())
    serials = {x509.load_pem_x509_certificate((pki / f"{n}.pem").read_bytes()).serial_number
               for n in "ab"}
    assert {r.serial_number for r in crl} == serials
    other = tmp_path / "other"
    assert cli("ca", "init", str(other)).returncode == 0
    one_line_error(cli("ca", "revoke", str(other), str(pki / "a.pem")))


def test_ca_help_says_one_ca_per_role():
    text = " ".join(cli("ca", "--help").stdout.split())
    assert "exactly one CA" in text
    for sub in ("init", "issue", "rotate", "revoke"):
        assert cli("ca", sub, "--help").returncode == 0


CERT_ROLE = '[service]\nname = "s"\n[[role]]\nname = "c"\nkind = "certificate"\nanchor = "a.pem"\n'


def test_config_rejects_bad_settings(tmp_path):
    from rolewire import errors

    for snippet, message in [
        ('[service]\nname = "s"\ndrain_timeout = -1\n', "must be > 0"),
        ('[service]\nname = "s"\nmax_connections = 1.5\n', "integer"),
        ('[service]\nname = "s"\ntypo = 1\n', "unknown setting"),
        ('[service]\nname = "s"\nhandshake_rate = [1]\n', "per_second, burst"),
        ('[service]\nname = "s"\nhandshake_rate = [0, 5]\n', "must be > 0"),
        ('[service]\nname = "s"\n[client]\ncall_timeout = "x"\n', "number of seconds"),
        (CERT_ROLE + 'watch = "yes"\n', "true or false"),
        (CERT_ROLE + "crl = [1]\n", "crl must be"),
    ]:
        path = tmp_path / "bad.toml"
        path.write_text(textwrap.dedent(snippet))
        with pytest.raises(errors.ConfigurationError, match=message):
            load_config(path)
