"""Provider toolkit: put an X-Road SOAP face on an existing (legacy) information system.

Rules:

- A provider's node forwards the consumer's SOAP request unchanged; the provider answers with
  an envelope whose header repeats the request's header block *verbatim and in order*
  (PR-MESS), and whose body holds ``{serviceCode}Response`` in the service's namespace.
- The request is parsed safely (size limit, DOCTYPE refused, no entities, no network) and
  checked as a node checks it: Envelope, Header, the mandatory X-Road fields, protocol 4.0,
  a body element named after ``service/serviceCode``.
- Technical errors become SOAP Faults (HTTP 500) carrying the X-Road fault code, the message
  and a ``faultDetail`` id; *business* errors ("no such citizen") belong in a normal response,
  which is the operation's job, not the toolkit's.
- Operations are ``async`` callables taking a :class:`ProviderRequest` and returning the
  response body element; they never see raw bytes.

Typical use::

    async def get_citizen(request: ProviderRequest) -> etree._Element:
        national_id = request.require_text("nationalId")
        response = request.response_element()
        ...
        return response

    soap = SoapProvider(NAMESPACE, {"getCitizen": get_citizen})
    app.router.add_post("/soap", soap.handle)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from aiohttp import web
from lxml import etree

from adapters.soap_headers import (
    DEFAULT_MAX_BYTES,
    NSMAP,
    SOAP_ENV_NS,
    XRoadHeaders,
    envelope_parts,
    parse_soap_xml,
    read_headers,
)
from config.errors import JisrError
from gateway.faults import FaultError, client_fault, from_error
from gateway.identifiers import XROAD_NS

SOAP_CONTENT_TYPE: Final = "text/xml; charset=utf-8"
_log = structlog.get_logger("adapters.provider")


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One X-Road SOAP request as the provider received it."""

    headers: XRoadHeaders
    #: The request's ``SOAP-ENV:Header``, echoed verbatim into the response.
    header_element: etree._Element
    #: The operation element: the first element child of ``SOAP-ENV:Body``.
    body: etree._Element

    @property
    def operation(self) -> str:
        return etree.QName(self.body).localname

    @property
    def namespace(self) -> str | None:
        return etree.QName(self.body).namespace

    def text(self, name: str) -> str | None:
        """Stripped text of the body's child ``name`` (in the body's namespace or none)."""
        found = [
            child
            for child in self.body
            if isinstance(child.tag, str)
            and etree.QName(child).localname == name
            and etree.QName(child).namespace in (None, self.namespace)
        ]
        if len(found) > 1:
            raise client_fault("InvalidBody", f"the {self.operation} element repeats <{name}>")
        if not found:
            return None
        return (found[0].text or "").strip()

    def require_text(self, name: str) -> str:
        """Like :meth:`text`, but a missing or empty element is a ``Client.InvalidBody`` fault."""
        value = self.text(name)
        if not value:
            raise client_fault(
                "InvalidBody", f"the {self.operation} element needs a non-empty <{name}> child"
            )
        return value

    def response_element(self) -> etree._Element:
        """An empty ``{serviceCode}Response`` element in the request body's namespace."""
        name = f"{self.operation}Response"
        if self.namespace:
            # A default namespace keeps the response readable: <getCitizenResponse xmlns=...>.
            nsmap: Any = {None: self.namespace}  # the lxml stubs do not allow a None prefix
            return etree.Element(f"{{{self.namespace}}}{name}", nsmap=nsmap)
        return etree.Element(name)


