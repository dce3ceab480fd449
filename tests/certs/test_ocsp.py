from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.ocsp import (
    OcspCache,
    OcspError,
    OcspResponder,
    build_request,
    request_nonce,
    verify_response,
)
from certs.signer import SoftwareSigner
from certs.status import CertStatus
from tests.pki_factory import NOW, FixturePki, Issued

REVOKED_AT = NOW - dt.timedelta(days=2)


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


@pytest.fixture(scope="module")
def responder_cert(pki: FixturePki) -> Issued:
    return pki.ocsp_responder()


@pytest.fixture(scope="module")
def good(pki: FixturePki) -> Issued:
    return pki.signing("IQ/GOV/NDC")


@pytest.fixture(scope="module")
def revoked(pki: FixturePki) -> Issued:
    return pki.signing("IQ/GOV/MOH")


@pytest.fixture(scope="module")
def statuses(good: Issued, revoked: Issued) -> dict[int, CertStatus]:
    return {
        good.cert.serial_number: CertStatus("good"),
        revoked.cert.serial_number: CertStatus(
            "revoked", revoked_at=REVOKED_AT, reason="key_compromise"
        ),
    }


@pytest.fixture
def responder(
    pki: FixturePki, responder_cert: Issued, statuses: dict[int, CertStatus]
) -> OcspResponder:
    return OcspResponder(
        pki.root.cert,
        SoftwareSigner(responder_cert.key, responder_cert.cert),
        lambda serial: statuses.get(serial, CertStatus("unknown")),
        validity=dt.timedelta(hours=1),
    )


def _verify(
    der: bytes, cert: Issued, pki: FixturePki, *, now: dt.datetime = NOW, nonce: bytes | None = None
) -> CertStatus:
    verdict = verify_response(
        der, cert.cert, pki.root.cert, trusted_responders=None, now=now, nonce=nonce
    )
    return verdict.status


def test_answers_good_signed_by_delegated_responder(
    responder: OcspResponder, good: Issued, pki: FixturePki, responder_cert: Issued
) -> None:
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    verdict = verify_response(
        der, good.cert, pki.root.cert, trusted_responders=None, now=NOW + dt.timedelta(minutes=5)
    )
    assert verdict.status == CertStatus("good")
    assert verdict.this_update == NOW
    assert verdict.produced_at == NOW
    assert verdict.next_update == NOW + dt.timedelta(hours=1)
    parsed = ocsp.load_der_ocsp_response(der)
    assert parsed.responder_key_hash is not None
    assert parsed.certificates == [responder_cert.cert]


def test_answers_revoked_with_time_and_reason(
    responder: OcspResponder, revoked: Issued, pki: FixturePki
) -> None:
    der = responder.respond(build_request(revoked.cert, pki.root.cert, nonce=False), now=NOW)
    assert _verify(der, revoked, pki) == CertStatus(
        "revoked", revoked_at=REVOKED_AT, reason="key_compromise"
    )


def test_answers_revocation_time_in_whole_seconds(
    pki: FixturePki, responder_cert: Issued, revoked: Issued
) -> None:
    precise = REVOKED_AT + dt.timedelta(microseconds=123456)
    responder = OcspResponder(
        pki.root.cert,
        (responder_cert.cert, responder_cert.key),
        lambda serial: CertStatus("revoked", revoked_at=precise, reason=None),
    )
    der = responder.respond(build_request(revoked.cert, pki.root.cert, nonce=False), now=NOW)
    assert _verify(der, revoked, pki) == CertStatus("revoked", revoked_at=REVOKED_AT)


def test_answers_unknown_for_serial_the_ca_does_not_know(
    responder: OcspResponder, pki: FixturePki
) -> None:
    stranger = pki.signing("IQ/GOV/UNKNOWN")
    der = responder.respond(build_request(stranger.cert, pki.root.cert, nonce=False), now=NOW)
    assert _verify(der, stranger, pki) == CertStatus("unknown")


def test_echoes_nonce(responder: OcspResponder, good: Issued, pki: FixturePki) -> None:
    request = build_request(good.cert, pki.root.cert, nonce=True)
    nonce = request_nonce(request)
    assert nonce is not None
    der = responder.respond(request, now=NOW)
    assert _verify(der, good, pki, nonce=nonce) == CertStatus("good")
    with pytest.raises(OcspError, match="nonce"):
        _verify(der, good, pki, nonce=b"another nonce")


