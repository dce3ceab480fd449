"""X-Road message protocol for REST 1.0 (PR-REST) on the client side of a node, without I/O.

Rules:

- A call is ``{METHOD} /r1/{instance}/{class}/{member}/{subsystem}/{serviceCode}[/path][?query]``.
  The service identifier always has five parts: REST services belong to subsystems, as in
  X-Road (its REST metaservices are defined on ``/{instance}/{class}/{member}/{subsystem}``), so
  ``/r1/IQ/GOV/NDC/population/getCitizen/citizens/123`` is service ``getCitizen`` of subsystem
  ``population`` with rest path ``/citizens/123``. There is no service version in the URL; a
  version-like segment after the service code (``/v1/...``) belongs to the rest path.
- Each identifier part is percent-decoded on its own (a ``%2F`` never splits a part) and then
  checked against X-Road's identifier characters. The rest path and the query are kept exactly
  as received (still percent-encoded) and go to the provider unchanged; dot segments
  (``.``, ``..``, also encoded) are refused so the path cannot climb out of the service's base URL.
- ``X-Road-Client`` is required. ``X-Road-Id`` is generated (UUID 4) when absent.
  ``X-Road-UserId``, ``X-Road-Issue``, ``X-Road-Security-Server`` and
  ``X-Road-Represented-Party`` are optional; each may appear once.
- Headers: hop-by-hop headers (``Connection`` and the names it lists, ``Keep-Alive``,
  ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``), ``Host``,
  ``User-Agent``, ``Server``, ``Content-Length`` and ``Expect`` are not passed on; the
  X-Road headers above are consumed, and the node's own response headers (``X-Road-Service``,
  ``X-Road-Request-Id``, ``X-Road-Request-Hash``, ``X-Road-Error``) are dropped wherever they
  appear; every other header passes unchanged, in order, duplicates kept.
- Metaservices: ``GET /r1/{subsystem}/listMethods``, ``/allowedMethods`` and
  ``/getOpenAPI?serviceCode=X`` are ordinary calls whose service code names the method;
  ``GET /listClients[?xRoadInstance=X]`` is answered by the node itself (XML, or JSON when
  ``Accept: application/json``).
- Errors raised here are :class:`~gateway.faults.FaultError` with ``Client.*`` codes (HTTP 400);
  :func:`rest_error` renders any fault as PR-REST's JSON body plus ``X-Road-Error``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Literal

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
    check_part,
)
from gateway.transport import RequestPart, body_digest

PROTOCOL_PREFIX: Final = "/r1/"
LIST_CLIENTS_PATH: Final = "/listClients"
METASERVICES: Final = frozenset({"listMethods", "allowedMethods", "getOpenAPI"})
#: PR-REST advises limiting request URIs; 4096 leaves room for long queries.
MAX_TARGET_LENGTH: Final = 4096
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_MESSAGE_ID_LENGTH: Final = 255
MAX_TEXT_HEADER_LENGTH: Final = 1024
ALLOWED_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"
XML_CONTENT_TYPE: Final = "text/xml; charset=utf-8"

HEADER_CLIENT: Final = "X-Road-Client"
HEADER_ID: Final = "X-Road-Id"
HEADER_USER_ID: Final = "X-Road-UserId"
HEADER_ISSUE: Final = "X-Road-Issue"
HEADER_SECURITY_SERVER: Final = "X-Road-Security-Server"
HEADER_REPRESENTED_PARTY: Final = "X-Road-Represented-Party"
HEADER_SERVICE: Final = "X-Road-Service"
HEADER_REQUEST_ID: Final = "X-Road-Request-Id"
HEADER_REQUEST_HASH: Final = "X-Road-Request-Hash"
HEADER_ERROR: Final = "X-Road-Error"

_CONSUMED: Final = frozenset(
    h.lower()
    for h in (
        HEADER_CLIENT,
        HEADER_ID,
        HEADER_USER_ID,
        HEADER_ISSUE,
        HEADER_SECURITY_SERVER,
        HEADER_REPRESENTED_PARTY,
    )
)
_NODE_OWNED: Final = frozenset(
    h.lower() for h in (HEADER_SERVICE, HEADER_REQUEST_ID, HEADER_REQUEST_HASH, HEADER_ERROR)
)
_NOT_PASSED: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "user-agent",
        "server",
        "content-length",
        "expect",
    }
)

# RFC 3986: pchar plus "/" for the path; the query also allows "?".
_PATH_RE: Final = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
_QUERY_RE: Final = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE: Final = re.compile(r"[\x00\r\n]")

Headers = tuple[tuple[str, str], ...]
HeaderSource = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclasses.dataclass(frozen=True, slots=True)
class RestRequest:
    """A client's REST call, as the consumer node acts on it and signs it."""

    method: str
    service: ServiceId
    client: ClientId
    message_id: str
    #: True when the node made up ``message_id`` because ``X-Road-Id`` was absent.
    message_id_generated: bool
    #: The rest of the path after the service code, percent-encoded as received ("" or "/...").
    path: str
    #: The query as received without "?" ("" for a bare "?"), or None when there was none.
    query: str | None
    #: Headers passed to the provider, in order, duplicates kept.
    headers: Headers
    user_id: str | None = None
    issue: str | None = None
    security_server: SecurityServerId | None = None
    represented_party: str | None = None
    #: ``listMethods``, ``allowedMethods`` or ``getOpenAPI`` when this is a metaservice call.
    metaservice: str | None = None
    #: For ``getOpenAPI``: the service whose description is asked for.
    openapi_service_code: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ListClientsRequest:
    """``GET /listClients``: the node answers from the global configuration."""

    #: ``xRoadInstance`` query parameter (another, federated instance), or None for our own.
    instance: str | None
    as_json: bool


