from __future__ import annotations

import json

import pytest

from config.errors import IdentifierError, ValidationError
from security_server.catalogue import parse_openapi, parse_wsdl, rest_service

WSDL = b"""<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xrd="http://x-road.eu/xsd/xroad.xsd"
    xmlns:tns="http://ndc.gov.iq/population" targetNamespace="http://ndc.gov.iq/population">
  <wsdl:portType name="PopulationPort">
    <wsdl:operation name="getCitizen"/>
  </wsdl:portType>
  <wsdl:binding name="PopulationBinding" type="tns:PopulationPort">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="getCitizen"><xrd:version>v1</xrd:version></wsdl:operation>
    <wsdl:operation name="listFamily"/>
  </wsdl:binding>
  <wsdl:service name="Population">
    <wsdl:port name="p" binding="tns:PopulationBinding">
      <soap:address location="http://127.0.0.1:9000/ndc/soap"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>"""


def test_wsdl_operations_become_services() -> None:
    entries = parse_wsdl(WSDL)
    assert [(e.service_code, e.service_version) for e in entries] == [
        ("getCitizen", "v1"),
        ("listFamily", None),
    ]
    assert entries[0].address == "http://127.0.0.1:9000/ndc/soap"


def test_wsdl_refuses_entities_and_garbage() -> None:
    with pytest.raises(ValidationError, match="DOCTYPE"):
        parse_wsdl(b'<!DOCTYPE x [<!ENTITY a "b">]><x/>')
    with pytest.raises(ValidationError, match="well-formed"):
        parse_wsdl(b"<wsdl:definitions")
    with pytest.raises(ValidationError, match="not a WSDL"):
        parse_wsdl(b"<x/>")


def test_wsdl_refuses_bad_operation_names_and_addresses() -> None:
    with pytest.raises(IdentifierError):
        parse_wsdl(WSDL.replace(b'"listFamily"', b'"list family"'))
    with pytest.raises(ValidationError, match="not an absolute"):
        parse_wsdl(WSDL, address="ftp://x")


def test_openapi_operations_become_endpoints() -> None:
    spec = {
        "openapi": "3.0.3",
        "servers": [{"url": "http://127.0.0.1:9000/ndc/"}],
        "paths": {"/citizens/{nationalId}": {"get": {}}, "/citizens": {"post": {}}},
    }
    entry = parse_openapi(json.dumps(spec).encode(), "getCitizen")
    assert entry.address == "http://127.0.0.1:9000/ndc"
    assert entry.endpoints == (("GET", "/citizens/*"), ("POST", "/citizens"))


def test_openapi_refuses_non_openapi_documents() -> None:
    with pytest.raises(ValidationError, match="OpenAPI 3"):
        parse_openapi(b'{"swagger": "2.0"}', "x")
    with pytest.raises(ValidationError, match="not valid JSON"):
        parse_openapi(b"{", "x")
    with pytest.raises(ValidationError, match="no server"):
        parse_openapi(b'{"openapi": "3.1.0", "paths": {"/a": {"get": {}}}}', "x")


def test_rest_service_needs_an_http_url() -> None:
    assert rest_service("getCitizen", "http://h:1/x/").address == "http://h:1/x"
    with pytest.raises(ValidationError):
        rest_service("getCitizen", "not a url")
