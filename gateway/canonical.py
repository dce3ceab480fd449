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
from typing import Any, Final, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["canonical_json", "der_of", "digest_of", "format_time", "parse_strict_json"]


#: One encoder for every call (``json.dumps`` with options builds a new one each time).
_CANONICAL: Final = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)


def canonical_json(value: object) -> bytes:
    """The one byte form Jisr signs and digests JSON in."""
    return _CANONICAL.encode(value).encode("utf-8")


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


#: DER of recently seen certificate objects, by identity (the object is kept with its DER, so
#: an identity is never reused while it is in here). Nodes hold on to the same few certificate
#: objects (their own, their peers' from the TLS layer, the configuration's) and look their
#: DER up on every message.
_DER_BY_ID: dict[int, tuple[x509.Certificate, bytes]] = {}
_DER_MEMO_MAX: Final = 256


def der_of(certificate: x509.Certificate) -> bytes:
    """A certificate's DER bytes: how Jisr compares, indexes and embeds certificates."""
    known = _DER_BY_ID.get(id(certificate))
    if known is not None and known[0] is certificate:
        return known[1]
    der = certificate.public_bytes(serialization.Encoding.DER)
    if len(_DER_BY_ID) >= _DER_MEMO_MAX:
        _DER_BY_ID.pop(next(iter(_DER_BY_ID)), None)
    _DER_BY_ID[id(certificate)] = (certificate, der)
    return der
