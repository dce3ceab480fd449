from __future__ import annotations

import base64
import hashlib

import pytest
from lxml import etree

from gateway.faults import FaultError, client_fault
from gateway.identifiers import (
    XROAD_NS,
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
)
from gateway.multipart import Part, build_multipart
from gateway.soap import (
    SHA512_ALGORITHM_ID,
    RepresentedParty,
    RequestHash,
    SoapFaultResponse,
    SoapMessage,
    add_request_hash,
    build_request,
    build_response,
    check_response_consistent,
    compute_request_hash,
    parse_soap,
    parse_soap_fault,
    parse_soap_request,
    parse_soap_response,
    soap_fault,
    verify_request_hash,
)

LIMIT = 1024 * 1024
TEXT_XML = "text/xml; charset=UTF-8"

CLIENT_XML = """<xrd:client id:objectType="SUBSYSTEM">
            <id:xRoadInstance>IQ</id:xRoadInstance>
            <id:memberClass>GOV</id:memberClass>
            <id:memberCode>HJC</id:memberCode>
            <id:subsystemCode>inheritance</id:subsystemCode>
        </xrd:client>"""
SERVICE_XML = """<xrd:service id:objectType="SERVICE">
            <id:xRoadInstance>IQ</id:xRoadInstance>
            <id:memberClass>GOV</id:memberClass>
            <id:memberCode>MOH</id:memberCode>
            <id:subsystemCode>forensic</id:subsystemCode>
            <id:serviceCode>getDeathRecord</id:serviceCode>
            <id:serviceVersion>v1</id:serviceVersion>
        </xrd:service>"""
USER_XML = "<xrd:userId>IQ12345678901</xrd:userId>"
ISSUE_XML = "<xrd:issue>case-2026-17</xrd:issue>"
ID_XML = "<xrd:id>4894e35d-bf0f-44a6-867a-8e51f1daa7e0</xrd:id>"
VERSION_XML = "<xrd:protocolVersion>4.0</xrd:protocolVersion>"
BODY_XML = """<moh:getDeathRecord xmlns:moh="http://moh.gov.iq/forensic">
            <nationalId>199012345678</nationalId>
        </moh:getDeathRecord>"""
DEFAULT_HEADERS = (CLIENT_XML, SERVICE_XML, USER_XML, ISSUE_XML, ID_XML, VERSION_XML)


