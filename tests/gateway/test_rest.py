from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid

import pytest
from lxml import etree

from gateway.faults import FaultError, client_fault, server_proxy_fault
from gateway.identifiers import ID_NS, XROAD_NS, MemberId, SecurityServerId, ServiceId, SubsystemId
from gateway.rest import (
    ClientListEntry,
    ListClientsRequest,
    RestRequest,
    RestServiceEntry,
    encode_client_list,
    encode_method_list,
    forwardable_headers,
    parse_rest_request,
    provider_url,
    response_headers,
    rest_error,
    rest_path,
    signed_request_part,
)
from gateway.transport import parse_signed_part

CLIENT_HEADER = ("X-Road-Client", "IQ/GOV/HJC/inheritance")
CITIZEN = "/r1/IQ/GOV/NDC/population/getCitizen"
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def parse(
    path: str, headers: list[tuple[str, str]] | None = None, method: str = "GET"
) -> RestRequest:
    request = parse_rest_request(method, path, [CLIENT_HEADER, *(headers or [])])
    assert isinstance(request, RestRequest)
    return request


def fault_of(method: str, path: str, headers: list[tuple[str, str]]) -> str:
    with pytest.raises(FaultError) as info:
        parse_rest_request(method, path, headers)
    assert info.value.http_status == 400
    return info.value.fault_code


def test_parses_a_subsystem_service_call_with_rest_path_and_query() -> None:
    request = parse(CITIZEN + "/citizens/123?lang=ar&x=%20y")
    assert request.service == ServiceId("IQ", "GOV", "NDC", "population", "getCitizen")
    assert request.client == SubsystemId("IQ", "GOV", "HJC", "inheritance")
    assert request.path == "/citizens/123"
    assert request.query == "lang=ar&x=%20y"
    assert request.metaservice is None


def test_service_without_rest_path_and_with_bare_query() -> None:
    assert parse(CITIZEN).path == ""
    assert parse(CITIZEN).query is None
    assert parse(CITIZEN + "?").query == ""
    assert parse(CITIZEN + "/").path == "/"


def test_version_like_segment_after_service_code_belongs_to_the_path() -> None:
    request = parse(CITIZEN + "/v1/citizens")
    assert request.service.service_version is None
    assert request.path == "/v1/citizens"


def test_decodes_each_identifier_part_separately() -> None:
    request = parse("/r1/IQ/GOV/N%44C/popul%61tion/get%43itizen/a%2Fb")
    assert request.service == ServiceId("IQ", "GOV", "NDC", "population", "getCitizen")
    assert request.path == "/a%2Fb"  # the rest path is passed on still encoded


def test_decodes_client_header_parts() -> None:
    request = parse_rest_request("GET", CITIZEN, [("X-Road-Client", "IQ/GOV/H%4AC/inh%65ritance")])
    assert isinstance(request, RestRequest)
    assert request.client == SubsystemId("IQ", "GOV", "HJC", "inheritance")


def test_a_member_client_is_accepted() -> None:
    request = parse_rest_request("GET", CITIZEN, [("x-road-client", "IQ/GOV/HJC")])
    assert isinstance(request, RestRequest)
    assert request.client == MemberId("IQ", "GOV", "HJC")


def test_generates_a_message_id_when_absent() -> None:
    request = parse(CITIZEN)
    assert request.message_id_generated
    assert uuid.UUID(request.message_id).version == 4
    given = parse(CITIZEN, [("X-Road-Id", "abc-1")])
    assert given.message_id == "abc-1"
    assert not given.message_id_generated


def test_reads_optional_x_road_headers() -> None:
    request = parse(
        CITIZEN,
        [
            ("X-Road-UserId", "IQ1234567890"),
            ("X-Road-Issue", "case-77"),
            ("X-Road-Security-Server", "IQ/GOV/NDC/ss1"),
            ("X-Road-Represented-Party", "GOV/NPA"),
        ],
    )
    assert request.user_id == "IQ1234567890"
    assert request.issue == "case-77"
    assert request.security_server == SecurityServerId("IQ", "GOV", "NDC", "ss1")
    assert request.represented_party == "GOV/NPA"


