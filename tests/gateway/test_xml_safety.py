from __future__ import annotations

import pytest

from gateway.faults import FaultError
from gateway.xml_safety import parse_xml

LIMIT = 64 * 1024

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY x SYSTEM "file:///etc/passwd"> ]>
<foo>&x;</foo>
"""


def test_parses_plain_utf8_document() -> None:
    root = parse_xml("<a><b>جسر</b></a>".encode(), max_bytes=LIMIT)
    assert root.findtext("b") == "جسر"


def test_tolerates_utf8_byte_order_mark() -> None:
    data = b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?><a>x</a>'
    assert parse_xml(data, max_bytes=LIMIT).text == "x"


def test_refuses_billion_laughs_without_expanding() -> None:
    with pytest.raises(FaultError) as info:
        parse_xml(BILLION_LAUGHS, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InvalidXml"
    assert "document type declaration" in info.value.message
    assert "lol" not in info.value.message


def test_refuses_external_entity_without_reading_the_file() -> None:
    with pytest.raises(FaultError) as info:
        parse_xml(EXTERNAL_ENTITY, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InvalidXml"
    assert "root:" not in info.value.message


def test_refuses_doctype_hidden_after_comments_and_instructions() -> None:
    data = b'<?xml version="1.0"?><!-- c --><?pi x?>\n<!DOCTYPE a SYSTEM "http://x/a.dtd"><a/>'
    with pytest.raises(FaultError, match="DOCTYPE") as info:
        parse_xml(data, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InvalidXml"


def test_undeclared_entity_reference_is_not_well_formed() -> None:
    with pytest.raises(FaultError) as info:
        parse_xml(b"<a>&x;</a>", max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InvalidXml"


def test_refuses_document_over_the_size_limit_before_parsing() -> None:
    with pytest.raises(FaultError) as info:
        parse_xml(b"<a>" + b"x" * 200 + b"</a>", max_bytes=100)
    assert info.value.fault_code == "Client.RequestTooLarge"
    assert info.value.http_status == 413
    assert "size limit of 100 bytes" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0" encoding="ISO-8859-1"?><a>x</a>',
        "<a>x</a>".encode("utf-16"),
        "<a>x</a>".encode("utf-16-le"),
    ],
)
def test_refuses_encodings_other_than_utf8(data: bytes) -> None:
    with pytest.raises(FaultError, match="UTF-8") as info:
        parse_xml(data, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InvalidXml"


def test_accepts_lowercase_utf8_declaration() -> None:
    assert parse_xml(b"<?xml version='1.0' encoding='utf-8'?><a/>", max_bytes=LIMIT).tag == "a"


def test_reports_malformed_xml_under_the_callers_fault_name() -> None:
    with pytest.raises(FaultError) as info:
        parse_xml(b"<a><b></a>", max_bytes=LIMIT, malformed="InvalidSoap", what="SOAP message")
    assert info.value.fault_code == "Client.InvalidSoap"
    assert "SOAP message is not well-formed" in info.value.message


def test_refuses_empty_document() -> None:
    with pytest.raises(FaultError, match="empty"):
        parse_xml(b"  \n", max_bytes=LIMIT)


def test_refuses_invalid_utf8_bytes() -> None:
    with pytest.raises(FaultError) as info:
        parse_xml(b"<a>\xff\xfe\xfd</a>", max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InvalidXml"


def test_refuses_nesting_beyond_the_parsers_depth_limit() -> None:
    with pytest.raises(FaultError, match="nested more than 256") as info:
        parse_xml(b"<a>" * 1000 + b"</a>" * 1000, max_bytes=LIMIT)
    assert info.value.fault_code == "Client.InvalidXml"
    assert "XML_PARSE_HUGE" not in info.value.message


def test_refuses_text_node_over_the_parsers_limit_even_under_max_bytes() -> None:
    data = b"<a>" + b"x" * 10_000_001 + b"</a>"
    with pytest.raises(FaultError, match="as an attachment") as info:
        parse_xml(data, max_bytes=len(data))
    assert info.value.fault_code == "Client.InvalidXml"
