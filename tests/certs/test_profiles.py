"""Reading identifiers and fingerprints from certificates."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from certs.errors import PkiError
from certs.profiles import (
    AUTHENTICATION,
    cert_sha256,
    conformance_problem,
    member_id_of,
    profile_named,
    server_id_of,
)
from tests.pki_factory import FixturePki


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


def test_reads_member_id_from_signing_certificate(pki: FixturePki) -> None:
    assert member_id_of(pki.signing("IQ/GOV/MOHESR").cert) == "IQ/GOV/MOHESR"


def test_refuses_member_id_from_certificate_without_serial_number(pki: FixturePki) -> None:
    with pytest.raises(PkiError, match="no member id"):
        member_id_of(pki.authentication().cert)


def test_reads_server_id_from_authentication_certificate(pki: FixturePki) -> None:
    assert server_id_of(pki.authentication("IQ/GOV/NDC/ss2").cert) == "IQ/GOV/NDC/ss2"
    with pytest.raises(PkiError, match="no node id"):
        server_id_of(pki.signing().cert)


def test_fingerprint_is_sha256_over_der(pki: FixturePki) -> None:
    cert = pki.signing().cert
    der = cert.public_bytes(serialization.Encoding.DER)
    assert cert_sha256(cert) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_names_what_makes_a_certificate_unfit(pki: FixturePki) -> None:
    assert conformance_problem(pki.authentication().cert, AUTHENTICATION) is None
    assert conformance_problem(pki.signing().cert, AUTHENTICATION) == (
        "its extended key usage lacks serverAuth"
    )


def test_refuses_unknown_profile_name() -> None:
    with pytest.raises(PkiError, match="unknown certificate profile"):
        profile_named("email")
