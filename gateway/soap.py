"""X-Road message protocol for SOAP 4.0 (PR-MESS): parsing, checking and building messages.

Rules:

- Bytes in, typed objects out: :func:`parse_soap_request` and :func:`parse_soap_response`
  take the HTTP body and its ``Content-Type`` and return a :class:`SoapMessage` (or, for a
  response that is a Fault, a :class:`SoapFaultResponse`). Nothing here does I/O.
- Accepted bodies: ``text/xml`` (UTF-8), and ``multipart/related`` whose root part is
  ``text/xml`` (SOAP with attachments) or ``application/xop+xml`` (MTOM). MTOM messages are
  accepted and carried intact: ``xop:Include`` references stay in the body, the binary parts
  stay attachments, nothing is inlined. SOAP 1.2 is refused.
- The bytes as received are kept (``raw`` for the whole HTTP body, ``soap_bytes`` for the SOAP
  part): they are what is signed, logged and hashed; the parsed tree is only for reading.
- Every refusal is a :class:`~gateway.faults.FaultError` with the X-Road code PR-MESS and
  X-Road use (table in ``docs/soap.md``). Requests get ``Client.*`` codes. Faults found while
  parsing a *response* carry the prefix the caller passes (``Server.ServerProxy`` on the
  provider's node, ``Server.ClientProxy`` on the consumer's node), because there the client did
  nothing wrong.
- Header order matters: a response repeats the request's headers in the request's order, and
  the provider's node appends ``requestHash`` (SHA-512 of the request's SOAP part, base64) with
  :func:`add_request_hash`, leaving every other byte of the response as it was.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Final
from xml.sax.saxutils import quoteattr

from lxml import etree

from gateway.faults import CLIENT, CLIENT_PROXY, SERVER_PROXY, FaultError, client_fault
from gateway.identifiers import (
    ID_NS,
    XROAD_NS,
    ClientId,
    SecurityServerId,
    ServiceId,
)
from gateway.identifiers_xml import (
    client_from_xml,
    client_to_xml,
    server_from_xml,
    server_to_xml,
    service_from_xml,
    service_to_xml,
)
from gateway.multipart import Part, parse_content_type, parse_multipart
from gateway.soap_fault import (
    SOAP12_ENV_NS,
    SOAP_ENV_NS,
    fault_from_element,
    find_fault,
    parse_soap_fault,
    soap_fault,
)
from gateway.xml_safety import parse_xml

__all__ = [
    "PROTOCOL_VERSION",
    "REPR_NS",
    "SHA512_ALGORITHM_ID",
    "SOAP12_ENV_NS",
    "SOAP_ENV_NS",
    "XOP_NS",
    "RepresentedParty",
    "RequestHash",
    "SoapFaultResponse",
    "SoapMessage",
    "add_request_hash",
    "build_request",
    "build_response",
    "check_response_consistent",
    "compute_request_hash",
    "parse_soap",
    "parse_soap_fault",
    "parse_soap_request",
    "parse_soap_response",
    "soap_fault",
    "verify_request_hash",
]

PROTOCOL_VERSION: Final = "4.0"
#: X-Road's namespace for the optional ``representedParty`` header.
REPR_NS: Final = "http://x-road.eu/xsd/representation.xsd"
XOP_NS: Final = "http://www.w3.org/2004/08/xop/include"
SHA512_ALGORITHM_ID: Final = "http://www.w3.org/2001/04/xmlenc#sha512"

#: Digest algorithms accepted for ``requestHash`` (XML Signature algorithm URIs).
HASH_ALGORITHMS: Final[dict[str, Callable[[bytes], hashlib._Hash]]] = {
    "http://www.w3.org/2001/04/xmlenc#sha256": hashlib.sha256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashlib.sha384,
    SHA512_ALGORITHM_ID: hashlib.sha512,
}

_ENV = f"{{{SOAP_ENV_NS}}}"
_XRD = f"{{{XROAD_NS}}}"
_REPR = f"{{{REPR_NS}}}"
_CLIENT: Final = f"{_XRD}client"
_SERVICE: Final = f"{_XRD}service"
_SECURITY_SERVER: Final = f"{_XRD}securityServer"
_REPRESENTED_PARTY: Final = f"{_REPR}representedParty"
_UNSUPPORTED_HEADERS: Final = {
    f"{_XRD}centralService": "central services were removed from X-Road; use xrd:service",
}
_TEXT_HEADERS: Final = ("id", "userId", "issue", "protocolVersion", "requestHash")
_PASSING_ENCODINGS: Final = frozenset({"7bit", "8bit", "binary"})


@dataclasses.dataclass(frozen=True, slots=True)
class RequestHash:
    """``xrd:requestHash``: base64 digest of the request's SOAP part and its algorithm URI."""

    value: str
    algorithm: str = SHA512_ALGORITHM_ID


