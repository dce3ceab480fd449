"""The provider node, called directly over mutual TLS: what it accepts and what it refuses."""

from __future__ import annotations

import datetime as dt
import io
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from certs.signer import SoftwareSigner
from gateway.identifiers import ClientId, ServiceId
from gateway.transport import (
    CONTENT_TYPE,
    EXCHANGE_PATH,
    RequestPart,
    ResponsePart,
    body_digest,
    decode_message,
    encode_message,
    request_hash,
    sign_one,
)
from tests.pki_factory import FixturePki
from tests.security_server.fakes import (
    CONSUMER,
    HJC,
    NDC,
    PROVIDER,
    Network,
    Reply,
    assert_still_serving,
    two_nodes,
)

MAX_BODY = 64 * 1024


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    async with two_nodes(tmp_path, max_body_bytes=MAX_BODY) as network:
        yield network


def envelope(
    net: Network,
    *,
    client: ClientId = CONSUMER,
    code: str = "getCitizen",
    message_id: str | None = None,
    signer: SoftwareSigner | None = None,
    body: bytes = b"",
) -> tuple[RequestPart, bytes]:
    part = RequestPart(
        protocol="REST",
        message_id=message_id or str(uuid.uuid4()),
        client=client,
        service=ServiceId.for_client(PROVIDER, code),
        method="GET",
        path="/citizens/1",
        query=None,
        headers=(("Accept", "application/json"),),
        body_sha256=body_digest(body),
        created_at=net.clock.now,
    )
    signer = signer or net.consumer_signers.signers[HJC]
    sealed = sign_one(part, signer, now=net.clock.now)
    ocsp = net.ocsp_response(signer.certificate)
    return part, encode_message(part, body, sealed.proof, sealed.signature, ocsp)[1]


async def post(
    net: Network,
    data: bytes,
    *,
    ctx: ssl.SSLContext | None = None,
    content_type: str = CONTENT_TYPE,
    method: str = "POST",
    path: str = EXCHANGE_PATH,
) -> Reply:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            net.provider_node_url + path,
            data=io.BytesIO(data),
            headers={"Content-Type": content_type},
            ssl=ctx or net.node_client_context(),
        ) as response,
    ):
        return Reply(response.status, dict(response.headers), await response.read())


def answer_of(reply: Reply) -> tuple[ResponsePart, bytes]:
    assert reply.status == 200, reply
    message = decode_message(reply.headers["Content-Type"], reply.body, prefix="Server.ClientProxy")
    assert isinstance(message.signed_part, ResponsePart)
    return message.signed_part, message.body


async def test_answers_a_signed_request_with_a_signed_bound_response(net: Network) -> None:
    part, data = envelope(net)
    response, body = answer_of(await post(net, data))
    assert response.status == 200
    assert response.request_hash == request_hash(part.to_bytes())
    assert json.loads(body)["path"] == "/rest/citizens/1"


async def test_refuses_tampered_body(net: Network) -> None:
    _, data = envelope(net, body=b"original body")
    reply = await post(net, data.replace(b"original body", b"original bodY"))
    assert reply.status == 500
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidSignatureValue"
    await assert_still_serving(net)


async def test_refuses_tampered_signed_part(net: Network) -> None:
    _, data = envelope(net)
    reply = await post(net, data.replace(b"/citizens/1", b"/citizens/2", 1))
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidSignatureValue"
    await assert_still_serving(net)


async def test_refuses_replayed_message_id(net: Network) -> None:
    _, data = envelope(net, message_id="once-only")
    answer_of(await post(net, data))
    response, body = answer_of(await post(net, data))
    assert response.status == 500
    assert json.loads(body)["type"] == "Server.ServerProxy.DuplicateMessageId"
    assert ("X-Road-Error", "Server.ServerProxy.DuplicateMessageId") in response.headers
    await assert_still_serving(net)


async def test_refuses_tls_peer_that_is_not_a_registered_node(net: Network, tmp_path: Path) -> None:
    stranger = net.pki.authentication("IQ/GOV/HJC/ss1")
    _, data = envelope(net)
    reply = await post(net, data, ctx=net.node_client_context(stranger, tmp_path))
    assert reply.status == 500
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.SslAuthenticationFailed"
    await assert_still_serving(net)


async def test_refuses_client_the_sending_node_does_not_host(net: Network) -> None:
    _, data = envelope(net, client=PROVIDER, signer=net.provider_signers.signers[NDC])
    response, body = answer_of(await post(net, data))
    assert json.loads(body)["type"] == "Server.ServerProxy.SslAuthenticationFailed"
    assert response.status == 500


async def test_refuses_expired_signing_certificate(net: Network) -> None:
    expired = net.pki.issue(
        "HJC old signing",
        serial_number=str(HJC),
        content_commitment=True,
        not_before=net.clock.now - dt.timedelta(days=400),
        days=30,
    )
    _, data = envelope(net, signer=SoftwareSigner(expired.key, expired.cert))
    reply = await post(net, data)
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.CertValidityTime"
    await assert_still_serving(net)


async def test_refuses_signature_of_another_member(net: Network) -> None:
    other = net.pki.signing("IQ/GOV/MOH")
    _, data = envelope(net, signer=SoftwareSigner(other.key, other.cert))
    reply = await post(net, data)
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.IncorrectCertificate"


async def test_refuses_certificate_not_issued_for_signing(net: Network) -> None:
    _, data = envelope(net, signer=SoftwareSigner(net.consumer_auth.key, net.consumer_auth.cert))
    reply = await post(net, data)
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.IncorrectCertificate"


async def test_refuses_certificate_of_an_unapproved_ca(net: Network) -> None:
    rogue = FixturePki.create(now=net.clock.now, cn="Rogue CA").signing(str(HJC))
    _, data = envelope(net, signer=SoftwareSigner(rogue.key, rogue.cert))
    reply = await post(net, data)
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidCertPath"


async def test_refuses_other_paths_methods_types_and_sizes(net: Network) -> None:
    _, data = envelope(net)
    reply = await post(net, data, path="/other")
    assert (reply.status, reply.headers["X-Road-Error"]) == (
        404,
        "Server.ServerProxy.InvalidRequest",
    )
    reply = await post(net, b"", method="GET")
    assert (reply.status, reply.headers["X-Road-Error"]) == (
        405,
        "Server.ServerProxy.InvalidHttpMethod",
    )
    reply = await post(net, data, content_type="application/json")
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidContentType"
    reply = await post(net, data + b"x" * (2 * MAX_BODY + 1024 * 1024))
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.RequestTooLarge"
    reply = await post(net, b"JISR/T1\n\x01\x00\x00\x00\x05hello")
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidMessage"
    await assert_still_serving(net)
