"""Detached CAdES-BES signatures: made by us, accepted by openssl, tampering refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization

from certs.cms import MAX_SIGNATURE_BYTES, sign_detached, verify_detached
from certs.errors import MalformedSignatureError, SignatureError
from certs.signer import SoftwareSigner
from tests.pki_factory import NOW, FixturePki, new_key

DATA = b"<request>getCitizen IQ/GOV/NDC/population</request>\n"


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


def _signer(pki: FixturePki, kind: str = "ec") -> SoftwareSigner:
    issued = pki.issue("IQ/GOV/NDC signing", serial_number="IQ/GOV/NDC", key=new_key(kind))
    return SoftwareSigner(issued.key, issued.cert)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_verifies_own_signature_and_reports_signer_and_time(pki: FixturePki, kind: str) -> None:
    signer = _signer(pki, kind)
    signature = sign_detached(DATA, signer, signing_time=NOW)
    verified = verify_detached(signature, DATA)
    assert verified.signer == signer.certificate
    assert verified.certificates == (signer.certificate,)
    assert verified.signing_time == NOW


def test_carries_the_chain_unless_told_not_to(pki: FixturePki) -> None:
    issued = pki.signing()
    signer = SoftwareSigner(issued.key, issued.cert, [pki.root.cert])
    with_chain = verify_detached(sign_detached(DATA, signer, signing_time=NOW), DATA)
    assert with_chain.certificates == (issued.cert, pki.root.cert)
    without = sign_detached(DATA, signer, signing_time=NOW, include_chain=False)
    assert verify_detached(without, DATA).certificates == (issued.cert,)


def test_records_signing_time_after_2049_as_generalized_time(pki: FixturePki) -> None:
    signer = _signer(pki)
    later = dt.datetime(2051, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    assert verify_detached(sign_detached(DATA, signer, signing_time=later), DATA).signing_time == (
        later
    )


def test_refuses_tampered_data(pki: FixturePki) -> None:
    signature = sign_detached(DATA, _signer(pki), signing_time=NOW)
    with pytest.raises(SignatureError, match="does not match") as info:
        verify_detached(signature, DATA + b"x")
    assert info.value.fault_code == "InvalidSignatureValue"


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_refuses_tampered_signature_value(pki: FixturePki, kind: str) -> None:
    signature = bytearray(sign_detached(DATA, _signer(pki, kind), signing_time=NOW))
    signature[-5] ^= 0x01  # inside the signature value, the last element
    with pytest.raises(SignatureError):
        verify_detached(bytes(signature), DATA)


def test_refuses_signature_whose_certificate_was_swapped_for_another_on_the_same_key(
    pki: FixturePki,
) -> None:
    """signingCertificateV2 binds the signature to one certificate, not just to the key."""
    original = pki.signing("IQ/GOV/NDC")
    twin = pki.issue("IQ/GOV/MOH signing", serial_number="IQ/GOV/MOH", key=original.key)
    signature = sign_detached(DATA, SoftwareSigner(original.key, original.cert), signing_time=NOW)
    info = asn1_cms.ContentInfo.load(signature)
    sd = info["content"]
    twin_der = twin.cert.public_bytes(serialization.Encoding.DER)
    sd["certificates"] = [asn1_cms.CertificateChoices.load(twin_der)]
    sid = sd["signer_infos"][0]["sid"].chosen
    sid["serial_number"] = twin.cert.serial_number
    forged = info.dump(force=True)
    with pytest.raises(SignatureError, match="signingCertificateV2"):
        verify_detached(forged, DATA)


def test_refuses_signature_by_another_key_than_the_included_certificate(pki: FixturePki) -> None:
    real = pki.signing()
    other = pki.signing()
    signature = sign_detached(DATA, SoftwareSigner(real.key, real.cert), signing_time=NOW)
    info = asn1_cms.ContentInfo.load(signature)
    sd = info["content"]
    other_der = other.cert.public_bytes(serialization.Encoding.DER)
    sd["certificates"] = [asn1_cms.CertificateChoices.load(other_der)]
    sd["signer_infos"][0]["sid"].chosen["serial_number"] = other.cert.serial_number
    with pytest.raises(SignatureError):
        verify_detached(info.dump(force=True), DATA)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not a signature", b"\x30\x03\x02\x01\x01", b"\x30\x82\xff\xff" + b"\x00" * 10],
)
def test_reports_unparseable_input_as_malformed(garbage: bytes) -> None:
    with pytest.raises(MalformedSignatureError) as info:
        verify_detached(garbage, DATA)
    assert info.value.fault_code == "MalformedSignature"


def test_refuses_oversized_input_before_parsing() -> None:
    with pytest.raises(MalformedSignatureError, match="exceeds"):
        verify_detached(b"\x30" * (MAX_SIGNATURE_BYTES + 1), DATA)


def test_refuses_signature_without_signer_certificate(pki: FixturePki) -> None:
    signature = sign_detached(DATA, _signer(pki), signing_time=NOW)
    info = asn1_cms.ContentInfo.load(signature)
    del info["content"]["certificates"]
    with pytest.raises(SignatureError, match="not included"):
        verify_detached(info.dump(force=True), DATA)


def _write_pem(path: Path, *certs: object) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))  # type: ignore[attr-defined]
    return path


@pytest.mark.openssl
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_openssl_cms_verify_accepts_our_signatures(
    pki: FixturePki, kind: str, tmp_path: Path
) -> None:
    signer = _signer(pki, kind)
    (tmp_path / "sig.der").write_bytes(sign_detached(DATA, signer, signing_time=NOW))
    (tmp_path / "data.bin").write_bytes(DATA)
    _write_pem(tmp_path / "root.pem", pki.root.cert)
    command = [
        "openssl", "cms", "-verify", "-binary", "-inform", "DER",
        "-in", str(tmp_path / "sig.der"), "-content", str(tmp_path / "data.bin"),
        "-CAfile", str(tmp_path / "root.pem"), "-purpose", "any",
        "-attime", str(int(NOW.timestamp())), "-out", str(tmp_path / "out.bin"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "out.bin").read_bytes() == DATA

    (tmp_path / "data.bin").write_bytes(DATA + b"tampered")
    refused = subprocess.run(command, capture_output=True, check=False)
    assert refused.returncode != 0


@pytest.mark.openssl
def test_accepts_cades_signature_made_by_openssl(pki: FixturePki, tmp_path: Path) -> None:
    issued = pki.signing()
    cert_path, key_path = issued.write(tmp_path, "signer")
    (tmp_path / "data.bin").write_bytes(DATA)
    subprocess.run(
        [
            "openssl",
            "cms",
            "-sign",
            "-binary",
            "-cades",
            "-md",
            "sha256",
            "-outform",
            "DER",
            "-in",
            str(tmp_path / "data.bin"),
            "-signer",
            str(cert_path),
            "-inkey",
            str(key_path),
            "-out",
            str(tmp_path / "sig.der"),
        ],
        check=True,
        capture_output=True,
    )
    verified = verify_detached((tmp_path / "sig.der").read_bytes(), DATA)
    assert verified.signer == issued.cert
    # OpenSSL adds attributes Jisr does not write (smimeCapabilities): the second signature of
    # the same signer is read in full again and still verifies.
    assert verify_detached((tmp_path / "sig.der").read_bytes(), DATA).signer == issued.cert


# ---- a signer already verified: later signatures are checked just as strictly -----------------


def _with_attribute(signature: bytes, oid: str, value: object) -> bytes:
    """``signature`` with one signed attribute's value replaced (the signature value kept)."""
    info = asn1_cms.ContentInfo.load(signature)
    attrs = info["content"]["signer_infos"][0]["signed_attrs"]
    for attr in attrs:
        if attr["type"].dotted == oid:
            attr["values"] = [value]
    return bytes(info.dump(force=True))