def test_filters_hop_by_hop_and_origin_headers_and_keeps_the_rest_in_order() -> None:
    request = parse(
        CITIZEN,
        [
            ("Host", "node.local"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("X-Secret-Hop", "1"),
            ("Proxy-Authorization", "Basic abc"),
            ("Proxy-Connection", "close"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("User-Agent", "curl"),
            ("Server", "x"),
            ("Content-Length", "0"),
            ("Accept", "application/json"),
            ("X-Trace", "1"),
            ("Cache-Control", "no-cache"),
            ("X-Trace", "2"),
            ("X-Road-Request-Hash", "forged"),
            ("X-Road-Custom-Extension", "kept"),
            ("Authorization", "Bearer t"),
        ],
    )
    assert request.headers == (
        ("Accept", "application/json"),
        ("X-Trace", "1"),
        ("Cache-Control", "no-cache"),
        ("X-Trace", "2"),
        ("X-Road-Custom-Extension", "kept"),
        ("Authorization", "Bearer t"),
    )


def test_accepts_a_mapping_of_headers() -> None:
    request = parse_rest_request("GET", CITIZEN, {"X-Road-Client": "IQ/GOV/HJC", "Accept": "*/*"})
    assert isinstance(request, RestRequest)
    assert request.headers == (("Accept", "*/*"),)


@pytest.mark.parametrize(
    ("method", "path", "headers", "code"),
    [
        ("GET", CITIZEN, [], "Client.MissingHeaderField"),
        ("GET", CITIZEN, [("X-Road-Client", "  ")], "Client.MissingHeaderField"),
        ("GET", CITIZEN, [("X-Road-Client", "IQ/GOV")], "Client.InvalidClientIdentifier"),
        ("GET", CITIZEN, [("X-Road-Client", "IQ/GOV/H J")], "Client.InvalidClientIdentifier"),
        ("GET", CITIZEN, [("X-Road-Client", "IQ/GOV/%FF")], "Client.InvalidClientIdentifier"),
        ("GET", CITIZEN, [("X-Road-Client", "IQ/GOV/HJC%2Fx")], "Client.InvalidClientIdentifier"),
        (
            "GET",
            CITIZEN,
            [CLIENT_HEADER, ("X-Road-Client", "IQ/GOV/NPA")],
            "Client.DuplicateHeaderField",
        ),
        (
            "GET",
            CITIZEN,
            [CLIENT_HEADER, ("X-Road-Security-Server", "IQ/GOV/NDC")],
            "Client.InvalidSecurityServer",
        ),
        ("GET", CITIZEN, [CLIENT_HEADER, ("X-Road-Id", "x" * 256)], "Client.BadRequest"),
        ("GET", "/r1/IQ/GOV/NDC/getCitizen", [CLIENT_HEADER], "Client.BadRequest"),
        ("GET", "/r1/IQ/GOV//population/getCitizen", [CLIENT_HEADER], "Client.BadRequest"),
        ("GET", "/r1/IQ/GOV/N%20C/population/x", [CLIENT_HEADER], "Client.BadRequest"),
        ("GET", "/r1/IQ/GOV/N%ZZ/population/x", [CLIENT_HEADER], "Client.BadRequest"),
        ("GET", CITIZEN + "/a b", [CLIENT_HEADER], "Client.BadRequest"),
        ("GET", CITIZEN + "/../admin", [CLIENT_HEADER], "Client.BadRequest"),
        ("GET", CITIZEN + "/%2e%2E/admin", [CLIENT_HEADER], "Client.BadRequest"),
        ("GET", CITIZEN + "#frag", [CLIENT_HEADER], "Client.BadRequest"),
        ("GET", CITIZEN + "?q=" + "x" * 5000, [CLIENT_HEADER], "Client.BadRequest"),
        (
            "GET",
            "/r2/IQ/GOV/NDC/population/getCitizen",
            [CLIENT_HEADER],
            "Client.InvalidProtocolVersion",
        ),
        ("GET", "/other", [CLIENT_HEADER], "Client.BadRequest"),
        ("TRACE", CITIZEN, [CLIENT_HEADER], "Client.InvalidHttpMethod"),
        ("GET", CITIZEN, [CLIENT_HEADER, ("X-Bad", "a\r\nb")], "Client.BadRequest"),
        ("GET", CITIZEN, [CLIENT_HEADER, ("X-Bad", "\udcff")], "Client.BadRequest"),
    ],
)
def test_refuses_bad_requests_with_their_fault_code(
    method: str, path: str, headers: list[tuple[str, str]], code: str
) -> None:
    assert fault_of(method, path, headers) == code


def test_metaservice_calls() -> None:
    listing = parse("/r1/IQ/GOV/NDC/population/listMethods")
    assert listing.metaservice == "listMethods"
    assert listing.service.provider == SubsystemId("IQ", "GOV", "NDC", "population")
    assert parse("/r1/IQ/GOV/NDC/population/allowedMethods").metaservice == "allowedMethods"
    openapi = parse("/r1/IQ/GOV/NDC/population/getOpenAPI?serviceCode=getCitizen")
    assert openapi.metaservice == "getOpenAPI"
    assert openapi.openapi_service_code == "getCitizen"
    # A service path after the method name is an ordinary call, not a metaservice.
    assert parse("/r1/IQ/GOV/NDC/population/listMethods/x").metaservice is None


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/r1/IQ/GOV/NDC/population/getOpenAPI", "Client.BadRequest"),
        (
            "GET",
            "/r1/IQ/GOV/NDC/population/getOpenAPI?serviceCode=a&serviceCode=b",
            "Client.BadRequest",
        ),
        ("GET", "/r1/IQ/GOV/NDC/population/getOpenAPI?serviceCode=a%20b", "Client.BadRequest"),
        ("POST", "/r1/IQ/GOV/NDC/population/listMethods", "Client.InvalidHttpMethod"),
        ("POST", "/listClients", "Client.InvalidHttpMethod"),
        ("GET", "/listClients?xRoadInstance=A&xRoadInstance=B", "Client.BadRequest"),
    ],
)
def test_refuses_bad_metaservice_calls(method: str, path: str, code: str) -> None:
    assert fault_of(method, path, [CLIENT_HEADER]) == code


