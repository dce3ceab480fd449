"""`jisr pki` end to end through click: a CA, keys, CSRs, issuing, listing, revoking."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from certs.ca import CaIndex
from certs.profiles import member_id_of, server_id_of
from jisr.cli import cli

ENV = {"CA_PASS": "ca secret for tests", "KEY_PASS": "key secret for tests"}


def _run(*args: str | Path) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], env=ENV, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    _run("pki", "init-ca", "--dir", directory, "--name", "CLI Test", "--intermediate",
         "--passphrase-env", "CA_PASS")  # fmt: skip
    return directory


def test_issues_signing_and_authentication_certificates_from_store_keys(
    ca_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "keys"
    for label in ("sign", "auth"):
        _run("pki", "keygen", "--store", store, "--label", label, "--passphrase-env", "KEY_PASS")
    _run("pki", "csr", "--store", store, "--label", "sign", "--cn", "National Data Centre",
         "--member-id", "IQ/GOV/NDC", "--out", tmp_path / "sign.csr",
         "--passphrase-env", "KEY_PASS")  # fmt: skip
    _run("pki", "csr", "--store", store, "--label", "auth", "--cn", "IQ/GOV/NDC/ss1",
         "--dns", "localhost", "--ip", "127.0.0.1", "--out", tmp_path / "auth.csr",
         "--passphrase-env", "KEY_PASS")  # fmt: skip
    _run("pki", "issue", "--dir", ca_dir, "--csr", tmp_path / "sign.csr", "--profile", "sign",
         "--out", tmp_path / "sign.pem", "--chain", "--passphrase-env", "CA_PASS")  # fmt: skip
    _run("pki", "issue", "--dir", ca_dir, "--csr", tmp_path / "auth.csr", "--profile", "auth",
         "--out", tmp_path / "auth.pem", "--passphrase-env", "CA_PASS")  # fmt: skip

    sign_chain = x509.load_pem_x509_certificates((tmp_path / "sign.pem").read_bytes())
    assert len(sign_chain) == 2
    assert member_id_of(sign_chain[0]) == "IQ/GOV/NDC"
    auth = x509.load_pem_x509_certificate((tmp_path / "auth.pem").read_bytes())
    assert server_id_of(auth) == "IQ/GOV/NDC/ss1"

    listing = _run("pki", "list", "--dir", ca_dir)
    assert f"{auth.serial_number:x}\tauth" in listing

    _run("pki", "revoke", "--dir", ca_dir, f"{auth.serial_number:x}", "--reason",
         "key_compromise", "--passphrase-env", "CA_PASS")  # fmt: skip
    assert CaIndex.load(ca_dir).status(auth.serial_number).state == "revoked"
    assert "revoked" in _run("pki", "list", "--dir", ca_dir)


def test_creates_service_key_and_certificate(ca_dir: Path, tmp_path: Path) -> None:
    _run("pki", "service-cert", "--dir", ca_dir, "--store", tmp_path / "svc", "--label", "tsa",
         "--profile", "tsa", "--cn", "Jisr TSA", "--out", tmp_path / "tsa.pem",
         "--passphrase-env", "CA_PASS", "--key-passphrase-env", "KEY_PASS")  # fmt: skip
    certs = x509.load_pem_x509_certificates((tmp_path / "tsa.pem").read_bytes())
    assert len(certs) == 2
    assert (tmp_path / "svc" / "tsa.key.pem").exists()


def test_reports_wrong_passphrase_and_malformed_csr_as_one_line(
    ca_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "bad.csr").write_bytes(b"not a csr")
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["pki", "issue", "--dir", str(ca_dir), "--csr", str(tmp_path / "bad.csr"),
         "--profile", "sign", "--passphrase-env", "CA_PASS"],
        env=ENV,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "malformed CSR" in result.output
    result = runner.invoke(
        cli,
        ["pki", "revoke", "--dir", str(ca_dir), "ab", "--passphrase-env", "WRONG"],
        env={"WRONG": "nope"},
    )
    assert result.exit_code == 1
    assert "wrong passphrase" in result.output
    assert "nope" not in result.output


def test_prompts_for_passphrase_when_no_variable_is_named(tmp_path: Path) -> None:
    store = tmp_path / "keys"
    result = CliRunner().invoke(
        cli, ["pki", "keygen", "--store", str(store), "--label", "k"], input="pw\npw\n"
    )
    assert result.exit_code == 0, result.output
    assert (store / "k.key.pem").exists()