def test_verifies_later_signatures_of_a_known_signer_without_parsing_them_in_full(
    pki: FixturePki, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = pki.signing()
    signer = SoftwareSigner(issued.key, issued.cert, [pki.root.cert])
    verify_detached(sign_detached(DATA, signer, signing_time=NOW), DATA)
    later = NOW + dt.timedelta(seconds=7)
    second = sign_detached(b"other data", signer, signing_time=later)

    def no_full_parse(_signature: bytes) -> None:
        raise AssertionError("the signer was verified before; its parts need no full parse")

    monkeypatch.setattr("certs.cms._parse", no_full_parse)
    verified = verify_detached(second, b"other data")
    assert verified.signer == issued.cert
    assert verified.certificates == (issued.cert, pki.root.cert)
    assert verified.signing_time == later


def _flip_signature_value(signature: bytes, _data: bytes) -> tuple[bytes, bytes]:
    changed = bytearray(signature)
    changed[-5] ^= 0x01
    return bytes(changed), DATA


def _other_data(signature: bytes, _data: bytes) -> tuple[bytes, bytes]:
    return signature, DATA + b"x"


def _other_signing_time(signature: bytes, _data: bytes) -> tuple[bytes, bytes]:
    moved = asn1_cms.Time(name="utc_time", value=NOW + dt.timedelta(days=1))
    return _with_attribute(signature, "1.2.840.113549.1.9.5", moved), DATA


def _other_content_type(signature: bytes, _data: bytes) -> tuple[bytes, bytes]:
    other = asn1_cms.ContentType("1.2.840.113549.1.7.2")
    return _with_attribute(signature, "1.2.840.113549.1.9.3", other), DATA


def _digest_of_other_data(signature: bytes, _data: bytes) -> tuple[bytes, bytes]:
    digest = asn1_cms.OctetString(hashlib.sha256(b"forged").digest())
    return _with_attribute(signature, "1.2.840.113549.1.9.4", digest), b"forged"


@pytest.mark.parametrize(
    "tamper",
    [
        _flip_signature_value,
        _other_data,
        _other_signing_time,
        _other_content_type,
        _digest_of_other_data,
    ],
)
def test_refuses_tampered_signatures_of_a_signer_verified_before(
    pki: FixturePki, tamper: Callable[[bytes, bytes], tuple[bytes, bytes]]
) -> None:
    signer = _signer(pki)
    verify_detached(sign_detached(DATA, signer, signing_time=NOW), DATA)
    signature, data = tamper(sign_detached(DATA, signer, signing_time=NOW), DATA)
    with pytest.raises(SignatureError):
        verify_detached(signature, data)
