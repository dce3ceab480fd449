"""Key generation, CSRs and the software key store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs.cms import sign_detached, verify_detached
from certs.errors import CsrError, KeyStoreError, WeakKeyError
from certs.keys import check_public_key, generate_key, make_csr
from certs.keystore import KeyStore, SoftwareKeyStore
from tests.pki_factory import NOW, FixturePki

PASS = "correct horse battery staple"


def test_generates_p256_by_default_and_rsa_on_request() -> None:
    key = generate_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    rsa_key = generate_key("rsa")
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size == 2048


def test_refuses_small_rsa_keys() -> None:
    with pytest.raises(WeakKeyError, match="at least 2048"):
        generate_key("rsa", rsa_bits=1024)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key is the point of the test
    with pytest.raises(WeakKeyError, match="too small"):
        check_public_key(small.public_key())
    with pytest.raises(WeakKeyError):
        make_csr(small, "IQ/GOV/NDC")


def test_csr_carries_member_id_and_names() -> None:
    pem = make_csr(
        generate_key(),
        "National Data Centre",
        serial_number="IQ/GOV/NDC",
        organization="NDC",
        dns_names=["ss1.ndc.gov.iq"],
        ip_addresses=["127.0.0.1"],
    )
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "IQ/GOV/NDC"
    assert csr.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "IQ"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ss1.ndc.gov.iq"]


def test_csr_refuses_bad_ip_address() -> None:
    with pytest.raises(CsrError, match="not an IPv4"):
        make_csr(generate_key(), "x", ip_addresses=["not-an-ip"])


def test_stores_keys_encrypted_with_owner_only_permissions(tmp_path: Path) -> None:
    store = SoftwareKeyStore(tmp_path / "keys")
    store.generate("sign-1", PASS)
    path = tmp_path / "keys" / "sign-1.key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert store.labels() == ["sign-1"]
    assert isinstance(store.load_key("sign-1", PASS), ec.EllipticCurvePrivateKey)


def test_refuses_wrong_passphrase_without_chaining_the_cause(tmp_path: Path) -> None:
    store = SoftwareKeyStore(tmp_path)
    store.generate("auth", PASS, kind="rsa")
    with pytest.raises(KeyStoreError, match="wrong passphrase") as info:
        store.load_key("auth", "guess")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert "guess" not in str(info.value)


def test_refuses_empty_passphrase_bad_label_duplicate_and_missing_key(tmp_path: Path) -> None:
    store = SoftwareKeyStore(tmp_path)
    with pytest.raises(KeyStoreError, match="empty passphrase"):
        store.generate("k", "")
    with pytest.raises(KeyStoreError, match="invalid key label"):
        store.generate("../escape", PASS)
    store.generate("k", PASS)
    with pytest.raises(KeyStoreError, match="already exists"):
        store.generate("k", PASS)
    with pytest.raises(KeyStoreError, match="no key labelled 'other'"):
        store.load_key("other", PASS)


def test_signer_from_store_makes_verifiable_signatures(tmp_path: Path) -> None:
    pki = FixturePki.create()
    store: KeyStore = SoftwareKeyStore(tmp_path)
    store.generate("sign", PASS)
    key = SoftwareKeyStore(tmp_path).load_key("sign", PASS)
    issued = pki.issue("IQ/GOV/NDC", serial_number="IQ/GOV/NDC", key=key)
    signer = store.signer("sign", PASS, issued.cert, [pki.root.cert])
    signature = sign_detached(b"data", signer, signing_time=NOW)
    assert verify_detached(signature, b"data").signer == issued.cert
