"""SOAP 1.1 Faults in X-Road's form (PR-MESS "Technical errors").

Rules:

- A node reports a technical error as a SOAP 1.1 Fault: ``faultcode`` holds the X-Road code
  unprefixed (``Server.ServerProxy.AccessDenied``), ``faultstring`` the message,
  ``faultactor`` is empty and ``detail`` holds ``<faultDetail xmlns="">`` with the fault's
  unique id, the key to find the error in the node's log. No SOAP Header is sent.
- Business errors are not Faults; they travel inside a normal response body.
- Reading a Fault is lenient about the sender's stack: ``faultcode`` may carry a prefix bound
  to the envelope namespace (``SOAP-ENV:Server``), which is dropped; the child elements may be
  unqualified (as SOAP 1.1 requires) or, as some stacks write them, in the envelope namespace.
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from gateway.faults import FaultError
from gateway.xml_safety import parse_xml

#: The SOAP 1.1 envelope namespace; X-Road speaks SOAP 1.1 only.
SOAP_ENV_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
#: The SOAP 1.2 envelope namespace, recognised only to refuse it with a clear message.
SOAP12_ENV_NS: Final = "http://www.w3.org/2003/05/soap-envelope"

#: SOAP 1.1's HTTP binding sends every Fault with status 500, whoever is at fault; the
#: ``http_status`` of a FaultError (400 for ``Client.*``) is for REST answers only.
SOAP_FAULT_HTTP_STATUS: Final = 500

#: Faults are small; a larger "fault" is not one worth reading.
MAX_FAULT_BYTES: Final = 1024 * 1024

_ENV = f"{{{SOAP_ENV_NS}}}"


def soap_fault(fault: FaultError) -> bytes:
    """The SOAP 1.1 Fault document reporting ``fault`` to the client, UTF-8 with declaration."""
    envelope = etree.Element(f"{_ENV}Envelope", nsmap={"SOAP-ENV": SOAP_ENV_NS})
    body = etree.SubElement(envelope, f"{_ENV}Body")
    element = etree.SubElement(body, f"{_ENV}Fault")
    etree.SubElement(element, "faultcode").text = fault.fault_code
    etree.SubElement(element, "faultstring").text = fault.message
    etree.SubElement(element, "faultactor").text = ""
    detail = etree.SubElement(element, "detail")
    etree.SubElement(detail, "faultDetail").text = fault.detail
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def _child(fault: etree._Element, local: str) -> etree._Element | None:
    for candidate in (local, f"{_ENV}{local}"):
        found = fault.find(candidate)
        if found is not None:
            return found
    return None


def _text(element: etree._Element | None) -> str:
    if element is None:
        return ""
    return "".join(t for t in element.itertext() if isinstance(t, str)).strip()


def fault_from_element(fault: etree._Element) -> FaultError:
    """The :class:`FaultError` a parsed ``SOAP-ENV:Fault`` element reports.

    The fault keeps the sender's ``faultDetail`` id when there is one, so the id a client
    sees is the one in the log of the node that failed.
    """
    code = _text(_child(fault, "faultcode"))
    prefix, sep, local = code.partition(":")
    if sep and fault.nsmap.get(prefix) in (SOAP_ENV_NS, SOAP12_ENV_NS):
        code = local
    message = _text(_child(fault, "faultstring"))
    error = FaultError(code or "Server", message or "(the fault has no faultstring)")
    detail = _child(fault, "detail")
    if detail is not None:
        for element in detail.iter():
            if isinstance(element.tag, str) and etree.QName(element).localname == "faultDetail":
                text = _text(element)
                if text:
                    error.detail = text
                break
    return error


def find_fault(envelope: etree._Element) -> etree._Element | None:
    """The Fault element that is the first element of the envelope's Body, if any."""
    body = envelope.find(f"{_ENV}Body")
    if body is None:
        return None
    for child in body:
        if isinstance(child.tag, str):
            return child if child.tag == f"{_ENV}Fault" else None
    return None


def parse_soap_fault(data: bytes, *, max_bytes: int = MAX_FAULT_BYTES) -> FaultError | None:
    """The fault a SOAP document reports, or None when it is a SOAP message but not a Fault.

    A document that is not SOAP at all is refused with ``Client.InvalidSoap``; callers that
    read someone else's response re-label it with ``with_prefix``.
    """
    envelope = parse_xml(data, max_bytes=max_bytes, what="SOAP message", malformed="InvalidSoap")
    if envelope.tag != f"{_ENV}Envelope":
        raise FaultError(
            "Client.InvalidSoap",
            f"the document's root is {etree.QName(envelope).text}, not a SOAP 1.1 Envelope",
        )
    element = find_fault(envelope)
    return None if element is None else fault_from_element(element)