def _header_pairs(headers: HeaderSource) -> list[tuple[str, str]]:
    # A multidict's items() yields every occurrence, in order.
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs = [(str(name), str(value)) for name, value in items]
    if sum(len(n) + len(v) for n, v in pairs) > MAX_HEADER_BYTES:
        raise client_fault("BadRequest", f"the request headers exceed {MAX_HEADER_BYTES} bytes")
    for name, value in pairs:
        if not _TOKEN_RE.fullmatch(name) or _BAD_VALUE_RE.search(value):
            raise client_fault(
                "BadRequest", f"header {name!r} has an invalid name or a value with CR, LF or NUL"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise client_fault("BadRequest", f"header {name!r} is not valid text") from exc
    return pairs


def _connection_tokens(pairs: Sequence[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def forwardable_headers(headers: HeaderSource) -> Headers:
    """The headers a node passes on (request to the provider, or response to the client).

    Drops hop-by-hop headers and those that leak the origin host, ``Content-Length`` and
    ``Expect`` (the node re-frames bodies), and every X-Road header the node owns.
    """
    return _forwardable(_header_pairs(headers))


def _forwardable(pairs: Sequence[tuple[str, str]]) -> Headers:
    """:func:`forwardable_headers` of pairs :func:`_header_pairs` has already checked."""
    listed = _connection_tokens(pairs)
    result = []
    for name, value in pairs:
        lower = name.lower()
        if lower in _NOT_PASSED or lower in listed or lower.startswith("proxy-"):
            continue
        if lower in _CONSUMED or lower in _NODE_OWNED:
            continue
        result.append((name, value))
    return tuple(result)


def _by_name(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Each header's values in order, by lower-case name: one pass for every lookup."""
    index: dict[str, list[str]] = {}
    for name, value in pairs:
        index.setdefault(name.lower(), []).append(value)
    return index


def _single_header(index: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = index.get(name.lower(), ())
    if len(values) > 1:
        raise client_fault(
            "DuplicateHeaderField", f"header {name} appears {len(values)} times; send it once"
        )
    if not values or not values[0].strip():
        return None
    return values[0].strip()


def _decode_part(raw: str, what: str) -> str:
    try:
        return urllib.parse.unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise client_fault("BadRequest", f"{what} {raw!r} is not percent-encoded UTF-8") from exc


def _decode_identifier(text: str, what: str) -> list[str]:
    return [_decode_part(p, what) for p in text.split("/")]


def _parse_client_header(value: str | None) -> ClientId:
    if value is None:
        raise client_fault(
            "MissingHeaderField",
            f"the {HEADER_CLIENT} header is missing; send {HEADER_CLIENT}: "
            "INSTANCE/CLASS/MEMBER[/SUBSYSTEM] naming the calling subsystem",
        )
    try:
        parts = _decode_identifier(value, HEADER_CLIENT)
        if len(parts) == 3:
            return MemberId(*parts)
        if len(parts) == 4:
            return SubsystemId(*parts)
        raise IdentifierError(
            f"it has {len(parts)} part(s); expected INSTANCE/CLASS/MEMBER[/SUBSYSTEM]"
        )
    except IdentifierError as exc:
        raise client_fault(
            "InvalidClientIdentifier", f"{HEADER_CLIENT} {value!r} is invalid: {exc.message}"
        ) from exc
    except FaultError as exc:
        raise client_fault("InvalidClientIdentifier", exc.message) from exc


def _parse_server_header(value: str | None) -> SecurityServerId | None:
    if value is None:
        return None
    try:
        parts = _decode_identifier(value, HEADER_SECURITY_SERVER)
        if len(parts) != 4:
            raise IdentifierError(f"it has {len(parts)} part(s)")
        return SecurityServerId(*parts)
    except (IdentifierError, FaultError) as exc:
        raise client_fault(
            "InvalidSecurityServer",
            f"{HEADER_SECURITY_SERVER} {value!r} is invalid: {exc.message}; expected "
            "INSTANCE/CLASS/MEMBER/SERVERCODE",
        ) from exc


def _text_header(index: Mapping[str, Sequence[str]], name: str, limit: int) -> str | None:
    value = _single_header(index, name)
    if value is not None and len(value) > limit:
        raise client_fault("BadRequest", f"header {name} is longer than {limit} characters")
    return value


def _split_target(raw_path: str) -> tuple[str, str | None]:
    if len(raw_path) > MAX_TARGET_LENGTH:
        raise client_fault(
            "BadRequest",
            f"the request URI is {len(raw_path)} characters long; at most {MAX_TARGET_LENGTH} "
            "are accepted (send large data in the body)",
        )
    if "#" in raw_path:
        raise client_fault("BadRequest", "the request URI must not contain a fragment ('#')")
    path, sep, query = raw_path.partition("?")
    if not _PATH_RE.fullmatch(path) or not path.startswith("/"):
        raise client_fault(
            "BadRequest",
            f"the request path {path!r} is not a valid percent-encoded absolute path",
        )
    if sep and not _QUERY_RE.fullmatch(query):
        raise client_fault("BadRequest", "the query string is not valid percent-encoded text")
    return path, (query if sep else None)


def _check_rest_path(rest: str) -> None:
    for segment in rest.split("/")[1:]:
        if _decode_part(segment, "path segment") in (".", ".."):
            raise client_fault(
                "BadRequest",
                "the service path must not contain '.' or '..' segments",
            )


def _query_values(query: str | None, name: str) -> list[str]:
    if not query:
        return []
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise client_fault("BadRequest", "the query string is not valid UTF-8") from exc
    return [v for k, v in pairs if k == name]


def _accepts_json(headers: Sequence[tuple[str, str]]) -> bool:
    return "application/json" in _media_types(headers)


def _media_types(headers: Sequence[tuple[str, str]]) -> list[str]:
    types: list[str] = []
    for name, value in headers:
        if name.lower() == "accept":
            types.extend(p.split(";", 1)[0].strip().lower() for p in value.split(","))
    return types


def parse_rest_request(
    method: str,
    raw_path: str,
    headers: HeaderSource,
    *,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> RestRequest | ListClientsRequest:
    """Parse a call an information system made to its node's REST interface.

    ``raw_path`` is the request target as received: percent-encoded path plus optional query.
    Routing SOAP (``POST /`` with a SOAP content type) is the caller's job; anything that is
    neither ``/r1/...`` nor ``/listClients`` is ``Client.BadRequest``.
    """
    pairs = _header_pairs(headers)
    path, query = _split_target(raw_path)
    if path == LIST_CLIENTS_PATH:
        return _parse_list_clients(method, query, pairs)
    if not path.startswith(PROTOCOL_PREFIX):
        if re.match(r"/r\d+/", path):
            raise client_fault(
                "InvalidProtocolVersion",
                f"REST protocol version {path.split('/')[1]!r} is not supported; use /r1/",
            )
        raise client_fault(
            "BadRequest",
            f"the request path {path!r} is not an X-Road REST call; expected "
            "/r1/INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/path]",
        )
    if method not in ALLOWED_METHODS:
        raise client_fault(
            "InvalidHttpMethod",
            f"HTTP method {method!r} is not supported; use one of "
            + ", ".join(sorted(ALLOWED_METHODS)),
        )

    segments = path[len(PROTOCOL_PREFIX) :].split("/")
    if len(segments) < 5 or any(not s for s in segments[:5]):
        raise client_fault(
            "BadRequest",
            f"the request path {path!r} does not name a service; expected "
            "/r1/INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/path] (REST services belong to "
            "subsystems)",
        )
    names = ("instance", "member class", "member code", "subsystem code", "service code")
    parts = []
    for raw, what in zip(segments[:5], names, strict=True):
        decoded = _decode_part(raw, what)
        try:
            parts.append(check_part(decoded, what))
        except IdentifierError as exc:
            raise client_fault("BadRequest", f"invalid service identifier: {exc.message}") from exc
    service = ServiceId(parts[0], parts[1], parts[2], parts[3], parts[4])
    rest = "/" + "/".join(segments[5:]) if len(segments) > 5 else ""
    _check_rest_path(rest)

    index = _by_name(pairs)
    client = _parse_client_header(_single_header(index, HEADER_CLIENT))
    message_id = _text_header(index, HEADER_ID, MAX_MESSAGE_ID_LENGTH)
    generated = message_id is None
    if message_id is None:
        message_id = new_id()

    metaservice = None
    openapi_code = None
    if service.service_code in METASERVICES and rest in ("", "/"):
        metaservice = service.service_code
        if method != "GET":
            raise client_fault(
                "InvalidHttpMethod", f"metaservice {metaservice} is called with GET, not {method}"
            )
        if metaservice == "getOpenAPI":
            codes = _query_values(query, "serviceCode")
            if len(codes) != 1 or not codes[0]:
                raise client_fault(
                    "BadRequest",
                    "getOpenAPI needs exactly one query parameter serviceCode=<service code>",
                )
            try:
                openapi_code = check_part(codes[0], "serviceCode")
            except IdentifierError as exc:
                raise client_fault("BadRequest", exc.message) from exc

    return RestRequest(
        method=method,
        service=service,
        client=client,
        message_id=message_id,
        message_id_generated=generated,
        path=rest,
        query=query,
        headers=_forwardable(pairs),
        user_id=_text_header(index, HEADER_USER_ID, MAX_TEXT_HEADER_LENGTH),
        issue=_text_header(index, HEADER_ISSUE, MAX_TEXT_HEADER_LENGTH),
        security_server=_parse_server_header(_single_header(index, HEADER_SECURITY_SERVER)),
        represented_party=_text_header(index, HEADER_REPRESENTED_PARTY, MAX_TEXT_HEADER_LENGTH),
        metaservice=metaservice,
        openapi_service_code=openapi_code,
    )


def _parse_list_clients(
    method: str, query: str | None, pairs: Sequence[tuple[str, str]]
) -> ListClientsRequest:
    if method != "GET":
        raise client_fault("InvalidHttpMethod", f"listClients is called with GET, not {method}")
    instances = _query_values(query, "xRoadInstance")
    if len(instances) > 1:
        raise client_fault("BadRequest", "give the xRoadInstance parameter at most once")
    instance = None
    if instances:
        try:
            instance = check_part(instances[0], "xRoadInstance")
        except IdentifierError as exc:
            raise client_fault("BadRequest", exc.message) from exc
    return ListClientsRequest(instance, _accepts_json(pairs))


def signed_request_part(
    request: RestRequest, *, body: bytes, created_at: dt.datetime
) -> RequestPart:
    """The transport's signed part for this call (docs/transport-v1.md §5.1)."""
    return RequestPart(
        protocol="REST",
        message_id=request.message_id,
        client=request.client,
        service=request.service,
        method=request.method,
        path=request.path,
        query=request.query,
        headers=request.headers,
        body_sha256=body_digest(body),
        created_at=created_at,
        user_id=request.user_id,
        issue=request.issue,
        represented_party=request.represented_party,
        target_server=request.security_server,
    )


def provider_url(base_url: str, path: str, query: str | None) -> str:
    """The URL the provider node calls: the service's configured URL plus the rest path and query.

    ``path`` and ``query`` come from a verified signed part, so they are already percent-encoded
    and free of dot segments; they are appended as they are, never re-encoded.
    """
    target = base_url.rstrip("/") + path if path else base_url
    return target if query is None else f"{target}?{query}"


# --- building paths (for REST clients such as the adapter kit) ---------------------------------


def rest_path(service: ServiceId, path: str = "", query: str | None = None) -> str:
    """The request target for calling ``service`` through a node: parts encoded one by one."""
    if service.subsystem_code is None:
        raise ValueError("REST services belong to subsystems; the service has no subsystem")
    if path and not path.startswith("/"):
        raise ValueError("path must be empty or start with '/'")
    parts = (
        service.instance,
        service.member_class,
        service.member_code,
        service.subsystem_code,
        service.service_code,
    )
    target = PROTOCOL_PREFIX + "/".join(urllib.parse.quote(p, safe="") for p in parts) + path
    return target if query is None else f"{target}?{query}"


# --- responses ---------------------------------------------------------------------------------


def service_header_value(service: ServiceId) -> str:
    """``X-Road-Service`` form: the identifier parts, each percent-encoded, joined by '/'."""
    parts: list[str] = [service.instance, service.member_class, service.member_code]
    if service.subsystem_code is not None:
        parts.append(service.subsystem_code)
    parts.append(service.service_code)
    return "/".join(urllib.parse.quote(p, safe="'()+,=?") for p in parts)


def client_header_value(client: ClientId) -> str:
    parts = [client.instance, client.member_class, client.member_code]
    if isinstance(client, SubsystemId):
        parts.append(client.subsystem_code)
    return "/".join(urllib.parse.quote(p, safe="'()+,=?") for p in parts)


def response_headers(
    provider_headers: HeaderSource,
    *,
    client: ClientId,
    service: ServiceId,
    message_id: str,
    request_id: str,
    request_hash: str | None,
) -> Headers:
    """Headers for the client: the provider's (filtered) plus the X-Road ones the node adds.

    Any ``X-Road-*`` node header the provider set is dropped and replaced, as PR-REST requires.
    """
    added = [
        (HEADER_CLIENT, client_header_value(client)),
        (HEADER_SERVICE, service_header_value(service)),
        (HEADER_ID, message_id),
        (HEADER_REQUEST_ID, request_id),
    ]
    if request_hash is not None:
        added.append((HEADER_REQUEST_HASH, request_hash))
    return forwardable_headers(provider_headers) + tuple(added)


def _prefers_xml(accept: Sequence[str]) -> bool:
    for media in accept:
        if media == "application/json":
            return False
        if media in ("application/xml", "text/xml"):
            return True
    return False


def rest_error(fault: FaultError, *, accept: str | None = None) -> tuple[int, Headers, bytes]:
    """A node error for a REST client: status, headers (with ``X-Road-Error``) and body.

    JSON ``{"type","message","detail"}`` by default; XML with the same fields when the client's
    ``Accept`` asks for XML before JSON.
    """
    types = _media_types([("Accept", accept)]) if accept else []
    if _prefers_xml(types):
        root = etree.Element("error")
        for tag, text in (
            ("type", fault.fault_code),
            ("message", fault.message),
            ("detail", fault.detail),
        ):
            etree.SubElement(root, tag).text = text
        body = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        content_type = XML_CONTENT_TYPE
    else:
        body = json.dumps(
            {"type": fault.fault_code, "message": fault.message, "detail": fault.detail},
            ensure_ascii=False,
        ).encode("utf-8")
        content_type = JSON_CONTENT_TYPE
    headers = (("Content-Type", content_type), (HEADER_ERROR, fault.fault_code))
    return fault.http_status, headers, body


# --- metaservice answers -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ClientListEntry:
    """One line of ``listClients``: a member or subsystem and its name(s)."""

    client: ClientId
    name: str
    subsystem_name: str | None = None


def _id_json(client: ClientId) -> dict[str, str]:
    value = {
        "object_type": client.object_type,
        "xroad_instance": client.instance,
        "member_class": client.member_class,
        "member_code": client.member_code,
    }
    if isinstance(client, SubsystemId):
        value["subsystem_code"] = client.subsystem_code
    return value


def encode_client_list(entries: Sequence[ClientListEntry], *, as_json: bool) -> tuple[str, bytes]:
    """The ``listClients`` answer (PR-META): ``clientList`` XML, or the JSON form."""
    if as_json:
        members = []
        for e in entries:
            item: dict[str, object] = {"id": _id_json(e.client), "name": e.name}
            if e.subsystem_name is not None:
                item["subsystem_name"] = e.subsystem_name
            members.append(item)
        return JSON_CONTENT_TYPE, json.dumps({"member": members}, ensure_ascii=False).encode()
    nsmap = {"xrd": XROAD_NS, "id": ID_NS}
    root = etree.Element(f"{{{XROAD_NS}}}clientList", nsmap=nsmap)
    for e in entries:
        member = etree.SubElement(root, f"{{{XROAD_NS}}}member")
        ident = etree.SubElement(member, f"{{{XROAD_NS}}}id")
        ident.set(f"{{{ID_NS}}}objectType", e.client.object_type)
        fields = [
            ("xRoadInstance", e.client.instance),
            ("memberClass", e.client.member_class),
            ("memberCode", e.client.member_code),
        ]
        if isinstance(e.client, SubsystemId):
            fields.append(("subsystemCode", e.client.subsystem_code))
        for tag, text in fields:
            etree.SubElement(ident, f"{{{ID_NS}}}{tag}").text = text
        etree.SubElement(member, f"{{{XROAD_NS}}}name").text = e.name
        if e.subsystem_name is not None:
            etree.SubElement(member, f"{{{XROAD_NS}}}subsystemName").text = e.subsystem_name
    return XML_CONTENT_TYPE, etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@dataclasses.dataclass(frozen=True, slots=True)
class RestServiceEntry:
    """One service in a ``listMethods`` / ``allowedMethods`` answer (PR-MREST)."""

    service: ServiceId
    service_type: Literal["REST", "OPENAPI"]
    endpoints: tuple[tuple[str, str], ...] = ()


def encode_method_list(entries: Sequence[RestServiceEntry]) -> tuple[str, bytes]:
    """The JSON answer of the REST ``listMethods`` and ``allowedMethods`` metaservices."""
    services = []
    for e in entries:
        s = e.service
        item: dict[str, object] = {
            "object_type": "SERVICE",
            "xroad_instance": s.instance,
            "member_class": s.member_class,
            "member_code": s.member_code,
            "service_code": s.service_code,
            "service_type": e.service_type,
            "endpoint_list": [{"method": m, "path": p} for m, p in e.endpoints],
        }
        if s.subsystem_code is not None:
            item["subsystem_code"] = s.subsystem_code
        if s.service_version is not None:
            item["service_version"] = s.service_version
        services.append(item)
    return JSON_CONTENT_TYPE, json.dumps({"service": services}, ensure_ascii=False).encode()
