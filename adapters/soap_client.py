"""Call an X-Road SOAP service through your own node with zeep.

Rules:

- The service's WSDL (a file, or a URL such as the provider's ``getWsdl`` copy) gives zeep the
  operations and types; the message always goes to the *node's* client side (``node_url``,
  path ``/``), never to the WSDL's ``soap:address``, which X-Road replaces with a placeholder.
- Every call carries the X-Road header block in PR-MESS order: ``client``, ``service``,
  ``id`` (a fresh uuid4 unless given), ``userId``, ``issue``, ``protocolVersion`` 4.0. The
  headers are passed to zeep as ready-made elements (``_soapheaders``), so they are sent the
  same way whether or not the WSDL declares them.
- The answer's header block is read from the raw response envelope and checked: the echoed
  ``id``, ``client`` and ``service`` must be the ones sent, else
  :class:`~adapters.errors.UnexpectedResponseError`.
- A SOAP Fault becomes :class:`~gateway.faults.FaultError` with the X-Road code (a namespace
  prefix on ``faultcode`` is dropped) and the ``faultDetail`` id; no connection is
  :class:`~adapters.errors.NodeUnreachableError`; a non-SOAP answer is
  :class:`~adapters.errors.UnexpectedResponseError`.
- WSDLs are parsed without DTDs, entities or fetches of further documents over the network.
- zeep is synchronous (``requests``); :meth:`XRoadSoapClient.acall` runs a call in a worker
  thread so an asyncio program is not blocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import requests
import zeep
import zeep.exceptions
import zeep.helpers
import zeep.plugins
from lxml import etree

from adapters.errors import NodeUnreachableError, UnexpectedResponseError
from adapters.soap_headers import (
    PROTOCOL_VERSION,
    SOAP_ENV_NS,
    XRoadHeaders,
    header_elements,
    read_headers,
)
from config.errors import ValidationError
from gateway.faults import FaultError
from gateway.identifiers import XROAD_NS, ClientId, ServiceId, parse_client

DEFAULT_TIMEOUT: Final = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class SoapResult:
    """A SOAP answer: the body as plain Python data, and the echoed X-Road headers."""

    #: The response element's content as dicts and lists (``zeep.helpers.serialize_object``).
    body: Any
    headers: XRoadHeaders
    #: The response envelope as received, for logging or archiving by the integrator.
    envelope: bytes


class _EnvelopeCapture(zeep.plugins.Plugin):
    """Keeps the last raw response envelope per thread, so headers can be read exactly."""

    def __init__(self) -> None:
        self._local = threading.local()

    def ingress(self, envelope: etree._Element, http_headers: Any, operation: Any) -> Any:
        self._local.envelope = etree.tostring(envelope)
        return envelope, http_headers

    def take(self) -> bytes | None:
        envelope: bytes | None = getattr(self._local, "envelope", None)
        self._local.envelope = None
        return envelope


def _fault_from_zeep(exc: zeep.exceptions.Fault) -> FaultError:
    code = str(exc.code or "Server").strip()
    if ":" in code:  # "SOAP-ENV:Server.ServerProxy.AccessDenied" → the X-Road code
        code = code.split(":", 1)[1]
    fault = FaultError(code, str(exc.message or "the node returned a SOAP Fault"))
    detail = exc.detail
    if isinstance(detail, etree._Element):
        found = detail.find(f".//{{{XROAD_NS}}}faultDetail")
        if found is None:
            found = detail.find(".//faultDetail")
        if found is not None and found.text:
            fault.detail = found.text.strip()
    return fault


def _parse(envelope: bytes) -> etree._Element:
    # The envelope was already parsed by zeep with DTDs forbidden; parse it again just as safely.
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    return etree.fromstring(envelope, parser=parser)


class XRoadSoapClient:
    """One X-Road SOAP service, called through the integrator's node.

    ``wsdl`` is a path or URL of the service's WSDL; ``node_url`` the node's client side
    (``http://node:8080``); ``client_id`` the calling subsystem; ``service_id`` the service
    (its ``serviceCode`` is the WSDL operation called). Pass a ``requests.Session`` to set
    TLS client certificates and trusted CAs for an HTTPS client side.
    """

    def __init__(
        self,
        wsdl: str | Path,
        node_url: str,
        client_id: ClientId | str,
        service_id: ServiceId | str,
        *,
        user_id: str | None = None,
        session: requests.Session | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.client_id = parse_client(client_id) if isinstance(client_id, str) else client_id
        self.service_id = ServiceId.parse(service_id) if isinstance(service_id, str) else service_id
        self.user_id = user_id
        # The node's client side takes SOAP at "/"; a URL with a path is used as given.
        self.node_url = (
            node_url if urlsplit(node_url).path not in ("", "/") else (node_url.rstrip("/") + "/")
        )
        self._capture = _EnvelopeCapture()
        # zeep is unannotated: its calls below carry type-ignore comments for that reason.
        transport = zeep.Transport(  # type: ignore[no-untyped-call]
            session=session, timeout=timeout, operation_timeout=timeout
        )
        settings = zeep.Settings(
            strict=True,
            forbid_dtd=True,
            forbid_entities=True,
            forbid_external=True,
            xml_huge_tree=False,
        )
        try:
            self.zeep = zeep.Client(  # type: ignore[no-untyped-call]
                str(wsdl), transport=transport, settings=settings, plugins=[self._capture]
            )
        except (OSError, requests.RequestException) as exc:
            raise NodeUnreachableError(f"cannot load the WSDL from {wsdl}: {exc}") from exc
        except (zeep.exceptions.Error, etree.XMLSyntaxError) as exc:
            raise ValidationError(f"the WSDL at {wsdl} cannot be used: {exc}") from exc
        code = self.service_id.service_code
        bindings = [
            str(name)
            for name, binding in self.zeep.wsdl.bindings.items()
            if code in binding.all()  # type: ignore[no-untyped-call]
        ]
        if not bindings:
            raise ValidationError(
                f"the WSDL at {wsdl} has no operation {code!r}; the service code must be the "
                "name of a WSDL operation"
            )
        service = self.zeep.create_service(bindings[0], self.node_url)  # type: ignore[no-untyped-call]
        self._operation = getattr(service, code)

    def call(
        self,
        *,
        message_id: str | None = None,
        user_id: str | None = None,
        issue: str | None = None,
        **fields: Any,
    ) -> SoapResult:
        """Call the service with the body ``fields`` (the WSDL request element's children)."""
        sent = XRoadHeaders(
            client=self.client_id,
            service=self.service_id,
            id=message_id or str(uuid.uuid4()),
            protocol_version=PROTOCOL_VERSION,
            user_id=user_id if user_id is not None else self.user_id,
            issue=issue,
        )
        self._capture.take()
        try:
            result = self._operation(**fields, _soapheaders=header_elements(sent))
        except zeep.exceptions.Fault as exc:
            self._refuse_non_soap(self._capture.take())
            raise _fault_from_zeep(exc) from exc
        except requests.RequestException as exc:
            raise NodeUnreachableError(
                f"cannot reach the node's client side at {self.node_url}: {exc} "
                "(check the address, the port and that the node is running)"
            ) from exc
        except zeep.exceptions.TransportError as exc:
            raise UnexpectedResponseError(
                f"the node answered HTTP {exc.status_code} without a SOAP message: {exc.message}"
            ) from exc
        except zeep.exceptions.ValidationError as exc:
            raise ValidationError(f"the request does not fit the WSDL: {exc}") from exc
        except (zeep.exceptions.XMLParseError, zeep.exceptions.XMLSyntaxError) as exc:
            raise UnexpectedResponseError(f"the response does not fit the WSDL: {exc}") from exc
        envelope = self._capture.take()
        if envelope is None:
            raise UnexpectedResponseError("the node's answer had no SOAP envelope")
        received = self._echoed_headers(envelope, sent)
        if hasattr(result, "body") and hasattr(result, "header"):
            result = result.body
        return SoapResult(
            body=zeep.helpers.serialize_object(result, dict),  # type: ignore[no-untyped-call]
            headers=received,
            envelope=envelope,
        )

    async def acall(
        self,
        *,
        message_id: str | None = None,
        user_id: str | None = None,
        issue: str | None = None,
        **fields: Any,
    ) -> SoapResult:
        """:meth:`call` in a worker thread, for asyncio programs."""
        return await asyncio.to_thread(
            self.call, message_id=message_id, user_id=user_id, issue=issue, **fields
        )

    @staticmethod
    def _refuse_non_soap(envelope: bytes | None) -> None:
        """zeep reports any XML error answer (an HTML page) as a fault; tell them apart."""
        if envelope is None:
            return
        root = _parse(envelope)
        if root.find(f"{{{SOAP_ENV_NS}}}Body/{{{SOAP_ENV_NS}}}Fault") is None:
            raise UnexpectedResponseError(
                f"the node answered with <{etree.QName(root).localname}> instead of a SOAP "
                "message; check that node_url is the node's client side"
            )

    def _echoed_headers(self, envelope: bytes, sent: XRoadHeaders) -> XRoadHeaders:
        root = _parse(envelope)
        try:
            received = read_headers(root.find(f"{{{SOAP_ENV_NS}}}Header"))
        except FaultError as exc:
            raise UnexpectedResponseError(
                f"the response's X-Road header is not valid: {exc.message}"
            ) from exc
        mismatched = [
            name
            for name, ours, theirs in (
                ("id", sent.id, received.id),
                ("client", sent.client, received.client),
                ("service", sent.service, received.service),
            )
            if ours != theirs
        ]
        if mismatched:
            raise UnexpectedResponseError(
                "the response does not echo the request's " + ", ".join(mismatched),
                fault_code="Server.ClientProxy.InconsistentResponse",
            )
        return received
