"""The codec against zeep, the SOAP client integrators use: what it sends we accept, what we
return it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zeep
import zeep.exceptions
from lxml import etree

from gateway.faults import client_fault
from gateway.identifiers import XROAD_NS, MemberId, ServiceId
from gateway.identifiers_xml import client_to_xml, service_to_xml
from gateway.soap import (
    SoapMessage,
    add_request_hash,
    build_response,
    check_response_consistent,
    compute_request_hash,
    parse_soap_request,
    parse_soap_response,
    soap_fault,
)

WSDL = """<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:tns="urn:ndc" targetNamespace="urn:ndc">
  <wsdl:types>
    <xs:schema targetNamespace="urn:ndc" elementFormDefault="qualified">
      <xs:element name="getCitizen"><xs:complexType><xs:sequence>
        <xs:element name="nationalId" type="xs:string"/>
      </xs:sequence></xs:complexType></xs:element>
      <xs:element name="getCitizenResponse"><xs:complexType><xs:sequence>
        <xs:element name="name" type="xs:string"/>
      </xs:sequence></xs:complexType></xs:element>
    </xs:schema>
  </wsdl:types>
  <wsdl:message name="getCitizen"><wsdl:part name="body" element="tns:getCitizen"/></wsdl:message>
  <wsdl:message name="getCitizenResponse">
    <wsdl:part name="body" element="tns:getCitizenResponse"/>
  </wsdl:message>
  <wsdl:portType name="population">
    <wsdl:operation name="getCitizen">
      <wsdl:input message="tns:getCitizen"/><wsdl:output message="tns:getCitizenResponse"/>
    </wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="populationBinding" type="tns:population">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="getCitizen">
      <soap:operation soapAction=""/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="populationService">
    <wsdl:port name="populationPort" binding="tns:populationBinding">
      <soap:address location="http://127.0.0.1:8080/"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"""

#: zeep has no type annotations; going through Any keeps mypy --strict quiet about it.
ZEEP: Any = zeep

CLIENT = MemberId("IQ", "GOV", "NPA")
SERVICE = ServiceId("IQ", "GOV", "NDC", "population", "getCitizen", "v1")


@pytest.fixture
def zeep_client(tmp_path: Path) -> Any:
    path = tmp_path / "population.wsdl"
    path.write_text(WSDL, encoding="utf-8")
    return ZEEP.Client(str(path))


def zeep_request(client: Any) -> bytes:
    headers = [client_to_xml(CLIENT), service_to_xml(SERVICE)]
    for name, value in (("userId", "officer-9"), ("id", "npa-1"), ("protocolVersion", "4.0")):
        element = etree.Element(f"{{{XROAD_NS}}}{name}")
        element.text = value
        headers.append(element)
    envelope = client.create_message(
        client.service, "getCitizen", nationalId="199012345678", _soapheaders=headers
    )
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def test_accepts_request_written_by_zeep(zeep_client: Any) -> None:
    request = parse_soap_request(
        zeep_request(zeep_client), "text/xml; charset=utf-8", max_bytes=65536
    )
    assert request.client == CLIENT
    assert request.service == SERVICE
    assert (request.id, request.user_id) == ("npa-1", "officer-9")
    assert request.body.findtext("{urn:ndc}nationalId") == "199012345678"


def test_zeep_reads_our_response_with_request_hash(zeep_client: Any) -> None:
    raw = zeep_request(zeep_client)
    request = parse_soap_request(raw, "text/xml", max_bytes=65536)
    reply = build_response(
        request, '<getCitizenResponse xmlns="urn:ndc"><name>Ali</name></getCitizenResponse>'
    )
    reply = add_request_hash(reply, compute_request_hash(raw).value)
    response = parse_soap_response(reply, "text/xml", max_bytes=65536)
    assert isinstance(response, SoapMessage)
    check_response_consistent(request, response)
    operation = zeep_client.service._binding._operations["getCitizen"]
    assert operation.process_reply(etree.fromstring(reply)) == "Ali"


def test_zeep_reads_our_fault(zeep_client: Any) -> None:
    fault = client_fault("MissingHeaderField", "the SOAP Header lacks xrd:id")
    binding = zeep_client.service._binding
    operation = binding._operations["getCitizen"]
    with pytest.raises(zeep.exceptions.Fault) as info:
        binding.process_error(etree.fromstring(soap_fault(fault)), operation)
    assert info.value.code == "Client.MissingHeaderField"
    assert info.value.message == "the SOAP Header lacks xrd:id"
    assert info.value.detail is not None
    assert info.value.detail.findtext("faultDetail") == fault.detail
