"""Service metadata (PR-META, PR-MREST): what a node answers about clients and services.

Rules:

- ``listClients`` is answered by the consumer's own node from the global configuration in force
  (XML ``clientList``, or JSON with ``Accept: application/json``).
- ``listMethods``, ``allowedMethods``, ``getWsdl`` (SOAP) and ``listMethods``,
  ``allowedMethods``, ``getOpenAPI`` (REST) are ordinary calls addressed to the provider
  subsystem: they travel signed to the provider's node like any request and are answered there
  from its catalogue, by the functions here. They need no access right, except that
  ``getWsdl`` / ``getOpenAPI`` describe a service only to a client allowed to call it, and
  ``allowedMethods`` lists only what the calling client may call.
- SOAP answers repeat the request's headers (``gateway.soap.build_response``); the node adds
  ``requestHash`` afterwards like for any response. ``getWsdl`` returns the WSDL as a MIME
  attachment of the SOAP response, its ``soap:address`` locations replaced by a placeholder so
  that the provider's internal address never leaves the node.
- Sans-IO: data in, ``(status, headers, body)`` out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qsl

from lxml import etree

from config.errors import IdentifierError
from gateway.faults import FaultError, server_proxy_fault
from gateway.globalconf import GlobalConf
from gateway.identifiers import ID_NS, XROAD_NS, ClientId, ServiceId
from gateway.identifiers_xml import service_to_xml
from gateway.multipart import Part, build_multipart
from gateway.rest import (
    JSON_CONTENT_TYPE,
    ClientListEntry,
    ListClientsRequest,
    RestServiceEntry,
    encode_client_list,
    encode_method_list,
)
from gateway.soap import SoapMessage, build_response
from gateway.transport import RequestPart
from security_server.runtime import LocalCatalogue, LocalService

SOAP_METASERVICES: Final = frozenset({"listMethods", "allowedMethods", "getWsdl"})
REST_METASERVICES: Final = frozenset({"listMethods", "allowedMethods", "getOpenAPI"})
#: X-Road's placeholder for a service address in a published WSDL.
WSDL_ADDRESS_PLACEHOLDER: Final = "http://example.org/xroad-endpoint"

Answer = tuple[int, tuple[tuple[str, str], ...], bytes]

_SOAP_ADDRESS_RE: Final = re.compile(
    rb"(<(?:[A-Za-z_][\w.-]*:)?address\b[^>]*?\blocation\s*=\s*)(\"[^\"]*\"|'[^']*')"
)


def list_clients(conf: GlobalConf, request: ListClientsRequest) -> Answer:
    """``GET /listClients``: every member and subsystem of the configuration's instance."""
    entries: list[ClientListEntry] = []
    if request.instance is None or request.instance == conf.instance:
        for client in conf.clients():
            member = conf.member(client.member)
            name = member.name if member is not None else str(client.member)
            entries.append(ClientListEntry(client, name))
    content_type, body = encode_client_list(entries, as_json=request.as_json)
    return 200, (("Content-Type", content_type),), body


def is_rest_metaservice(part: RequestPart) -> bool:
    return (
        part.protocol == "REST"
        and part.service.service_code in REST_METASERVICES
        and part.path in ("", "/")
    )


def is_soap_metaservice(service: ServiceId) -> bool:
    return service.service_code in SOAP_METASERVICES


def _allowed(
    catalogue: LocalCatalogue,
    conf: GlobalConf,
    client: ClientId,
    service: ServiceId,
    *,
    method: str | None = None,
    path: str | None = None,
) -> bool:
    return catalogue.access_rights.allows(
        client, service, is_in_group=conf.is_in_group, method=method, path=path
    )


def _may_call_some_of(
    catalogue: LocalCatalogue, conf: GlobalConf, client: ClientId, service: ServiceId
) -> bool:
    """Whether ``client`` has a right to the whole service or to one of its endpoints."""
    codes = catalogue.access_rights.allowed_services(
        client, service.provider, is_in_group=conf.is_in_group
    )
    return service.service_code in codes


def _rest_services(
    catalogue: LocalCatalogue,
    conf: GlobalConf,
    provider: ClientId,
    client: ClientId,
    *,
    only_allowed: bool,
) -> list[RestServiceEntry]:
    allowed: set[str] | None = None
    if only_allowed:
        allowed = set(
            catalogue.access_rights.allowed_services(client, provider, is_in_group=conf.is_in_group)
        )
    entries = []
    for service in catalogue.services_of(provider):
        if service.kind == "wsdl":
            continue
        endpoints = service.endpoints
        if allowed is not None:
            if service.service_id.service_code not in allowed:
                continue
            endpoints = tuple(
                (m, p)
                for m, p in endpoints
                if _allowed(catalogue, conf, client, service.service_id, method=m, path=p)
            )
        entries.append(
            RestServiceEntry(
                service.service_id, "OPENAPI" if service.kind == "openapi" else "REST", endpoints
            )
        )
    return entries


