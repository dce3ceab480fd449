"""The REST client against a small fake node on 127.0.0.1 that forwards to the sample services."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.errors import NodeUnreachableError, UnexpectedResponseError
from adapters.rest_client import XRoadRestClient
from adapters.sample_services import RunningSampleServices, run_sample_services
from config.errors import ValidationError
from gateway.faults import FaultError
from gateway.identifiers import MemberId, ServiceId, SubsystemId

CLIENT = "IQ/GOV/NPA/pensions"
SEEN: web.AppKey[list[web.Request]] = web.AppKey("seen", list)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)

#: What the fake node routes where: service id path → path prefix on the sample server.
ROUTES = {
    "IQ/GOV/NDC/population/getCitizen": "/ndc",
    "IQ/GOV/MOHESR/certificates/verifyDocument": "/mohesr",
}


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"type": code, "message": message, "detail": "log-" + uuid.uuid4().hex[:8]}
    return web.json_response(body, status=status, headers={"X-Road-Error": code})


async def _list_clients(request: web.Request) -> web.Response:
    request.app[SEEN].append(request)
    members = [
        {
            "id": {
                "member_class": "GOV",
                "member_code": "NDC",
                "object_type": "MEMBER",
                "xroad_instance": request.query.get("xRoadInstance", "IQ"),
            },
            "name": "National Data Centre",
        },
        {
            "id": {
                "member_class": "GOV",
                "member_code": "NDC",
                "subsystem_code": "population",
                "object_type": "SUBSYSTEM",
                "xroad_instance": "IQ",
            },
            "name": "National Data Centre",
        },
    ]
    return web.json_response({"member": members})


def _listed(code: str, endpoints: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "xroad_instance": "IQ",
        "member_class": "GOV",
        "member_code": "NDC",
        "subsystem_code": "population",
        "object_type": "SERVICE",
        "service_code": code,
        "service_type": "OPENAPI",
        "endpoint_list": endpoints,
    }


async def _r1(request: web.Request) -> web.StreamResponse:
    request.app[SEEN].append(request)
    client = request.headers.get("X-Road-Client")
    if client is None:
        return _error(400, "Client.InvalidRequest", "X-Road-Client header is missing")
    if client.startswith("IQ/GOV/NOBODY/"):
        return _error(400, "Client.InvalidClientIdentifier", f"{client} is not registered")
    tail = request.match_info["tail"]
    parts = tail.split("/")
    service, rest = "/".join(parts[:5]), "/" + "/".join(parts[5:])
    answer_headers = {
        "X-Road-Client": client,
        "X-Road-Service": service,
        "X-Road-Id": request.headers.get("X-Road-Id", ""),
        "X-Road-Request-Id": "req-42",
        "X-Road-Request-Hash": "aGFzaA==",
    }
    if service == "IQ/GOV/NDC/population/brokenNode":
        return web.Response(
            text="node overloaded",
            status=503,
            headers={"X-Road-Error": "Server.ClientProxy.NetworkError"},
        )
    if service == "IQ/GOV/MOH/forensic/getDeathRecord":
        return _error(500, "Server.ServerProxy.AccessDenied", f"{client} may not call {service}")
    if parts[-1] in ("listMethods", "allowedMethods"):
        endpoints = [{"method": "GET", "path": "/citizens/*"}]
        body = {"service": [_listed("getCitizen", endpoints)]}
        if parts[-1] == "listMethods":
            body["service"].append(_listed("getHousehold", []))
        return web.json_response(body, headers=answer_headers)
    if parts[-1] == "getOpenAPI":
        if request.query.get("serviceCode") != "getCitizen":
            return _error(500, "Server.ServerProxy.UnknownService", "no such service")
        return web.Response(
            body=json.dumps({"openapi": "3.0.3", "paths": {"/citizens/{nationalId}": {}}}),
            content_type="application/json",
            headers=answer_headers,
        )
    prefix = ROUTES.get(service)
    if prefix is None:
        return _error(500, "Server.ClientProxy.UnknownMember", f"{service} is not known")
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            request.method,
            request.app[UPSTREAM] + prefix + rest,
            data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "text/plain")},
        ) as upstream,
    ):
        data = await upstream.read()
        return web.Response(
            body=data,
            status=upstream.status,
            headers={**answer_headers, "Content-Type": upstream.headers["Content-Type"]},
        )


@pytest.fixture
async def samples() -> AsyncIterator[RunningSampleServices]:
    running = await run_sample_services("127.0.0.1", 0)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def node(samples: RunningSampleServices) -> AsyncIterator[tuple[str, list[web.Request]]]:
    app = web.Application()
    app[SEEN] = []
    app[UPSTREAM] = samples.base_url
    app.router.add_get("/listClients", _list_clients)
    app.router.add_route("*", "/r1/{tail:.*}", _r1)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", app[SEEN]
    finally:
        await runner.cleanup()


@pytest.fixture
async def client(node: tuple[str, list[web.Request]]) -> AsyncIterator[XRoadRestClient]:
    async with XRoadRestClient(node[0], CLIENT) as rest:
        yield rest


async def test_call_sends_xroad_headers_and_returns_provider_answer(
    client: XRoadRestClient, node: tuple[str, list[web.Request]]
) -> None:
    result = await client.call(
        "GET",
        "IQ/GOV/NDC/population/getCitizen",
        "/citizens/195410040233",
        user_id="IQ-npa-officer-7",
        issue="pension-review-2026-03",
    )
    assert result.status == 200
    assert result.json()["fullNameLatin"] == "Nadia Abdulwahid Fadhil Al-Khafaji"
    seen = node[1][-1]
    assert seen.path == "/r1/IQ/GOV/NDC/population/getCitizen/citizens/195410040233"
    assert seen.headers["X-Road-Client"] == CLIENT
    assert seen.headers["X-Road-UserId"] == "IQ-npa-officer-7"
    assert seen.headers["X-Road-Issue"] == "pension-review-2026-03"
    uuid.UUID(seen.headers["X-Road-Id"])
    assert result.x_road.id == seen.headers["X-Road-Id"]
    assert result.x_road.service == "IQ/GOV/NDC/population/getCitizen"
    assert result.x_road.request_hash == "aGFzaA=="


async def test_call_uses_the_given_message_id_and_posts_json(
    client: XRoadRestClient, node: tuple[str, list[web.Request]]
) -> None:
    service = ServiceId("IQ", "GOV", "MOHESR", "certificates", "verifyDocument")
    result = await client.call(
        "POST",
        service,
        "documents/verify",
        json={"documentNumber": "BAS-2014-008817", "nationalId": "199207020583"},
        message_id="hjc-0001",
    )
    assert result.json()["verdict"] == "authentic"
    assert node[1][-1].headers["X-Road-Id"] == "hjc-0001"


async def test_provider_errors_pass_through_unchanged(client: XRoadRestClient) -> None:
    result = await client.call("GET", "IQ/GOV/NDC/population/getCitizen", "/citizens/000000000000")
    assert result.status == 404
    assert not result.ok
    assert result.json()["error"] == "not_found"


async def test_node_fault_is_raised_with_its_code_message_and_detail(
    client: XRoadRestClient,
) -> None:
    with pytest.raises(FaultError) as caught:
        await client.call("GET", "IQ/GOV/MOH/forensic/getDeathRecord", "/death-records/1")
    fault = caught.value
    assert fault.fault_code == "Server.ServerProxy.AccessDenied"
    assert fault.prefix == "Server.ServerProxy"
    assert fault.http_status == 500
    assert "may not call" in fault.message
    assert fault.detail.startswith("log-")


async def test_client_fault_keeps_status_400_and_a_given_session_stays_open(
    node: tuple[str, list[web.Request]],
) -> None:
    async with aiohttp.ClientSession() as session:
        async with XRoadRestClient(node[0], "IQ/GOV/NOBODY/x", session=session) as rest:
            with pytest.raises(FaultError) as caught:
                await rest.call("GET", "IQ/GOV/NDC/population/getCitizen", "/citizens/1")
        assert not session.closed
    assert caught.value.fault_code == "Client.InvalidClientIdentifier"
    assert caught.value.http_status == 400


async def test_refuses_versioned_rest_service_id(client: XRoadRestClient) -> None:
    with pytest.raises(ValidationError, match="without one"):
        await client.call("GET", "IQ/GOV/NDC/population/getCitizen/v1", "/citizens/1")


async def test_unreachable_node_is_reported_with_its_address() -> None:
    async with XRoadRestClient("http://127.0.0.1:9", CLIENT) as rest:
        with pytest.raises(NodeUnreachableError, match=r"127\.0\.0\.1:9"):
            await rest.call("GET", "IQ/GOV/NDC/population/getCitizen", "/citizens/1")


async def test_list_clients_parses_members_and_subsystems(
    client: XRoadRestClient, node: tuple[str, list[web.Request]]
) -> None:
    clients = await client.list_clients()
    assert [c.id for c in clients] == [
        MemberId("IQ", "GOV", "NDC"),
        SubsystemId("IQ", "GOV", "NDC", "population"),
    ]
    assert clients[0].name == "National Data Centre"
    assert node[1][-1].headers["Accept"] == "application/json"
    other = await client.list_clients("KRG")
    assert other[0].id.instance == "KRG"


async def test_list_and_allowed_methods_return_services_with_endpoints(
    client: XRoadRestClient, node: tuple[str, list[web.Request]]
) -> None:
    listed = await client.list_methods("IQ/GOV/NDC/population")
    allowed = await client.allowed_methods(SubsystemId("IQ", "GOV", "NDC", "population"))
    assert [s.id.service_code for s in listed] == ["getCitizen", "getHousehold"]
    assert [s.id.service_code for s in allowed] == ["getCitizen"]
    assert allowed[0].endpoints[0].path == "/citizens/*"
    assert node[1][-1].path == "/r1/IQ/GOV/NDC/population/allowedMethods"


async def test_get_openapi_returns_the_description(
    client: XRoadRestClient, node: tuple[str, list[web.Request]]
) -> None:
    description = await client.get_openapi("IQ/GOV/NDC/population", "getCitizen")
    assert "/citizens/{nationalId}" in description.as_json()["paths"]
    assert node[1][-1].query["serviceCode"] == "getCitizen"
    with pytest.raises(FaultError) as caught:
        await client.get_openapi("IQ/GOV/NDC/population", "getNothing")
    assert caught.value.fault_code == "Server.ServerProxy.UnknownService"


async def test_refuses_response_over_the_size_limit(node: tuple[str, list[web.Request]]) -> None:
    async with XRoadRestClient(node[0], CLIENT, max_body_bytes=50) as rest:
        with pytest.raises(UnexpectedResponseError, match="over the limit"):
            await rest.call("GET", "IQ/GOV/NDC/population/getCitizen", "/citizens/195410040233")


async def test_path_and_query_are_percent_encoded_once(
    client: XRoadRestClient, node: tuple[str, list[web.Request]]
) -> None:
    await client.call("GET", "IQ/GOV/NDC/population/getCitizen", "/citizens/search?name=أحمد علي")
    await client.call("GET", "IQ/GOV/NDC/population/getCitizen", "/citizens/a%2Fb")
    first, second = node[1][-2:]
    assert first.raw_path == (
        "/r1/IQ/GOV/NDC/population/getCitizen/citizens/search"
        "?name=%D8%A3%D8%AD%D9%85%D8%AF%20%D8%B9%D9%84%D9%8A"
    )
    assert second.raw_path.endswith("/citizens/a%2Fb")


async def test_fault_without_json_body_keeps_the_header_code_and_text(
    client: XRoadRestClient,
) -> None:
    with pytest.raises(FaultError) as caught:
        await client.call("GET", "IQ/GOV/NDC/population/brokenNode")
    assert caught.value.fault_code == "Server.ClientProxy.NetworkError"
    assert caught.value.message == "node overloaded"
    assert caught.value.http_status == 503
