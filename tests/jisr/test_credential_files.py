"""Certificate and key files named on the command line: read, checked, and refused clearly."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.errors import KeyStoreError
from config.errors import ConfigError
from jisr.commands.credential_files import (
    load_certificate,
    load_certificates,
    load_private_key,
    passphrase_from_env,
)
from tests.pki_factory import FixturePki

PASSPHRASE = b"correct horse battery staple"


def _plain_key(path: Path, encoding: serialization.Encoding) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return key


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_refuses_a_plain_key_in_pem_or_der(
    tmp_path: Path, encoding: serialization.Encoding
) -> None:
    path = tmp_path / "tsa.key"
    _plain_key(path, encoding)
    with pytest.raises(KeyStoreError, match="is not encrypted, and keys on disk must be") as caught:
        load_private_key(path, None, "TSA key")
    assert isinstance(caught.value, ConfigError)
    assert f"openssl pkcs8 -topk8 -v2 aes-256-cbc -in {path}" in str(caught.value)


def test_loads_an_encrypted_der_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "tsa.der"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE),
        )
    )
    loaded = load_private_key(path, PASSPHRASE, "TSA key")
    assert loaded.public_key() == key.public_key()


def test_refuses_a_file_that_is_no_key(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a key")
    with pytest.raises(KeyStoreError, match="not a private key, or the passphrase is wrong"):
        load_private_key(path, PASSPHRASE, "TSA key")


@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_a_key_encrypted_as_the_refusal_says_is_accepted(tmp_path: Path) -> None:
    plain = tmp_path / "ocsp.key"
    key = _plain_key(plain, serialization.Encoding.PEM)
    encrypted = tmp_path / "ocsp.enc.pem"
    subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", plain, "-out", encrypted,
         "-passout", "env:TEST_KEY_PASSPHRASE"],
        env={**os.environ, "TEST_KEY_PASSPHRASE": PASSPHRASE.decode()},
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    loaded = load_private_key(encrypted, PASSPHRASE, "responder key")
    assert loaded.public_key() == key.public_key()
    with pytest.raises(KeyStoreError, match="--key-passphrase-env"):
        load_private_key(encrypted, None, "responder key")


def test_reads_every_certificate_of_a_pem_file_and_the_first_as_the_one_meant(
    tmp_path: Path,
) -> None:
    pki = FixturePki.create()
    tsa = pki.tsa()
    path = tmp_path / "tsa.pem"
    path.write_bytes(tsa.pem + pki.root.pem)
    assert load_certificates(path, "TSA certificate") == [tsa.cert, pki.root.cert]
    assert load_certificate(path, "TSA") == tsa.cert
    der = tmp_path / "root.der"
    der.write_bytes(pki.root.cert.public_bytes(serialization.Encoding.DER))
    assert load_certificate(der, "issuing CA") == pki.root.cert


def test_refuses_an_oversized_or_missing_file(tmp_path: Path) -> None:
    big = tmp_path / "big.pem"
    big.write_bytes(b"-" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="too large"):
        load_certificate(big, "issuing CA")
    with pytest.raises(ConfigError, match="cannot read"):
        load_private_key(tmp_path / "absent.key", PASSPHRASE, "TSA key")


def test_passphrase_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JISR_TEST_KEY_PASSPHRASE", "s3cret passphrase")
    assert passphrase_from_env("JISR_TEST_KEY_PASSPHRASE", "TSA key") == b"s3cret passphrase"
    assert passphrase_from_env(None, "TSA key") is None
    monkeypatch.delenv("JISR_TEST_KEY_PASSPHRASE")
    with pytest.raises(ConfigError, match="JISR_TEST_KEY_PASSPHRASE is not set"):
        passphrase_from_env("JISR_TEST_KEY_PASSPHRASE", "TSA key")
