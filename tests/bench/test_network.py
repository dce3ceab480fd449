"""The pieces of the node network that need no running network."""

from __future__ import annotations

from bench.network import PARTIES, bench_wsdl
from bench.scenarios import SOAP_SERVICE_CODE, node_spec
from security_server.catalogue import parse_wsdl


def test_the_soap_service_description_is_accepted_by_the_catalogue() -> None:
    entries = parse_wsdl(bench_wsdl("http://127.0.0.1:1/soap"))
    assert [(e.service_code, e.address) for e in entries] == [
        (SOAP_SERVICE_CODE, "http://127.0.0.1:1/soap")
    ]


def test_rest_calls_name_the_provider_service_and_the_consumer() -> None:
    spec = node_spec("rest_small", "http://127.0.0.1:1", PARTIES)
    assert spec.url == "http://127.0.0.1:1/r1/IQ/GOV/NDC/population/benchSmall"
    assert spec.headers == {"X-Road-Client": "IQ/GOV/HJC/inheritance"}
    soap = node_spec("soap_small", "http://127.0.0.1:1", PARTIES)
    assert soap.unique_placeholder is not None
    assert soap.unique_placeholder in soap.body
    assert b"IQ</id:xRoadInstance>" in soap.body