def test_reuses_signed_answer_without_nonce_briefly(
    responder: OcspResponder, good: Issued, pki: FixturePki
) -> None:
    request = build_request(good.cert, pki.root.cert, nonce=False)
    first = responder.respond(request, now=NOW)
    assert responder.respond(request, now=NOW + dt.timedelta(seconds=5)) == first
    later = responder.respond(request, now=NOW + dt.timedelta(minutes=10))
    assert later != first
    assert ocsp.load_der_ocsp_response(later).this_update_utc == NOW + dt.timedelta(minutes=10)


def test_answers_malformed_request_with_malformed_request_status(
    responder: OcspResponder,
) -> None:
    der = responder.respond(b"\x30\x03not ocsp", now=NOW)
    assert (
        ocsp.load_der_ocsp_response(der).response_status
        == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )


def test_answers_request_about_another_issuer_with_unauthorized(
    responder: OcspResponder,
) -> None:
    other = FixturePki.create(cn="Other Root CA")
    leaf = other.signing("IQ/GOV/OTHER")
    der = responder.respond(build_request(leaf.cert, other.root.cert, nonce=False), now=NOW)
    assert ocsp.load_der_ocsp_response(der).response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_answers_internal_error_when_lookup_fails(
    pki: FixturePki, responder_cert: Issued, good: Issued
) -> None:
    def broken(serial: int) -> CertStatus:
        raise RuntimeError("index unreadable")

    seen: list[tuple[int, str]] = []
    responder = OcspResponder(
        pki.root.cert,
        (responder_cert.cert, responder_cert.key),
        broken,
        on_lookup_error=lambda serial, exc: seen.append((serial, str(exc))),
    )
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    assert seen == [(good.cert.serial_number, "index unreadable")]
    assert (
        ocsp.load_der_ocsp_response(der).response_status == ocsp.OCSPResponseStatus.INTERNAL_ERROR
    )


def test_client_reports_unsuccessful_status(responder: OcspResponder, good: Issued) -> None:
    der = responder.respond(b"garbage", now=NOW)
    with pytest.raises(OcspError, match="MALFORMED_REQUEST"):
        verify_response(der, good.cert, good.cert, trusted_responders=None, now=NOW)


def test_refuses_tampered_response_signature(
    responder: OcspResponder, good: Issued, pki: FixturePki
) -> None:
    der = bytearray(
        responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    )
    tbs = ocsp.load_der_ocsp_response(bytes(der)).tbs_response_bytes
    start = bytes(der).index(tbs)
    produced = tbs.index(b"2026")  # flip one digit of producedAt inside the signed data
    der[start + produced + 3] ^= 0x01
    with pytest.raises(OcspError, match="signature does not verify"):
        _verify(bytes(der), good, pki)


def test_refuses_stale_response(responder: OcspResponder, good: Issued, pki: FixturePki) -> None:
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    with pytest.raises(OcspError, match="stale"):
        verify_response(
            der,
            good.cert,
            pki.root.cert,
            trusted_responders=None,
            now=NOW + dt.timedelta(minutes=45),
            max_age=dt.timedelta(minutes=30),
        )


def test_refuses_response_past_next_update(
    responder: OcspResponder, good: Issued, pki: FixturePki
) -> None:
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    with pytest.raises(OcspError, match="nextUpdate"):
        verify_response(
            der,
            good.cert,
            pki.root.cert,
            trusted_responders=None,
            now=NOW + dt.timedelta(hours=2),
            max_age=dt.timedelta(hours=3),
        )


def test_refuses_response_from_the_future(
    responder: OcspResponder, good: Issued, pki: FixturePki
) -> None:
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    with pytest.raises(OcspError, match="future"):
        _verify(der, good, pki, now=NOW - dt.timedelta(minutes=10))


def test_refuses_answer_about_another_certificate(
    responder: OcspResponder, good: Issued, revoked: Issued, pki: FixturePki
) -> None:
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    with pytest.raises(OcspError, match="does not answer"):
        _verify(der, revoked, pki)


