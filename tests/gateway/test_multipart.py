from __future__ import annotations

import os

import pytest

from gateway.faults import FaultError
from gateway.multipart import (
    MAX_PARTS,
    Part,
    build_multipart,
    parse_content_type,
    parse_multipart,
)

LIMIT = 1024 * 1024
SOAP = b'<?xml version="1.0" encoding="UTF-8"?><a>soap</a>'


def test_attachments_round_trip_byte_identical() -> None:
    binary = os.urandom(4096) + b"\r\n--not-the-boundary\r\n\r\n" + bytes(range(256))
    attachments = [
        Part((("Content-Type", "application/octet-stream"), ("Content-ID", "<doc1>")), binary),
        Part(
            (("Content-Type", "text/plain"), ("Content-Transfer-Encoding", "base64")), b"aGk=\r\n"
        ),
        Part((("Content-ID", "<empty>"),), b""),
    ]
    root = Part((("Content-Type", "text/xml; charset=UTF-8"), ("Content-ID", "<soap>")), SOAP)
    body, content_type = build_multipart(root, attachments, start="soap")
    parsed = parse_multipart(body, content_type, max_bytes=LIMIT)
    assert parsed.root == root
    assert parsed.attachments == tuple(attachments)
    assert parsed.attachments[0].content_id == "doc1"
    assert parsed.attachments[0].data == binary


def test_takes_root_named_by_start_even_when_not_first() -> None:
    body = (
        b"preamble to ignore\r\n"
        b"--b1\r\nContent-ID: <att>\r\nContent-Type: image/png\r\n\r\nPNG\r\n"
        b"--b1\r\nContent-ID: <root@x>\r\nContent-Type: text/xml\r\n\r\n<a/>\r\n"
        b"--b1--\r\nepilogue"
    )
    parsed = parse_multipart(
        body, 'multipart/related; type="text/xml"; start="<root@x>"; boundary=b1', max_bytes=LIMIT
    )
    assert parsed.root.data == b"<a/>"
    assert [a.data for a in parsed.attachments] == [b"PNG"]


def test_first_part_is_root_without_start_and_folded_headers_are_joined() -> None:
    body = (
        b"--b1\r\nContent-Type: text/xml;\r\n charset=UTF-8\r\n\r\n<a/>\r\n"
        b"--b1\r\n\r\nraw\r\n--b1--"
    )
    parsed = parse_multipart(body, "multipart/related; boundary=b1", max_bytes=LIMIT)
    assert parsed.root.content_type == "text/xml; charset=UTF-8"
    assert parsed.attachments[0].headers == ()
    assert parsed.attachments[0].data == b"raw"


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (b"--b1\r\n\r\nx\r\n--b1--", "multipart/related", "no boundary parameter"),
        (b"--b1\r\n\r\nx\r\n", "multipart/related; boundary=b1", "without its closing"),
        (b"nothing here", "multipart/related; boundary=b1", "no delimiter line"),
        (b"--b1\r\nBad header\r\n\r\nx\r\n--b1--", "multipart/related; boundary=b1", "malformed"),
        (b"--b1--", "multipart/related; boundary=b1", "holds no parts"),
        (
            b"--b1\r\nContent-ID: <a>\r\n\r\nx\r\n--b1--",
            "multipart/related; boundary=b1; start=<b>",
            "Content-ID <b>",
        ),
    ],
)
def test_refuses_malformed_multipart_as_mime_parsing_failed(
    body: bytes, content_type: str, match: str
) -> None:
    with pytest.raises(FaultError, match=match) as info:
        parse_multipart(body, content_type, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.MimeParsingFailed"


def test_refuses_too_many_parts() -> None:
    body = b"".join(b"--b1\r\n\r\nx\r\n" for _ in range(MAX_PARTS + 2)) + b"--b1--"
    with pytest.raises(FaultError, match="more than") as info:
        parse_multipart(body, "multipart/related; boundary=b1", max_bytes=LIMIT)
    assert info.value.fault_code == "Client.MimeParsingFailed"


def test_refuses_body_over_the_size_limit() -> None:
    body = b"--b1\r\n\r\n" + b"x" * 2000 + b"\r\n--b1--"
    with pytest.raises(FaultError) as info:
        parse_multipart(body, "multipart/related; boundary=b1", max_bytes=1000)
    assert info.value.fault_code == "Client.RequestTooLarge"


def test_parses_quoted_content_type_parameters() -> None:
    media, params = parse_content_type(
        'Multipart/Related; type="application/xop+xml"; start="<r>"; '
        'start-info="text/xml"; boundary="a;b\\"c"'
    )
    assert media == "multipart/related"
    assert params == {
        "type": "application/xop+xml",
        "start": "<r>",
        "start-info": "text/xml",
        "boundary": 'a;b"c',
    }


def test_refuses_content_type_that_is_not_a_media_type() -> None:
    with pytest.raises(FaultError) as info:
        parse_content_type("xml")
    assert info.value.fault_code == "Client.InvalidContentType"


def test_content_type_answers_are_not_shared_between_callers() -> None:
    # Parsed values are kept for repeated headers; each caller still gets its own dict.
    value = 'multipart/related; type="text/xml"; boundary=abc'
    _, params = parse_content_type(value)
    params["boundary"] = "changed"
    params["extra"] = "x"
    assert parse_content_type(value) == (
        "multipart/related",
        {"type": "text/xml", "boundary": "abc"},
    )
    with pytest.raises(FaultError):
        parse_content_type("no media type")
    with pytest.raises(FaultError):  # a refusal is not remembered as an answer either
        parse_content_type("no media type")