@dataclasses.dataclass(frozen=True, slots=True)
class RepresentedParty:
    """``repr:representedParty``: the party a client acts for (PR-MESS extension)."""

    party_code: str
    party_class: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class SoapMessage:
    """A parsed X-Road SOAP request or response.

    ``header_order`` lists every Header child as a Clark name (``{ns}local``) in document
    order, X-Road's and foreign ones alike, so a response can be checked against or built
    in the request's order. ``body`` is the one element inside ``SOAP-ENV:Body``.
    """

    client: ClientId
    service: ServiceId | None
    id: str
    protocol_version: str
    user_id: str | None
    issue: str | None
    request_hash: RequestHash | None
    represented_party: RepresentedParty | None
    security_server: SecurityServerId | None
    header_order: tuple[str, ...]
    envelope: etree._Element
    header: etree._Element
    body: etree._Element
    soap_bytes: bytes
    raw: bytes
    content_type: str
    attachments: tuple[Part, ...] = ()
    mtom: bool = False

    @property
    def body_qname(self) -> etree.QName:
        return etree.QName(self.body)

    @property
    def is_multipart(self) -> bool:
        """Whether the message came as ``multipart/related`` (attachments or MTOM)."""
        return parse_content_type(self.content_type)[0] == "multipart/related"


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class SoapFaultResponse:
    """A response whose Body is a SOAP Fault; passed back to the client as received."""

    fault: FaultError
    envelope: etree._Element
    soap_bytes: bytes
    raw: bytes
    content_type: str
    attachments: tuple[Part, ...] = ()


# --- reading ---------------------------------------------------------------------------------


def _soap_part(
    data: bytes, content_type: str, max_bytes: int
) -> tuple[bytes, tuple[Part, ...], bool]:
    """The SOAP part's bytes, the attachments and whether the message is MTOM."""
    if len(data) > max_bytes:
        raise FaultError(
            "Client.RequestTooLarge",
            f"the message is {len(data)} bytes, over the size limit of {max_bytes} bytes; "
            "send a smaller message or ask the node operator to raise the limit",
            http_status=413,
        )
    if not content_type or not content_type.strip():
        raise client_fault(
            "InvalidContentType",
            "the request has no Content-Type; send text/xml; charset=UTF-8 or multipart/related",
        )
    media, params = parse_content_type(content_type)
    if media == "text/xml":
        _check_charset(params, "the message")
        return data, (), False
    if media == "application/soap+xml":
        raise client_fault(
            "InvalidContentType",
            "application/soap+xml is SOAP 1.2; X-Road uses SOAP 1.1, send text/xml",
        )
    if media != "multipart/related":
        raise client_fault(
            "InvalidContentType",
            f"Content-Type {media!r} is not accepted; send text/xml or multipart/related",
        )
    multipart = parse_multipart(data, content_type, max_bytes=max_bytes)
    root = multipart.root
    root_media, root_params = parse_content_type(root.content_type)
    if root_media == "application/xop+xml":
        inner = root_params.get("type", "text/xml").strip().lower()
        if inner != "text/xml":
            raise client_fault(
                "InvalidContentType",
                f"the MTOM root part carries {inner!r}; X-Road uses SOAP 1.1 (type=text/xml)",
            )
        mtom = True
    elif root_media == "text/xml":
        mtom = False
    else:
        raise client_fault(
            "InvalidContentType",
            f"the root part of the multipart message is {root_media!r}; it must be the SOAP "
            "message as text/xml (or application/xop+xml for MTOM)",
        )
    _check_charset(root_params, "the SOAP part")
    encoding = (root.header("Content-Transfer-Encoding") or "binary").strip().lower()
    if encoding not in _PASSING_ENCODINGS:
        raise client_fault(
            "MimeParsingFailed",
            f"the SOAP part uses Content-Transfer-Encoding {encoding!r}; send it as 8bit or binary",
        )
    return root.data, multipart.attachments, mtom


