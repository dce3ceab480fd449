"""The zeep client against the sample SOAP services directly (they echo headers, as a node
does) and through a small fake node that adds ``requestHash`` or answers with faults."""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from lxml import etree

from adapters.errors import NodeUnreachableError, UnexpectedResponseError
from adapters.provider import build_fault, parse_request
from adapters.sample_services import SAMPLE_SERVICES, RunningSampleServices, run_sample_services
from adapters.soap_client import XRoadSoapClient
from config.errors import ValidationError
from gateway.faults import FaultError, server_proxy_fault
from gateway.identifiers import XROAD_NS, ServiceId, SubsystemId
from tests.adapters.soap_messages import SOAP_ENV_NS, parse

CLIENT = SubsystemId("IQ", "GOV", "HJC", "inheritance")
BEHAVIOUR: web.AppKey[dict[str, str]] = web.AppKey("behaviour", dict)


def _wsdl(kind: str, tmp_path: Path) -> Path:
    service = SAMPLE_SERVICES[kind]
    path = tmp_path / service.wsdl_file
    path.write_bytes(service.wsdl())
    return path


def _service(kind: str) -> ServiceId:
    service = SAMPLE_SERVICES[kind]
    return ServiceId.for_client(service.provider, service.service_code, "v1")


@pytest.fixture
async def samples() -> AsyncIterator[RunningSampleServices]:
    running = await run_sample_services("127.0.0.1", 0)
    try:
        yield running
    finally:
        await running.close()


async def _fake_node(request: web.Request) -> web.Response:
    """Forward to the NDC sample service, then act as the provider's node would."""
    behaviour = request.app[BEHAVIOUR]
    data = await request.read()
    if behaviour["mode"] == "access-denied":
        fault = server_proxy_fault("AccessDenied", "IQ/GOV/HJC/inheritance may not call getCitizen")
        text = build_fault(fault).replace(b"<faultcode>", b"<faultcode>SOAP-ENV:")
        return web.Response(body=text, status=500, content_type="text/xml")
    if behaviour["mode"] == "html":
        return web.Response(text="<html>bad gateway</html>", status=502, content_type="text/html")
    if behaviour["mode"] == "text":
        return web.Response(text="bad gateway", status=502)
    parse_request(data)  # a node checks the request before forwarding it
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            behaviour["upstream"], data=data, headers={"Content-Type": "text/xml"}
        ) as upstream,
    ):
        root = parse(await upstream.read())
    header = root.find(f"{{{SOAP_ENV_NS}}}Header")
    assert header is not None
    if behaviour["mode"] == "request-hash":
        digest = etree.SubElement(header, f"{{{XROAD_NS}}}requestHash")
        digest.set("algorithmId", "http://www.w3.org/2001/04/xmlenc#sha512")
        digest.text = "c2hhNTEyLW9mLXRoZS1yZXF1ZXN0"
    elif behaviour["mode"] == "wrong-id":
        element = header.find(f"{{{XROAD_NS}}}id")
        assert element is not None
        element.text = "someone-else"
    return web.Response(body=etree.tostring(copy.deepcopy(root)), content_type="text/xml")


@pytest.fixture
async def node(samples: RunningSampleServices) -> AsyncIterator[tuple[str, dict[str, str]]]:
    app = web.Application()
    app[BEHAVIOUR] = {
        "mode": "request-hash",
        "upstream": SAMPLE_SERVICES["ndc"].soap_url(samples.base_url),
    }
    app.router.add_post("/", _fake_node)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", app[BEHAVIOUR]
    finally:
        await runner.cleanup()


async def test_call_sends_xroad_headers_and_reads_the_echo(
    samples: RunningSampleServices, tmp_path: Path
) -> None:
    client = XRoadSoapClient(
        _wsdl("ndc", tmp_path),
        SAMPLE_SERVICES["ndc"].soap_url(samples.base_url),
        CLIENT,
        _service("ndc"),
        user_id="IQ-judge-31",
    )
    result = await client.acall(nationalId="198306110429", issue="inheritance-2026-118")
    assert result.body["citizen"]["fullNameLatin"] == "Sara Kadhim Jassim Al-Tamimi"
    assert result.body["citizen"]["familyBookNumber"] == "20871"
    assert result.headers.client == CLIENT
    assert result.headers.service == _service("ndc")
    assert result.headers.user_id == "IQ-judge-31"
    assert result.headers.issue == "inheritance-2026-118"
    assert result.headers.protocol_version == "4.0"
    uuid.UUID(result.headers.id)
    assert parse(result.raw).tag == f"{{{SOAP_ENV_NS}}}Envelope"
    second = await client.acall(nationalId="198306110429")
    assert second.headers.id != result.headers.id


async def test_given_message_id_is_sent_and_echoed(
    samples: RunningSampleServices, tmp_path: Path
) -> None:
    client = XRoadSoapClient(
        _wsdl("moh", tmp_path),
        SAMPLE_SERVICES["moh"].soap_url(samples.base_url),
        "IQ/GOV/NPA/pensions",
        "IQ/GOV/MOH/forensic/getDeathRecord/v1",
    )
    result = await client.acall(nationalId="195410040233", message_id="npa-stop-0007")
    assert result.headers.id == "npa-stop-0007"
    assert result.body["deathRecord"]["registeringCourt"] == "Basra Personal Status Court"
    missing = await client.acall(nationalId="198503141027")
    assert missing.body["error"]["code"] == "NOT_FOUND"


