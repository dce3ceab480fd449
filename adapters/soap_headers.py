"""The X-Road SOAP 4.0 header block, read and written by integrators' code.

Rules:

- The header block is ``client``, ``service``, ``id``, ``userId``, ``issue``,
  ``protocolVersion`` (and ``requestHash`` in responses), all in the ``xrd`` namespace;
  ``client`` and ``service`` hold ``id:``-namespaced parts under an ``id:objectType``.
- Reading refuses what an X-Road node refuses, with the same fault codes: a missing field is
  ``Client.MissingHeaderField``, a repeated one ``Client.DuplicateHeaderField``, a protocol
  version other than 4.0 ``Client.InvalidProtocolVersion``, a malformed identifier
  ``Client.InvalidXml`` or ``Client.InvalidClientIdentifier``.
- Header elements outside the ``xrd`` namespace (WS-Addressing, extensions) are ignored here;
  a provider still echoes them, because it copies the whole header block.
- Untrusted XML is parsed only by :func:`parse_soap_xml`: size-limited, DOCTYPE refused,
  no entity resolution, no network.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from lxml import etree

from config.errors import IdentifierError
from gateway.faults import FaultError, client_fault
from gateway.identifiers import (
    ID_NS,
    XROAD_NS,
    ClientId,
    MemberId,
    ServiceId,
    SubsystemId,
)

SOAP_ENV_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
PROTOCOL_VERSION: Final = "4.0"
#: Largest SOAP message the kit parses unless told otherwise (X-Road's logged-body default).
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024

NSMAP: Final = {"SOAP-ENV": SOAP_ENV_NS, "xrd": XROAD_NS, "id": ID_NS}
_OBJECT_TYPE: Final = f"{{{ID_NS}}}objectType"
_FIELDS: Final = ("client", "service", "id", "userId", "issue", "protocolVersion", "requestHash")
_TEXT_FIELDS: Final = ("id", "userId", "issue", "protocolVersion")


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


def _parser() -> etree.XMLParser:
    # One parser per call: lxml parsers are not safe to share between threads.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse_soap_xml(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """Parse a SOAP message's bytes into its root element, refusing anything unsafe."""
    if len(data) > max_bytes:
        raise FaultError(
            "Client.RequestTooLarge",
            f"the SOAP message is {len(data)} bytes, over the limit of {max_bytes} bytes; "
            "send a smaller message",
            http_status=413,
        )
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise client_fault(
            "InvalidXml",
            "the SOAP message contains a document type declaration; remove the <!DOCTYPE>",
        )
    if not data.strip():
        raise client_fault("InvalidSoap", "the SOAP message is empty; expected an Envelope")
    try:
        root = etree.fromstring(data, parser=_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise client_fault(
            "InvalidSoap", f"the SOAP message is not well-formed XML: {exc}"
        ) from exc
    if root.getroottree().docinfo.internalDTD is not None:
        raise client_fault("InvalidXml", "the SOAP message contains a DTD; remove it")
    return root


def envelope_parts(root: etree._Element) -> tuple[etree._Element | None, etree._Element]:
    """The ``Header`` (or ``None``) and ``Body`` of a SOAP 1.1 envelope."""
    if root.tag != f"{{{SOAP_ENV_NS}}}Envelope":
        raise client_fault(
            "InvalidSoap",
            f"the root element is {root.tag}, not a SOAP 1.1 Envelope in namespace {SOAP_ENV_NS}",
        )
    header = root.find(f"{{{SOAP_ENV_NS}}}Header")
    body = root.find(f"{{{SOAP_ENV_NS}}}Body")
    if body is None:
        raise client_fault("MissingBody", "the SOAP Envelope has no Body element")
    return header, body


def _identifier_parts(element: etree._Element, field: str) -> tuple[str, dict[str, str]]:
    object_type = (element.get(_OBJECT_TYPE) or "").strip()
    if not object_type:
        raise client_fault(
            "InvalidXml",
            f'the xrd:{field} header has no id:objectType attribute; add one (xmlns:id="{ID_NS}")',
        )
    parts: dict[str, str] = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue
        qname = etree.QName(child)
        if qname.namespace != ID_NS:
            raise client_fault(
                "InvalidXml", f"the xrd:{field} header contains {qname.text}, not an id: part"
            )
        if qname.localname in parts:
            raise client_fault("InvalidXml", f"the xrd:{field} header repeats id:{qname.localname}")
        parts[qname.localname] = (child.text or "").strip()
    return object_type, parts


def _require(parts: dict[str, str], names: tuple[str, ...], field: str) -> None:
    missing = [name for name in names if name not in parts]
    if missing:
        raise client_fault(
            "InvalidXml",
            f"the xrd:{field} header lacks " + ", ".join(f"id:{name}" for name in missing),
        )


def read_client(element: etree._Element) -> ClientId:
    """A client identifier from an ``xrd:client`` element (objectType MEMBER or SUBSYSTEM)."""
    object_type, p = _identifier_parts(element, "client")
    base = ("xRoadInstance", "memberClass", "memberCode")
    try:
        if object_type == "MEMBER":
            _require(p, base, "client")
            return MemberId(p["xRoadInstance"], p["memberClass"], p["memberCode"])
        if object_type == "SUBSYSTEM":
            _require(p, (*base, "subsystemCode"), "client")
            return SubsystemId(
                p["xRoadInstance"], p["memberClass"], p["memberCode"], p["subsystemCode"]
            )
    except IdentifierError as exc:
        raise client_fault("InvalidClientIdentifier", f"the xrd:client header: {exc}") from exc
    raise client_fault(
        "InvalidXml",
        f'the xrd:client header has id:objectType="{object_type}"; use MEMBER or SUBSYSTEM',
    )


def read_service(element: etree._Element) -> ServiceId:
    """A service identifier from an ``xrd:service`` element (objectType SERVICE)."""
    object_type, p = _identifier_parts(element, "service")
    if object_type != "SERVICE":
        raise client_fault(
            "InvalidXml", f'the xrd:service header has id:objectType="{object_type}"; use SERVICE'
        )
    _require(p, ("xRoadInstance", "memberClass", "memberCode", "serviceCode"), "service")
    try:
        return ServiceId(
            p["xRoadInstance"],
            p["memberClass"],
            p["memberCode"],
            p.get("subsystemCode"),
            p["serviceCode"],
            p.get("serviceVersion"),
        )
    except IdentifierError as exc:
        raise client_fault("InvalidClientIdentifier", f"the xrd:service header: {exc}") from exc


def read_headers(header: etree._Element | None) -> XRoadHeaders:
    """The X-Road fields of a SOAP ``Header`` element, checked as a node checks them."""
    if header is None:
        raise client_fault("MissingHeader", "the SOAP message has no Header element")
    found: dict[str, etree._Element] = {}
    for child in header:
        if not isinstance(child.tag, str):
            continue
        qname = etree.QName(child)
        if qname.namespace != XROAD_NS or qname.localname not in _FIELDS:
            continue
        if qname.localname in found:
            raise client_fault(
                "DuplicateHeaderField", f"the SOAP header repeats xrd:{qname.localname}"
            )
        found[qname.localname] = child
    for name in ("client", "service", "id", "protocolVersion"):
        if name not in found:
            raise client_fault(
                "MissingHeaderField",
                f'the SOAP header lacks xrd:{name} (xmlns:xrd="{XROAD_NS}")',
            )
    texts = {name: (found[name].text or "").strip() for name in _TEXT_FIELDS if name in found}
    if texts["protocolVersion"] != PROTOCOL_VERSION:
        raise client_fault(
            "InvalidProtocolVersion",
            f"xrd:protocolVersion is {texts['protocolVersion']!r}; this service speaks "
            f"{PROTOCOL_VERSION}",
        )
    if not texts["id"]:
        raise client_fault("MissingHeaderField", "xrd:id is empty; give each message a unique id")
    hash_element = found.get("requestHash")
    return XRoadHeaders(
        client=read_client(found["client"]),
        service=read_service(found["service"]),
        id=texts["id"],
        protocol_version=texts["protocolVersion"],
        user_id=texts.get("userId") or None,
        issue=texts.get("issue") or None,
        request_hash=(hash_element.text or "").strip() if hash_element is not None else None,
        request_hash_algorithm=hash_element.get("algorithmId")
        if hash_element is not None
        else None,
    )


def _identifier_element(
    tag: str, object_type: str, parts: list[tuple[str, str | None]]
) -> etree._Element:
    element = etree.Element(f"{{{XROAD_NS}}}{tag}", nsmap={"xrd": XROAD_NS, "id": ID_NS})
    element.set(_OBJECT_TYPE, object_type)
    for name, value in parts:
        if value is not None:
            etree.SubElement(element, f"{{{ID_NS}}}{name}").text = value
    return element


def client_element(client: ClientId) -> etree._Element:
    """``<xrd:client id:objectType=...>`` for ``client``."""
    parts: list[tuple[str, str | None]] = [
        ("xRoadInstance", client.instance),
        ("memberClass", client.member_class),
        ("memberCode", client.member_code),
    ]
    if isinstance(client, SubsystemId):
        parts.append(("subsystemCode", client.subsystem_code))
    return _identifier_element("client", client.object_type, parts)


def service_element(service: ServiceId) -> etree._Element:
    """``<xrd:service id:objectType="SERVICE">`` for ``service``."""
    return _identifier_element(
        "service",
        "SERVICE",
        [
            ("xRoadInstance", service.instance),
            ("memberClass", service.member_class),
            ("memberCode", service.member_code),
            ("subsystemCode", service.subsystem_code),
            ("serviceCode", service.service_code),
            ("serviceVersion", service.service_version),
        ],
    )


def header_elements(headers: XRoadHeaders) -> list[etree._Element]:
    """The header block's elements in PR-MESS order, ready to put under ``SOAP-ENV:Header``."""
    elements = [client_element(headers.client), service_element(headers.service)]
    for name, value in (
        ("id", headers.id),
        ("userId", headers.user_id),
        ("issue", headers.issue),
        ("protocolVersion", headers.protocol_version),
    ):
        if value is not None:
            element = etree.Element(f"{{{XROAD_NS}}}{name}", nsmap={"xrd": XROAD_NS})
            element.text = value
            elements.append(element)
    return elements