def _check_charset(params: dict[str, str], what: str) -> None:
    charset = params.get("charset")
    if charset is not None and charset.strip().lower() not in ("utf-8", "utf8"):
        raise client_fault(
            "InvalidContentType",
            f"{what} is declared as charset {charset!r}; X-Road messages are UTF-8",
        )


def _envelope_parts(
    soap_bytes: bytes, max_bytes: int
) -> tuple[etree._Element, etree._Element | None, etree._Element | None]:
    envelope = parse_xml(
        soap_bytes, max_bytes=max_bytes, what="SOAP message", malformed="InvalidSoap"
    )
    if envelope.tag == f"{{{SOAP12_ENV_NS}}}Envelope":
        raise client_fault(
            "InvalidSoap", "the message is a SOAP 1.2 envelope; X-Road uses SOAP 1.1"
        )
    if envelope.tag != f"{_ENV}Envelope":
        raise client_fault(
            "InvalidSoap",
            f"the message's root element is {etree.QName(envelope).text}; expected Envelope "
            f"in namespace {SOAP_ENV_NS}",
        )
    header: etree._Element | None = None
    body: etree._Element | None = None
    for child in envelope:
        if not isinstance(child.tag, str):
            continue
        if child.tag == f"{_ENV}Header" and header is None and body is None:
            header = child
        elif child.tag == f"{_ENV}Body" and body is None:
            body = child
        else:
            raise client_fault(
                "InvalidSoap",
                f"unexpected {etree.QName(child).text} in the Envelope; a SOAP message holds "
                "one Header followed by one Body",
            )
    return envelope, header, body


def _header_text(element: etree._Element, name: str) -> str:
    if len(element):
        raise client_fault("InvalidXml", f"the xrd:{name} header must hold text, not elements")
    return (element.text or "").strip()


def _represented_party(element: etree._Element) -> RepresentedParty:
    values: dict[str, str] = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue
        local = etree.QName(child).localname
        if child.tag not in (f"{_REPR}partyClass", f"{_REPR}partyCode") or local in values:
            raise client_fault(
                "InvalidXml",
                "repr:representedParty holds one optional repr:partyClass and one "
                f"repr:partyCode; found {etree.QName(child).text}",
            )
        values[local] = (child.text or "").strip()
    if not values.get("partyCode"):
        raise client_fault("InvalidXml", "repr:representedParty lacks repr:partyCode")
    return RepresentedParty(values["partyCode"], values.get("partyClass") or None)


@dataclasses.dataclass
class _Headers:
    client: ClientId | None = None
    service: ServiceId | None = None
    security_server: SecurityServerId | None = None
    represented_party: RepresentedParty | None = None
    texts: dict[str, str] = dataclasses.field(default_factory=dict)
    algorithm: str | None = None
    order: list[str] = dataclasses.field(default_factory=list)


def _read_headers(header: etree._Element) -> _Headers:
    found = _Headers()
    seen: set[str] = set()
    for child in header:
        if not isinstance(child.tag, str):
            continue
        tag = child.tag
        found.order.append(tag)
        if tag in _UNSUPPORTED_HEADERS:
            raise client_fault("InvalidSoap", _UNSUPPORTED_HEADERS[tag])
        known = tag.startswith(_XRD) or tag == _REPRESENTED_PARTY
        if not known:
            continue  # foreign headers travel unread
        local = tag.rpartition("}")[2]
        if tag in seen:
            raise client_fault(
                "DuplicateHeaderField",
                f"the SOAP Header contains {local} more than once; give each header once",
            )
        seen.add(tag)
        if tag == _CLIENT:
            found.client = client_from_xml(child)
        elif tag == _SERVICE:
            found.service = service_from_xml(child)
        elif tag == _SECURITY_SERVER:
            found.security_server = server_from_xml(child)
        elif tag == _REPRESENTED_PARTY:
            found.represented_party = _represented_party(child)
        elif local in _TEXT_HEADERS:
            found.texts[local] = _header_text(child, local)
            if local == "requestHash":
                found.algorithm = (child.get("algorithmId") or "").strip()
    return found


