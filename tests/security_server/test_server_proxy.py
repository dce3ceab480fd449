"""The provider node, called directly over mutual TLS: what it accepts and what it refuses."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certs.signer import SoftwareSigner
from gateway.transport import (
    ResponsePart,
    decode_message,
    request_hash,
)
from tests.pki_factory import FixturePki
from tests.security_server.fakes import (
    HJC,
    NDC,
    PROVIDER,
    Network,
    Reply,
    assert_still_serving,
    post_exchange,
    signed_envelope,
    two_nodes,
)

MAX_BODY = 64 * 1024


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    async with two_nodes(tmp_path, max_body_bytes=MAX_BODY) as network:
        yield network


def answer_of(reply: Reply) -> tuple[ResponsePart, bytes]:
    assert reply.status == 200, reply
    message = decode_message(reply.headers["Content-Type"], reply.body, prefix="Server.ClientProxy")
    assert isinstance(message.signed_part, ResponsePart)
    return message.signed_part, message.body


async def test_answers_a_signed_request_with_a_signed_bound_response(net: Network) -> None:
    part, data = signed_envelope(net)
    response, body = answer_of(await post_exchange(net, data))
    assert response.status == 200
    assert response.request_hash == request_hash(part.to_bytes())
    assert json.loads(body)["path"] == "/rest/citizens/1"


async def test_refuses_tampered_body(net: Network) -> None:
    _, data = signed_envelope(net, body=b"original body")
    reply = await post_exchange(net, data.replace(b"original body", b"original bodY"))
    assert reply.status == 500
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidSignatureValue"
    await assert_still_serving(net)


async def test_refuses_tampered_signed_part(net: Network) -> None:
    _, data = signed_envelope(net)
    reply = await post_exchange(net, data.replace(b"/citizens/1", b"/citizens/2", 1))
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidSignatureValue"
    await assert_still_serving(net)


async def test_refuses_replayed_message_id(net: Network) -> None:
    _, data = signed_envelope(net, message_id="once-only")
    answer_of(await post_exchange(net, data))
    response, body = answer_of(await post_exchange(net, data))
    assert response.status == 500
    assert json.loads(body)["type"] == "Server.ServerProxy.DuplicateMessageId"
    assert ("X-Road-Error", "Server.ServerProxy.DuplicateMessageId") in response.headers
    await assert_still_serving(net)


async def test_refuses_tls_peer_that_is_not_a_registered_node(net: Network, tmp_path: Path) -> None:
    stranger = net.pki.authentication("IQ/GOV/HJC/ss1")
    _, data = signed_envelope(net)
    reply = await post_exchange(net, data, ctx=net.node_client_context(stranger, tmp_path))
    assert reply.status == 500
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.SslAuthenticationFailed"
    await assert_still_serving(net)


async def test_refuses_client_the_sending_node_does_not_host(net: Network) -> None:
    _, data = signed_envelope(net, client=PROVIDER, signer=net.provider_signers.signers[NDC])
    response, body = answer_of(await post_exchange(net, data))
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
    _, data = signed_envelope(net, signer=SoftwareSigner(expired.key, expired.cert))
    reply = await post_exchange(net, data)
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.CertValidityTime"
    await assert_still_serving(net)


async def test_refuses_signature_of_another_member(net: Network) -> None:
    other = net.pki.signing("IQ/GOV/MOH")
    _, data = signed_envelope(net, signer=SoftwareSigner(other.key, other.cert))
    reply = await post_exchange(net, data)
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.IncorrectCertificate"


async def test_refuses_certificate_not_issued_for_signing(net: Network) -> None:
    _, data = signed_envelope(
        net, signer=SoftwareSigner(net.consumer_auth.key, net.consumer_auth.cert)
    )
    reply = await post_exchange(net, data)
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.IncorrectCertificate"


async def test_refuses_certificate_of_an_unapproved_ca(net: Network) -> None:
    rogue = FixturePki.create(now=net.clock.now, cn="Rogue CA").signing(str(HJC))
    _, data = signed_envelope(net, signer=SoftwareSigner(rogue.key, rogue.cert))
    reply = await post_exchange(net, data)
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidCertPath"


async def test_refuses_other_paths_methods_types_and_sizes(net: Network) -> None:
    _, data = signed_envelope(net)
    reply = await post_exchange(net, data, path="/other")
    assert (reply.status, reply.headers["X-Road-Error"]) == (
        404,
        "Server.ServerProxy.InvalidRequest",
    )
    reply = await post_exchange(net, b"", method="GET")
    assert (reply.status, reply.headers["X-Road-Error"]) == (
        405,
        "Server.ServerProxy.InvalidHttpMethod",
    )
    reply = await post_exchange(net, data, content_type="application/json")
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidContentType"
    reply = await post_exchange(net, data + b"x" * (2 * MAX_BODY + 1024 * 1024))
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.RequestTooLarge"
    reply = await post_exchange(net, b"JISR/T1\n\x01\x00\x00\x00\x05hello")
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.InvalidMessage"
    await assert_still_serving(net)
