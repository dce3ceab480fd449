"""Safe XML parsing: the only way Jisr turns untrusted bytes into an lxml tree.

Rules:

- Every XML document Jisr reads from outside (SOAP messages, WSDL, global configuration,
  management requests) goes through :func:`parse_xml`; nothing else calls ``etree.fromstring``.
- The input is size-limited *before* parsing; the caller names the limit.
- A document type declaration (``<!DOCTYPE``) is refused before libxml2 sees it, so entity
  declarations can neither expand (billion laughs) nor fetch files or URLs (XXE). The parser
  itself is also configured never to load a DTD, resolve entities or touch the network, and
  keeps libxml2's default size and depth limits (``huge_tree=False``).
- Documents are UTF-8, as X-Road requires. A UTF-8 byte order mark is tolerated; an XML
  declaration naming another encoding, or a UTF-16/UTF-32 document, is refused.
- Failures are :class:`~gateway.faults.FaultError` with ``Client.*`` codes: the input came from
  the party that sent it. A node that parses a *response* re-labels the fault with
  :meth:`~gateway.faults.FaultError.with_prefix`.
"""

from __future__ import annotations

import re
import threading
from typing import Final

from lxml import etree

from gateway.faults import FaultError, client_fault

UTF8_BOM: Final = b"\xef\xbb\xbf"
#: libxml2's limits without ``huge_tree``; quoted in fault messages.
MAX_DEPTH: Final = 256
MAX_TEXT_BYTES: Final = 10_000_000

#: Byte order marks of encodings X-Road does not allow (UTF-32 first: it starts like UTF-16).
_FOREIGN_BOMS: Final = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)

_XML_DECL_RE: Final = re.compile(rb"<\?xml\s[^>]*?\?>")
_ENCODING_RE: Final = re.compile(rb"""\sencoding\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_ACCEPTED_ENCODINGS: Final = frozenset({"utf-8", "utf8"})


_PARSERS = threading.local()


def _parser() -> etree.XMLParser:
    # One parser per thread, reused: lxml parsers must not be shared between threads, but a
    # parser is reset for every document it parses, and making one costs more than a small
    # SOAP message's parse.
    parser: etree.XMLParser | None = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            huge_tree=False,
            load_dtd=False,
            dtd_validation=False,
            remove_comments=False,
            remove_pis=False,
        )
        _PARSERS.parser = parser
    return parser


def strip_bom(data: bytes) -> bytes:
    """The document without its UTF-8 byte order mark, if it has one."""
    return data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data


def _check_encoding(data: bytes, what: str) -> None:
    for bom, name in _FOREIGN_BOMS:
        if data.startswith(bom):
            raise client_fault(
                "InvalidXml", f"the {what} is encoded in {name}; send it in UTF-8 instead"
            )
    if data[:1] == b"\x00" or data[1:2] == b"\x00":
        raise client_fault(
            "InvalidXml",
            f"the {what} looks like UTF-16 or UTF-32 without a byte order mark; send it in UTF-8",
        )
    decl = _XML_DECL_RE.match(data)
    if decl is None:
        return
    enc = _ENCODING_RE.search(decl.group(0))
    if enc is None:
        return
    raw_name: bytes = enc.group(1) if enc.group(1) is not None else enc.group(2)
    shown = raw_name.decode("ascii", "replace")
    if shown.strip().lower() not in _ACCEPTED_ENCODINGS:
        raise client_fault(
            "InvalidXml",
            f"the {what} declares encoding {shown!r}; X-Road messages are UTF-8, "
            'declare encoding="UTF-8" or leave the encoding out',
        )


def _refuse_doctype(data: bytes, what: str) -> None:
    """Walk the prolog (declaration, comments, processing instructions) looking for ``<!``.

    A DOCTYPE may only appear in the prolog, so stopping at the first start tag is enough;
    ``<!DOCTYPE`` anywhere later is a syntax error libxml2 reports without acting on it.
    """
    pos = 0
    size = len(data)
    while pos < size:
        while pos < size and data[pos] in b" \t\r\n":
            pos += 1
        if data.startswith(b"<?", pos):
            end = data.find(b"?>", pos + 2)
            if end < 0:
                return  # unterminated; the parser reports the syntax error
            pos = end + 2
        elif data.startswith(b"<!--", pos):
            end = data.find(b"-->", pos + 4)
            if end < 0:
                return
            pos = end + 3
        elif data.startswith(b"<!", pos):
            raise client_fault(
                "InvalidXml",
                f"the {what} contains a document type declaration (<!DOCTYPE ...>); "
                "DTDs and entity declarations are refused, remove them",
            )
        else:
            return


def parse_xml(
    data: bytes,
    *,
    max_bytes: int,
    what: str = "XML document",
    malformed: str = "InvalidXml",
) -> etree._Element:
    """Parse untrusted ``data`` into its root element, refusing anything unsafe.

    ``what`` names the document in fault messages ("SOAP message", "WSDL").
    ``malformed`` is the fault name for a document that is not well-formed XML: SOAP uses
    ``InvalidSoap`` for that, everything else ``InvalidXml``. A document over ``max_bytes``
    is refused with ``Client.RequestTooLarge`` (HTTP 413) without being parsed.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"parse_xml takes bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise FaultError(
            "Client.RequestTooLarge",
            f"the {what} is {len(data)} bytes, over the size limit of {max_bytes} bytes; "
            "send a smaller message or ask the node operator to raise the limit",
            http_status=413,
        )
    body = strip_bom(data)
    _check_encoding(body, what)
    _refuse_doctype(body, what)
    if not body.strip():
        raise client_fault(malformed, f"the {what} is empty; expected an XML document")
    try:
        root = etree.fromstring(body, parser=_parser())
    except etree.XMLSyntaxError as exc:
        reason = str(exc)
        if "XML_PARSE_HUGE" in reason:
            # libxml2's safety limits, not a syntax error: say which limit, not how to lift it.
            raise client_fault(
                "InvalidXml",
                f"the {what} exceeds the XML parser's safety limits (elements nested more than "
                f"{MAX_DEPTH} deep, or one text node over {MAX_TEXT_BYTES} bytes): "
                f"{reason.split(',')[0]}; send large binary content as an attachment",
            ) from exc
        raise client_fault(malformed, f"the {what} is not well-formed XML: {reason}") from exc
    except ValueError as exc:  # lxml refuses some inputs (e.g. unsupported encodings) this way
        raise client_fault(malformed, f"the {what} cannot be parsed as XML: {exc}") from exc
    if root is None:  # pragma: no cover - lxml raises instead for empty documents
        raise client_fault(malformed, f"the {what} has no root element")
    docinfo = root.getroottree().docinfo
    doctype: str = getattr(docinfo, "doctype", "")  # the stubs lack DocInfo.doctype
    if doctype or docinfo.internalDTD is not None:  # belt and braces
        raise client_fault(
            "InvalidXml", f"the {what} contains a document type declaration; remove it"
        )
    return root
