"""The sample national services over real HTTP on 127.0.0.1 (OS-assigned port)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zeep
from lxml import etree

from adapters.sample_services import (
    SAMPLE_SERVICES,
    RunningSampleServices,
    run_sample_services,
)
from gateway.identifiers import ServiceId
from tests.adapters.soap_messages import SOAP_ENV_NS, parse, soap_request


@pytest.fixture
async def services() -> AsyncIterator[RunningSampleServices]:
    running = await run_sample_services("127.0.0.1", 0)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
def http(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """The shared client session (tests/conftest.py), under the name these tests use."""
    return session


def _service_id(kind: str) -> ServiceId:
    service = SAMPLE_SERVICES[kind]
    return ServiceId.for_client(service.provider, service.service_code, "v1")


async def _soap(
    http: aiohttp.ClientSession, services: RunningSampleServices, kind: str, fields: dict[str, str]
) -> tuple[int, etree._Element]:
    service = SAMPLE_SERVICES[kind]
    data = soap_request(_service_id(kind), service.namespace, fields)
    async with http.post(
        service.soap_url(services.base_url),
        data=data,
        headers={"Content-Type": "text/xml; charset=utf-8"},
    ) as response:
        return response.status, parse(await response.read())


def _body(root: etree._Element) -> etree._Element:
    body = root.find(f"{{{SOAP_ENV_NS}}}Body")
    assert body is not None
    return body[0]


def _fields(element: etree._Element) -> dict[str, Any]:
    return {etree.QName(child).localname: child.text for child in element}


async def test_ndc_rest_returns_the_civil_record(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    async with http.get(services.url("ndc") + "/citizens/198503141027") as response:
        assert response.status == 200
        record = await response.json()
    assert record["fullNameLatin"] == "Ahmed Ali Hussein Al-Jubouri"
    assert record["fullNameAr"] == "أحمد علي حسين الجبوري"
    assert record["motherNameLatin"] == "Fatima Kadhim Jassim"
    assert record["lifeStatus"] == "alive"


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/ndc/citizens/999999999999", 404, "not_found"),
        ("/ndc/citizens/12345", 400, "invalid_national_id"),
        ("/moh/death-records/198503141027", 404, "not_found"),
        ("/moh/death-records/abc", 400, "invalid_national_id"),
        ("/mohesr/documents/not-a-number", 400, "invalid_document_number"),
    ],
)
async def test_rest_refuses_unknown_and_malformed_ids_with_json_errors(
    services: RunningSampleServices,
    http: aiohttp.ClientSession,
    path: str,
    status: int,
    error: str,
) -> None:
    async with http.get(services.base_url + path) as response:
        assert response.status == status
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["error"] == error
    assert body["message"]


async def test_ndc_soap_returns_record_and_echoes_xroad_headers(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    status, root = await _soap(http, services, "ndc", {"nationalId": "194902170054"})
    assert status == 200
    header = root.find(f"{{{SOAP_ENV_NS}}}Header")
    assert header is not None
    assert [etree.QName(e).localname for e in header] == [
        "client",
        "service",
        "userId",
        "id",
        "issue",
        "protocolVersion",
    ]
    assert header[3].text == "msg-0001"
    assert header[2].text == "IQ198503141027"
    response = _body(root)
    assert etree.QName(response).localname == "getCitizenResponse"
    citizen = _fields(response[0])
    assert citizen["lifeStatus"] == "deceased"
    assert citizen["dateOfDeath"] == "2025-08-19"


async def test_ndc_soap_answers_unknown_citizen_with_business_error(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    status, root = await _soap(http, services, "ndc", {"nationalId": "999999999999"})
    assert status == 200
    error = _body(root)[0]
    assert etree.QName(error).localname == "error"
    assert _fields(error)["code"] == "NOT_FOUND"


async def test_soap_refuses_malformed_national_id_with_fault(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    status, root = await _soap(http, services, "moh", {"nationalId": "12"})
    assert status == 500
    fault = _body(root)
    assert fault.findtext("faultcode") == "Client.InvalidBody"


async def test_soap_refuses_wrong_content_type(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        SAMPLE_SERVICES["ndc"].soap_url(services.base_url),
        data=b"{}",
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 500
        root = parse(await response.read())
    assert _body(root).findtext("faultcode") == "Client.InvalidContentType"


async def test_moh_rest_and_soap_return_the_death_record(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    async with http.get(services.url("moh") + "/death-records/197502280617") as response:
        assert response.status == 200
        record = await response.json()
    assert record["causeCategory"] == "accident"
    assert record["registeringCourt"] == "Najaf Personal Status Court"
    status, root = await _soap(http, services, "moh", {"nationalId": "197502280617"})
    assert status == 200
    assert _fields(_body(root)[0])["forensicReportNumber"] == "NJF-FM-2026-00412"


async def test_moh_soap_answers_living_citizen_with_business_error(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    status, root = await _soap(http, services, "moh", {"nationalId": "198503141027"})
    assert status == 200
    assert _fields(_body(root)[0])["code"] == "NOT_FOUND"


async def test_mohesr_rest_gives_authentic_verdict_with_details(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    async with http.get(services.url("mohesr") + "/documents/MUS-2016-002391") as response:
        assert response.status == 200
        verdict = await response.json()
    assert verdict["verdict"] == "authentic"
    assert verdict["verdictAr"] == "صحيح الصدور"
    assert verdict["document"]["university"] == "Al-Mustansiriya University"
    assert verdict["document"]["degree"] == "master"
    assert verdict["document"]["graduationYear"] == 2016


async def test_mohesr_rest_reports_unknown_document_as_not_found(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    async with http.get(services.url("mohesr") + "/documents/UOB-1999-000001") as response:
        assert response.status == 404
        verdict = await response.json()
    assert verdict["verdict"] == "not_found"
    assert "document" not in verdict


@pytest.mark.parametrize(
    ("national_id", "verdict"),
    [("198503141027", "authentic"), ("199207020583", "mismatch")],
)
async def test_mohesr_verify_checks_the_holder_and_hides_details_on_mismatch(
    services: RunningSampleServices, http: aiohttp.ClientSession, national_id: str, verdict: str
) -> None:
    async with http.post(
        services.url("mohesr") + "/documents/verify",
        json={"documentNumber": "UOB-2007-031245", "nationalId": national_id},
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert body["verdict"] == verdict
    assert ("document" in body) == (verdict == "authentic")


async def test_mohesr_verify_refuses_body_that_is_not_json(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        services.url("mohesr") + "/documents/verify",
        data=b"documentNumber=UOB-2007-031245",
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


async def test_mohesr_soap_verdicts(
    services: RunningSampleServices, http: aiohttp.ClientSession
) -> None:
    _, root = await _soap(http, services, "mohesr", {"documentNumber": "KUF-2001-004410"})
    response = _body(root)
    assert _fields(response)["verdict"] == "authentic"
    assert _fields(response[3])["university"] == "University of Kufa"
    _, root = await _soap(
        http,
        services,
        "mohesr",
        {"documentNumber": "KUF-2001-004410", "nationalId": "198503141027"},
    )
    assert _fields(_body(root))["verdict"] == "mismatch"
    assert len(_body(root)) == 3


@pytest.mark.parametrize("kind", sorted(SAMPLE_SERVICES))
async def test_wsdl_is_served_and_loads_in_zeep_with_the_service_code_as_only_operation(
    services: RunningSampleServices, http: aiohttp.ClientSession, kind: str, tmp_path: Path
) -> None:
    service = SAMPLE_SERVICES[kind]
    async with http.get(services.url(kind) + "/wsdl") as response:
        assert response.status == 200
        served = await response.read()
    assert served == service.wsdl()
    path = tmp_path / service.wsdl_file
    path.write_bytes(served)
    client = zeep.Client(  # type: ignore[no-untyped-call]  # zeep has no annotations
        str(path),
        settings=zeep.Settings(strict=True, forbid_dtd=True, forbid_external=True),
    )
    operations = {name for binding in client.wsdl.bindings.values() for name in binding._operations}
    assert operations == {service.service_code}
    address = etree.fromstring(served).find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address is not None
    assert address.get("location") == "http://example.org/xroad-endpoint"


@pytest.mark.parametrize(
    ("kind", "paths"),
    [
        ("ndc", {"/citizens/{nationalId}"}),
        ("mohesr", {"/documents/{documentNumber}", "/documents/verify"}),
        ("moh", {"/death-records/{nationalId}"}),
    ],
)
async def test_openapi_is_served_with_the_service_paths_and_resolvable_refs(
    services: RunningSampleServices, http: aiohttp.ClientSession, kind: str, paths: set[str]
) -> None:
    async with http.get(services.url(kind) + "/openapi.json") as response:
        assert response.status == 200
        document = json.loads(await response.read())
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == paths
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in document["components"]["schemas"]


_XSD = "http://www.w3.org/2001/XMLSchema"


def _wsdl_schema(kind: str, namespace: str, tmp_path: Path) -> etree.XMLSchema:
    """The WSDL's inline schema for ``namespace``, with its imports resolved to local files."""
    root = etree.fromstring(SAMPLE_SERVICES[kind].wsdl())
    schemas = list(root.iter(f"{{{_XSD}}}schema"))
    files = {s.get("targetNamespace"): f"schema{n}.xsd" for n, s in enumerate(schemas)}
    for schema in schemas:
        document = etree.fromstring(etree.tostring(schema))
        for imported in document.iter(f"{{{_XSD}}}import"):
            imported.set("schemaLocation", files[imported.get("namespace")])
        (tmp_path / files[schema.get("targetNamespace")]).write_bytes(etree.tostring(document))
    return etree.XMLSchema(etree.parse(str(tmp_path / files[namespace])))


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("ndc", {"nationalId": "194902170054"}),
        ("ndc", {"nationalId": "198503141027"}),
        ("ndc", {"nationalId": "999999999999"}),
        ("mohesr", {"documentNumber": "MUS-2016-002391"}),
        ("mohesr", {"documentNumber": "MUS-2016-002391", "nationalId": "198503141027"}),
        ("mohesr", {"documentNumber": "MUS-1990-000001"}),
        ("moh", {"nationalId": "197502280617"}),
        ("moh", {"nationalId": "198503141027"}),
    ],
)
async def test_soap_responses_are_valid_against_the_wsdl_schema(
    services: RunningSampleServices,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    kind: str,
    fields: dict[str, str],
) -> None:
    schema = _wsdl_schema(kind, SAMPLE_SERVICES[kind].namespace, tmp_path)
    request = etree.fromstring(
        soap_request(_service_id(kind), SAMPLE_SERVICES[kind].namespace, fields)
    )
    request_body = request.find(f"{{{SOAP_ENV_NS}}}Body")
    assert request_body is not None
    schema.assertValid(request_body[0])
    status, root = await _soap(http, services, kind, fields)
    assert status == 200
    schema.assertValid(_body(root))


@pytest.mark.parametrize("kind", sorted(SAMPLE_SERVICES))
def test_request_headers_are_valid_against_the_wsdl_xroad_schema(kind: str, tmp_path: Path) -> None:
    schema = _wsdl_schema(kind, "http://x-road.eu/xsd/xroad.xsd", tmp_path)
    request = etree.fromstring(soap_request(_service_id(kind), "urn:x", {}))
    header = request.find(f"{{{SOAP_ENV_NS}}}Header")
    assert header is not None
    for element in header:
        schema.assertValid(element)