def test_list_clients_needs_no_client_header_and_follows_accept() -> None:
    assert parse_rest_request("GET", "/listClients", []) == ListClientsRequest(None, False)
    assert parse_rest_request(
        "GET", "/listClients?xRoadInstance=EE", [("Accept", "application/json")]
    ) == ListClientsRequest("EE", True)


def test_encodes_the_client_list_as_xml_and_json() -> None:
    entries = [
        ClientListEntry(MemberId("IQ", "GOV", "NDC"), "National Data Centre"),
        ClientListEntry(
            SubsystemId("IQ", "GOV", "NDC", "population"), "National Data Centre", "Population"
        ),
    ]
    content_type, body = encode_client_list(entries, as_json=True)
    assert content_type.startswith("application/json")
    members = json.loads(body)["member"]
    assert members[1] == {
        "id": {
            "object_type": "SUBSYSTEM",
            "xroad_instance": "IQ",
            "member_class": "GOV",
            "member_code": "NDC",
            "subsystem_code": "population",
        },
        "name": "National Data Centre",
        "subsystem_name": "Population",
    }
    content_type, body = encode_client_list(entries, as_json=False)
    assert content_type.startswith("text/xml")
    root = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
    assert root.tag == f"{{{XROAD_NS}}}clientList"
    ids = root.findall(f"{{{XROAD_NS}}}member/{{{XROAD_NS}}}id")
    assert [i.get(f"{{{ID_NS}}}objectType") for i in ids] == ["MEMBER", "SUBSYSTEM"]
    assert ids[1].findtext(f"{{{ID_NS}}}subsystemCode") == "population"


def test_encodes_the_rest_method_list() -> None:
    entry = RestServiceEntry(
        ServiceId("IQ", "GOV", "NDC", "population", "getCitizen"),
        "OPENAPI",
        (("GET", "/citizens/*"),),
    )
    _, body = encode_method_list([entry])
    assert json.loads(body) == {
        "service": [
            {
                "object_type": "SERVICE",
                "xroad_instance": "IQ",
                "member_class": "GOV",
                "member_code": "NDC",
                "subsystem_code": "population",
                "service_code": "getCitizen",
                "service_type": "OPENAPI",
                "endpoint_list": [{"method": "GET", "path": "/citizens/*"}],
            }
        ]
    }


