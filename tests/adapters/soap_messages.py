"""SOAP request bytes for the adapter tests, built the way an X-Road consumer builds them."""

from __future__ import annotations

from lxml import etree

from gateway.identifiers import ServiceId, SubsystemId
from gateway.soap import build_request
from gateway.xml_safety import parse_xml

CONSUMER = SubsystemId("IQ", "GOV", "HJC", "inheritance")
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"


def soap_request(
    service: ServiceId,
    namespace: str,
    fields: dict[str, str],
    *,
    message_id: str = "msg-0001",
    user_id: str | None = "IQ198503141027",
    issue: str | None = "HJC-case-2026-118",
    operation: str | None = None,
) -> bytes:
    body = etree.Element(f"{{{namespace}}}{service.service_code}", nsmap={"p": namespace})
    for name, value in fields.items():
        etree.SubElement(body, f"{{{namespace}}}{name}").text = value
    data = build_request(
        CONSUMER, service, id=message_id, body_element_xml=body, user_id=user_id, issue=issue
    )
    if operation is not None:  # a body that does not match the service code, on purpose
        data = data.replace(f"p:{service.service_code}".encode(), f"p:{operation}".encode())
    return data


def parse(data: bytes) -> etree._Element:
    return parse_xml(data, max_bytes=10 * 1024 * 1024)
