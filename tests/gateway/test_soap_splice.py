"""The byte splice that adds requestHash finds tag ends exactly as a byte-by-byte scan does."""

from __future__ import annotations

import random

import pytest
from lxml import etree

from gateway.soap import SoapMessage, _tag_end, add_request_hash, parse_soap_response
from tests.gateway.test_soap import DEFAULT_HEADERS, LIMIT, TEXT_XML, envelope


def _scan(doc: bytes, start: int) -> int:
    """The reference: walk the bytes, toggling on quotes, stop at ``>`` outside them."""
    quote = 0
    for index in range(start + 1, len(doc)):
        byte = doc[index]
        if quote:
            if byte == quote:
                quote = 0
        elif byte in b"\"'":
            quote = byte
        elif byte == ord(">"):
            return index
    raise ValueError("unterminated tag")


def _outcome(doc: bytes, start: int) -> int | str:
    try:
        return _tag_end(doc, start)
    except ValueError as exc:
        return str(exc)


def _reference(doc: bytes, start: int) -> int | str:
    try:
        return _scan(doc, start)
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize(
    "doc",
    [
        b"<a>",
        b"<a b=\"1>2\" c='3>4'>rest",
        b'<a b="x\'y">',
        b'<a b="unterminated>',
        b"<a",
        b"<",
        b'<xrd:id xmlns:xrd="http://x-road.eu/xsd/xroad.xsd">1</xrd:id>',
    ],
)
def test_finds_the_end_of_known_tags(doc: bytes) -> None:
    assert _outcome(doc, 0) == _reference(doc, 0)


def test_finds_the_same_end_as_a_byte_scan_on_random_documents() -> None:
    rng = random.Random(20261122)
    alphabet = b"<>\"'ab =/\n"
    for _ in range(5000):
        doc = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        start = rng.randrange(0, len(doc))
        assert _outcome(doc, start) == _reference(doc, start), (doc, start)


@pytest.mark.parametrize(
    "headers",
    [
        DEFAULT_HEADERS,
        (*DEFAULT_HEADERS, '<xrd:requestHash algorithmId="urn:x">c3RhbGU=</xrd:requestHash>'),
    ],
    ids=["spliced", "replaced"],
)
def test_a_parsed_response_gives_the_same_bytes_and_stays_unchanged(
    headers: tuple[str, ...],
) -> None:
    data = envelope(headers=headers, body="<getDeathRecordResponse/>")
    parsed = parse_soap_response(data, TEXT_XML, max_bytes=LIMIT)
    assert isinstance(parsed, SoapMessage)
    before = etree.tostring(parsed.envelope)
    with_parse = add_request_hash(data, "AAAA", parsed=parsed)
    assert with_parse == add_request_hash(data, "AAAA")
    assert etree.tostring(parsed.envelope) == before