async def test_verify_document_gives_the_verdict(
    samples: RunningSampleServices, tmp_path: Path
) -> None:
    client = XRoadSoapClient(
        _wsdl("mohesr", tmp_path),
        SAMPLE_SERVICES["mohesr"].soap_url(samples.base_url),
        CLIENT,
        _service("mohesr"),
    )
    result = await client.acall(documentNumber="UOB-2019-000187", nationalId="199001090318")
    assert result.body["verdict"] == "authentic"
    assert result.body["document"]["degree"] == "doctorate"
    mismatch = await client.acall(documentNumber="UOB-2019-000187", nationalId="198503141027")
    assert mismatch.body["verdict"] == "mismatch"
    assert mismatch.body["document"] is None


async def test_provider_fault_is_raised_as_fault_error(
    samples: RunningSampleServices, tmp_path: Path
) -> None:
    client = XRoadSoapClient(
        _wsdl("ndc", tmp_path),
        SAMPLE_SERVICES["ndc"].soap_url(samples.base_url),
        CLIENT,
        _service("ndc"),
    )
    with pytest.raises(FaultError) as caught:
        await client.acall(nationalId="12")
    assert caught.value.fault_code == "Client.InvalidBody"
    uuid.UUID(caught.value.detail)


async def test_reads_request_hash_added_by_the_node(
    node: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    client = XRoadSoapClient(_wsdl("ndc", tmp_path), node[0], CLIENT, _service("ndc"))
    result = await client.acall(nationalId="199207020583")
    assert result.body["citizen"]["residenceGovernorate"] == "Basra"
    assert result.headers.request_hash == "c2hhNTEyLW9mLXRoZS1yZXF1ZXN0"
    assert result.headers.request_hash_algorithm == "http://www.w3.org/2001/04/xmlenc#sha512"


async def test_node_fault_code_loses_its_namespace_prefix(
    node: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    node[1]["mode"] = "access-denied"
    client = XRoadSoapClient(_wsdl("ndc", tmp_path), node[0], CLIENT, _service("ndc"))
    with pytest.raises(FaultError) as caught:
        await client.acall(nationalId="199207020583")
    assert caught.value.fault_code == "Server.ServerProxy.AccessDenied"
    assert "may not call" in caught.value.message


async def test_refuses_response_that_echoes_another_message_id(
    node: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    node[1]["mode"] = "wrong-id"
    client = XRoadSoapClient(_wsdl("ndc", tmp_path), node[0], CLIENT, _service("ndc"))
    with pytest.raises(UnexpectedResponseError, match="xrd:id is 'someone-else'") as caught:
        await client.acall(nationalId="199207020583")
    assert caught.value.fault_code == "Server.ClientProxy.InconsistentResponse"


@pytest.mark.parametrize(
    ("mode", "message"), [("html", "instead of a SOAP message"), ("text", "HTTP 502")]
)
async def test_non_soap_answer_is_an_unexpected_response(
    node: tuple[str, dict[str, str]], tmp_path: Path, mode: str, message: str
) -> None:
    node[1]["mode"] = mode
    client = XRoadSoapClient(_wsdl("ndc", tmp_path), node[0], CLIENT, _service("ndc"))
    with pytest.raises(UnexpectedResponseError, match=message):
        await client.acall(nationalId="199207020583")


async def test_unreachable_node_is_reported(tmp_path: Path) -> None:
    client = XRoadSoapClient(
        _wsdl("ndc", tmp_path), "http://127.0.0.1:9", CLIENT, _service("ndc"), timeout=5
    )
    with pytest.raises(NodeUnreachableError, match=r"127\.0\.0\.1:9/"):
        await client.acall(nationalId="199207020583")


def test_refuses_service_code_the_wsdl_does_not_define(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no operation 'getHousehold'"):
        XRoadSoapClient(
            _wsdl("ndc", tmp_path),
            "http://127.0.0.1:9",
            CLIENT,
            "IQ/GOV/NDC/population/getHousehold",
        )


def test_refuses_arguments_the_operation_does_not_take(tmp_path: Path) -> None:
    client = XRoadSoapClient(_wsdl("ndc", tmp_path), "http://127.0.0.1:9", CLIENT, _service("ndc"))
    with pytest.raises(ValidationError, match="unexpected keyword argument 'passport'"):
        client.call(passport="A1234567")


def test_refuses_wsdl_with_doctype(tmp_path: Path) -> None:
    path = tmp_path / "evil.wsdl"
    path.write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + SAMPLE_SERVICES["ndc"].wsdl().split(b"?>", 1)[1]
    )
    with pytest.raises(ValidationError, match="cannot be used"):
        XRoadSoapClient(path, "http://127.0.0.1:9", CLIENT, _service("ndc"))