def _required(found: _Headers, *, need_service: bool) -> tuple[ClientId, str, str]:
    missing = []
    if found.client is None:
        missing.append("client")
    if need_service and found.service is None:
        missing.append("service")
    if not found.texts.get("id"):
        missing.append("id")
    if not found.texts.get("protocolVersion"):
        missing.append("protocolVersion")
    if missing or found.client is None:
        names = ", ".join(f"xrd:{name}" for name in missing)
        raise client_fault(
            "MissingHeaderField",
            f"the SOAP Header lacks {names}; X-Road messages need xrd:client, xrd:service "
            "(requests), xrd:id and xrd:protocolVersion",
        )
    version = found.texts["protocolVersion"]
    if version != PROTOCOL_VERSION:
        raise client_fault(
            "InvalidProtocolVersion",
            f"xrd:protocolVersion is {version!r}; this node speaks X-Road message protocol "
            f"{PROTOCOL_VERSION}",
        )
    return found.client, found.texts["id"], version


def _body_element(body: etree._Element) -> etree._Element:
    elements = [child for child in body if isinstance(child.tag, str)]
    if (body.text or "").strip() or any((child.tail or "").strip() for child in body):
        raise client_fault("InvalidBody", "the SOAP Body holds text outside its element")
    if not elements:
        raise client_fault(
            "InvalidBody", "the SOAP Body is empty; it must hold the service's request element"
        )
    if len(elements) > 1:
        raise client_fault(
            "InvalidBody",
            f"the SOAP Body holds {len(elements)} elements; X-Road messages are "
            "document/literal wrapped, with exactly one",
        )
    return elements[0]


def _parse(
    data: bytes,
    content_type: str,
    max_bytes: int,
    *,
    need_service: bool,
    allow_fault: bool,
) -> SoapMessage | SoapFaultResponse:
    data = bytes(data)
    soap_bytes, attachments, mtom = _soap_part(data, content_type, max_bytes)
    envelope, header, body = _envelope_parts(soap_bytes, max_bytes)
    if allow_fault and body is not None:
        fault = find_fault(envelope)
        if fault is not None:
            return SoapFaultResponse(
                fault_from_element(fault), envelope, soap_bytes, data, content_type, attachments
            )
    if header is None:
        raise client_fault(
            "MissingHeader",
            "the SOAP message has no Header; X-Road messages carry xrd:client, xrd:service, "
            "xrd:id and xrd:protocolVersion in SOAP-ENV:Header",
        )
    found = _read_headers(header)
    client, message_id, version = _required(found, need_service=need_service)
    if body is None:
        raise client_fault("MissingBody", "the SOAP message has no Body element")
    element = _body_element(body)
    request_hash = None
    if "requestHash" in found.texts:
        request_hash = RequestHash(found.texts["requestHash"], found.algorithm or "")
    return SoapMessage(
        client=client,
        service=found.service,
        id=message_id,
        protocol_version=version,
        user_id=found.texts.get("userId"),
        issue=found.texts.get("issue"),
        request_hash=request_hash,
        represented_party=found.represented_party,
        security_server=found.security_server,
        header_order=tuple(found.order),
        envelope=envelope,
        header=header,
        body=element,
        soap_bytes=soap_bytes,
        raw=data,
        content_type=content_type,
        attachments=attachments,
        mtom=mtom,
    )


def parse_soap(data: bytes, content_type: str, *, max_bytes: int) -> SoapMessage:
    """Parse and check an X-Road SOAP message without a request/response role.

    Checks the envelope, the mandatory ``client``, ``id`` and ``protocolVersion`` headers and
    the Body; ``service`` may be absent and the body element's name is not checked. Use
    :func:`parse_soap_request` or :func:`parse_soap_response` at a node's edges.
    """
    message = _parse(data, content_type, max_bytes, need_service=False, allow_fault=False)
    assert isinstance(message, SoapMessage)
    return message


def parse_soap_request(data: bytes, content_type: str, *, max_bytes: int) -> SoapMessage:
    """Parse a request from an information system or a consumer node.

    On top of :func:`parse_soap`: ``service`` is mandatory and the body element's local name
    must equal its serviceCode (``Client.InconsistentHeaders`` otherwise).
    """
    message = _parse(data, content_type, max_bytes, need_service=True, allow_fault=False)
    assert isinstance(message, SoapMessage)
    assert message.service is not None
    local = message.body_qname.localname
    if local != message.service.service_code:
        raise client_fault(
            "InconsistentHeaders",
            f"the body element is {local!r} but xrd:service names service code "
            f"{message.service.service_code!r}; they must be equal",
        )
    return message


