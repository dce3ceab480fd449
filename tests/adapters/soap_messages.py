"""SOAP request bytes for the adapter tests, built the way an X-Road consumer builds them."""

from __future__ import annotations

from lxml import etree

from adapters.soap_headers import NSMAP, SOAP_ENV_NS, XRoadHeaders, header_elements
from gateway.identifiers import ServiceId, SubsystemId

CONSUMER = SubsystemId("IQ", "GOV", "HJC", "inheritance")


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
    headers = XRoadHeaders(
        client=CONSUMER, service=service, id=message_id, user_id=user_id, issue=issue
    )
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap=NSMAP)
    header = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Header")
    for element in header_elements(headers):
        header.append(element)
    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    op = etree.SubElement(body, f"{{{namespace}}}{operation or service.service_code}")
    for name, value in fields.items():
        etree.SubElement(op, f"{{{namespace}}}{name}").text = value
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