def test_responder_refuses_certificate_without_ocsp_signing_eku(
    pki: FixturePki, good: Issued
) -> None:
    plain = pki.issue("Not an OCSP responder", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(OcspError, match="OCSPSigning"):
        OcspResponder(pki.root.cert, (plain.cert, plain.key), lambda s: CertStatus("good"))


def _forged_response(
    pki: FixturePki, signer: Issued, subject: Issued, *, now: dt.datetime = NOW
) -> bytes:
    """A response built directly with cryptography, signed by any key the test chooses."""
    return (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=subject.cert,
            issuer=pki.root.cert,
            algorithm=hashes.SHA1(),  # noqa: S303 - CertID hash, as requests use
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=now,
            next_update=now + dt.timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
        .certificates([signer.cert])
        .sign(signer.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def test_client_refuses_response_signed_without_ocsp_signing_eku(
    pki: FixturePki, good: Issued
) -> None:
    plain = pki.issue("Pretender", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(OcspError, match="OCSPSigning"):
        _verify(_forged_response(pki, plain, good), good, pki)


def test_client_refuses_responder_issued_by_another_ca(pki: FixturePki, good: Issued) -> None:
    foreign = FixturePki.create(cn="Foreign Root").ocsp_responder()
    with pytest.raises(OcspError, match="did not issue"):
        _verify(_forged_response(pki, foreign, good), good, pki)


def test_client_accepts_explicitly_trusted_responder(pki: FixturePki, good: Issued) -> None:
    foreign = FixturePki.create(cn="Foreign Root").ocsp_responder()
    verdict = verify_response(
        _forged_response(pki, foreign, good),
        good.cert,
        pki.root.cert,
        trusted_responders=[foreign.cert],
        now=NOW,
    )
    assert verdict.status.state == "good"


def test_client_refuses_expired_responder_certificate(pki: FixturePki, good: Issued) -> None:
    old = pki.issue(
        "Old responder",
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        not_before=NOW - dt.timedelta(days=30),
        days=10,
    )
    with pytest.raises(OcspError, match="expired or not yet valid"):
        _verify(_forged_response(pki, old, good), good, pki)


def test_client_accepts_response_signed_by_the_issuer_itself(pki: FixturePki, good: Issued) -> None:
    assert _verify(_forged_response(pki, pki.root, good), good, pki).state == "good"


def test_responder_may_sign_with_the_ca_key(pki: FixturePki, good: Issued) -> None:
    responder = OcspResponder(
        pki.root.cert, (pki.root.cert, pki.root.key), lambda s: CertStatus("good")
    )
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    assert _verify(der, good, pki).state == "good"


def test_rsa_responder_round_trip(pki: FixturePki, good: Issued) -> None:
    from tests.pki_factory import new_key

    rsa_responder = pki.issue(
        "RSA responder", eku=[ExtendedKeyUsageOID.OCSP_SIGNING], key=new_key("rsa")
    )
    responder = OcspResponder(
        pki.root.cert, (rsa_responder.cert, rsa_responder.key), lambda s: CertStatus("good")
    )
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=True), now=NOW)
    assert _verify(der, good, pki).state == "good"


def test_answers_sha256_cert_id_requests(
    responder: OcspResponder, good: Issued, pki: FixturePki
) -> None:
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(good.cert, pki.root.cert, hashes.SHA256())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    assert _verify(responder.respond(request, now=NOW), good, pki).state == "good"


def test_cache_serves_fresh_verdicts_and_asks_for_refresh_ahead_of_expiry(
    responder: OcspResponder, good: Issued, pki: FixturePki
) -> None:
    cache = OcspCache(max_age=dt.timedelta(hours=1))
    assert cache.get(good.cert, NOW) is None
    assert cache.needs_refresh(good.cert, NOW)
    der = responder.respond(build_request(good.cert, pki.root.cert, nonce=False), now=NOW)
    verdict = verify_response(der, good.cert, pki.root.cert, trusted_responders=None, now=NOW)
    cache.put(good.cert, verdict)
    assert cache.get(good.cert, NOW + dt.timedelta(minutes=10)) == verdict
    assert not cache.needs_refresh(good.cert, NOW + dt.timedelta(minutes=10))
    assert cache.needs_refresh(good.cert, NOW + dt.timedelta(minutes=41))
    assert cache.get(good.cert, NOW + dt.timedelta(minutes=41)) == verdict
    assert cache.get(good.cert, NOW + dt.timedelta(minutes=61)) is None


def test_cache_keeps_the_newer_verdict_and_honours_refresh_interval(
    responder: OcspResponder, good: Issued, pki: FixturePki
) -> None:
    cache = OcspCache(max_age=dt.timedelta(hours=1), refresh_interval=dt.timedelta(minutes=5))
    request = build_request(good.cert, pki.root.cert, nonce=False)
    later_now = NOW + dt.timedelta(minutes=20)
    older = verify_response(
        responder.respond(request, now=NOW),
        good.cert,
        pki.root.cert,
        trusted_responders=None,
        now=later_now,
    )
    newer = verify_response(
        responder.respond(request, now=later_now),
        good.cert,
        pki.root.cert,
        trusted_responders=None,
        now=later_now,
    )
    cache.put(good.cert, newer)
    cache.put(good.cert, older)
    assert cache.get(good.cert, later_now) == newer
    assert cache.refresh_at(good.cert) == later_now + dt.timedelta(minutes=5)
    other = pki.signing("IQ/GOV/ELSE")
    assert cache.get(other.cert, later_now) is None
