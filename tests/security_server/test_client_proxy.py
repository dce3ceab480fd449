"""The consumer node refuses bad calls with X-Road's fault codes and keeps serving."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from multidict import CIMultiDict

from certs.status import CertStatus
from gateway.identifiers import SubsystemId
from tests.security_server.fakes import (
    CERT_ONLY,
    CITIZEN_PATH,
    CONSUMER,
    HJC,
    HTTPS_ONLY,
    NDC,
    PROVIDER_FAULT,
    PROVIDER_NODE,
    Network,
    assert_still_serving,
    call,
    der,
    rest,
    soap,
    soap_request,
    two_nodes,
)

MAX_BODY = 64 * 1024


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    async with two_nodes(tmp_path, max_body_bytes=MAX_BODY) as network:
        yield network


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


# ---- SOAP messages the client got wrong ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"<SOAP-ENV:Envelope", "Client.InvalidSoap"),
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
            b'"&lol;&lol;&lol;">]><x>&lol2;</x>',
            "Client.InvalidXml",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b"<x>&xxe;</x>",
            "Client.InvalidXml",
        ),
    ],
    ids=["malformed", "entity-bomb", "external-entity"],
)
async def test_refuses_unsafe_or_malformed_xml(net: Network, body: bytes, code: str) -> None:
    reply = await soap(net, body)
    assert reply.status == 500
    assert reply.fault_code == code
    assert not net.seen
    await assert_still_serving(net)


async def test_refuses_soap_without_client_header(net: Network) -> None:
    request = soap_request()
    start = request.index(b"<xrd:client")
    end = request.index(b"</xrd:client>") + len(b"</xrd:client>")
    reply = await soap(net, request[:start] + request[end:])
    assert reply.fault_code == "Client.MissingHeaderField"
    await assert_still_serving(net)


async def test_refuses_soap_with_duplicated_header(net: Network) -> None:
    request = soap_request()
    reply = await soap(net, _replace(request, b"<xrd:id>", b"<xrd:id>twice</xrd:id><xrd:id>"))
    assert reply.fault_code == "Client.DuplicateHeaderField"
    await assert_still_serving(net)


async def test_refuses_wrong_soap_protocol_version(net: Network) -> None:
    request = soap_request()
    reply = await soap(net, _replace(request, b">4.0<", b">3.1<"))
    assert reply.fault_code == "Client.InvalidProtocolVersion"
    await assert_still_serving(net)


async def test_refuses_wrong_rest_protocol_version(net: Network) -> None:
    reply = await rest(net, "/r2/IQ/GOV/NDC/population/getCitizen")
    assert reply.status == 400
    assert reply.error == "Client.InvalidProtocolVersion"
    assert json.loads(reply.body)["type"] == "Client.InvalidProtocolVersion"
    await assert_still_serving(net)


async def test_refuses_illegal_identifier_characters(net: Network) -> None:
    reply = await rest(net, CITIZEN_PATH, headers={"X-Road-Client": "IQ/GOV/HJC/in%20heritance"})
    assert reply.error == "Client.InvalidClientIdentifier"
    request = _replace(soap_request(), b">inheritance<", b">in heritance!<")
    assert (await soap(net, request)).fault_code == "Client.InvalidClientIdentifier"
    await assert_still_serving(net)


async def test_refuses_body_over_the_size_limit(net: Network) -> None:
    reply = await rest(net, CITIZEN_PATH, "POST", data=b"x" * (MAX_BODY + 1))
    assert reply.status == 413
    assert reply.error == "Client.RequestTooLarge"
    reply = await soap(net, soap_request().replace(b"<id>7</id>", b"x" * MAX_BODY))
    assert reply.fault_code == "Client.RequestTooLarge"
    await assert_still_serving(net)


# ---- who may call, and where to ---------------------------------------------------------------


async def test_refuses_client_not_registered_on_this_node(net: Network) -> None:
    reply = await rest(net, CITIZEN_PATH, headers={"X-Road-Client": "IQ/GOV/NDC/population"})
    assert reply.status == 500
    assert reply.error == "Server.ClientProxy.UnknownMember"
    request = soap_request(client=SubsystemId("IQ", "GOV", "NDC", "population"))
    assert (await soap(net, request)).fault_code == "Server.ClientProxy.UnknownMember"
    await assert_still_serving(net)


async def test_refuses_provider_no_node_serves(net: Network) -> None:
    reply = await rest(net, "/r1/IQ/GOV/MOH/forensic/getDeathRecord")
    assert reply.error == "Server.ClientProxy.UnknownMember"
    await assert_still_serving(net)


async def test_refuses_security_server_that_does_not_serve_the_provider(net: Network) -> None:
    reply = await rest(net, CITIZEN_PATH, headers={"X-Road-Security-Server": "IQ/GOV/HJC/ss1"})
    assert reply.error == "Client.InvalidSecurityServer"
    reply = await rest(net, CITIZEN_PATH, headers={"X-Road-Security-Server": "IQ/GOV/NDC/ss1"})
    assert reply.status == 200


async def test_refuses_https_client_on_plain_http(net: Network) -> None:
    reply = await rest(net, CITIZEN_PATH, headers={"X-Road-Client": "IQ/GOV/HJC/courts"})
    assert reply.error == "Server.ClientProxy.SslAuthenticationFailed"
    await assert_still_serving(net)


async def test_refuses_to_exchange_with_outdated_global_configuration(net: Network) -> None:
    net.consumer_conf.outdated = True
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.OutdatedGlobalConf"
    assert (await soap(net, soap_request())).fault_code == "Server.ClientProxy.OutdatedGlobalConf"
    net.consumer_conf.outdated = False
    await assert_still_serving(net)


async def test_provider_node_with_outdated_configuration_refuses(net: Network) -> None:
    net.provider_conf.outdated = True
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ServerProxy.OutdatedGlobalConf"
    net.provider_conf.outdated = False
    await assert_still_serving(net)


# ---- what the provider's node answered ---------------------------------------------------------


async def test_unknown_service_is_reported_by_the_provider_node(net: Network) -> None:
    reply = await rest(net, "/r1/IQ/GOV/NDC/population/noSuchService")
    assert reply.status == 500
    assert reply.error == "Server.ServerProxy.UnknownService"
    assert json.loads(reply.body)["type"] == "Server.ServerProxy.UnknownService"
    reply = await soap(net, soap_request("noSuchService"))
    assert reply.fault_code == "Server.ServerProxy.UnknownService"
    await assert_still_serving(net)


async def test_access_denied_without_a_right(net: Network) -> None:
    reply = await rest(net, "/r1/IQ/GOV/NDC/population/secretService/x")
    assert reply.error == "Server.ServerProxy.AccessDenied"
    reply = await rest(net, "/r1/IQ/GOV/NDC/population/getOpenCitizen/other/1")
    assert reply.error == "Server.ServerProxy.AccessDenied"
    reply = await rest(net, "/r1/IQ/GOV/NDC/population/getOpenCitizen/citizens/1")
    assert reply.status == 200
    await assert_still_serving(net)


async def test_disabled_service_answers_with_its_notice(net: Network) -> None:
    reply = await rest(net, "/r1/IQ/GOV/NDC/population/closedService")
    assert reply.error == "Server.ServerProxy.ServiceDisabled"
    assert "until Sunday" in json.loads(reply.body)["message"]
    await assert_still_serving(net)


async def test_provider_timeout_is_service_failed(net: Network) -> None:
    reply = await rest(net, "/r1/IQ/GOV/NDC/population/slowService")
    assert reply.error == "Server.ServerProxy.ServiceFailed.IOError"
    await assert_still_serving(net)


async def test_unreachable_provider_is_network_error(net: Network) -> None:
    reply = await rest(net, "/r1/IQ/GOV/NDC/population/refusedService")
    assert reply.error == "Server.ServerProxy.ServiceFailed.NetworkError"
    await assert_still_serving(net)


async def test_provider_answering_garbage_is_invalid_soap(net: Network) -> None:
    reply = await soap(net, soap_request("garbageSoap"))
    assert reply.fault_code == "Server.ServerProxy.InvalidSoap"
    await assert_still_serving(net)


async def test_refuses_provider_whose_signing_certificate_is_revoked(net: Network) -> None:
    cert = net.provider_signers.signers[NDC].certificate
    net.statuses[cert.serial_number] = CertStatus(
        "revoked", revoked_at=net.clock.now - dt.timedelta(hours=1), reason="key_compromise"
    )
    net.provider_signers.ocsp[der(cert)] = net.ocsp_response(cert)
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CertValidation"
    assert "revoked" in json.loads(reply.body)["message"]
    del net.statuses[cert.serial_number]
    net.provider_signers.ocsp[der(cert)] = net.ocsp_response(cert)
    await assert_still_serving(net)


async def test_refuses_provider_whose_ocsp_response_is_stale(net: Network) -> None:
    net.clock.now += dt.timedelta(hours=2)
    try:
        reply = await rest(net, CITIZEN_PATH)
        # the consumer's own stapled response is stale too: the provider node refuses first
        assert reply.error == "Server.ServerProxy.CertValidation"
    finally:
        net.clock.now -= dt.timedelta(hours=2)
    await assert_still_serving(net)


# ---- connection types on the HTTPS port ---------------------------------------------------------


async def test_https_client_is_served_on_the_https_port(net: Network, tmp_path: Path) -> None:
    reply = await call(
        net.client_https_url + CITIZEN_PATH,
        headers={"X-Road-Client": str(HTTPS_ONLY)},
        ssl_context=net.is_https_context(tmp_path, with_cert=False),
    )
    assert reply.status == 200, reply


async def test_certificate_client_must_present_its_registered_certificate(
    net: Network, tmp_path: Path
) -> None:
    headers = {"X-Road-Client": str(CERT_ONLY)}
    url = net.client_https_url + CITIZEN_PATH
    reply = await call(
        url, headers=headers, ssl_context=net.is_https_context(tmp_path, with_cert=False)
    )
    assert reply.error == "Server.ClientProxy.SslAuthenticationFailed"
    reply = await call(
        url, headers=headers, ssl_context=net.is_https_context(tmp_path, with_cert=True)
    )
    assert reply.status == 200, reply
    net.is_cert = net.pki.issue("someone else", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    reply = await call(
        url, headers=headers, ssl_context=net.is_https_context(tmp_path, with_cert=True)
    )
    assert reply.error == "Server.ClientProxy.SslAuthenticationFailed"
    reply = await call(net.client_url + CITIZEN_PATH, headers=headers)
    assert reply.error == "Server.ClientProxy.SslAuthenticationFailed"
    await assert_still_serving(net)


async def test_refuses_when_the_node_has_no_signing_key_for_the_member(net: Network) -> None:
    signer = net.consumer_signers.signers.pop(HJC)
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CannotCreateSignature"
    net.consumer_signers.signers[HJC] = signer
    net.consumer_signers.ocsp.clear()
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CannotCreateSignature"
    net.install_signer(net.consumer_signers, HJC, net.pki.signing(str(HJC)))
    await assert_still_serving(net)


async def test_falls_back_to_another_node_serving_the_provider(tmp_path: Path) -> None:
    async with two_nodes(tmp_path, spare_node=True) as net:
        for _ in range(2):
            reply = await rest(net, CITIZEN_PATH + "/citizens/1")
            assert reply.status == 200, reply
        reply = await rest(net, CITIZEN_PATH, headers={"X-Road-Security-Server": "IQ/GOV/NDC/ss2"})
        assert reply.error == "Server.ClientProxy.NetworkError"
        await assert_still_serving(net)


async def test_refuses_provider_node_presenting_an_unregistered_certificate(net: Network) -> None:
    conf = net.consumer_conf.conf
    assert conf is not None
    impostor = net.pki.authentication(str(PROVIDER_NODE))
    servers = tuple(
        dataclasses.replace(s, auth_certs=(impostor.cert,)) if s.id == PROVIDER_NODE else s
        for s in conf.security_servers
    )
    net.consumer_conf.conf = dataclasses.replace(conf, security_servers=servers)
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.SslAuthenticationFailed"
    assert not net.seen
    net.consumer_conf.conf = conf
    await assert_still_serving(net)


async def test_soap_fault_of_the_provider_travels_back_unchanged(net: Network) -> None:
    reply = await soap(net, soap_request("faultySoap"))
    assert reply.status == 500
    assert reply.body == PROVIDER_FAULT
    await assert_still_serving(net)


async def test_provider_response_not_echoing_the_request_is_refused(net: Network) -> None:
    reply = await soap(net, soap_request("confusedSoap"))
    assert reply.fault_code == "Server.ServerProxy.InconsistentResponse"
    await assert_still_serving(net)


async def test_refuses_rest_call_without_or_with_twice_the_client_header(net: Network) -> None:
    url = net.client_url + CITIZEN_PATH
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 400
            assert response.headers["X-Road-Error"] == "Client.MissingHeaderField"
        twice = CIMultiDict([("X-Road-Client", str(CONSUMER)), ("X-Road-Client", str(CONSUMER))])
        async with session.get(url, headers=twice) as response:
            assert response.headers["X-Road-Error"] == "Client.DuplicateHeaderField"
    await assert_still_serving(net)


async def test_provider_refuses_consumer_whose_signing_certificate_is_revoked(
    net: Network,
) -> None:
    cert = net.consumer_signers.signers[HJC].certificate
    net.statuses[cert.serial_number] = CertStatus("revoked", revoked_at=net.clock.now)
    net.consumer_signers.ocsp[der(cert)] = net.ocsp_response(cert)
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ServerProxy.CertValidation"
    assert not net.seen
    del net.statuses[cert.serial_number]
    net.consumer_signers.ocsp[der(cert)] = net.ocsp_response(cert)
    await assert_still_serving(net)
