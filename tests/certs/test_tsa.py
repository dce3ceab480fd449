from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from asn1crypto import algos as asn1_algos
from asn1crypto import tsp as asn1_tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs.signer import SoftwareSigner
from certs.tsa import (
    MAX_REQUEST_BYTES,
    MessageImprint,
    TimestampAuthority,
    TimestampError,
    TimestampRejected,
    build_request,
    new_nonce,
    parse_response,
    token_of_response,
    verify_token,
)
from tests.pki_factory import NOW, FixturePki, Issued, PrivateKey, new_key

POLICY = "2.25.50036134044363814531661193313733990650"
DATA = "شهادة تخرج — diploma".encode()


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


@pytest.fixture(scope="module")
def tsa_issued(pki: FixturePki) -> Issued:
    return pki.tsa()


@pytest.fixture(scope="module")
def authority(tsa_issued: Issued) -> TimestampAuthority:
    return TimestampAuthority(tsa_issued.cert, tsa_issued.key, policy_oid=POLICY)


def _token(authority: TimestampAuthority, *, serial: int = 1, cert_req: bool = True) -> bytes:
    request = build_request(DATA, nonce=new_nonce(), cert_req=cert_req)
    return parse_response(authority.respond(request, now=NOW, serial=serial), request).der


def _refusal(authority: TimestampAuthority, request_der: bytes) -> TimestampRejected:
    resp = authority.respond(request_der, now=NOW, serial=1)
    with pytest.raises(TimestampRejected) as caught:
        parse_response(resp, build_request(DATA))
    return caught.value


