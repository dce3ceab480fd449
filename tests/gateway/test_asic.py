"""ASiC-E container building and parsing."""

from __future__ import annotations

import datetime as dt
import io
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from gateway.asic import (
    MANIFEST_NAME,
    MIMETYPE,
    AsicContainer,
    AsicEntry,
    AsicError,
    build_container,
    check_name,
    manifest_xml,
    parse_container,
)

WHEN = dt.datetime(2026, 11, 1, 12, 0, 1, tzinfo=dt.UTC)

ENTRIES = [
    AsicEntry("request/signed-part.json", b'{"a":1}', "application/json"),
    AsicEntry("request/body.bin", b"\x00\x01 body", "application/octet-stream"),
    AsicEntry("META-INF/signature-request.p7s", b"0\x80signature", "application/pkcs7-signature"),
]


def _rezip(
    data: bytes, change: dict[str, bytes | None], *, add: dict[str, bytes] | None = None
) -> bytes:
    """The container with some entries replaced (None: removed), kept in order."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in change:
                replacement = change[info.filename]
                if replacement is None:
                    continue
                dst.writestr(info, replacement)
            else:
                dst.writestr(info, src.read(info))
        for name, value in (add or {}).items():
            dst.writestr(name, value)
    return out.getvalue()


def test_round_trip_keeps_entries_media_types_and_order() -> None:
    data = build_container(ENTRIES, modified=WHEN)
    parsed = parse_container(data)
    assert parsed.names == tuple(e.name for e in ENTRIES)
    assert parsed.get("request/body.bin") == b"\x00\x01 body"
    assert parsed.entries[0].media_type == "application/json"
    assert isinstance(parsed, AsicContainer)


def test_mimetype_is_first_stored_and_readable_at_offset_38() -> None:
    data = build_container(ENTRIES, modified=WHEN)
    assert data[30:38] == b"mimetype"
    assert data[38 : 38 + len(MIMETYPE)] == MIMETYPE.encode()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        first = zf.infolist()[0]
        assert first.filename == "mimetype"
        assert first.compress_type == zipfile.ZIP_STORED
        assert MANIFEST_NAME in zf.namelist()


def test_manifest_lists_data_objects_but_not_meta_inf() -> None:
    data = build_container(ENTRIES, modified=WHEN)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = zf.read(MANIFEST_NAME).decode()
    assert 'full-path="/" manifest:media-type="application/vnd.etsi.asic-e+zip"' in manifest
    assert 'full-path="request/signed-part.json"' in manifest
    assert "signature-request.p7s" not in manifest


def test_building_is_deterministic() -> None:
    assert build_container(ENTRIES, modified=WHEN) == build_container(ENTRIES, modified=WHEN)


def test_refuses_container_whose_first_entry_is_not_mimetype() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("request/body.bin", b"x")
        zf.writestr("mimetype", MIMETYPE)
    with pytest.raises(AsicError, match="first entry of the container is not 'mimetype'"):
        parse_container(out.getvalue())


def test_refuses_compressed_mimetype() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("mimetype", MIMETYPE, compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(AsicError, match="stored uncompressed"):
        parse_container(out.getvalue())


def test_refuses_data_object_missing_from_manifest() -> None:
    data = _rezip(build_container(ENTRIES, modified=WHEN), {}, add={"extra.txt": b"sneaked in"})
    with pytest.raises(AsicError, match=r"entry extra.txt is not listed in META-INF/manifest.xml"):
        parse_container(data)


def test_refuses_manifest_entry_without_file() -> None:
    data = _rezip(build_container(ENTRIES, modified=WHEN), {"request/body.bin": None})
    with pytest.raises(AsicError, match=r"lists request/body\.bin, which the container lacks"):
        parse_container(data)


def test_refuses_manifest_with_doctype() -> None:
    evil = b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><m>&x;</m>'
    data = _rezip(build_container(ENTRIES, modified=WHEN), {MANIFEST_NAME: evil})
    with pytest.raises(AsicError, match="document type declaration"):
        parse_container(data)


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "a\\b", "a//b", ".hidden"])
def test_refuses_names_that_could_escape_a_directory(name: str) -> None:
    with pytest.raises(AsicError, match="is not allowed"):
        AsicEntry(name, b"x")


@pytest.mark.parametrize("name", [["a"], {"a": 1}, b"a", 1])
def test_refuses_names_that_are_not_text(name: object) -> None:
    with pytest.raises(AsicError, match="is not allowed"):
        check_name(name)  # type: ignore[arg-type]


def test_refuses_zip_slip_name_inside_a_container() -> None:
    data = _rezip(build_container(ENTRIES, modified=WHEN), {}, add={"../../evil": b"x"})
    with pytest.raises(AsicError, match="is not allowed"):
        parse_container(data)


def test_refuses_entry_declared_larger_than_the_limit() -> None:
    big = [AsicEntry("big.bin", b"\0" * 5000)]
    data = build_container(big, modified=WHEN)
    with pytest.raises(AsicError, match=r"big\.bin is 5000 bytes, over the limit of 4096"):
        parse_container(data, max_entry_bytes=4096)


def test_refuses_container_over_the_size_limit() -> None:
    data = build_container(ENTRIES, modified=WHEN)
    with pytest.raises(AsicError, match="over the limit"):
        parse_container(data, max_bytes=100)


def test_refuses_damaged_entry() -> None:
    data = bytearray(build_container(ENTRIES, modified=WHEN, compress=False))
    at = bytes(data).index(b"\x00\x01 body")
    data[at] ^= 0xFF
    with pytest.raises(AsicError, match="damaged"):
        parse_container(bytes(data))


def test_refuses_duplicate_names_when_building() -> None:
    with pytest.raises(AsicError, match="same name"):
        build_container([ENTRIES[0], ENTRIES[0]], modified=WHEN)


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed")
def test_standard_unzip_reads_the_container(tmp_path: Path) -> None:
    path = tmp_path / "c.asice"
    path.write_bytes(build_container(ENTRIES, modified=WHEN))
    result = subprocess.run(
        ["unzip", "-o", "-q", str(path), "-d", str(tmp_path / "out")],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "mimetype").read_text() == MIMETYPE
    assert (tmp_path / "out" / "request" / "body.bin").read_bytes() == b"\x00\x01 body"


# -- which entries are deflated, and the writer against zipfile and unzip ----------------------

JSON_TEXT = b'{"citizen":1234,"name":"\xd8\xb9\xd9\x84\xd9\x8a","city":"Baghdad"}' * 40
NOISE = random.Random(7).randbytes(200_000)  # as incompressible as compressed data


def _methods(data: bytes) -> dict[str, tuple[int, int, int]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: (i.compress_type, i.compress_size, i.file_size) for i in zf.infolist()}


def test_signatures_tokens_ocsp_proofs_hex_and_small_entries_are_stored() -> None:
    entries = [
        AsicEntry("request/ocsp.der", JSON_TEXT, "application/ocsp-response"),
        AsicEntry("request/proof.bin", JSON_TEXT),
        AsicEntry("request/timestamp-proof.bin", JSON_TEXT),
        AsicEntry("request/timestamp-root.hex", JSON_TEXT, "text/plain"),
        AsicEntry("request/tiny.json", b'{"a":1}', "application/json"),
        AsicEntry("META-INF/signature-request.p7s", JSON_TEXT),
        AsicEntry("META-INF/timestamp-request.tst", JSON_TEXT),
    ]
    methods = _methods(build_container(entries, modified=WHEN))
    # Compressible content on purpose: these are stored by kind, without trying.
    for entry in entries:
        assert methods[entry.name][0] == zipfile.ZIP_STORED, entry.name
    assert methods["mimetype"][0] == zipfile.ZIP_STORED


def test_text_is_deflated_and_incompressible_data_stored() -> None:
    entries = [
        AsicEntry("request/body.bin", JSON_TEXT),
        AsicEntry("request/chain.pem", JSON_TEXT, "application/pem-certificate-chain"),
        AsicEntry("response/body.bin", NOISE),
        AsicEntry("response/small-noise.bin", NOISE[:5000]),
    ]
    data = build_container(entries, modified=WHEN)
    methods = _methods(data)
    for name in ("request/body.bin", "request/chain.pem", MANIFEST_NAME):
        method, packed, size = methods[name]
        assert method == zipfile.ZIP_DEFLATED, name
        assert packed < size / 2, name
    assert methods["response/body.bin"][0] == zipfile.ZIP_STORED  # refused by the probe
    assert methods["response/small-noise.bin"][0] == zipfile.ZIP_STORED  # not smaller
    assert parse_container(data).as_mapping() == {e.name: e.data for e in entries}


def test_compress_false_stores_everything() -> None:
    entries = [AsicEntry("request/body.bin", JSON_TEXT)]
    methods = _methods(build_container(entries, modified=WHEN, compress=False))
    assert {m for m, _, _ in methods.values()} == {zipfile.ZIP_STORED}


def test_written_zip_reads_back_with_zipfile_times_and_crcs() -> None:
    entries = [*ENTRIES, AsicEntry("response/body.bin", JSON_TEXT * 50)]
    data = build_container(entries, modified=dt.datetime(2031, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [
            "mimetype",
            MANIFEST_NAME,
            *(e.name for e in entries),
        ]
        for info in infos:
            assert info.date_time == (2031, 12, 31, 23, 59, 58)
            assert info.extra == b""
            assert info.flag_bits == 0
        assert zf.read("response/body.bin") == JSON_TEXT * 50


def test_manifest_text_is_what_an_xml_serialiser_writes() -> None:
    from lxml import etree

    entries = [
        AsicEntry("a.json", b"x", "application/json"),
        AsicEntry("META-INF/s.p7s", b"x"),
        AsicEntry("b.bin", b"x", 'text/x-odd;q="1"&<>\'\u00e9'),
    ]
    ns = "urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"
    root = etree.Element(f"{{{ns}}}manifest", nsmap={"manifest": ns})
    root.set(f"{{{ns}}}version", "1.2")
    for path, media_type in (("/", MIMETYPE), ("a.json", "application/json"),
                             ("b.bin", entries[2].media_type)):  # fmt: skip
        item = etree.SubElement(root, f"{{{ns}}}file-entry")
        item.set(f"{{{ns}}}full-path", path)
        item.set(f"{{{ns}}}media-type", media_type)
    expected = etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=True)
    assert manifest_xml(entries) == expected
    parsed = parse_container(build_container(entries, modified=WHEN))
    assert parsed.entries[2].media_type == entries[2].media_type


@pytest.mark.parametrize("media_type", ["", "text/plain; charset=utf-8", "a\tb", "x\u2003y"])
def test_refuses_blank_media_types(media_type: str) -> None:
    with pytest.raises(AsicError, match="media type"):
        AsicEntry("a.bin", b"x", media_type)


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed")
def test_standard_unzip_tests_a_container_with_stored_and_deflated_entries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.asice"
    entries = [*ENTRIES, AsicEntry("response/body.bin", JSON_TEXT), AsicEntry("n.bin", NOISE)]
    path.write_bytes(build_container(entries, modified=WHEN))
    result = subprocess.run(["unzip", "-t", str(path)], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert b"No errors detected" in result.stdout