def test_rest_error_is_json_with_the_x_road_error_header() -> None:
    fault = server_proxy_fault("AccessDenied", "IQ/GOV/NPA/pensions may not call getCitizen")
    status, headers, body = rest_error(fault)
    assert status == 500
    assert ("X-Road-Error", "Server.ServerProxy.AccessDenied") in headers
    assert dict(headers)["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {
        "type": "Server.ServerProxy.AccessDenied",
        "message": "IQ/GOV/NPA/pensions may not call getCitizen",
        "detail": fault.detail,
    }
    status, _, _ = rest_error(client_fault("BadRequest", "bad"))
    assert status == 400


def test_rest_error_follows_an_xml_accept_header() -> None:
    fault = client_fault("BadRequest", "bad <path>")
    _, headers, body = rest_error(fault, accept="application/xml, application/json;q=0.5")
    assert dict(headers)["Content-Type"].startswith("text/xml")
    root = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
    assert root.findtext("message") == "bad <path>"
    _, headers, _ = rest_error(fault, accept="application/json, text/xml")
    assert dict(headers)["Content-Type"].startswith("application/json")


def test_response_headers_replace_provider_x_road_headers() -> None:
    headers = response_headers(
        [
            ("Content-Type", "application/json"),
            ("X-Road-Request-Hash", "forged"),
            ("Transfer-Encoding", "chunked"),
            ("Server", "nginx"),
        ],
        client=SubsystemId("IQ", "GOV", "HJC", "inheritance"),
        service=ServiceId("IQ", "GOV", "NDC", "population", "getCitizen"),
        message_id="m-1",
        request_id="r-1",
        request_hash="aGFzaA==",
    )
    assert headers == (
        ("Content-Type", "application/json"),
        ("X-Road-Client", "IQ/GOV/HJC/inheritance"),
        ("X-Road-Service", "IQ/GOV/NDC/population/getCitizen"),
        ("X-Road-Id", "m-1"),
        ("X-Road-Request-Id", "r-1"),
        ("X-Road-Request-Hash", "aGFzaA=="),
    )


def test_forwardable_headers_drops_names_listed_in_connection() -> None:
    assert forwardable_headers([("Connection", "X-A"), ("x-a", "1"), ("X-B", "2")]) == (
        ("X-B", "2"),
    )


def test_rest_path_round_trips_through_the_parser() -> None:
    service = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen")
    target = rest_path(service, "/citizens/123", "lang=ar")
    assert target == CITIZEN + "/citizens/123?lang=ar"
    assert parse(target).service == service
    with pytest.raises(ValueError, match="subsystem"):
        rest_path(ServiceId("IQ", "GOV", "NDC", None, "x"))


def test_signed_request_part_carries_everything_the_provider_acts_on() -> None:
    request = parse(
        CITIZEN + "/citizens/123?lang=ar",
        [("X-Road-Id", "m-1"), ("X-Road-UserId", "IQ1"), ("Accept", "application/json")],
        method="POST",
    )
    part = signed_request_part(request, body=b"{}", created_at=NOW)
    assert parse_signed_part(part.to_bytes()) == part
    assert (part.method, part.path, part.query) == ("POST", "/citizens/123", "lang=ar")
    assert part.headers == (("Accept", "application/json"),)
    assert part.message_id == "m-1"
    assert part.user_id == "IQ1"
    assert part.body_sha256 == hashlib.sha256(b"{}").hexdigest()


def test_provider_url_appends_path_and_query_unchanged() -> None:
    assert provider_url("https://ndc.local/api/", "/citizens/a%2Fb", "x=1") == (
        "https://ndc.local/api/citizens/a%2Fb?x=1"
    )
    assert provider_url("https://ndc.local/api", "", None) == "https://ndc.local/api"
    assert provider_url("https://ndc.local/api", "", "") == "https://ndc.local/api?"