def same_tsa_with_key(pki: FixturePki, template: Issued, key: PrivateKey) -> Issued:
    """A TSA certificate like ``template`` for another key (the factory makes EC keys only)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.cert.subject)
        .issuer_name(template.cert.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(template.cert.not_valid_before_utc)
        .not_valid_after(template.cert.not_valid_after_utc)
    )
    for ext in template.cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return Issued(builder.sign(pki.root.key, hashes.SHA256()), key)


# --- issuing ---------------------------------------------------------------------------------


def test_issues_token_that_verifies_against_the_data(
    authority: TimestampAuthority, tsa_issued: Issued
) -> None:
    request = build_request(DATA, nonce=12345)
    token = parse_response(authority.respond(request, now=NOW, serial=7), request)
    info = verify_token(token.der, data=DATA, tsa_certs=[tsa_issued.cert], at=NOW)
    assert info.gen_time == NOW
    assert info.serial == 7
    assert info.policy == POLICY
    assert info.nonce == 12345
    assert info.tsa_cert == tsa_issued.cert
    assert info.accuracy == dt.timedelta(seconds=1)
    assert info.message_imprint == MessageImprint.of(DATA)


def test_verifies_against_a_digest(authority: TimestampAuthority, tsa_issued: Issued) -> None:
    digest = hashlib.sha256(DATA).digest()
    request = build_request(MessageImprint("sha256", digest))
    token = parse_response(authority.respond(request, now=NOW, serial=1), request)
    info = verify_token(token.der, digest=digest, tsa_certs=[tsa_issued.cert])
    assert info.nonce is None


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
def test_accepts_sha2_imprints(
    authority: TimestampAuthority, tsa_issued: Issued, hash_name: str
) -> None:
    request = build_request(DATA, hash=hash_name, nonce=new_nonce())
    token = parse_response(authority.respond(request, now=NOW, serial=2), request)
    info = verify_token(token.der, data=DATA, tsa_certs=[tsa_issued.cert], at=NOW)
    assert info.message_imprint.hash == hash_name


def test_signs_with_an_rsa_key(pki: FixturePki) -> None:
    rsa_tsa = same_tsa_with_key(pki, pki.tsa(), new_key("rsa"))
    authority = TimestampAuthority(rsa_tsa.cert, rsa_tsa.key, policy_oid=POLICY)
    token = _token(authority, serial=3)
    assert verify_token(token, data=DATA, tsa_certs=[rsa_tsa.cert], at=NOW).serial == 3


def test_signs_through_a_signer(tsa_issued: Issued) -> None:
    signer = SoftwareSigner(tsa_issued.key, tsa_issued.cert)
    authority = TimestampAuthority(tsa_issued.cert, signer, policy_oid=POLICY)
    token = _token(authority, serial=4)
    assert verify_token(token, data=DATA, tsa_certs=[tsa_issued.cert]).serial == 4


def test_keeps_subsecond_gen_time(authority: TimestampAuthority, tsa_issued: Issued) -> None:
    now = NOW + dt.timedelta(microseconds=250_000)
    request = build_request(DATA)
    token = parse_response(authority.respond(request, now=now, serial=5), request)
    assert verify_token(token.der, data=DATA, tsa_certs=[tsa_issued.cert]).gen_time == now


def test_responses_are_canonical_der(authority: TimestampAuthority) -> None:
    resp = authority.respond(build_request(DATA, nonce=99), now=NOW, serial=6)
    assert asn1_tsp.TimeStampResp.load(resp).dump(force=True) == resp


def test_includes_certificate_only_when_requested(
    pki: FixturePki, tsa_issued: Issued, authority: TimestampAuthority
) -> None:
    with_cert = build_request(DATA, cert_req=True)
    without = build_request(DATA, cert_req=False)
    token = parse_response(authority.respond(with_cert, now=NOW, serial=1), with_cert)
    assert token.certificates == (tsa_issued.cert,)
    bare = parse_response(authority.respond(without, now=NOW, serial=2), without)
    assert bare.certificates == ()


def test_carries_the_chain_when_certificates_are_requested(
    pki: FixturePki, tsa_issued: Issued
) -> None:
    authority = TimestampAuthority(
        tsa_issued.cert, tsa_issued.key, policy_oid=POLICY, chain=[pki.root.cert]
    )
    request = build_request(DATA)
    token = parse_response(authority.respond(request, now=NOW, serial=1), request)
    assert set(token.certificates) == {tsa_issued.cert, pki.root.cert}


def test_refuses_to_run_with_a_certificate_lacking_timestamping_usage(pki: FixturePki) -> None:
    ocsp = pki.ocsp_responder()
    with pytest.raises(TimestampError, match="timeStamping"):
        TimestampAuthority(ocsp.cert, ocsp.key, policy_oid=POLICY)


def test_refuses_a_key_that_does_not_match_the_certificate(tsa_issued: Issued) -> None:
    with pytest.raises(Exception, match="does not belong"):
        TimestampAuthority(tsa_issued.cert, new_key(), policy_oid=POLICY)


def test_refuses_a_policy_that_is_not_an_oid(tsa_issued: Issued) -> None:
    with pytest.raises(TimestampError, match="object identifier"):
        TimestampAuthority(tsa_issued.cert, tsa_issued.key, policy_oid="jisr-policy")


# --- refusing requests -----------------------------------------------------------------------


def test_rejects_malformed_request_with_bad_data_format(authority: TimestampAuthority) -> None:
    refusal = _refusal(authority, b"\x30\x03\x02\x01")
    assert refusal.status == "rejection"
    assert refusal.fail_info == {"bad_data_format"}


def test_rejects_request_with_trailing_bytes(authority: TimestampAuthority) -> None:
    refusal = _refusal(authority, build_request(DATA) + b"\x00")
    assert refusal.fail_info == {"bad_data_format"}


def test_rejects_oversized_request(authority: TimestampAuthority) -> None:
    refusal = _refusal(authority, b"\x30" + b"\x00" * MAX_REQUEST_BYTES)
    assert refusal.fail_info == {"bad_data_format"}


def _raw_request(hash_name: str, digest: bytes, **extra: object) -> bytes:
    fields: dict[str, object] = {
        "version": 1,
        "message_imprint": {
            "hash_algorithm": asn1_algos.DigestAlgorithm({"algorithm": hash_name}),
            "hashed_message": digest,
        },
        **extra,
    }
    return bytes(asn1_tsp.TimeStampReq(fields).dump())


def test_rejects_sha1_imprint_with_bad_alg(authority: TimestampAuthority) -> None:
    refusal = _refusal(authority, _raw_request("sha1", hashlib.sha1(DATA).digest()))  # noqa: S324 (the weak hash is what is refused)
    assert refusal.fail_info == {"bad_alg"}
    assert "SHA-256" in str(refusal)


def test_rejects_imprint_of_the_wrong_length(authority: TimestampAuthority) -> None:
    refusal = _refusal(authority, _raw_request("sha256", b"\x01" * 20))
    assert refusal.fail_info == {"bad_data_format"}


def test_rejects_a_policy_it_does_not_offer(authority: TimestampAuthority) -> None:
    request = _raw_request("sha256", hashlib.sha256(DATA).digest(), req_policy="2.25.1")
    assert _refusal(authority, request).fail_info == {"unaccepted_policy"}


def test_honours_a_request_for_its_own_policy(
    authority: TimestampAuthority, tsa_issued: Issued
) -> None:
    request = build_request(DATA, policy_oid=POLICY)
    token = parse_response(authority.respond(request, now=NOW, serial=1), request)
    assert token.policy == POLICY


def test_rejects_request_extensions(authority: TimestampAuthority) -> None:
    request = _raw_request(
        "sha256",
        hashlib.sha256(DATA).digest(),
        extensions=[{"extn_id": "2.25.7", "critical": False, "extn_value": b"\x05\x00"}],
    )
    assert _refusal(authority, request).fail_info == {"unaccepted_extensions"}


# --- the client's checks ---------------------------------------------------------------------


def test_refuses_response_with_another_nonce(authority: TimestampAuthority) -> None:
    sent = build_request(DATA, nonce=1)
    answered = authority.respond(build_request(DATA, nonce=2), now=NOW, serial=1)
    with pytest.raises(TimestampError, match="nonce"):
        parse_response(answered, sent)


def test_refuses_response_for_another_imprint(authority: TimestampAuthority) -> None:
    sent = build_request(DATA, nonce=1)
    answered = authority.respond(build_request(b"other", nonce=1), now=NOW, serial=1)
    with pytest.raises(TimestampError, match="another imprint"):
        parse_response(answered, sent)


def test_refuses_response_that_is_not_der(authority: TimestampAuthority) -> None:
    with pytest.raises(TimestampError, match="not a DER TimeStampResp"):
        parse_response(b"<html>", build_request(DATA))


def test_extracts_token_from_response(authority: TimestampAuthority) -> None:
    request = build_request(DATA, nonce=5)
    resp = authority.respond(request, now=NOW, serial=1)
    assert token_of_response(resp) == parse_response(resp, request).der


def test_refuses_token_for_other_data(authority: TimestampAuthority, tsa_issued: Issued) -> None:
    with pytest.raises(TimestampError, match="other data"):
        verify_token(_token(authority), data=b"forged", tsa_certs=[tsa_issued.cert])


def test_refuses_token_with_altered_content(
    authority: TimestampAuthority, tsa_issued: Issued
) -> None:
    token = _token(authority, serial=0x4242)
    # The serial number sits inside the signed TSTInfo; change it.
    tampered = token.replace(b"\x02\x02\x42\x42", b"\x02\x02\x42\x43", 1)
    assert tampered != token
    with pytest.raises(TimestampError, match="signed digest"):
        verify_token(tampered, data=DATA, tsa_certs=[tsa_issued.cert])


def test_refuses_token_with_altered_signature(
    authority: TimestampAuthority, tsa_issued: Issued
) -> None:
    token = bytearray(_token(authority))
    token[-3] ^= 0x01  # inside the signature value, the last field of the token
    with pytest.raises(TimestampError, match="signature"):
        verify_token(bytes(token), data=DATA, tsa_certs=[tsa_issued.cert])


def test_refuses_token_from_another_tsa(authority: TimestampAuthority) -> None:
    stranger = FixturePki.create(cn="Other Root").tsa()
    with pytest.raises(TimestampError, match="not trusted"):
        verify_token(_token(authority), data=DATA, tsa_certs=[stranger.cert])


def test_refuses_token_signed_by_another_key_under_the_same_name(
    pki: FixturePki, tsa_issued: Issued
) -> None:
    impostor = same_tsa_with_key(pki, tsa_issued, new_key())
    forged = TimestampAuthority(impostor.cert, impostor.key, policy_oid=POLICY)
    token = _token(forged)
    with pytest.raises(TimestampError, match="not trusted"):
        verify_token(token, data=DATA, tsa_certs=[tsa_issued.cert])


def test_refuses_token_whose_ess_binding_names_another_certificate(
    pki: FixturePki, authority: TimestampAuthority, tsa_issued: Issued
) -> None:
    token = _token(authority)
    stripped = x509.CertificateBuilder(
        issuer_name=tsa_issued.cert.issuer,
        subject_name=tsa_issued.cert.subject,
        public_key=tsa_issued.cert.public_key(),
        serial_number=tsa_issued.cert.serial_number,
        not_valid_before=tsa_issued.cert.not_valid_before_utc,
        not_valid_after=tsa_issued.cert.not_valid_after_utc,
    ).sign(pki.root.key, hashes.SHA256())
    # Same issuer and serial, so the signer is found; the ESS hash then names the real cert.
    with pytest.raises(TimestampError, match="ESSCertID"):
        verify_token(token, data=DATA, tsa_certs=[stripped])


def test_refuses_token_dated_outside_the_tsa_certificate(
    authority: TimestampAuthority, tsa_issued: Issued
) -> None:
    late = tsa_issued.cert.not_valid_after_utc + dt.timedelta(days=1)
    request = build_request(DATA)
    token = parse_response(authority.respond(request, now=late, serial=1), request)
    with pytest.raises(TimestampError, match="outside the validity"):
        verify_token(token.der, data=DATA, tsa_certs=[tsa_issued.cert])


def test_refuses_token_from_the_future(authority: TimestampAuthority, tsa_issued: Issued) -> None:
    with pytest.raises(TimestampError, match="after"):
        verify_token(
            _token(authority),
            data=DATA,
            tsa_certs=[tsa_issued.cert],
            at=NOW - dt.timedelta(minutes=5),
        )


def test_accepts_token_within_its_accuracy(
    authority: TimestampAuthority, tsa_issued: Issued
) -> None:
    at = NOW - dt.timedelta(milliseconds=500)
    assert verify_token(_token(authority), data=DATA, tsa_certs=[tsa_issued.cert], at=at)


def test_refuses_check_when_tsa_certificate_has_expired_at_the_given_time(
    authority: TimestampAuthority, tsa_issued: Issued
) -> None:
    later = tsa_issued.cert.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(TimestampError, match="not valid at"):
        verify_token(_token(authority), data=DATA, tsa_certs=[tsa_issued.cert], at=later)


def test_refuses_garbage_as_token(tsa_issued: Issued) -> None:
    with pytest.raises(TimestampError, match="malformed"):
        verify_token(b"\x30\x00", data=DATA, tsa_certs=[tsa_issued.cert])


def test_timestamp_errors_carry_the_x_road_fault_name() -> None:
    assert TimestampError("x").fault_code == "TimestampingFailed"