def answer_rest(part: RequestPart, catalogue: LocalCatalogue, conf: GlobalConf) -> Answer:
    """The provider node's answer to a REST metaservice call (``is_rest_metaservice``)."""
    code = part.service.service_code
    provider = part.service.provider
    if code in ("listMethods", "allowedMethods"):
        entries = _rest_services(
            catalogue, conf, provider, part.client, only_allowed=code == "allowedMethods"
        )
        content_type, body = encode_method_list(entries)
        return 200, (("Content-Type", content_type),), body
    wanted = _query_service_code(part.query)
    service = _described(catalogue, ServiceId.for_client(provider, wanted), "openapi")
    if not _may_call_some_of(catalogue, conf, part.client, service.service_id):
        raise server_proxy_fault(
            "AccessDenied",
            f"{part.client} may not call {service.service_id}, so its description is not shown",
        )
    assert service.description is not None
    text = service.description.lstrip()
    content_type = JSON_CONTENT_TYPE if text.startswith(b"{") else "application/yaml"
    return 200, (("Content-Type", content_type),), service.description


def _query_service_code(query: str | None) -> str:
    for name, value in parse_qsl(query or "", keep_blank_values=True):
        if name == "serviceCode" and value:
            return value
    raise FaultError(
        "Client.BadRequest", "getOpenAPI needs the query parameter serviceCode=<service code>"
    )


def _described(catalogue: LocalCatalogue, service_id: ServiceId, kind: str) -> LocalService:
    service = catalogue.service(service_id)
    if service is None or service.kind != kind or service.description is None:
        what = "an OpenAPI description" if kind == "openapi" else "a WSDL"
        raise server_proxy_fault(
            "UnknownService", f"service {service_id} is not published on this node with {what}"
        )
    return service


# ---- SOAP --------------------------------------------------------------------------------------


def _xrd(local: str) -> str:
    return f"{{{XROAD_NS}}}{local}"


def _wsdl_services(
    catalogue: LocalCatalogue,
    conf: GlobalConf,
    provider: ClientId,
    client: ClientId,
    *,
    only_allowed: bool,
) -> list[ServiceId]:
    allowed: set[str] | None = None
    if only_allowed:
        allowed = set(
            catalogue.access_rights.allowed_services(client, provider, is_in_group=conf.is_in_group)
        )
    found = []
    for service in catalogue.services_of(provider):
        if service.kind != "wsdl":
            continue
        if allowed is not None and service.service_id.service_code not in allowed:
            continue
        found.append(service.service_id)
    return found


def _service_list_element(local: str, services: Sequence[ServiceId]) -> etree._Element:
    element = etree.Element(_xrd(local), nsmap={"xrd": XROAD_NS, "id": ID_NS})
    for service in services:
        service_to_xml(service, parent=element)
    return element


def answer_soap(request: SoapMessage, catalogue: LocalCatalogue, conf: GlobalConf) -> Answer:
    """The provider node's answer to a SOAP metaservice call (``is_soap_metaservice``)."""
    assert request.service is not None
    code = request.service.service_code
    provider = request.service.provider
    if code in ("listMethods", "allowedMethods"):
        services = _wsdl_services(
            catalogue, conf, provider, request.client, only_allowed=code == "allowedMethods"
        )
        body = build_response(request, _service_list_element(f"{code}Response", services))
        return 200, (("Content-Type", "text/xml; charset=utf-8"),), body
    return _get_wsdl(request, catalogue, conf, provider)


def _child_text(element: etree._Element, local: str) -> str | None:
    for child in element:
        if isinstance(child.tag, str) and etree.QName(child).localname == local:
            return (child.text or "").strip() or None
    return None


def _get_wsdl(
    request: SoapMessage, catalogue: LocalCatalogue, conf: GlobalConf, provider: ClientId
) -> Answer:
    code = _child_text(request.body, "serviceCode")
    if code is None:
        raise FaultError(
            "Client.InvalidBody", "getWsdl needs xrd:serviceCode naming the service described"
        )
    version = _child_text(request.body, "serviceVersion")
    try:
        service_id = ServiceId.for_client(provider, code, version)
    except IdentifierError as exc:
        raise FaultError(
            "Client.InvalidBody", f"getWsdl names an invalid service: {exc.message}"
        ) from exc
    service = _described(catalogue, service_id, "wsdl")
    if not _may_call_some_of(catalogue, conf, request.client, service.service_id):
        raise server_proxy_fault(
            "AccessDenied",
            f"{request.client} may not call {service.service_id}, so its WSDL is not shown",
        )
    assert service.description is not None
    wsdl = _SOAP_ADDRESS_RE.sub(
        lambda m: m.group(1) + b'"' + WSDL_ADDRESS_PLACEHOLDER.encode() + b'"',
        service.description,
    )
    response_element = etree.Element(_xrd("getWsdlResponse"), nsmap={"xrd": XROAD_NS})
    etree.SubElement(response_element, _xrd("serviceCode")).text = code
    if version is not None:
        etree.SubElement(response_element, _xrd("serviceVersion")).text = version
    soap = build_response(request, response_element)
    root = Part((("Content-Type", "text/xml; charset=UTF-8"),), soap)
    attachment = Part((("Content-Type", "text/xml; charset=UTF-8"), ("Content-ID", "<wsdl>")), wsdl)
    body, content_type = build_multipart(root, [attachment])
    return 200, (("Content-Type", content_type),), body
