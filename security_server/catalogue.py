"""Service descriptions: what a provider subsystem offers, read from WSDL or OpenAPI 3.

Rules:
- A WSDL's operations become services (service code = operation name; version from nothing,
  as X-Road reads it from ``xrd:version`` when present). The WSDL must parse safely, be a
  WSDL 1.1 document, and name at least one operation; every operation name must be a valid
  identifier part. Its ``soap:address`` is the default service address.
- An OpenAPI 3 document becomes one service (the code is given by the operator, as in
  X-Road); its operations become endpoints (method + path, ``{param}`` turned into ``*``).
  The address is the given base URL, or the document's first ``servers`` entry.
- A plain REST base URL becomes one service with no endpoints (rights apply to the service).

Sans-IO: functions take the document bytes and return plain data; the admin API fetches or
receives the bytes and stores the result.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

from config.errors import ValidationError
from gateway.identifiers import check_part

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
SOAP11_BINDING_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
XROAD_NS = "http://x-road.eu/xsd/xroad.xsd"
MAX_DESCRIPTION_BYTES = 5 * 1024 * 1024
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceEntry:
    service_code: str
    service_version: str | None
    address: str
    endpoints: tuple[tuple[str, str], ...] = ()


def check_service_url(url: str) -> str:
    """Refuse addresses that are not absolute http(s) URLs (X-Road: ServiceMalformedUrl)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValidationError(
            f"service address {url!r} is not an absolute http:// or https:// URL",
            fault_code="Server.ServerProxy.ServiceMalformedUrl",
        )
    return url


def _safe_parse(document: bytes) -> etree._Element:
    if len(document) > MAX_DESCRIPTION_BYTES:
        raise ValidationError(
            f"service description is {len(document)} bytes; at most {MAX_DESCRIPTION_BYTES}"
        )
    if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
        raise ValidationError("WSDL contains a DOCTYPE or ENTITY declaration; these are refused")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False
    )
    try:
        return etree.fromstring(document, parser)
    except etree.XMLSyntaxError as exc:
        raise ValidationError(f"WSDL is not well-formed XML: {exc}") from exc


def parse_wsdl(document: bytes, address: str | None = None) -> list[ServiceEntry]:
    """The services (one per operation) of a WSDL 1.1 document."""
    root = _safe_parse(document)
    if root.tag != f"{{{WSDL_NS}}}definitions":
        raise ValidationError("document is not a WSDL 1.1 definitions element")
    if address is None:
        found = root.find(f".//{{{WSDL_NS}}}port/{{{SOAP11_BINDING_NS}}}address")
        address = found.get("location") if found is not None else None
    if not address:
        raise ValidationError(
            "the WSDL has no soap:address and no service address was given",
            fault_code="Server.ServerProxy.ServiceMissingUrl",
        )
    check_service_url(address)
    entries: dict[str, ServiceEntry] = {}
    for binding in root.iterfind(f"{{{WSDL_NS}}}binding"):
        for op in binding.iterfind(f"{{{WSDL_NS}}}operation"):
            name = op.get("name") or ""
            check_part(name, "WSDL operation name")
            version_el = op.find(f"{{{XROAD_NS}}}version")
            version = (
                version_el.text.strip() if version_el is not None and version_el.text else None
            )
            if version is not None:
                check_part(version, "service version")
            entries[name] = ServiceEntry(name, version, address)
    if not entries:
        for port_type in root.iterfind(f"{{{WSDL_NS}}}portType"):
            for op in port_type.iterfind(f"{{{WSDL_NS}}}operation"):
                name = op.get("name") or ""
                check_part(name, "WSDL operation name")
                entries[name] = ServiceEntry(name, None, address)
    if not entries:
        raise ValidationError("the WSDL declares no operations")
    return sorted(entries.values(), key=lambda e: e.service_code)


_PARAM_RE = re.compile(r"\{[^/{}]+\}")


def parse_openapi(document: bytes, service_code: str, address: str | None = None) -> ServiceEntry:
    """One REST service with the endpoints of an OpenAPI 3 document (JSON)."""
    check_part(service_code, "service code")
    if len(document) > MAX_DESCRIPTION_BYTES:
        raise ValidationError("OpenAPI document is too large")
    try:
        spec: Any = json.loads(document)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"OpenAPI document is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict) or not str(spec.get("openapi", "")).startswith("3."):
        raise ValidationError("document is not an OpenAPI 3 description (no 'openapi: 3.x')")
    paths = spec.get("paths")
    if not isinstance(paths, dict) or not paths:
        raise ValidationError("OpenAPI document has no paths")
    if address is None:
        servers = spec.get("servers")
        if isinstance(servers, list) and servers and isinstance(servers[0], dict):
            address = servers[0].get("url")
    if not address:
        raise ValidationError(
            "the OpenAPI document names no server and no service address was given",
            fault_code="Server.ServerProxy.ServiceMissingUrl",
        )
    check_service_url(address)
    endpoints: list[tuple[str, str]] = []
    for path, item in paths.items():
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(item, dict):
            raise ValidationError(f"OpenAPI path {path!r} is malformed")
        pattern = _PARAM_RE.sub("*", path)
        for method in _HTTP_METHODS:
            if method in item:
                endpoints.append((method.upper(), pattern))
    return ServiceEntry(service_code, None, address.rstrip("/"), tuple(sorted(endpoints)))


def rest_service(service_code: str, base_url: str) -> ServiceEntry:
    """A REST service described only by its base URL."""
    check_part(service_code, "service code")
    return ServiceEntry(service_code, None, check_service_url(base_url).rstrip("/"))