def envelope(
    headers: tuple[str, ...] | None = DEFAULT_HEADERS, body: str | None = BODY_XML
) -> bytes:
    """A request laid out like PR-MESS's example: prefixes on the Envelope, pretty-printed."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"\n'
        '    xmlns:xrd="http://x-road.eu/xsd/xroad.xsd"\n'
        '    xmlns:id="http://x-road.eu/xsd/identifiers">\n',
    ]
    if headers is not None:
        parts += [
            "    <SOAP-ENV:Header>\n        ",
            "\n        ".join(headers),
            "\n    </SOAP-ENV:Header>\n",
        ]
    if body is not None:
        parts += ["    <SOAP-ENV:Body>\n        ", body, "\n    </SOAP-ENV:Body>\n"]
    parts.append("</SOAP-ENV:Envelope>\n")
    return "".join(parts).encode()


def response_envelope(body: str | None = None) -> bytes:
    reply = body or (
        '<moh:getDeathRecordResponse xmlns:moh="http://moh.gov.iq/forensic">'
        "<deceased>false</deceased></moh:getDeathRecordResponse>"
    )
    return envelope(body=reply)


def fault_code_of(data: bytes, content_type: str = TEXT_XML) -> str:
    with pytest.raises(FaultError) as info:
        parse_soap_request(data, content_type, max_bytes=LIMIT)
    return info.value.fault_code


# --- a real request -------------------------------------------------------------------------


def test_parses_pr_mess_style_request() -> None:
    data = envelope()
    message = parse_soap_request(data, TEXT_XML, max_bytes=LIMIT)
    assert message.client == SubsystemId("IQ", "GOV", "HJC", "inheritance")
    assert message.service == ServiceId("IQ", "GOV", "MOH", "forensic", "getDeathRecord", "v1")
    assert message.id == "4894e35d-bf0f-44a6-867a-8e51f1daa7e0"
    assert message.user_id == "IQ12345678901"
    assert message.issue == "case-2026-17"
    assert message.protocol_version == "4.0"
    assert message.request_hash is None
    assert message.represented_party is None
    assert message.body_qname.text == "{http://moh.gov.iq/forensic}getDeathRecord"
    assert message.body.findtext("nationalId") == "199012345678"
    assert message.header_order == tuple(
        f"{{{XROAD_NS}}}{name}"
        for name in ("client", "service", "userId", "issue", "id", "protocolVersion")
    )
    assert message.raw is data
    assert message.soap_bytes is data
    assert not message.is_multipart
    assert message.attachments == ()


def test_tolerates_byte_order_mark_and_keeps_bytes_as_received() -> None:
    data = b"\xef\xbb\xbf" + envelope()
    message = parse_soap_request(data, "text/xml", max_bytes=LIMIT)
    assert message.soap_bytes == data
    assert message.client.member_code == "HJC"


def test_reads_optional_headers_and_keeps_foreign_ones_in_order() -> None:
    party = (
        '<repr:representedParty xmlns:repr="http://x-road.eu/xsd/representation.xsd">'
        "<repr:partyClass>COM</repr:partyClass><repr:partyCode>777</repr:partyCode>"
        "</repr:representedParty>"
    )
    server = (
        '<xrd:securityServer id:objectType="SERVER"><id:xRoadInstance>IQ</id:xRoadInstance>'
        "<id:memberClass>GOV</id:memberClass><id:memberCode>MOH</id:memberCode>"
        "<id:serverCode>ss1</id:serverCode></xrd:securityServer>"
    )
    foreign = '<wsa:Action xmlns:wsa="http://www.w3.org/2005/08/addressing">x</wsa:Action>'
    headers = (CLIENT_XML, foreign, SERVICE_XML, server, party, ID_XML, VERSION_XML)
    message = parse_soap_request(envelope(headers), TEXT_XML, max_bytes=LIMIT)
    assert message.represented_party == RepresentedParty("777", "COM")
    assert message.security_server == SecurityServerId("IQ", "GOV", "MOH", "ss1")
    assert message.header_order[1] == "{http://www.w3.org/2005/08/addressing}Action"
    assert len(message.header_order) == 7


def test_parse_soap_accepts_message_without_service() -> None:
    headers = (CLIENT_XML, ID_XML, VERSION_XML)
    message = parse_soap(envelope(headers), TEXT_XML, max_bytes=LIMIT)
    assert message.service is None


# --- one test per fault ---------------------------------------------------------------------


def test_missing_header_is_client_missing_header() -> None:
    assert fault_code_of(envelope(headers=None)) == "Client.MissingHeader"


@pytest.mark.parametrize("dropped", [CLIENT_XML, SERVICE_XML, ID_XML, VERSION_XML])
def test_missing_mandatory_header_is_missing_header_field(dropped: str) -> None:
    headers = tuple(h for h in DEFAULT_HEADERS if h != dropped)
    with pytest.raises(FaultError) as info:
        parse_soap_request(envelope(headers), TEXT_XML, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.MissingHeaderField"
    name = etree.QName(etree.fromstring(dropped.replace("id:", "").replace("xrd:", ""))).text
    assert f"xrd:{name}" in info.value.message


def test_empty_id_is_missing_header_field() -> None:
    headers = (CLIENT_XML, SERVICE_XML, "<xrd:id>  </xrd:id>", VERSION_XML)
    assert fault_code_of(envelope(headers)) == "Client.MissingHeaderField"


@pytest.mark.parametrize("repeated", [CLIENT_XML, SERVICE_XML, ID_XML, VERSION_XML, USER_XML])
def test_repeated_header_is_duplicate_header_field(repeated: str) -> None:
    assert fault_code_of(envelope((*DEFAULT_HEADERS, repeated))) == "Client.DuplicateHeaderField"


def test_wrong_protocol_version_is_invalid_protocol_version() -> None:
    headers = (CLIENT_XML, SERVICE_XML, ID_XML, "<xrd:protocolVersion>3.1</xrd:protocolVersion>")
    assert fault_code_of(envelope(headers)) == "Client.InvalidProtocolVersion"


def test_missing_body_is_missing_body() -> None:
    assert fault_code_of(envelope(body=None)) == "Client.MissingBody"


def test_empty_body_is_invalid_body() -> None:
    assert fault_code_of(envelope(body="")) == "Client.InvalidBody"


def test_two_body_elements_are_invalid_body() -> None:
    assert fault_code_of(envelope(body=BODY_XML + BODY_XML)) == "Client.InvalidBody"


def test_unparseable_message_is_invalid_soap() -> None:
    assert fault_code_of(envelope()[:-40]) == "Client.InvalidSoap"


def test_soap_12_envelope_is_invalid_soap() -> None:
    data = envelope().replace(
        b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope"
    )
    with pytest.raises(FaultError, match=r"SOAP 1\.2") as info:
        parse_soap_request(data, TEXT_XML, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InvalidSoap"


def test_root_other_than_envelope_is_invalid_soap() -> None:
    assert fault_code_of(b"<getDeathRecord/>") == "Client.InvalidSoap"


def test_body_before_header_is_invalid_soap() -> None:
    data = envelope().replace(b"<SOAP-ENV:Header>", b"<SOAP-ENV:Body/><SOAP-ENV:Header>")
    assert fault_code_of(data) == "Client.InvalidSoap"


def test_body_not_named_after_service_code_is_inconsistent_headers() -> None:
    body = '<moh:getBirthRecord xmlns:moh="http://moh.gov.iq/forensic"/>'
    with pytest.raises(FaultError, match="'getBirthRecord'") as info:
        parse_soap_request(envelope(body=body), TEXT_XML, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InconsistentHeaders"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/soap+xml; charset=UTF-8",
        "text/xml; charset=ISO-8859-1",
        "",
        "garbage",
    ],
)
def test_unknown_content_type_is_invalid_content_type(content_type: str) -> None:
    assert fault_code_of(envelope(), content_type) == "Client.InvalidContentType"


def test_identifier_without_object_type_is_invalid_xml() -> None:
    client = CLIENT_XML.replace(' id:objectType="SUBSYSTEM"', "")
    headers = (client, SERVICE_XML, ID_XML, VERSION_XML)
    assert fault_code_of(envelope(headers)) == "Client.InvalidXml"


def test_illegal_identifier_character_is_invalid_client_identifier() -> None:
    client = CLIENT_XML.replace(">HJC<", ">H&amp;JC<")
    headers = (client, SERVICE_XML, ID_XML, VERSION_XML)
    assert fault_code_of(envelope(headers)) == "Client.InvalidClientIdentifier"


def test_central_service_header_is_refused() -> None:
    central = '<xrd:centralService id:objectType="CENTRALSERVICE"/>'
    headers = (CLIENT_XML, central, ID_XML, VERSION_XML)
    assert fault_code_of(envelope(headers)) == "Client.InvalidSoap"


def test_doctype_in_soap_message_is_refused_without_expansion() -> None:
    data = envelope().replace(
        b"\n<SOAP-ENV:Envelope",
        b'\n<!DOCTYPE x [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<SOAP-ENV:Envelope',
        1,
    )
    assert fault_code_of(data) == "Client.InvalidXml"


def test_message_over_the_size_limit_is_refused() -> None:
    with pytest.raises(FaultError) as info:
        parse_soap_request(envelope(), TEXT_XML, max_bytes=100)
    assert info.value.fault_code == "Client.RequestTooLarge"


# --- attachments ----------------------------------------------------------------------------


def test_soap_with_attachments_keeps_attachments_byte_identical() -> None:
    soap = envelope()
    pdf = b"%PDF-1.7\r\n" + bytes(range(256)) * 8 + b"\r\n--\r\n"
    attachment = Part((("Content-Type", "application/pdf"), ("Content-ID", "<diploma-123>")), pdf)
    root = Part((("Content-Type", TEXT_XML), ("Content-ID", "<soap-part>")), soap)
    raw, content_type = build_multipart(root, [attachment], start="soap-part")
    message = parse_soap_request(raw, content_type, max_bytes=LIMIT)
    assert message.soap_bytes == soap
    assert message.raw == raw
    assert message.is_multipart
    assert not message.mtom
    assert message.attachments == (attachment,)
    assert message.attachments[0].data == pdf


def test_mtom_message_is_accepted_and_carried_intact() -> None:
    body = (
        '<moh:getDeathRecord xmlns:moh="http://moh.gov.iq/forensic">'
        '<scan><xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" '
        'href="cid:scan-1"/></scan></moh:getDeathRecord>'
    )
    soap = envelope(body=body)
    root = Part(
        (
            ("Content-Type", 'application/xop+xml; charset=UTF-8; type="text/xml"'),
            ("Content-ID", "<root>"),
        ),
        soap,
    )
    scan = Part((("Content-Type", "image/jpeg"), ("Content-ID", "<scan-1>")), b"\xff\xd8JPEG")
    raw, content_type = build_multipart(
        root,
        [scan],
        root_type="application/xop+xml",
        start="root",
        extra_params={"start-info": "text/xml"},
    )
    message = parse_soap_request(raw, content_type, max_bytes=LIMIT)
    assert message.mtom
    assert message.attachments[0].data == b"\xff\xd8JPEG"
    include = message.body.find(".//{http://www.w3.org/2004/08/xop/include}Include")
    assert include is not None
    assert include.get("href") == "cid:scan-1"


def test_base64_encoded_soap_part_is_mime_parsing_failed() -> None:
    root = Part(
        (("Content-Type", "text/xml"), ("Content-Transfer-Encoding", "base64")),
        base64.b64encode(envelope()),
    )
    raw, content_type = build_multipart(root, [])
    assert fault_code_of(raw, content_type) == "Client.MimeParsingFailed"


def test_multipart_root_that_is_not_xml_is_invalid_content_type() -> None:
    raw, content_type = build_multipart(Part((("Content-Type", "image/png"),), b"PNG"), [])
    assert fault_code_of(raw, content_type) == "Client.InvalidContentType"


# --- responses ------------------------------------------------------------------------------


def test_parses_response_and_finds_it_consistent() -> None:
    request = parse_soap_request(envelope(), TEXT_XML, max_bytes=LIMIT)
    response = parse_soap_response(response_envelope(), TEXT_XML, max_bytes=LIMIT)
    assert isinstance(response, SoapMessage)
    assert response.body_qname.localname == "getDeathRecordResponse"
    check_response_consistent(request, response)


def test_response_body_not_named_service_response_is_reported_with_the_callers_prefix() -> None:
    data = envelope(body='<getDeathRecord xmlns="http://moh.gov.iq/forensic"/>')
    with pytest.raises(FaultError) as info:
        parse_soap_response(data, TEXT_XML, max_bytes=LIMIT)
    assert info.value.fault_code == "Server.ServerProxy.InconsistentHeaders"
    assert info.value.http_status == 500
    with pytest.raises(FaultError) as info:
        parse_soap_response(
            envelope(headers=None), TEXT_XML, max_bytes=LIMIT, fault_prefix="Server.ClientProxy"
        )
    assert info.value.fault_code == "Server.ClientProxy.MissingHeader"


@pytest.mark.parametrize(
    ("replaced", "by"),
    [
        (ID_XML, "<xrd:id>other</xrd:id>"),
        (USER_XML, "<xrd:userId>someone-else</xrd:userId>"),
        (ISSUE_XML, ""),
        (CLIENT_XML, CLIENT_XML.replace(">HJC<", ">NPA<")),
        (SERVICE_XML, SERVICE_XML.replace(">v1<", ">v2<")),
    ],
)
def test_response_not_echoing_request_headers_is_inconsistent_response(
    replaced: str, by: str
) -> None:
    request = parse_soap_request(envelope(), TEXT_XML, max_bytes=LIMIT)
    data = response_envelope().replace(replaced.encode(), by.encode())
    response = parse_soap_response(data, TEXT_XML, max_bytes=LIMIT)
    assert isinstance(response, SoapMessage)
    with pytest.raises(FaultError) as info:
        check_response_consistent(request, response)
    assert info.value.fault_code == "Server.ServerProxy.InconsistentResponse"


def test_fault_response_is_returned_not_raised() -> None:
    fault = client_fault("AccessDenied", "no")
    data = soap_fault(fault)
    response = parse_soap_response(data, "text/xml; charset=utf-8", max_bytes=LIMIT)
    assert isinstance(response, SoapFaultResponse)
    assert response.fault.fault_code == "Client.AccessDenied"
    assert response.fault.detail == fault.detail
    assert response.soap_bytes == data


# --- faults ---------------------------------------------------------------------------------


def test_fault_round_trips_code_message_and_detail() -> None:
    fault = FaultError("Server.ServerProxy.ServiceFailed.HttpError", "provider said 503 <&>")
    data = soap_fault(fault)
    envelope_el = etree.fromstring(data)
    fault_el = envelope_el[0][0]
    assert [child.tag for child in fault_el] == ["faultcode", "faultstring", "faultactor", "detail"]
    assert fault_el.findtext("faultactor") == ""
    assert fault_el.find("detail/faultDetail") is not None
    parsed = parse_soap_fault(data)
    assert parsed is not None
    assert parsed.fault_code == fault.fault_code
    assert parsed.message == fault.message
    assert parsed.detail == fault.detail
    assert parsed.http_status == 500


def test_parse_soap_fault_drops_envelope_prefix_and_returns_none_for_normal_messages() -> None:
    data = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
        b"<faultcode>s:Server</faultcode><faultstring>boom</faultstring></s:Fault>"
        b"</s:Body></s:Envelope>"
    )
    parsed = parse_soap_fault(data)
    assert parsed is not None
    assert parsed.fault_code == "Server"
    assert parsed.message == "boom"
    assert parse_soap_fault(envelope()) is None


# --- request hash ---------------------------------------------------------------------------


def test_request_hash_is_inserted_leaving_other_bytes_identical() -> None:
    request = envelope()
    response = response_envelope()
    request_hash = compute_request_hash(request)
    expected = base64.b64encode(hashlib.sha512(request).digest()).decode()
    assert request_hash == RequestHash(expected, SHA512_ALGORITHM_ID)
    hashed = add_request_hash(response, request_hash.value)
    end_tag = b"</SOAP-ENV:Header>"
    before, _, after = response.partition(end_tag)
    assert hashed.startswith(before)
    assert hashed.endswith(end_tag + after)
    parsed = parse_soap_response(hashed, TEXT_XML, max_bytes=LIMIT)
    assert isinstance(parsed, SoapMessage)
    assert parsed.request_hash == RequestHash(expected, SHA512_ALGORITHM_ID)
    assert parsed.header_order[-1] == f"{{{XROAD_NS}}}requestHash"


def test_request_hash_is_added_to_self_closing_header_and_skips_lookalikes() -> None:
    data = (
        b"<?xml version='1.0'?><!-- </e:Header> --><e:Envelope "
        b'xmlns:e="http://schemas.xmlsoap.org/soap/envelope/" a="x>y"><e:Header a=">"/>'
        b"<e:Body><x><![CDATA[</e:Header>]]></x></e:Body></e:Envelope>"
    )
    hashed = add_request_hash(data, "AAAA")
    assert hashed.startswith(b"<?xml version='1.0'?><!-- </e:Header> --><e:Envelope ")
    assert b'<e:Header a=">"><xrd:requestHash' in hashed
    assert hashed.endswith(
        b"</e:Header><e:Body><x><![CDATA[</e:Header>]]></x></e:Body></e:Envelope>"
    )
    root = etree.fromstring(hashed)
    assert root[0][0].text == "AAAA"


def test_existing_request_hash_is_replaced() -> None:
    stale = '<xrd:requestHash algorithmId="urn:x">c3RhbGU=</xrd:requestHash>'
    data = envelope(headers=(*DEFAULT_HEADERS, stale), body="<getDeathRecordResponse/>")
    hashed = add_request_hash(data, "AAAA")
    parsed = parse_soap_response(hashed, TEXT_XML, max_bytes=LIMIT)
    assert isinstance(parsed, SoapMessage)
    assert parsed.request_hash == RequestHash("AAAA", SHA512_ALGORITHM_ID)


def test_add_request_hash_refuses_value_that_is_not_base64() -> None:
    with pytest.raises(ValueError, match="base64"):
        add_request_hash(response_envelope(), "<evil/>")


# --- building -------------------------------------------------------------------------------


def test_built_request_parses_back_and_built_response_is_consistent() -> None:
    client = MemberId("IQ", "GOV", "NPA")
    service = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen", "v1")
    data = build_request(
        client,
        service,
        id="m-1",
        user_id="officer-9",
        issue="pension-stop",
        represented_party=RepresentedParty("42"),
        body_element_xml='<getCitizen xmlns="urn:ndc"><id>1</id></getCitizen>',
    )
    request = parse_soap_request(data, "text/xml", max_bytes=LIMIT)
    assert (request.client, request.service, request.id) == (client, service, "m-1")
    assert request.user_id == "officer-9"
    assert request.issue == "pension-stop"
    assert request.represented_party == RepresentedParty("42")
    reply = build_response(
        request, '<getCitizenResponse xmlns="urn:ndc"><name>x</name></getCitizenResponse>'
    )
    response = parse_soap_response(reply, "text/xml", max_bytes=LIMIT)
    assert isinstance(response, SoapMessage)
    assert response.header_order == request.header_order
    check_response_consistent(request, response)


def test_build_request_refuses_body_not_named_after_service() -> None:
    service = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen")
    with pytest.raises(ValueError, match="service code"):
        build_request(MemberId("IQ", "GOV", "NPA"), service, id="1", body_element_xml="<other/>")


def test_consumer_accepts_response_hashing_its_request_and_refuses_others() -> None:
    sent = envelope()
    request = parse_soap_request(sent, TEXT_XML, max_bytes=LIMIT)
    hashed = add_request_hash(response_envelope(), compute_request_hash(sent).value)
    response = parse_soap_response(hashed, TEXT_XML, max_bytes=LIMIT)
    assert isinstance(response, SoapMessage)
    verify_request_hash(request, response)

    other = parse_soap_request(
        sent.replace(b"199012345678", b"199012345679"), TEXT_XML, max_bytes=LIMIT
    )
    with pytest.raises(FaultError, match="does not match") as info:
        verify_request_hash(other, response)
    assert info.value.fault_code == "Server.ClientProxy.InconsistentResponse"

    unhashed = parse_soap_response(response_envelope(), TEXT_XML, max_bytes=LIMIT)
    assert isinstance(unhashed, SoapMessage)
    with pytest.raises(FaultError, match="no xrd:requestHash"):
        verify_request_hash(request, unhashed)
