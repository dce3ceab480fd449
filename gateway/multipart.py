"""``multipart/related`` bodies: SOAP with attachments and MTOM (RFC 2387, RFC 2046).

Rules:

- Parts are cut out of the body by their delimiters with a byte-level splitter, never
  decoded or re-encoded: an attachment's bytes (and its ``Content-Transfer-Encoding``) travel
  exactly as received, so signatures and hashes over them stay valid. The stdlib ``email``
  parser is not used because it rewrites line endings and headers.
- Delimiter lines are ``CRLF--boundary`` as RFC 2046 requires; the first one may open the
  body without a preceding CRLF, anything before it (the preamble) and after the closing
  ``--boundary--`` (the epilogue) is ignored.
- The root part is the one whose ``Content-ID`` equals the ``start`` parameter, or the first
  part when there is no ``start``. Every other part is an attachment, in body order.
- Limits: the whole body (``max_bytes``), the number of parts and the size of each part's
  header block. Anything malformed is refused with ``Client.MimeParsingFailed`` naming what
  is wrong; an unusable ``Content-Type`` with ``Client.InvalidContentType``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Final

from gateway.faults import FaultError, client_fault

MAX_PARTS: Final = 100
MAX_PART_HEADER_BYTES: Final = 16 * 1024

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BOUNDARY_CHARS_RE: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a ``Content-Type`` value into its lower-case media type and its parameters.

    Parameter names are lower-cased; values keep their case, quoted strings are unquoted.
    """
    media, params = _parsed_content_type(value)
    return media, dict(params)


