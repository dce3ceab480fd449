"""Provider toolkit: put an X-Road SOAP face on an existing (legacy) information system.

Rules:

- A provider's node forwards the consumer's SOAP request unchanged; the provider answers with
  an envelope whose header repeats the request's header block *verbatim and in order*
  (PR-MESS), and whose body holds ``{serviceCode}Response`` in the service's namespace.
- The request is parsed and checked by :mod:`gateway.soap`, exactly as a node checks it: size
  limit, DOCTYPE refused, no entities, no network; Envelope, Header, the mandatory X-Road
  fields, protocol 4.0, a body element named after ``service/serviceCode``. ``text/xml``,
  SOAP with attachments and MTOM are accepted.
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

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog
from aiohttp import web
from lxml import etree

from adapters.soap_headers import XRoadHeaders, headers_of
from config.errors import JisrError
from gateway import soap
from gateway.faults import FaultError, client_fault, from_error
from gateway.soap_fault import SOAP_FAULT_HTTP_STATUS, soap_fault

#: Largest SOAP request the toolkit reads unless told otherwise (X-Road's logged-body default).
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
_log = structlog.get_logger("adapters.provider")


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One X-Road SOAP request as the provider received it."""

    headers: XRoadHeaders
    #: The full parse (:mod:`gateway.soap`): raw bytes, attachments, the header as received.
    message: soap.SoapMessage

    @property
    def body(self) -> etree._Element:
        """The operation element: the one element inside ``SOAP-ENV:Body``."""
        return self.message.body

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


def parse_request(
    data: bytes, content_type: str = "text/xml", *, max_bytes: int = DEFAULT_MAX_BYTES
) -> ProviderRequest:
    """Parse and check an incoming X-Road SOAP request; refusals are ``Client.*`` faults.

    ``text/xml`` and ``multipart/related`` (SOAP with attachments, MTOM) are accepted; the
    checks are :func:`gateway.soap.parse_soap_request`'s, the same a node makes.
    """
    message = soap.parse_soap_request(data, content_type, max_bytes=max_bytes)
    return ProviderRequest(headers=headers_of(message), message=message)


def build_response(request: ProviderRequest, body: etree._Element) -> bytes:
    """The response envelope: the request's header block echoed in order, then ``body``."""
    return soap.build_response(request.message, body)


def build_fault(fault: FaultError) -> bytes:
    """A SOAP 1.1 Fault in X-Road's form: code, string, empty actor, ``faultDetail`` id."""
    return soap_fault(fault)


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
        except Exception:
            # A failure of the wrapped system must still reach the consumer as a SOAP Fault,
            # with an id to find this log line; the exception text may hold internals.
            failure = FaultError("Server.InternalError", "the service failed to answer")
            _log.exception("operation_failed", detail=failure.detail)
            return self._fault_response(failure)
        return web.Response(body=body, status=200, content_type="text/xml", charset="utf-8")

    def _fault_response(self, fault: FaultError) -> web.Response:
        _log.info("soap_fault", fault_code=fault.fault_code, detail=fault.detail)
        return web.Response(
            body=build_fault(fault),
            status=SOAP_FAULT_HTTP_STATUS,
            content_type="text/xml",
            charset="utf-8",
        )

    async def _respond(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            raise FaultError(
                "Client.RequestTooLarge",
                f"the request is {request.content_length} bytes, over the limit of "
                f"{self.max_request_bytes} bytes",
                http_status=413,
            )
        data = await _read_limited(request, self.max_request_bytes)
        content_type = request.headers.get("Content-Type", "")
        parsed = parse_request(data, content_type, max_bytes=self.max_request_bytes)
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
