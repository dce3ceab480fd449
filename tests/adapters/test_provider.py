from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from lxml import etree
from structlog.testing import capture_logs

from adapters.provider import (
    ProviderRequest,
    SoapProvider,
    build_fault,
    build_response,
    parse_request,
)
from gateway.faults import FaultError, client_fault
from gateway.identifiers import ServiceId
from tests.adapters.soap_messages import CONSUMER, SOAP_ENV_NS, parse, soap_request

NS = "urn:test:population"
SERVICE = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen", "v1")


def _fault_code(data: bytes) -> str:
    with pytest.raises(FaultError) as caught:
        parse_request(data)
    return caught.value.fault_code


def test_reads_headers_and_operation_of_a_request() -> None:
    request = parse_request(soap_request(SERVICE, NS, {"nationalId": "198503141027"}))
    assert request.headers.client == CONSUMER
    assert request.headers.service == SERVICE
    assert request.headers.id == "msg-0001"
    assert request.headers.user_id == "IQ198503141027"
    assert request.headers.issue == "HJC-case-2026-118"
    assert request.operation == "getCitizen"
    assert request.require_text("nationalId") == "198503141027"


def test_response_echoes_the_request_header_block_in_order() -> None:
    data = soap_request(SERVICE, NS, {"nationalId": "198503141027"})
    request = parse_request(data)
    body = request.response_element()
    response = parse(build_response(request, body))
    sent = etree.fromstring(data).find(f"{{{SOAP_ENV_NS}}}Header")
    echoed = response.find(f"{{{SOAP_ENV_NS}}}Header")
    assert sent is not None
    assert echoed is not None
    assert [etree.tostring(e, method="c14n") for e in echoed] == [
        etree.tostring(e, method="c14n") for e in sent
    ]
    names = [etree.QName(e).localname for e in echoed]
    assert names == ["client", "service", "userId", "id", "issue", "protocolVersion"]
    result = response.find(f"{{{SOAP_ENV_NS}}}Body/{{{NS}}}getCitizenResponse")
    assert result is not None


def test_refuses_body_element_that_does_not_match_the_service_code() -> None:
    data = soap_request(SERVICE, NS, {"nationalId": "1"}, operation="getPerson")
    assert _fault_code(data) == "Client.InconsistentHeaders"


def test_refuses_missing_protocol_version() -> None:
    data = soap_request(SERVICE, NS, {}).replace(
        b"<xrd:protocolVersion>4.0</xrd:protocolVersion>", b""
    )
    assert _fault_code(data) == "Client.MissingHeaderField"


def test_refuses_wrong_protocol_version() -> None:
    data = soap_request(SERVICE, NS, {}).replace(b">4.0<", b">3.1<")
    assert _fault_code(data) == "Client.InvalidProtocolVersion"


def test_refuses_duplicate_header_field() -> None:
    data = soap_request(SERVICE, NS, {}).replace(
        b"<xrd:id>msg-0001</xrd:id>", b"<xrd:id>msg-0001</xrd:id><xrd:id>msg-0002</xrd:id>"
    )
    assert _fault_code(data) == "Client.DuplicateHeaderField"


def test_refuses_message_without_header() -> None:
    data = (
        f'<s:Envelope xmlns:s="{SOAP_ENV_NS}"><s:Body><getCitizen xmlns="{NS}"/></s:Body>'
        "</s:Envelope>"
    ).encode()
    assert _fault_code(data) == "Client.MissingHeader"


def test_refuses_client_without_object_type() -> None:
    data = soap_request(SERVICE, NS, {}).replace(b' id:objectType="SUBSYSTEM"', b"")
    assert _fault_code(data) == "Client.InvalidXml"


def test_refuses_identifier_with_forbidden_characters() -> None:
    data = soap_request(SERVICE, NS, {}).replace(b">HJC<", b">H J C<")
    assert _fault_code(data) == "Client.InvalidClientIdentifier"


def test_refuses_doctype_before_parsing() -> None:
    data = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + soap_request(SERVICE, NS, {}).split(b"?>", 1)[1]
    )
    assert _fault_code(data) == "Client.InvalidXml"


def test_refuses_message_over_the_size_limit() -> None:
    with pytest.raises(FaultError) as caught:
        parse_request(soap_request(SERVICE, NS, {}), max_bytes=100)
    assert caught.value.fault_code == "Client.RequestTooLarge"
    assert caught.value.http_status == 413


def test_refuses_text_that_is_not_xml() -> None:
    assert _fault_code(b"hello") == "Client.InvalidSoap"


def test_refuses_content_type_other_than_soap() -> None:
    with pytest.raises(FaultError) as caught:
        parse_request(soap_request(SERVICE, NS, {}), "application/json")
    assert caught.value.fault_code == "Client.InvalidContentType"


def test_fault_carries_code_message_and_detail_id() -> None:
    fault = client_fault("InvalidBody", "nationalId is missing")
    root = parse(build_fault(fault))
    element = root.find(f"{{{SOAP_ENV_NS}}}Body/{{{SOAP_ENV_NS}}}Fault")
    assert element is not None
    assert element.findtext("faultcode") == "Client.InvalidBody"
    assert element.findtext("faultstring") == "nationalId is missing"
    assert element.findtext("detail/faultDetail") == fault.detail


async def test_failing_operation_becomes_a_server_fault_with_a_log_id() -> None:
    async def broken(request: ProviderRequest) -> etree._Element:
        raise OSError("legacy database at 10.0.0.7 is down")

    app = web.Application()
    app.router.add_post("/soap", SoapProvider(NS, {"getCitizen": broken}).handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/soap"
        data = soap_request(SERVICE, NS, {"nationalId": "198503141027"})
        with capture_logs() as logs:
            async with (
                aiohttp.ClientSession() as session,
                session.post(url, data=data, headers={"Content-Type": "text/xml"}) as response,
            ):
                status, body = response.status, await response.read()
    finally:
        await runner.cleanup()
    assert status == 500
    fault = parse(body).find(f"{{{SOAP_ENV_NS}}}Body/{{{SOAP_ENV_NS}}}Fault")
    assert fault is not None
    assert fault.findtext("faultcode") == "Server.InternalError"
    assert "10.0.0.7" not in (fault.findtext("faultstring") or "")
    failures = [entry for entry in logs if entry["event"] == "operation_failed"]
    assert failures[0]["detail"] == fault.findtext("detail/faultDetail")
