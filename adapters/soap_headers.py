"""The X-Road SOAP 4.0 header block as integrators see it.

Rules:

- The header block is ``client``, ``service``, ``id``, ``userId``, ``issue``,
  ``protocolVersion`` (and ``requestHash`` in responses), in the ``xrd`` namespace; parsing
  and checking messages is :mod:`gateway.soap`'s job, this module only turns its result into
  a small value (:class:`XRoadHeaders`) and builds the header elements a client sends.
- Elements are built in PR-MESS's order (``client``, ``service``, ``userId``, ``id``,
  ``issue``, ``protocolVersion``) with :mod:`gateway.identifiers_xml`, so a
  message made by zeep carries exactly the header a node expects.
"""

from __future__ import annotations

import dataclasses

from lxml import etree

from gateway.identifiers import XROAD_NS, ClientId, ServiceId
from gateway.identifiers_xml import client_to_xml, service_to_xml
from gateway.soap import PROTOCOL_VERSION, SoapMessage

__all__ = ["PROTOCOL_VERSION", "XRoadHeaders", "header_elements", "headers_of"]


@dataclasses.dataclass(frozen=True, slots=True)
class XRoadHeaders:
    """The X-Road fields of one SOAP message's header."""

    client: ClientId
    service: ServiceId
    id: str
    protocol_version: str = PROTOCOL_VERSION
    user_id: str | None = None
    issue: str | None = None
    #: Present in responses only: the provider's node hash of the request as it received it.
    request_hash: str | None = None
    request_hash_algorithm: str | None = None


def headers_of(message: SoapMessage) -> XRoadHeaders:
    """The header fields of a message parsed by :mod:`gateway.soap` (``service`` required)."""
    if message.service is None:
        raise ValueError("the message has no xrd:service header")
    digest = message.request_hash
    return XRoadHeaders(
        client=message.client,
        service=message.service,
        id=message.id,
        protocol_version=message.protocol_version,
        user_id=message.user_id,
        issue=message.issue,
        request_hash=digest.value if digest is not None else None,
        request_hash_algorithm=digest.algorithm if digest is not None else None,
    )


def header_elements(headers: XRoadHeaders) -> list[etree._Element]:
    """The header block's elements in PR-MESS order, ready to put under ``SOAP-ENV:Header``."""
    elements = [client_to_xml(headers.client), service_to_xml(headers.service)]
    for name, value in (
        ("userId", headers.user_id),
        ("id", headers.id),
        ("issue", headers.issue),
        ("protocolVersion", headers.protocol_version),
    ):
        if value is not None:
            element = etree.Element(f"{{{XROAD_NS}}}{name}", nsmap={"xrd": XROAD_NS})
            element.text = value
            elements.append(element)
    return elements