def parse_soap_response(
    data: bytes,
    content_type: str,
    *,
    max_bytes: int,
    fault_prefix: str = SERVER_PROXY,
) -> SoapMessage | SoapFaultResponse:
    """Parse a service's (or a provider node's) response.

    A Body holding a SOAP Fault gives a :class:`SoapFaultResponse`, headers or not. Otherwise
    ``service`` is mandatory and the body element must be ``{serviceCode}Response``. Problems
    are reported under ``fault_prefix`` (``Server.ServerProxy.InvalidSoap``, ...).
    """
    try:
        message = _parse(data, content_type, max_bytes, need_service=True, allow_fault=True)
        if isinstance(message, SoapMessage):
            assert message.service is not None
            expected = message.service.service_code + "Response"
            local = message.body_qname.localname
            if local != expected:
                raise client_fault(
                    "InconsistentHeaders",
                    f"the response body element is {local!r}; for service code "
                    f"{message.service.service_code!r} it must be {expected!r}",
                )
    except FaultError as exc:
        if fault_prefix == CLIENT or exc.prefix != CLIENT:
            raise
        relabelled = FaultError(f"{fault_prefix}.{exc.fault_code[len(CLIENT) + 1 :]}", exc.message)
        relabelled.detail = exc.detail
        raise relabelled from exc
    return message


def check_response_consistent(
    request: SoapMessage, response: SoapMessage, *, prefix: str = SERVER_PROXY
) -> None:
    """Refuse a response that does not echo the request's headers.

    ``client``, ``service``, ``id``, ``userId``, ``issue`` and ``protocolVersion`` must be
    equal; otherwise ``{prefix}.InconsistentResponse`` names the first header that differs.
    """
    pairs: list[tuple[str, object, object]] = [
        ("client", request.client, response.client),
        ("service", request.service, response.service),
        ("id", request.id, response.id),
        ("userId", request.user_id, response.user_id),
        ("issue", request.issue, response.issue),
        ("protocolVersion", request.protocol_version, response.protocol_version),
    ]
    for name, sent, received in pairs:
        if sent != received:
            raise FaultError(
                f"{prefix}.InconsistentResponse",
                f"the response's xrd:{name} is {_shown(received)} but the request's was "
                f"{_shown(sent)}; a response must repeat the request's headers",
            )


def _shown(value: object) -> str:
    return "absent" if value is None else repr(str(value))


# --- request hash ----------------------------------------------------------------------------


def compute_request_hash(soap_bytes: bytes, algorithm: str = SHA512_ALGORITHM_ID) -> RequestHash:
    """The ``requestHash`` of a request's SOAP part as received (base64 of its digest)."""
    digest = HASH_ALGORITHMS.get(algorithm)
    if digest is None:
        raise ValueError(f"unsupported requestHash algorithm {algorithm!r}")
    return RequestHash(base64.b64encode(digest(soap_bytes).digest()).decode("ascii"), algorithm)


def verify_request_hash(
    request: SoapMessage, response: SoapMessage, *, prefix: str = CLIENT_PROXY
) -> None:
    """Refuse a response whose ``requestHash`` is not the hash of ``request`` as it was sent.

    Used by the consumer's node: it proves the provider's node answered this very request.
    """
    found = response.request_hash
    if found is None:
        raise FaultError(
            f"{prefix}.InconsistentResponse",
            "the response has no xrd:requestHash; the provider's node must add one",
        )
    if found.algorithm not in HASH_ALGORITHMS:
        raise FaultError(
            f"{prefix}.InconsistentResponse",
            f"the response's xrd:requestHash uses algorithm {found.algorithm!r}; expected "
            f"{SHA512_ALGORITHM_ID}",
        )
    expected = compute_request_hash(request.soap_bytes, found.algorithm)
    if not hmac.compare_digest(expected.value, found.value):
        raise FaultError(
            f"{prefix}.InconsistentResponse",
            "the response's xrd:requestHash does not match the request that was sent; the "
            "response answers another request",
        )


#: From just after a tag's ``<`` up to its ``>``: anything but quotes and ``>``, or quoted values.
_TAG_REST_RE: Final = re.compile(rb"""[^"'>]*(?:(?:"[^"]*"|'[^']*')[^"'>]*)*>""")


