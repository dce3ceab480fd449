"""The byte forms Jisr signs and digests: canonical JSON, certificate DER, document digests.

Rules:

- Canonical JSON is RFC 8785 for the values Jisr signs (strings, integers, booleans, null,
  arrays, objects; never floats): members sorted by name, no whitespace, UTF-8 with non-ASCII
  characters kept as they are. NaN and the infinities are not JSON and are refused with
  ``ValueError``. The global configuration, anchors, management requests and the transport's
  signed parts are all in this one form.
- What Jisr parses as a signed or trusted JSON document is strict (:func:`parse_strict_json`):
  a member named twice in one object, NaN and the infinities are refused with ``ValueError``
  (Python's ``json`` would keep the last member and accept the constants).
- A document digest is ``"sha256:" + lowercase hex SHA-256`` of the document bytes, the form
  of ``previous_digest`` in the global configuration and of anchor digests.
- Times in the global configuration and the anchor are RFC 3339 UTC with seconds
  (:func:`format_time`). The transport (milliseconds) and message-log records (microseconds)
  define finer forms of their own, next to their formats.
- This module does no I/O and imports nothing of ``gateway``, so every module of it may use
  this one without a cycle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["canonical_json", "der_of", "digest_of", "format_time", "parse_strict_json"]


def canonical_json(value: object) -> bytes:
    """The one byte form Jisr signs and digests JSON in."""
    return json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def parse_strict_json(text: str) -> Any:
    """``text`` as JSON, refusing duplicate members and non-JSON constants (ValueError)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def digest_of(document: bytes) -> str:
    """``sha256:<hex>`` of ``document``, the form ``previous_digest`` and anchors use."""
    return "sha256:" + hashlib.sha256(document).hexdigest()


def format_time(value: dt.datetime) -> str:
    """RFC 3339 UTC with seconds precision, the time form of the configuration and anchor."""
    if value.tzinfo is None:
        raise ValueError("times in the global configuration must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def der_of(certificate: x509.Certificate) -> bytes:
    """A certificate's DER bytes: how Jisr compares, indexes and embeds certificates."""
    return certificate.public_bytes(serialization.Encoding.DER)
