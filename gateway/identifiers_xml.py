"""XML form of X-Road identifiers (PR-MESS annex, ``identifiers.xsd``).

Rules:

- An identifier element (``xrd:client``, ``xrd:service``, ``xrd:securityServer``, ...) carries
  ``id:objectType`` and, as children in the ``id`` namespace and in this order,
  ``xRoadInstance``, ``memberClass``, ``memberCode``, then ``subsystemCode`` (SUBSYSTEM, and
  optionally SERVICE), ``serviceCode`` and optional ``serviceVersion`` (SERVICE), or
  ``serverCode`` (SERVER).
- Reading is strict about structure and lenient about layout: surrounding whitespace of a
  part is ignored (pretty-printed messages), comments are skipped, children may come in any
  order, but a missing, repeated or unknown part, a missing ``id:objectType`` or an
  objectType that does not fit the position is refused with ``Client.InvalidXml``.
- A part with characters outside X-Road's set is refused with
  ``Client.InvalidClientIdentifier``, naming the part.
- Writing always produces the canonical order with the ``id`` prefix.
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from config.errors import IdentifierError
from gateway.faults import FaultError, client_fault
from gateway.identifiers import (
    ID_NS,
    XROAD_NS,
    ClientId,
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
)

OBJECT_TYPE: Final = f"{{{ID_NS}}}objectType"

#: Parts each objectType requires and allows, by local name, in canonical order.
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "MEMBER": ("xRoadInstance", "memberClass", "memberCode"),
    "SUBSYSTEM": ("xRoadInstance", "memberClass", "memberCode", "subsystemCode"),
    "SERVICE": ("xRoadInstance", "memberClass", "memberCode", "serviceCode"),
    "SERVER": ("xRoadInstance", "memberClass", "memberCode", "serverCode"),
}
_OPTIONAL: Final[dict[str, tuple[str, ...]]] = {
    "MEMBER": (),
    "SUBSYSTEM": (),
    "SERVICE": ("subsystemCode", "serviceVersion"),
    "SERVER": (),
}
#: objectType values identifiers.xsd defines that Jisr does not accept in messages.
_UNSUPPORTED: Final = {
    "CENTRALSERVICE": "central services were removed from X-Road; address the provider's "
    "service directly",
    "GLOBALGROUP": "a global group cannot appear here",
    "LOCALGROUP": "a local group cannot appear here",
}

Identifier = MemberId | SubsystemId | ServiceId | SecurityServerId


def _name(element: etree._Element) -> str:
    return etree.QName(element).localname


def _describe(element: etree._Element) -> str:
    qname = etree.QName(element)
    prefix = element.prefix
    return f"{prefix}:{qname.localname}" if prefix else qname.localname


#: The identifier part elements each object type may hold.
_ALLOWED: Final = {t: frozenset(_REQUIRED[t]) | frozenset(_OPTIONAL[t]) for t in _REQUIRED}
_ID_TAG_PREFIX: Final = f"{{{ID_NS}}}"


def _parts(element: etree._Element, allowed_types: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    # Every SOAP message has two or three identifiers, read on each node: the element names
    # are compared as lxml's "{namespace}local" strings, and only a refusal describes them.
    object_type = element.get(OBJECT_TYPE)
    if object_type is None:
        where = _describe(element)
        raise client_fault(
            "InvalidXml",
            f"the {where} element has no id:objectType attribute; add "
            f'id:objectType="{allowed_types[0]}" (xmlns:id="{ID_NS}")',
        )
    object_type = object_type.strip()
    if object_type in _UNSUPPORTED:
        where = _describe(element)
        raise client_fault(
            "InvalidXml",
            f'the {where} element has id:objectType="{object_type}": {_UNSUPPORTED[object_type]}',
        )
    if object_type not in allowed_types:
        where = _describe(element)
        expected = " or ".join(allowed_types)
        raise client_fault(
            "InvalidXml",
            f'the {where} element has id:objectType="{object_type}"; here it must be {expected}',
        )
    allowed = _ALLOWED[object_type]
    found: dict[str, str] = {}
    if (element.text or "").strip():
        raise client_fault(
            "InvalidXml",
            f"the {_describe(element)} element holds text; identifier parts go in child elements",
        )
    for child in element:
        tag = child.tag
        if not isinstance(tag, str):
            continue  # comments and processing instructions
        local = tag[len(_ID_TAG_PREFIX) :] if tag.startswith(_ID_TAG_PREFIX) else ""
        if local not in allowed:
            raise client_fault(
                "InvalidXml",
                f"the {_describe(element)} element ({object_type}) contains an unexpected "
                f"element {etree.QName(child).text}; allowed are {', '.join(sorted(allowed))} "
                f"in namespace {ID_NS}",
            )
        if local in found:
            raise client_fault(
                "InvalidXml", f"the {_describe(element)} element repeats id:{local}; give it once"
            )
        if len(child):
            raise client_fault(
                "InvalidXml", f"id:{local} in {_describe(element)} must hold text, not elements"
            )
        found[local] = (child.text or "").strip()
    missing = [part for part in _REQUIRED[object_type] if part not in found]
    if missing:
        where = _describe(element)
        raise client_fault(
            "InvalidXml",
            f"the {where} element ({object_type}) lacks "
            + ", ".join(f"id:{part}" for part in missing),
        )
    return object_type, found


def _invalid_identifier(element: etree._Element, exc: IdentifierError) -> FaultError:
    return client_fault(
        "InvalidClientIdentifier", f"the {_describe(element)} identifier is invalid: {exc}"
    )


def client_from_xml(element: etree._Element) -> ClientId:
    """Read a client identifier (objectType MEMBER or SUBSYSTEM)."""
    object_type, p = _parts(element, ("SUBSYSTEM", "MEMBER"))
    try:
        if object_type == "MEMBER":
            return MemberId(p["xRoadInstance"], p["memberClass"], p["memberCode"])
        return SubsystemId(
            p["xRoadInstance"], p["memberClass"], p["memberCode"], p["subsystemCode"]
        )
    except IdentifierError as exc:
        raise _invalid_identifier(element, exc) from exc


def service_from_xml(element: etree._Element) -> ServiceId:
    """Read a service identifier (objectType SERVICE)."""
    _, p = _parts(element, ("SERVICE",))
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
        raise _invalid_identifier(element, exc) from exc


def server_from_xml(element: etree._Element) -> SecurityServerId:
    """Read a security server identifier (objectType SERVER)."""
    _, p = _parts(element, ("SERVER",))
    try:
        return SecurityServerId(
            p["xRoadInstance"], p["memberClass"], p["memberCode"], p["serverCode"]
        )
    except IdentifierError as exc:
        raise _invalid_identifier(element, exc) from exc


def identifier_from_xml(element: etree._Element) -> Identifier:
    """Read any supported identifier, whatever its objectType."""
    object_type = (element.get(OBJECT_TYPE) or "").strip()
    if object_type == "SERVICE":
        return service_from_xml(element)
    if object_type == "SERVER":
        return server_from_xml(element)
    return client_from_xml(element)


def _id_parts(identifier: Identifier) -> list[tuple[str, str]]:
    parts = [
        ("xRoadInstance", identifier.instance),
        ("memberClass", identifier.member_class),
        ("memberCode", identifier.member_code),
    ]
    if isinstance(identifier, SubsystemId):
        parts.append(("subsystemCode", identifier.subsystem_code))
    elif isinstance(identifier, ServiceId):
        if identifier.subsystem_code is not None:
            parts.append(("subsystemCode", identifier.subsystem_code))
        parts.append(("serviceCode", identifier.service_code))
        if identifier.service_version is not None:
            parts.append(("serviceVersion", identifier.service_version))
    elif isinstance(identifier, SecurityServerId):
        parts.append(("serverCode", identifier.server_code))
    return parts


def identifier_to_xml(
    identifier: Identifier,
    tag: str | etree.QName,
    *,
    parent: etree._Element | None = None,
) -> etree._Element:
    """Build the identifier element named ``tag`` (Clark notation or QName).

    With ``parent`` the element is appended to it and inherits its namespace declarations;
    otherwise it declares ``xrd`` and ``id`` itself.
    """
    nsmap = {"xrd": XROAD_NS, "id": ID_NS}
    if parent is None:
        element = etree.Element(tag, nsmap=nsmap)
    else:
        element = etree.SubElement(parent, tag, nsmap=nsmap)
    element.set(OBJECT_TYPE, identifier.object_type)
    for local, value in _id_parts(identifier):
        etree.SubElement(element, f"{{{ID_NS}}}{local}").text = value
    return element


def client_to_xml(
    client: ClientId, *, tag: str = f"{{{XROAD_NS}}}client", parent: etree._Element | None = None
) -> etree._Element:
    """``<xrd:client id:objectType="SUBSYSTEM|MEMBER">`` for ``client``."""
    return identifier_to_xml(client, tag, parent=parent)


def service_to_xml(
    service: ServiceId,
    *,
    tag: str = f"{{{XROAD_NS}}}service",
    parent: etree._Element | None = None,
) -> etree._Element:
    """``<xrd:service id:objectType="SERVICE">`` for ``service``."""
    return identifier_to_xml(service, tag, parent=parent)


def server_to_xml(
    server: SecurityServerId,
    *,
    tag: str = f"{{{XROAD_NS}}}securityServer",
    parent: etree._Element | None = None,
) -> etree._Element:
    """``<xrd:securityServer id:objectType="SERVER">`` for ``server``."""
    return identifier_to_xml(server, tag, parent=parent)
