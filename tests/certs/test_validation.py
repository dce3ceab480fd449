"""Path validation: trusted chains accepted, unknown CAs, bad times and wrong purposes refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from certs.ca import CertificateAuthority
from certs.errors import CertValidityError, PathValidationError, WrongProfileError
from certs.keys import generate_key, make_csr
from certs.profiles import ProfileName
from certs.validation import PathValidator, validate_path
from tests.pki_factory import NOW, FixturePki, Issued


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


def test_accepts_each_profile_from_a_trusted_root(pki: FixturePki) -> None:
    cases: list[tuple[ProfileName, Issued]] = [
        ("sign", pki.signing()),
        ("auth", pki.authentication()),
        ("ocsp", pki.ocsp_responder()),
        ("tsa", pki.tsa()),
    ]
    for profile, issued in cases:
        chain = validate_path(
            issued.cert, intermediates=[], roots=[pki.root.cert], at=NOW, profile=profile
        )
        assert chain == [issued.cert, pki.root.cert]


def test_refuses_certificate_from_an_unknown_ca(pki: FixturePki) -> None:
    stranger = FixturePki.create(cn="Somebody Else's Root").signing()
    with pytest.raises(PathValidationError, match="does not chain to a trusted CA") as info:
        validate_path(
            stranger.cert, intermediates=[], roots=[pki.root.cert], at=NOW, profile="sign"
        )
    assert info.value.fault_code == "InvalidCertPath"


def test_refuses_expired_signing_certificate(pki: FixturePki) -> None:
    issued = pki.issue("old", serial_number="IQ/GOV/NDC", content_commitment=True, days=30)
    with pytest.raises(CertValidityError, match="expired") as info:
        validate_path(
            issued.cert,
            intermediates=[],
            roots=[pki.root.cert],
            at=NOW + dt.timedelta(days=31),
            profile="sign",
        )
    assert info.value.fault_code == "CertValidityTime"


def test_refuses_certificate_not_yet_valid(pki: FixturePki) -> None:
    issued = pki.signing()
    with pytest.raises(CertValidityError, match="not valid before"):
        validate_path(
            issued.cert,
            intermediates=[],
            roots=[pki.root.cert],
            at=NOW - dt.timedelta(days=30),
            profile="sign",
        )


def test_refuses_certificate_whose_issuing_ca_has_expired(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(
        tmp_path / "ca", name="T", passphrase="p", intermediate=True, now=NOW
    )
    cert = ca.issue(
        make_csr(generate_key(), "x"), "sign", now=NOW, member_id="IQ/GOV/NDC", days=100_000
    )
    validator = PathValidator([ca.root_certificate], ca.intermediates)
    after = ca.issuer_certificate.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(CertValidityError):
        validator.validate(cert, at=after, profile="sign")


@pytest.mark.parametrize(
    ("factory", "profile"),
    [
        ("authentication", "sign"),
        ("signing", "auth"),
        ("signing", "tsa"),
        ("ocsp_responder", "tsa"),
        ("tsa", "ocsp"),
    ],
)
def test_refuses_certificate_of_the_wrong_profile(
    pki: FixturePki, factory: str, profile: ProfileName
) -> None:
    issued = getattr(pki, factory)()
    with pytest.raises(WrongProfileError) as info:
        validate_path(issued.cert, intermediates=[], roots=[pki.root.cert], at=NOW, profile=profile)
    assert info.value.fault_code == "IncorrectCertificate"


def test_refuses_a_ca_certificate_as_end_entity(pki: FixturePki) -> None:
    with pytest.raises(WrongProfileError, match="CA certificate"):
        validate_path(
            pki.root.cert, intermediates=[], roots=[pki.root.cert], at=NOW, profile="sign"
        )


def test_validator_uses_intermediates_from_the_message_and_reuses_paths(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(
        tmp_path / "ca", name="T", passphrase="p", intermediate=True, now=NOW
    )
    cert = ca.issue(make_csr(generate_key(), "x"), "sign", now=NOW, member_id="IQ/GOV/NDC")
    validator = PathValidator([ca.root_certificate])
    with pytest.raises(PathValidationError):
        validator.validate(cert, at=NOW, profile="sign")
    first = validator.validate(cert, at=NOW, profile="sign", intermediates=ca.intermediates)
    later = validator.validate(
        cert, at=NOW + dt.timedelta(days=10), profile="sign", intermediates=ca.intermediates
    )
    assert first == later == [cert, ca.issuer_certificate, ca.root_certificate]
    with pytest.raises(CertValidityError):
        validator.validate(
            cert, at=NOW + dt.timedelta(days=800), profile="sign", intermediates=ca.intermediates
        )


def test_refuses_naive_validation_time(pki: FixturePki) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_path(
            pki.signing().cert,
            intermediates=[],
            roots=[pki.root.cert],
            at=dt.datetime(2026, 11, 1),  # naive on purpose
            profile="sign",
        )
