"""Service metadata through two real nodes: listClients, method lists and descriptions."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from gateway.identifiers import ID_NS, XROAD_NS, ServiceId
from gateway.multipart import parse_multipart
from gateway.soap import SOAP_ENV_NS, build_request, parse_soap_response
from gateway.xml_safety import parse_xml
from security_server.metaservices import WSDL_ADDRESS_PLACEHOLDER
from tests.security_server.fakes import (
    CONSUMER,
    OPENAPI,
    PROVIDER,
    Network,
    call,
    rest,
    soap,
    two_nodes,
)

META = "/r1/IQ/GOV/NDC/population"


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    async with two_nodes(tmp_path) as network:
        yield network


def _codes(reply_body: bytes) -> list[str]:
    return [s["service_code"] for s in json.loads(reply_body)["service"]]


def _meta_soap(code: str, inner: str = "") -> bytes:
    return build_request(
        CONSUMER,
        ServiceId.for_client(PROVIDER, code),
        id=str(uuid.uuid4()),
        body_element_xml=f'<xrd:{code} xmlns:xrd="{XROAD_NS}">{inner}</xrd:{code}>',
    )


def _soap_service_codes(body: bytes) -> list[str]:
    root = parse_xml(body, max_bytes=1_000_000)
    answer = root.find(f"{{{SOAP_ENV_NS}}}Body")
    assert answer is not None
    return [e.text or "" for e in answer.iter(f"{{{ID_NS}}}serviceCode")]


async def test_list_clients_answers_xml_and_json_from_the_global_configuration(
    net: Network,
) -> None:
    reply = await call(net.client_url + "/listClients")
    assert reply.status == 200
    root = parse_xml(reply.body, max_bytes=1_000_000)
    assert root.tag == f"{{{XROAD_NS}}}clientList"
    codes = [e.text for e in root.iter(f"{{{ID_NS}}}subsystemCode")]
    assert codes == ["inheritance", "courts", "archive", "population"]
    reply = await call(net.client_url + "/listClients", headers={"Accept": "application/json"})
    members = json.loads(reply.body)["member"]
    assert {"National Data Centre", "Higher Judicial Council"} == {m["name"] for m in members}
    reply = await call(net.client_url + "/listClients?xRoadInstance=EE")
    assert parse_xml(reply.body, max_bytes=1_000_000).find(f"{{{XROAD_NS}}}member") is None


async def test_rest_list_methods_lists_every_rest_service_of_the_provider(net: Network) -> None:
    reply = await rest(net, f"{META}/listMethods")
    assert reply.status == 200, reply
    assert sorted(_codes(reply.body)) == sorted(
        [
            "getCitizen",
            "getOpenCitizen",
            "slowService",
            "refusedService",
            "secretService",
            "closedService",
        ]
    )
    assert reply.headers["X-Road-Request-Hash"]


async def test_rest_allowed_methods_lists_only_what_the_client_may_call(net: Network) -> None:
    reply = await rest(net, f"{META}/allowedMethods")
    services = json.loads(reply.body)["service"]
    assert "secretService" not in [s["service_code"] for s in services]
    open_citizen = next(s for s in services if s["service_code"] == "getOpenCitizen")
    assert open_citizen["service_type"] == "OPENAPI"
    assert open_citizen["endpoint_list"] == [{"method": "GET", "path": "/citizens/*"}]


async def test_rest_get_openapi_returns_the_description(net: Network) -> None:
    reply = await rest(net, f"{META}/getOpenAPI?serviceCode=getOpenCitizen")
    assert reply.status == 200
    assert reply.body == OPENAPI
    reply = await rest(net, f"{META}/getOpenAPI?serviceCode=secretService")
    assert reply.error == "Server.ServerProxy.UnknownService"


async def test_soap_list_and_allowed_methods_come_from_the_provider_catalogue(
    net: Network,
) -> None:
    soap_services = ["confusedSoap", "faultySoap", "garbageSoap", "getPerson"]
    for code, expected in (
        ("listMethods", sorted([*soap_services, "secretSoap"])),
        ("allowedMethods", soap_services),
    ):
        request = _meta_soap(code)
        reply = await soap(net, request)
        assert reply.status == 200, reply.body
        parsed = parse_soap_response(reply.body, reply.headers["Content-Type"], max_bytes=1_000_000)
        assert parsed.request_hash is not None  # type: ignore[union-attr]
        assert sorted(_soap_service_codes(reply.body)) == expected


async def test_soap_get_wsdl_returns_the_wsdl_without_the_internal_address(net: Network) -> None:
    request = _meta_soap("getWsdl", "<xrd:serviceCode>getPerson</xrd:serviceCode>")
    reply = await soap(net, request)
    assert reply.status == 200, reply.body
    content_type = reply.headers["Content-Type"]
    multipart = parse_multipart(reply.body, content_type, max_bytes=1_000_000)
    assert b"requestHash" in multipart.root.data
    wsdl = multipart.attachments[0].data
    assert b"10.0.0.7" not in wsdl
    assert WSDL_ADDRESS_PLACEHOLDER.encode() in wsdl
    assert etree.fromstring(wsdl).tag.endswith("definitions")


async def test_get_wsdl_of_a_service_the_client_may_not_call_is_refused(net: Network) -> None:
    request = _meta_soap("getWsdl", "<xrd:serviceCode>secretSoap</xrd:serviceCode>")
    reply = await soap(net, request)
    assert reply.fault_code == "Server.ServerProxy.AccessDenied"
    request = _meta_soap("getWsdl", "<xrd:serviceCode>noSuchService</xrd:serviceCode>")
    reply = await soap(net, request)
    assert reply.fault_code == "Server.ServerProxy.UnknownService"