def _tag_end(doc: bytes, start: int) -> int:
    """Index of the ``>`` closing the tag that opens at ``start``, skipping quoted values."""
    # A regular expression rather than a loop over the bytes: the same scan, in C.
    match = _TAG_REST_RE.match(doc, start + 1)
    if match is None:
        raise ValueError("unterminated tag")
    return match.end() - 1


def _header_span(doc: bytes) -> tuple[int, int, bytes | None]:
    """Where to insert into the Envelope's first child (the Header).

    Returns ``(start, end, name)``: for ``<Header>...</Header>``, start == end is the offset of
    the end tag and name is None; for a self-closing ``<Header/>``, the span of the whole tag
    and the tag's qualified name, so it can be rewritten as an open/close pair.
    """
    pos = 0
    depth = 0
    header_open = False
    while True:
        lt = doc.find(b"<", pos)
        if lt < 0:
            raise ValueError("no Header element found")
        for opener, closer in ((b"<!--", b"-->"), (b"<![CDATA[", b"]]>"), (b"<?", b"?>")):
            if doc.startswith(opener, lt):
                pos = doc.index(closer, lt + len(opener)) + len(closer)
                break
        else:
            if doc.startswith(b"<!", lt):
                raise ValueError("declarations are not allowed")
            gt = _tag_end(doc, lt)
            if doc.startswith(b"</", lt):
                depth -= 1
                if header_open and depth == 1:
                    return lt, lt, None
            elif doc[gt - 1 : gt] == b"/":
                if depth == 1 and not header_open:
                    name = doc[lt + 1 : gt - 1].split()[0].rstrip(b"/")
                    return lt, gt + 1, name
            else:
                depth += 1
                if depth == 2 and not header_open:
                    header_open = True
            pos = gt + 1


def _request_hash_xml(value: str, algorithm: str) -> bytes:
    return (
        f'<xrd:requestHash xmlns:xrd="{XROAD_NS}" algorithmId={quoteattr(algorithm)}>'
        f"{value}</xrd:requestHash>"
    ).encode()


