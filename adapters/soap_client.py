"""Call an X-Road SOAP service through your own node with zeep.

Rules:

- The service's WSDL (a file, or a URL such as the provider's ``getWsdl`` copy) gives zeep the
  operations and types; the message always goes to the *node's* client side (``node_url``,
  path ``/``), never to the WSDL's ``soap:address``, which X-Road replaces with a placeholder.
- Every call carries the X-Road header block in PR-MESS order: ``client``, ``service``,
  ``userId``, ``id`` (a fresh uuid4 unless given), ``issue``, ``protocolVersion`` 4.0. The
  headers are passed to zeep as ready-made elements (``_soapheaders``), so they are sent the
  same way whether or not the WSDL declares them.
- The answer is read again from the bytes as received, with :mod:`gateway.soap`: its header
  block must repeat the request's (``client``, ``service``, ``userId``, ``id``, ``issue``,
  ``protocolVersion``), else :class:`~adapters.errors.UnexpectedResponseError` with code
  ``Server.ClientProxy.InconsistentResponse``; ``requestHash`` added by the provider's node is
  reported in :attr:`SoapResult.headers`.
- A SOAP Fault becomes :class:`~gateway.faults.FaultError` with the X-Road code (a namespace
  prefix on ``faultcode`` is dropped) and the node's ``faultDetail`` id; no connection is
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
from lxml import etree

from adapters.errors import NodeUnreachableError, UnexpectedResponseError
from adapters.soap_headers import PROTOCOL_VERSION, XRoadHeaders, header_elements, headers_of
from config.errors import JisrError, ValidationError
from gateway import soap
from gateway.faults import CLIENT_PROXY, FaultError
from gateway.identifiers import ClientId, ServiceId, parse_client
from gateway.soap_fault import MAX_FAULT_BYTES, parse_soap_fault

DEFAULT_TIMEOUT: Final = 60.0
#: Largest response the client parses for its header checks (X-Road's logged-body default).
MAX_RESPONSE_BYTES: Final = 10 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class SoapResult:
    """A SOAP answer: the body as plain Python data, and the echoed X-Road headers."""

    #: The response element's content as dicts and lists (``zeep.helpers.serialize_object``).
    body: Any
    headers: XRoadHeaders
    #: The HTTP body exactly as the node sent it, for the integrator's own records.
    raw: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class _Exchange:
    request: bytes
    status: int
    content_type: str
    response: bytes


class _RecordingTransport(zeep.Transport):
    """zeep's transport, keeping the last request and response bytes of each thread.

    zeep hands back parsed objects only; the header checks need the bytes as they travelled.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]  # zeep is unannotated
        self._local = threading.local()

    def post(self, address: str, message: bytes | str, headers: Any) -> Any:
        self._local.exchange = None
        response = super().post(address, message, headers)  # type: ignore[no-untyped-call]
        self._local.exchange = _Exchange(
            request=message.encode() if isinstance(message, str) else message,
            status=response.status_code,
            content_type=response.headers.get("Content-Type", "text/xml"),
            response=response.content,
        )
        return response

    def take(self) -> _Exchange | None:
        exchange: _Exchange | None = getattr(self._local, "exchange", None)
        self._local.exchange = None
        return exchange


def _fault_of(exchange: _Exchange | None, exc: zeep.exceptions.Fault) -> JisrError:
    """The error for a response zeep read as a Fault: the node's fault, or a non-SOAP answer.

    zeep calls any XML answer with a non-200 status a fault (an HTML error page included),
    so the bytes are read again with the gateway's fault reader to tell the two apart.
    """
    if exchange is None:
        return FaultError(str(exc.code or "Server"), str(exc.message))
    try:
        fault = parse_soap_fault(exchange.response, max_bytes=MAX_FAULT_BYTES)
    except FaultError as not_soap:
        return UnexpectedResponseError(
            f"the node answered HTTP {exchange.status} ({exchange.content_type}) instead of a "
            f"SOAP message: {not_soap.message}; check that node_url is the node's client side"
        )
    if fault is None:
        return UnexpectedResponseError(
            f"the node answered HTTP {exchange.status} with a SOAP message that is not a Fault"
        )
    return fault


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
        # zeep is unannotated: its calls below carry type-ignore comments for that reason.
        self._transport = _RecordingTransport(
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
                str(wsdl), transport=self._transport, settings=settings
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
        self._transport.take()
        try:
            result = self._operation(**fields, _soapheaders=header_elements(sent))
        except zeep.exceptions.Fault as exc:
            raise _fault_of(self._transport.take(), exc) from exc
        except requests.RequestException as exc:
            raise NodeUnreachableError(
                f"cannot reach the node's client side at {self.node_url}: {exc} "
                "(check the address, the port and that the node is running)"
            ) from exc
        except zeep.exceptions.TransportError as exc:
            raise UnexpectedResponseError(
                f"the node answered HTTP {exc.status_code} without a SOAP message: {exc.message}"
            ) from exc
        except (zeep.exceptions.ValidationError, TypeError) as exc:
            # zeep reports arguments the operation does not take as TypeError.
            raise ValidationError(f"the request does not fit the WSDL: {exc}") from exc
        except (zeep.exceptions.XMLParseError, zeep.exceptions.XMLSyntaxError) as exc:
            raise UnexpectedResponseError(f"the response does not fit the WSDL: {exc}") from exc
        exchange = self._transport.take()
        if exchange is None:
            raise UnexpectedResponseError("the node's answer was not recorded; no HTTP exchange")
        received = _checked_echo(exchange)
        if hasattr(result, "body") and hasattr(result, "header"):
            result = result.body
        return SoapResult(
            body=zeep.helpers.serialize_object(result, dict),  # type: ignore[no-untyped-call]
            headers=received,
            raw=exchange.response,
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


def _checked_echo(exchange: _Exchange) -> XRoadHeaders:
    """The response's headers, after checking that they repeat the request's (PR-MESS)."""
    try:
        sent = soap.parse_soap_request(exchange.request, "text/xml", max_bytes=MAX_RESPONSE_BYTES)
        received = soap.parse_soap_response(
            exchange.response,
            exchange.content_type,
            max_bytes=MAX_RESPONSE_BYTES,
            fault_prefix=CLIENT_PROXY,
        )
        if isinstance(received, soap.SoapFaultResponse):  # zeep raised on faults already
            raise received.fault
        soap.check_response_consistent(sent, received, prefix=CLIENT_PROXY)
    except FaultError as exc:
        raise UnexpectedResponseError(
            f"the node's response breaks the X-Road protocol: {exc.message}",
            fault_code=exc.fault_code,
        ) from exc
    return headers_of(received)
