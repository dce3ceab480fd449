"""The certificate authority: init, open, issue by profile, revoke, list, and its index."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.ca import CaIndex, CertificateAuthority
from certs.cms import sign_detached, verify_detached
from certs.errors import CaError, CsrError, WeakKeyError
from certs.keys import generate_key, make_csr
from certs.keystore import SoftwareKeyStore
from certs.profiles import cert_sha256, member_id_of, server_id_of
from certs.validation import validate_path
from tests.pki_factory import NOW

PASS = "ca passphrase for tests"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(
        tmp_path / "ca", name="Jisr Test", passphrase=PASS, intermediate=True, now=NOW
    )


def _csr(**kwargs: object) -> bytes:
    return make_csr(generate_key(), "requested name", **kwargs)  # type: ignore[arg-type]


def test_init_creates_root_and_issuing_ca_that_reopen_with_the_passphrase(
    ca: CertificateAuthority,
) -> None:
    root = ca.root_certificate
    assert root.subject == root.issuer
    assert root.not_valid_after_utc - NOW >= dt.timedelta(days=3650)
    assert ca.issuer_certificate.issuer == root.subject
    assert ca.chain == (ca.issuer_certificate, root)
    reopened = CertificateAuthority.open(ca.directory, PASS)
    assert reopened.issuer_certificate == ca.issuer_certificate
    for key_file in (ca.directory / "keys").iterdir():
        assert b"ENCRYPTED" in key_file.read_bytes()


def test_open_refuses_wrong_passphrase_and_non_ca_directory(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    with pytest.raises(CaError, match="wrong passphrase"):
        CertificateAuthority.open(ca.directory, "not it")
    with pytest.raises(CaError, match="not a CA directory"):
        CertificateAuthority.open(tmp_path / "elsewhere", PASS)


def test_init_refuses_a_non_empty_directory(ca: CertificateAuthority) -> None:
    with pytest.raises(CaError, match="not empty"):
        CertificateAuthority.init(ca.directory, name="again", passphrase=PASS, now=NOW)


def test_issues_signing_certificate_with_member_id_from_the_operator(
    ca: CertificateAuthority,
) -> None:
    cert = ca.issue(_csr(serial_number="IQ/GOV/FAKE"), "sign", now=NOW, member_id="IQ/GOV/NDC")
    assert member_id_of(cert) == "IQ/GOV/NDC"
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert ku.value.content_commitment
    chain = validate_path(
        cert, intermediates=ca.intermediates, roots=[ca.root_certificate], at=NOW, profile="sign"
    )
    assert chain == [cert, ca.issuer_certificate, ca.root_certificate]


def test_issues_authentication_certificate_with_requested_names(ca: CertificateAuthority) -> None:
    csr = _csr(dns_names=["ss1.ndc.gov.iq"], ip_addresses=["127.0.0.1"])
    cert = ca.issue(csr, "auth", now=NOW, server_id="IQ/GOV/NDC/ss1")
    assert server_id_of(cert) == "IQ/GOV/NDC/ss1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ss1.ndc.gov.iq"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_does_not_copy_requested_extensions_blindly(ca: CertificateAuthority) -> None:
    key = generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "IQ/GOV/NDC/ss1")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = ca.issue(csr, "auth", now=NOW)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_issues_ocsp_and_tsa_certificates_for_keys_it_generates(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    store = SoftwareKeyStore(tmp_path / "service-keys")
    ocsp = ca.issue_for_new_key(
        "ocsp", "Jisr OCSP", keystore=store, label="ocsp", key_passphrase="k", now=NOW
    )
    assert ocsp.certificate.extensions.get_extension_for_class(x509.OCSPNoCheck)
    tsa = ca.issue_for_new_key(
        "tsa", "Jisr TSA", keystore=store, label="tsa", key_passphrase="k", now=NOW
    )
    eku = tsa.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    assert store.labels() == ["ocsp", "tsa"]
    signer = store.signer("tsa", "k", tsa.certificate, tsa.chain)
    assert signer.chain == (ca.issuer_certificate,)


def test_refuses_malformed_csr(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrError, match="malformed CSR"):
        ca.issue(b"-----BEGIN CERTIFICATE REQUEST-----\nnonsense\n", "sign", now=NOW)
    with pytest.raises(CsrError, match="malformed CSR"):
        ca.issue(b"\x30\x03\x02\x01\x00", "sign", now=NOW)


def test_refuses_csr_with_a_bad_signature(ca: CertificateAuthority) -> None:
    der = x509.load_pem_x509_csr(_csr(serial_number="IQ/GOV/NDC")).public_bytes(
        serialization.Encoding.DER
    )
    tampered = bytearray(der)
    position = der.find(b"requested name")
    tampered[position] ^= 0x20  # change the subject the signature covers
    with pytest.raises(CsrError, match="signature does not verify"):
        ca.issue(bytes(tampered), "sign", now=NOW)


def test_refuses_csr_with_a_small_rsa_key(ca: CertificateAuthority) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key is the point of the test
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "IQ/GOV/NDC")]))
        .sign(small, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(WeakKeyError, match="too small"):
        ca.issue(csr, "sign", now=NOW)


def test_refuses_missing_or_malformed_identifiers(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrError, match="not a member id"):
        ca.issue(_csr(), "sign", now=NOW)
    with pytest.raises(CsrError, match="not a node id"):
        ca.issue(_csr(), "auth", now=NOW, server_id="IQ/GOV/NDC")


def test_revokes_and_lists_with_status_seen_by_a_passphrase_free_index(
    ca: CertificateAuthority,
) -> None:
    index = CaIndex.load(ca.directory)
    first = ca.issue(_csr(), "sign", now=NOW, member_id="IQ/GOV/NDC")
    second = ca.issue(_csr(), "sign", now=NOW, member_id="IQ/GOV/MOH")
    assert index.status(first.serial_number).state == "good"

    at = NOW + dt.timedelta(hours=1)
    ca.revoke(first.serial_number, reason="key_compromise", at=at)
    status = index.status(first.serial_number)
    assert (status.state, status.revoked_at, status.reason) == ("revoked", at, "key_compromise")
    assert index.status(second.serial_number).state == "good"
    assert index.status(12345).state == "unknown"
    assert index.issuer_certificate == ca.issuer_certificate

    listed = {r.serial: r for r in ca.list()}
    assert listed[first.serial_number].status == "revoked"
    assert listed[second.serial_number].sha256 == cert_sha256(second)
    assert listed[second.serial_number].profile == "sign"
    with pytest.raises(CaError, match="already revoked"):
        ca.revoke(first.serial_number, at=at)
    with pytest.raises(CaError, match="did not issue"):
        ca.revoke(12345, at=at)
    with pytest.raises(CaError, match="unknown revocation reason"):
        ca.revoke(second.serial_number, reason="bored", at=at)
    doc = json.loads((ca.directory / "index.json").read_text())
    assert len(doc["certificates"]) == 2
    assert not [p for p in ca.directory.iterdir() if p.name.endswith(".tmp")]


def test_cuts_validity_at_the_issuing_ca_expiry(ca: CertificateAuthority) -> None:
    cert = ca.issue(_csr(), "sign", now=NOW, member_id="IQ/GOV/NDC", days=100_000)
    assert cert.not_valid_after_utc == ca.issuer_certificate.not_valid_after_utc


def test_root_only_ca_signs_end_entities_with_the_root(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", name="Small", passphrase=PASS, now=NOW)
    cert = ca.issue(_csr(), "sign", now=NOW, member_id="IQ/GOV/NDC")
    assert cert.issuer == ca.root_certificate.subject
    assert ca.intermediates == ()
    assert CaIndex.load(ca.directory).issuer_certificate == ca.root_certificate


@pytest.mark.openssl
def test_openssl_accepts_issued_chains_and_signatures(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    store = SoftwareKeyStore(tmp_path / "keys")
    auth = ca.issue_for_new_key(
        "auth", "", keystore=store, label="auth", key_passphrase="k", now=NOW,
        server_id="IQ/GOV/NDC/ss1", dns_names=["localhost"], ip_addresses=["127.0.0.1"],
    )  # fmt: skip
    sign = ca.issue_for_new_key(
        "sign", "National Data Centre", keystore=store, label="sign", key_passphrase="k",
        now=NOW, member_id="IQ/GOV/NDC",
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (tmp_path / "root.pem").write_bytes(ca.root_certificate.public_bytes(pem))
    (tmp_path / "issuing.pem").write_bytes(ca.issuer_certificate.public_bytes(pem))
    (tmp_path / "auth.pem").write_bytes(auth.certificate.public_bytes(pem))
    attime = str(int(NOW.timestamp()) + 60)
    for purpose in ("sslserver", "sslclient"):
        result = subprocess.run(
            ["openssl", "verify", "-attime", attime, "-purpose", purpose,
             "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "issuing.pem"),
             str(tmp_path / "auth.pem")],
            capture_output=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()

    signer = store.signer("sign", "k", sign.certificate, sign.chain)
    (tmp_path / "data.bin").write_bytes(b"payload")
    (tmp_path / "sig.der").write_bytes(sign_detached(b"payload", signer, signing_time=NOW))
    result = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
         "-content", str(tmp_path / "data.bin"), "-CAfile", str(tmp_path / "root.pem"),
         "-purpose", "any", "-attime", attime, "-out", str(tmp_path / "out.bin")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()


def test_rsa_ca_issues_certificates_that_validate_and_sign(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(
        tmp_path / "ca", name="RSA", passphrase=PASS, intermediate=True, now=NOW, kind="rsa"
    )
    store = SoftwareKeyStore(tmp_path / "keys")
    issued = ca.issue_for_new_key(
        "sign", "NDC", keystore=store, label="s", key_passphrase="k", now=NOW,
        member_id="IQ/GOV/NDC", kind="rsa",
    )  # fmt: skip
    signer = store.signer("s", "k", issued.certificate, issued.chain)
    verified = verify_detached(sign_detached(b"d", signer, signing_time=NOW), b"d")
    chain = validate_path(
        verified.signer,
        intermediates=verified.certificates[1:],
        roots=[ca.root_certificate],
        at=NOW,
        profile="sign",
    )
    assert chain[-1] == ca.root_certificate


def test_index_reader_reports_missing_or_damaged_index(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    with pytest.raises(CaError, match="is missing"):
        CaIndex.load(tmp_path / "nothing")
    (ca.directory / "index.json").write_text("{not json")
    with pytest.raises(CaError, match="damaged"):
        CaIndex.load(ca.directory)