def add_request_hash(
    response_bytes: bytes,
    request_hash_b64: str,
    algorithm: str = SHA512_ALGORITHM_ID,
    *,
    parsed: SoapMessage | None = None,
) -> bytes:
    """The response's SOAP part with ``xrd:requestHash`` appended to its Header.

    The element is spliced into the bytes, so everything else (prefixes, whitespace, the XML
    declaration, signatures over the body) stays byte-identical. A ``requestHash`` the service
    already put there is replaced; then the document is re-serialised by lxml. ``parsed`` is
    the caller's parse of exactly these bytes, if it has one: it saves parsing them again and
    is not changed.
    """
    try:
        raw_digest = base64.b64decode(request_hash_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("request_hash_b64 is not base64") from exc
    if not raw_digest:
        raise ValueError("request_hash_b64 is empty")
    if algorithm not in HASH_ALGORITHMS:
        raise ValueError(f"unsupported requestHash algorithm {algorithm!r}")
    limit = len(response_bytes) + 1

    def replaced() -> bytes:
        # Changes the tree it is given: never the caller's.
        envelope, header, _ = _envelope_parts(response_bytes, limit)
        assert header is not None  # the same bytes had one a moment ago
        return _replace_request_hash(envelope, header, request_hash_b64, algorithm)

    if parsed is not None and parsed.soap_bytes == response_bytes:
        header: etree._Element | None = parsed.header
    else:
        header = _envelope_parts(response_bytes, limit)[1]
    if header is None:
        raise FaultError(
            f"{SERVER_PROXY}.InvalidSoap",
            "the service's response has no SOAP Header to add xrd:requestHash to",
        )
    if header.find(f"{_XRD}requestHash") is not None:
        return replaced()
    try:
        start, end, name = _header_span(response_bytes)
    except ValueError:
        return replaced()
    element = _request_hash_xml(request_hash_b64, algorithm)
    if name is None:
        spliced = response_bytes[:start] + element + response_bytes[end:]
    else:
        spliced = (
            response_bytes[:start]
            + b"<"
            + response_bytes[start + 1 : end - 2].rstrip()
            + b">"
            + element
            + b"</"
            + name
            + b">"
            + response_bytes[end:]
        )
    if _has_hash_last(spliced, request_hash_b64, len(header)):
        return spliced
    return replaced()


def _has_hash_last(doc: bytes, value: str, old_children: int) -> bool:
    """Check the splice: same Header plus one last child, the hash we meant to add."""
    try:
        _, header, _ = _envelope_parts(doc, len(doc) + 1)
    except FaultError:
        return False
    if header is None or len(header) != old_children + 1:
        return False
    last = header[-1]
    return last.tag == f"{_XRD}requestHash" and last.text == value


def _replace_request_hash(
    envelope: etree._Element, header: etree._Element, value: str, algorithm: str
) -> bytes:
    for old in header.findall(f"{_XRD}requestHash"):
        header.remove(old)
    element = etree.SubElement(header, f"{_XRD}requestHash", nsmap={"xrd": XROAD_NS})
    element.set("algorithmId", algorithm)
    element.text = value
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


# --- building --------------------------------------------------------------------------------


def _body_from(body_element_xml: bytes | str | etree._Element, max_bytes: int) -> etree._Element:
    if isinstance(body_element_xml, etree._Element):
        return copy.deepcopy(body_element_xml)
    data = body_element_xml.encode() if isinstance(body_element_xml, str) else body_element_xml
    return parse_xml(data, max_bytes=max_bytes, what="body element")


def _text_header(header: etree._Element, local: str, value: str | None) -> None:
    if value is not None:
        etree.SubElement(header, f"{_XRD}{local}").text = value


def build_request(
    client: ClientId,
    service: ServiceId,
    *,
    id: str,  # named after the X-Road header, shadowing the builtin on purpose
    body_element_xml: bytes | str | etree._Element,
    user_id: str | None = None,
    issue: str | None = None,
    represented_party: RepresentedParty | None = None,
    security_server: SecurityServerId | None = None,
    max_body_bytes: int = 10 * 1024 * 1024,
) -> bytes:
    """An X-Road SOAP 4.0 request (UTF-8, ``text/xml``) in PR-MESS's header order.

    The body element must be named after the service code, as the receiving node checks.
    """
    body_element = _body_from(body_element_xml, max_body_bytes)
    if etree.QName(body_element).localname != service.service_code:
        raise ValueError(
            f"the body element {etree.QName(body_element).localname!r} must be named after "
            f"the service code {service.service_code!r}"
        )
    envelope = etree.Element(
        f"{_ENV}Envelope", nsmap={"SOAP-ENV": SOAP_ENV_NS, "xrd": XROAD_NS, "id": ID_NS}
    )
    header = etree.SubElement(envelope, f"{_ENV}Header")
    client_to_xml(client, parent=header)
    service_to_xml(service, parent=header)
    if security_server is not None:
        server_to_xml(security_server, parent=header)
    if represented_party is not None:
        party = etree.SubElement(header, f"{_REPR}representedParty", nsmap={"repr": REPR_NS})
        if represented_party.party_class is not None:
            etree.SubElement(party, f"{_REPR}partyClass").text = represented_party.party_class
        etree.SubElement(party, f"{_REPR}partyCode").text = represented_party.party_code
    _text_header(header, "userId", user_id)
    _text_header(header, "id", id)
    _text_header(header, "issue", issue)
    _text_header(header, "protocolVersion", PROTOCOL_VERSION)
    body = etree.SubElement(envelope, f"{_ENV}Body")
    body.append(body_element)
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def build_response(
    request: SoapMessage,
    body_element_xml: bytes | str | etree._Element,
    *,
    max_body_bytes: int = 10 * 1024 * 1024,
) -> bytes:
    """A response to ``request`` for a provider: its headers repeated in order, then the body.

    The request's header elements are copied as they were (X-Road and foreign ones), without
    a ``requestHash``; the provider's node adds that with :func:`add_request_hash`.
    """
    body_element = _body_from(body_element_xml, max_body_bytes)
    envelope = etree.Element(
        f"{_ENV}Envelope", nsmap={"SOAP-ENV": SOAP_ENV_NS, "xrd": XROAD_NS, "id": ID_NS}
    )
    header = etree.SubElement(envelope, f"{_ENV}Header")
    for child in request.header:
        if isinstance(child.tag, str) and child.tag != f"{_XRD}requestHash":
            copied = copy.deepcopy(child)
            copied.tail = None
            header.append(copied)
    body = etree.SubElement(envelope, f"{_ENV}Body")
    body.append(body_element)
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