# A node sees the same few Content-Type values over and over (SOAP requests and responses are
# parsed twice on each node), and the scan below is character by character. Refusals raise
# and are not kept.
@functools.lru_cache(maxsize=256)
def _parsed_content_type(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    text = value.strip()
    media, _, rest = text.partition(";")
    media = media.strip().lower()
    if "/" not in media or not all(_TOKEN_RE.fullmatch(p) for p in media.split("/", 1)):
        raise client_fault(
            "InvalidContentType",
            f"Content-Type {value!r} is not a media type; use text/xml or multipart/related",
        )
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        while pos < len(rest) and rest[pos] in " \t;":
            pos += 1
        if pos >= len(rest):
            break
        eq = rest.find("=", pos)
        if eq < 0:
            raise client_fault(
                "InvalidContentType", f"Content-Type {value!r} has a parameter without a value"
            )
        name = rest[pos:eq].strip().lower()
        pos = eq + 1
        while pos < len(rest) and rest[pos] in " \t":
            pos += 1
        if pos < len(rest) and rest[pos] == '"':
            chars: list[str] = []
            pos += 1
            while pos < len(rest) and rest[pos] != '"':
                if rest[pos] == "\\" and pos + 1 < len(rest):
                    pos += 1
                chars.append(rest[pos])
                pos += 1
            if pos >= len(rest):
                raise client_fault(
                    "InvalidContentType", f"Content-Type {value!r} has an unterminated quote"
                )
            pos += 1
            param = "".join(chars)
        else:
            end = rest.find(";", pos)
            end = len(rest) if end < 0 else end
            param = rest[pos:end].strip()
            pos = end
        if not _TOKEN_RE.fullmatch(name):
            raise client_fault(
                "InvalidContentType", f"Content-Type {value!r} has a malformed parameter name"
            )
        params[name] = param
    return media, tuple(params.items())


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """One MIME part: its header lines as received (name, value) and its body bytes."""

    headers: tuple[tuple[str, str], ...]
    data: bytes

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    @property
    def content_type(self) -> str:
        """The part's Content-Type; RFC 2045's default when absent."""
        return self.header("Content-Type") or "text/plain; charset=us-ascii"

    @property
    def content_id(self) -> str | None:
        """The Content-ID without its angle brackets."""
        value = self.header("Content-ID")
        return None if value is None else _strip_angles(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Multipart:
    """A parsed ``multipart/related`` body: the root part, then the attachments in order."""

    root: Part
    attachments: tuple[Part, ...]
    boundary: str
    params: dict[str, str]


def _strip_angles(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        return value[1:-1].strip()
    return value


def _mime_fault(message: str) -> FaultError:
    return client_fault("MimeParsingFailed", message)


def _parse_headers(block: bytes, index: int) -> tuple[tuple[str, str], ...]:
    if len(block) > MAX_PART_HEADER_BYTES:
        raise _mime_fault(
            f"the headers of MIME part {index} are {len(block)} bytes, over the limit of "
            f"{MAX_PART_HEADER_BYTES}"
        )
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _mime_fault(f"the headers of MIME part {index} are not UTF-8 text") from exc
    headers: list[tuple[str, str]] = []
    for line in text.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t":
            if not headers:
                raise _mime_fault(f"MIME part {index} starts with a continuation line")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN_RE.fullmatch(name.strip()):
            raise _mime_fault(f"MIME part {index} has a malformed header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return tuple(headers)


def _split(data: bytes, boundary: str) -> list[bytes]:
    """The raw parts (header block, blank line, body) between the delimiters."""
    dash = b"--" + boundary.encode("ascii")
    delimiter = b"\r\n" + dash
    if data.startswith(dash):
        pos = len(dash)
    else:
        found = data.find(delimiter)
        if found < 0:
            raise _mime_fault(
                f"the multipart body has no delimiter line --{boundary}; check that the "
                "boundary parameter matches the body"
            )
        pos = found + len(delimiter)
    parts: list[bytes] = []
    while True:
        if data.startswith(b"--", pos):
            return parts  # close delimiter; the epilogue is ignored
        line_end = data.find(b"\r\n", pos)
        if line_end < 0 or data[pos:line_end].strip(b" \t"):
            raise _mime_fault(
                f"a delimiter line --{boundary} is not followed by CRLF (or by -- to close)"
            )
        start = line_end + 2
        end = data.find(delimiter, start)
        if end < 0:
            raise _mime_fault(
                f"the multipart body ends without its closing delimiter --{boundary}--"
            )
        parts.append(data[start:end])
        if len(parts) > MAX_PARTS:
            raise _mime_fault(f"the multipart body has more than {MAX_PARTS} parts")
        pos = end + len(delimiter)


def parse_multipart(data: bytes, content_type: str, *, max_bytes: int) -> Multipart:
    """Split a ``multipart/related`` body into its root part and attachments, bytes intact."""
    media, params = parse_content_type(content_type)
    if media != "multipart/related":
        raise client_fault(
            "InvalidContentType", f"expected multipart/related, got Content-Type {media!r}"
        )
    if len(data) > max_bytes:
        raise FaultError(
            "Client.RequestTooLarge",
            f"the multipart message is {len(data)} bytes, over the size limit of "
            f"{max_bytes} bytes; send smaller attachments or ask the node operator to raise "
            "the limit",
            http_status=413,
        )
    boundary = params.get("boundary")
    if not boundary:
        raise _mime_fault("the multipart/related Content-Type has no boundary parameter")
    if not _BOUNDARY_CHARS_RE.fullmatch(boundary):
        raise _mime_fault(f"the multipart boundary {boundary!r} is not a valid RFC 2046 boundary")
    parts: list[Part] = []
    for index, raw in enumerate(_split(data, boundary)):
        if raw.startswith(b"\r\n"):
            head, body = b"", raw[2:]
        else:
            head, sep, body = raw.partition(b"\r\n\r\n")
            if not sep:
                raise _mime_fault(f"MIME part {index} has no blank line after its headers")
        parts.append(Part(_parse_headers(head, index), body))
    if not parts:
        raise _mime_fault("the multipart body holds no parts")
    start = params.get("start")
    root_index = 0
    if start:
        wanted = _strip_angles(start)
        matches = [i for i, part in enumerate(parts) if part.content_id == wanted]
        if not matches:
            raise _mime_fault(f"no MIME part has the Content-ID <{wanted}> named by start")
        root_index = matches[0]
    root = parts[root_index]
    attachments = tuple(part for i, part in enumerate(parts) if i != root_index)
    return Multipart(root, attachments, boundary, params)


def new_boundary() -> str:
    """A boundary that will not occur in any body by accident."""
    return f"jisr-{secrets.token_hex(16)}"


def _header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"MIME header {name!r} contains a line break")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


def build_multipart(
    root: Part,
    attachments: Sequence[Part],
    *,
    root_type: str = "text/xml",
    boundary: str | None = None,
    start: str | None = None,
    extra_params: dict[str, str] | None = None,
) -> tuple[bytes, str]:
    """Build a ``multipart/related`` body; returns ``(body, content_type)``.

    Parts are written with their headers and bytes unchanged. ``root_type`` becomes the
    ``type`` parameter (``application/xop+xml`` for MTOM); ``start`` names the root's
    Content-ID when the receiver needs it.
    """
    boundary = boundary or new_boundary()
    dash = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for part in (root, *attachments):
        if dash in part.data:
            raise ValueError("a part contains the multipart boundary; choose another boundary")
        chunks += [dash, b"\r\n", _header_lines(part.headers), b"\r\n", part.data, b"\r\n"]
    chunks += [dash, b"--\r\n"]
    params = {"type": root_type, "boundary": boundary}
    if start is not None:
        params["start"] = f"<{_strip_angles(start)}>"
    params.update(extra_params or {})
    content_type = "multipart/related; " + "; ".join(
        f'{name}="{value}"' for name, value in params.items()
    )
    return b"".join(chunks), content_type