def parse_request(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ProviderRequest:
    """Parse and check an incoming X-Road SOAP request; refusals are ``Client.*`` faults."""
    root = parse_soap_xml(data, max_bytes=max_bytes)
    header, body = envelope_parts(root)
    headers = read_headers(header)
    assert header is not None  # read_headers refuses a missing header
    children = [child for child in body if isinstance(child.tag, str)]
    if not children:
        raise client_fault("MissingBody", "the SOAP Body is empty; put the operation element in it")
    if len(children) > 1:
        raise client_fault(
            "InvalidBody", "the SOAP Body holds more than one element; send exactly one operation"
        )
    operation = children[0]
    if etree.QName(operation).localname != headers.service.service_code:
        raise client_fault(
            "InconsistentHeaders",
            f"the body element is {etree.QName(operation).localname} but xrd:service names "
            f"{headers.service.service_code}; they must be the same",
        )
    return ProviderRequest(headers=headers, header_element=header, body=operation)


def build_response(request: ProviderRequest, body: etree._Element) -> bytes:
    """The response envelope: the request's header block echoed, then ``body``."""
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap=NSMAP)
    header = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Header")
    for child in request.header_element:
        header.append(copy.deepcopy(child))
    etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body").append(body)
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def build_fault(fault: FaultError) -> bytes:
    """A SOAP 1.1 Fault in X-Road's form: code, string, empty actor, ``faultDetail`` id."""
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap=NSMAP)
    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    element = etree.SubElement(body, f"{{{SOAP_ENV_NS}}}Fault")
    etree.SubElement(element, "faultcode").text = fault.fault_code
    etree.SubElement(element, "faultstring").text = fault.message
    etree.SubElement(element, "faultactor")
    detail = etree.SubElement(element, "detail")
    etree.SubElement(detail, f"{{{XROAD_NS}}}faultDetail").text = fault.detail
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def append_text(parent: etree._Element, name: str, value: object | None) -> None:
    """Append ``<name>value</name>`` in the parent's namespace; ``None`` appends nothing."""
    if value is None:
        return
    namespace = etree.QName(parent).namespace
    tag = f"{{{namespace}}}{name}" if namespace else name
    etree.SubElement(parent, tag).text = str(value)


Operation = Callable[[ProviderRequest], Awaitable[etree._Element]]


class SoapProvider:
    """An aiohttp handler that dispatches X-Road SOAP requests to operations by service code."""

    def __init__(
        self,
        namespace: str,
        operations: Mapping[str, Operation],
        *,
        max_request_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.namespace = namespace
        self.operations = dict(operations)
        self.max_request_bytes = max_request_bytes

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = await self._respond(request)
        except FaultError as fault:
            return self._fault_response(fault)
        except JisrError as exc:
            return self._fault_response(from_error(exc, prefix="Server"))
        return web.Response(body=body, status=200, content_type="text/xml", charset="utf-8")

    def _fault_response(self, fault: FaultError) -> web.Response:
        _log.info("soap_fault", fault_code=fault.fault_code, detail=fault.detail)
        return web.Response(
            body=build_fault(fault), status=500, content_type="text/xml", charset="utf-8"
        )

    async def _respond(self, request: web.Request) -> bytes:
        if request.content_type != "text/xml":
            raise client_fault(
                "InvalidContentType",
                f"Content-Type is {request.content_type!r}; SOAP 1.1 requests use text/xml",
            )
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            raise FaultError(
                "Client.RequestTooLarge",
                f"the request is {request.content_length} bytes, over the limit of "
                f"{self.max_request_bytes} bytes",
                http_status=413,
            )
        data = await _read_limited(request, self.max_request_bytes)
        parsed = parse_request(data, max_bytes=self.max_request_bytes)
        if parsed.namespace != self.namespace:
            raise client_fault(
                "InvalidBody",
                f"the {parsed.operation} element is in namespace {parsed.namespace!r}; "
                f"this service uses {self.namespace!r} (see its WSDL)",
            )
        operation = self.operations.get(parsed.operation)
        if operation is None:
            known = ", ".join(sorted(self.operations))
            raise client_fault(
                "UnknownService",
                f"this provider has no operation {parsed.operation!r}; it offers {known}",
            )
        structlog.contextvars.bind_contextvars(
            message_id=parsed.headers.id,
            client=str(parsed.headers.client),
            service=str(parsed.headers.service),
        )
        try:
            response = await operation(parsed)
        finally:
            structlog.contextvars.unbind_contextvars("message_id", "client", "service")
        return build_response(parsed, response)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise FaultError(
                "Client.RequestTooLarge",
                f"the request is over the limit of {limit} bytes; send a smaller message",
                http_status=413,
            )
        chunks.append(chunk)
    return b"".join(chunks)
