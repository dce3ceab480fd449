"""A rogue or broken consumer node posting to a running provider node's server side.

The tests speak transport v1 to the NDC node (a ``jisr node serve`` process) over mutual TLS,
as the HJC node would, with envelopes they framed and signed themselves: tampered, forged,
replayed, signed with revoked or expired certificates, sent over a connection whose TLS
certificate is not a registered node's. Each refusal carries X-Road's fault code and a message
naming the problem, and the provider node keeps serving.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certs.profiles import member_id_of
from certs.signer import SoftwareSigner
from gateway.faults import CLIENT_PROXY
from gateway.identifiers import MemberId, ServiceId
from gateway.transport import CONTENT_TYPE, decode_message, request_hash, verify_message
from jisr.demo.exchanges import DECEASED_CITIZEN, LIVING_CITIZEN
from jisr.demo.members import INHERITANCE, POPULATION
from jisr.demo.network import utc_now
from tests.e2e.calls import BILLION_LAUGHS, assert_still_serving, echo_envelope
from tests.e2e.extra_services import ECHO_SOAP
from tests.e2e.network import MAX_BODY_BYTES, E2eNetwork
from tests.e2e.rogue_node import (
    answer_of,
    as_node,
    citizen_request,
    fault_of,
    fresh_ocsp,
    issue_for_test,
    member_signer,
    post_envelope,
    seal,
    signature_over,
    soap_request,
    tls_context,
)
from tests.pki_factory import FixturePki

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="package")]

HJC = INHERITANCE.member
NPA = MemberId("IQ", "GOV", "NPA")


@pytest.fixture
def keys_dir() -> Iterator[Path]:
    """Where a test keeps the keys the demo CA certifies for it."""
    directory = Path(tempfile.mkdtemp(prefix="jisr-e2e-keys-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _as_hjc_node(network: E2eNetwork, data: bytes) -> tuple[int, str, str]:
    """Post ``data`` as the HJC node; (HTTP status, fault code, fault message)."""
    reply = await post_envelope(network.provider, data, as_node(network.consumer, network.provider))
    code, message = fault_of(reply)
    return reply.status, code, message


async def _signed_by_hjc(network: E2eNetwork, *, message_id: str | None = None) -> bytes:
    signer = member_signer(network.consumer, HJC)
    part = citizen_request(message_id=message_id)
    return seal(part, signer, await fresh_ocsp(network, signer.certificate))


async def test_answers_a_valid_envelope_with_a_signed_bound_response(
    network: E2eNetwork,
) -> None:
    signer = member_signer(network.consumer, HJC)
    part = citizen_request()
    data = seal(part, signer, await fresh_ocsp(network, signer.certificate))
    reply = await post_envelope(network.provider, data, as_node(network.consumer, network.provider))
    response, body = answer_of(reply)
    assert response.status == 200
    assert response.message_id == part.message_id
    assert response.request_hash == request_hash(part.to_bytes())
    assert json.loads(body)["nationalId"] == LIVING_CITIZEN
    # signed by the provider's member NDC, with its OCSP evidence stapled
    message = decode_message(CONTENT_TYPE, reply.body, prefix=CLIENT_PROXY, kind="response")
    verified = verify_message(message, verified_cache=None, now=utc_now(), prefix=CLIENT_PROXY)
    assert member_id_of(verified.signer) == str(POPULATION.member)
    assert verified.ocsp


# ---- tampered and forged signatures ------------------------------------------------------------


async def test_refuses_a_tampered_body(network: E2eNetwork) -> None:
    body = json.dumps({"nationalId": LIVING_CITIZEN}).encode()
    signer = member_signer(network.consumer, HJC)
    data = seal(
        citizen_request(body=body), signer, await fresh_ocsp(network, signer.certificate), body=body
    )
    tampered = data.replace(LIVING_CITIZEN.encode() + b'"}', DECEASED_CITIZEN.encode() + b'"}')
    assert tampered != data
    status, code, message = await _as_hjc_node(network, tampered)
    assert (status, code) == (500, "Server.ServerProxy.InvalidSignatureValue")
    assert "body does not match the signed body_sha256" in message
    await assert_still_serving(network)


async def test_refuses_a_tampered_signed_part(network: E2eNetwork) -> None:
    data = await _signed_by_hjc(network)
    tampered = data.replace(
        f"/citizens/{LIVING_CITIZEN}".encode(), f"/citizens/{DECEASED_CITIZEN}".encode(), 1
    )
    assert tampered != data
    status, code, message = await _as_hjc_node(network, tampered)
    assert (status, code) == (500, "Server.ServerProxy.InvalidSignatureValue")
    assert "signature does not cover this message" in message
    await assert_still_serving(network)


async def test_refuses_a_genuine_signature_taken_from_another_message(
    network: E2eNetwork,
) -> None:
    signer = member_signer(network.consumer, HJC)
    ocsp = await fresh_ocsp(network, signer.certificate)
    other = signature_over(citizen_request(), signer)
    status, code, message = await _as_hjc_node(
        network, seal(citizen_request(), signer, ocsp, signature=other)
    )
    assert (status, code) == (500, "Server.ServerProxy.InvalidSignatureValue")
    assert "signature does not cover this message" in message
    await assert_still_serving(network)


async def test_refuses_a_malformed_or_missing_signature(network: E2eNetwork) -> None:
    signer = member_signer(network.consumer, HJC)
    ocsp = await fresh_ocsp(network, signer.certificate)
    garbage = seal(citizen_request(), signer, ocsp, signature=b"\x30\x03\x02\x01\x00")
    status, code, message = await _as_hjc_node(network, garbage)
    assert (status, code) == (500, "Server.ServerProxy.MalformedSignature")
    assert "malformed signature" in message
    missing = seal(citizen_request(), signer, ocsp, signature=b"")
    status, code, message = await _as_hjc_node(network, missing)
    assert (status, code) == (500, "Server.ServerProxy.MissingSignature")
    assert "carries no signature" in message
    await assert_still_serving(network)


async def test_refuses_a_signature_by_another_members_key(network: E2eNetwork) -> None:
    # The HJC node also holds NPA's key: a valid signature, but not of the client's member.
    npa = member_signer(network.consumer, NPA)
    data = seal(citizen_request(), npa, await fresh_ocsp(network, npa.certificate))
    status, code, message = await _as_hjc_node(network, data)
    assert (status, code) == (500, "Server.ServerProxy.IncorrectCertificate")
    assert f"comes from member {HJC} but is signed with the certificate of member {NPA}" in message
    await assert_still_serving(network)


async def test_refuses_a_signing_certificate_of_an_unapproved_ca(network: E2eNetwork) -> None:
    rogue = FixturePki.create(now=utc_now(), cn="Rogue CA").signing(str(HJC))
    hjc = member_signer(network.consumer, HJC)
    data = seal(
        citizen_request(),
        SoftwareSigner(rogue.key, rogue.cert),
        await fresh_ocsp(network, hjc.certificate),
    )
    status, code, message = await _as_hjc_node(network, data)
    assert (status, code) == (500, "Server.ServerProxy.InvalidCertPath")
    assert "does not chain to a trusted CA" in message
    await assert_still_serving(network)


# ---- revoked and expired certificates ----------------------------------------------------------


async def test_refuses_a_signing_certificate_once_ocsp_says_revoked(
    network: E2eNetwork, keys_dir: Path
) -> None:
    issued = issue_for_test(network, keys_dir, "sign", now=utc_now(), member_id=str(HJC))
    good = await fresh_ocsp(network, issued.certificate)
    response, _ = answer_of(
        await post_envelope(
            network.provider,
            seal(citizen_request(), issued.signer, good),
            as_node(network.consumer, network.provider),
        )
    )
    assert response.status == 200
    network.trust.ca.revoke(issued.certificate.serial_number, reason="key_compromise", at=utc_now())
    revoked = await fresh_ocsp(network, issued.certificate)
    status, code, message = await _as_hjc_node(
        network, seal(citizen_request(), issued.signer, revoked)
    )
    assert (status, code) == (500, "Server.ServerProxy.CertValidation")
    assert "is revoked" in message
    await assert_still_serving(network)


async def test_refuses_an_expired_signing_certificate(network: E2eNetwork, keys_dir: Path) -> None:
    issued = issue_for_test(
        network,
        keys_dir,
        "sign",
        now=network.ca_created_at + dt.timedelta(hours=1),
        days=1,
        member_id=str(HJC),
    )
    assert issued.certificate.not_valid_after_utc < utc_now()
    ocsp = await fresh_ocsp(network, issued.certificate)
    status, code, message = await _as_hjc_node(
        network, seal(citizen_request(), issued.signer, ocsp)
    )
    assert (status, code) == (500, "Server.ServerProxy.CertValidityTime")
    assert "expired" in message
    await assert_still_serving(network)


# ---- replay and freshness ---------------------------------------------------------------------


async def test_refuses_a_replayed_message_id(network: E2eNetwork) -> None:
    data = await _signed_by_hjc(network)
    first, _ = answer_of(
        await post_envelope(network.provider, data, as_node(network.consumer, network.provider))
    )
    assert first.status == 200
    status, code, message = await _as_hjc_node(network, data)
    # found after the signer is known: a fault signed by the provider's member (HTTP 200)
    assert (status, code) == (200, "Server.ServerProxy.DuplicateMessageId")
    assert "was already received" in message
    await assert_still_serving(network)


async def test_refuses_a_message_created_too_long_ago(network: E2eNetwork) -> None:
    signer = member_signer(network.consumer, HJC)
    part = citizen_request(created_at=utc_now() - dt.timedelta(minutes=10))
    status, code, message = await _as_hjc_node(
        network, seal(part, signer, await fresh_ocsp(network, signer.certificate))
    )
    assert (status, code) == (200, "Server.ServerProxy.InvalidMessage")
    assert "more than 300 s from this node's clock" in message
    await assert_still_serving(network)


# ---- who is at the other end of the TLS connection ---------------------------------------------


async def test_refuses_a_tls_peer_that_is_not_a_registered_node(
    network: E2eNetwork, keys_dir: Path
) -> None:
    # a genuine authentication certificate of the approved CA, for a node never registered
    stranger = issue_for_test(network, keys_dir, "auth", now=utc_now(), server_id="IQ/GOV/HJC/ss9")
    ctx = tls_context(stranger.cert_file, stranger.key_file, network.provider)
    reply = await post_envelope(network.provider, await _signed_by_hjc(network), ctx)
    code, message = fault_of(reply)
    assert (reply.status, code) == (500, "Server.ServerProxy.SslAuthenticationFailed")
    assert "CN=IQ/GOV/HJC/ss9,C=IQ is not an authentication certificate" in message
    await assert_still_serving(network)


async def test_refuses_a_registered_node_that_does_not_host_the_client(
    network: E2eNetwork,
) -> None:
    ctx = as_node(network.nodes["mohesr"], network.provider)
    reply = await post_envelope(network.provider, await _signed_by_hjc(network), ctx)
    code, message = fault_of(reply)
    assert (reply.status, code) == (200, "Server.ServerProxy.SslAuthenticationFailed")
    assert "node IQ/GOV/MOHESR/ss1 sent a request for client IQ/GOV/HJC/inheritance" in message
    await assert_still_serving(network)


# ---- transport framing and the SOAP inside it --------------------------------------------------


#: How each framing case changes a valid framed message.
MANGLED: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda data: data[:-10],
    "version": lambda data: data.replace(b'"version":1', b'"version":2', 1),
    "too-large": lambda data: data + b"x" * (2 * MAX_BODY_BYTES),
}


@pytest.mark.parametrize(
    ("case", "options", "status", "expected", "named"),
    [
        ("path", {"path": "/jisr/v2/exchange"}, 404, "InvalidRequest", "POST /jisr/v1/exchange"),
        ("method", {"method": "PUT"}, 405, "InvalidHttpMethod", "takes POST, not PUT"),
        (
            "type",
            {"content_type": "application/json"},
            500,
            "InvalidContentType",
            "'application/json'",
        ),
        ("truncated", {}, 500, "InvalidMessage", "runs past the end of the message"),
        ("version", {}, 500, "InvalidProtocolVersion", "transport version 2"),
        ("too-large", {}, 500, "RequestTooLarge", "exceeds this node's limit"),
    ],
    ids=["path", "method", "content-type", "truncated", "version", "too-large"],
)
async def test_refuses_broken_transport_messages(
    network: E2eNetwork,
    case: str,
    options: dict[str, str],
    status: int,
    expected: str,
    named: str,
) -> None:
    data = await _signed_by_hjc(network)
    if case in MANGLED:
        data = MANGLED[case](data)
    reply = await post_envelope(
        network.provider, data, as_node(network.consumer, network.provider), **options
    )
    code, message = fault_of(reply)
    assert (reply.status, code) == (status, f"Server.ServerProxy.{expected}"), message
    assert named in message
    await assert_still_serving(network)


@pytest.mark.parametrize(
    ("soap", "expected", "named"),
    [
        (BILLION_LAUGHS, "Client.InvalidXml", "document type declaration"),
        (echo_envelope(protocol_version="3.1"), "Client.InvalidProtocolVersion", "'3.1'"),
        (
            echo_envelope(client_member="NPA", client_subsystem="pensions"),
            "Server.ServerProxy.InconsistentHeaders",
            "xrd:client differs from the signed request's",
        ),
    ],
    ids=["xml-bomb", "protocol-version", "header-not-what-was-signed"],
)
async def test_refuses_a_signed_soap_message_it_would_not_accept_from_a_client(
    network: E2eNetwork, soap: bytes, expected: str, named: str
) -> None:
    """A consumer node that relays what its client should not have sent gets the same fault."""
    signer = member_signer(network.consumer, HJC)
    data = seal(
        soap_request(soap, service=ServiceId.for_client(POPULATION, ECHO_SOAP)),
        signer,
        await fresh_ocsp(network, signer.certificate),
        body=soap,
    )
    before = len(network.extras.received)
    status, code, message = await _as_hjc_node(network, data)
    assert (status, code) == (200, expected)
    assert named in message
    assert len(network.extras.received) == before
    await assert_still_serving(network)
