"""The configuration anchor: what a node is installed with to trust its first configuration.

Rules:

* An anchor names one instance, where its global configuration is published (``sources``,
  each the URL of a ``.../globalconf/current`` pointer) and the certificates of the registry's
  configuration signing keys (``verification_certs``). A node accepts a configuration only if
  it is signed by one of these keys, or by a key the previous accepted configuration listed.
* The file is canonical JSON in UTF-8, the same form as the global configuration::

      {"format":"jisr-anchor/1","generated_at":"...","instance":"IQ",
       "sources":[{"url":"http://127.0.0.1:4400/globalconf/current"}],
       "verification_certs":["<base64 DER>"]}

* Its digest, ``sha256:<hex>`` of the canonical bytes, is what the registry operator and the
  node operator compare out of band (by phone, on paper) before the node trusts the file.
  A file re-indented by an editor keeps its digest, because the digest is of the canonical
  form; a changed value or key does not.
* Parsing is strict: unknown or missing fields, a wrong type, an invalid instance, a source that
  is not an http(s) URL or a certificate that does not parse are refused with
  :class:`AnchorError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import re
from collections.abc import Iterable
from typing import Any, Final, NoReturn

from cryptography import x509

from config.errors import ConfigError, IdentifierError
from gateway.canonical import canonical_json, der_of, digest_of, format_time, parse_strict_json
from gateway.identifiers import check_part

FORMAT: Final = "jisr-anchor/1"

#: An anchor file larger than this is refused before it is parsed.
MAX_ANCHOR_BYTES: Final = 1024 * 1024

_TIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_KEYS: Final = ("format", "generated_at", "instance", "sources", "verification_certs")


class AnchorError(ConfigError):
    """The configuration anchor file cannot be used; the message says what to fix."""


@dataclasses.dataclass(frozen=True, slots=True)
class AnchorSource:
    """Where the ``current`` pointer of the global configuration is served."""

    url: str


@dataclasses.dataclass(frozen=True)
class Anchor:
    """A validated configuration anchor."""

    instance: str
    generated_at: dt.datetime
    sources: tuple[AnchorSource, ...]
    verification_certs: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        try:
            check_part(self.instance, "instance")
        except IdentifierError as exc:
            _bad("instance", f"is invalid: {exc.message}")
        if self.generated_at.tzinfo is None:
            _bad("generated_at", "must be a timezone-aware time")
        if not self.sources:
            _bad("sources", "must name at least one place the configuration is published")
        for i, source in enumerate(self.sources):
            _check_url(source.url, f"sources[{i}].url")
        if len({s.url for s in self.sources}) != len(self.sources):
            _bad("sources", "lists the same URL more than once")
        if not self.verification_certs:
            _bad("verification_certs", "must hold at least one configuration signing certificate")
        ders = [der_of(c) for c in self.verification_certs]
        if len(set(ders)) != len(ders):
            _bad("verification_certs", "lists the same certificate more than once")

    @classmethod
    def from_bytes(cls, data: bytes) -> Anchor:
        """Parse an anchor file strictly."""
        if len(data) > MAX_ANCHOR_BYTES:
            raise AnchorError(
                f"the configuration anchor is {len(data)} bytes; at most {MAX_ANCHOR_BYTES} are "
                "accepted: check that the right file was given"
            )
        try:
            obj = parse_strict_json(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise AnchorError(
                f"the configuration anchor is not valid UTF-8 JSON ({exc}); download it again "
                "from the registry"
            ) from exc
        if not isinstance(obj, dict):
            raise AnchorError("the configuration anchor must be a JSON object")
        if obj.get("format") != FORMAT:
            _bad("format", f"is {obj.get('format')!r}; this node reads {FORMAT!r}")
        missing = [k for k in _KEYS if k not in obj]
        if missing:
            _bad("document", f"is missing field(s) {', '.join(missing)}")
        unknown = sorted(set(obj) - set(_KEYS))
        if unknown:
            _bad("document", f"has unknown field(s) {', '.join(unknown)}")
        instance = obj["instance"]
        if not isinstance(instance, str):
            _bad("instance", "must be a string")
        sources = []
        for i, raw in enumerate(_array(obj["sources"], "sources")):
            if not isinstance(raw, dict) or set(raw) != {"url"}:
                _bad(f"sources[{i}]", 'must be an object with exactly the field "url"')
            sources.append(AnchorSource(_check_url(raw["url"], f"sources[{i}].url")))
        certs = [
            _cert(c, f"verification_certs[{i}]")
            for i, c in enumerate(_array(obj["verification_certs"], "verification_certs"))
        ]
        return cls(instance, _time(obj["generated_at"]), tuple(sources), tuple(certs))

    def to_obj(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "instance": self.instance,
            "generated_at": format_time(self.generated_at),
            "sources": [{"url": s.url} for s in self.sources],
            "verification_certs": [
                base64.b64encode(der_of(c)).decode("ascii") for c in self.verification_certs
            ],
        }

    def to_bytes(self) -> bytes:
        """The canonical file content."""
        return canonical_json(self.to_obj())

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical bytes, for out-of-band comparison."""
        return digest_of(self.to_bytes())

    def trusts(self, certificate: x509.Certificate) -> bool:
        """Whether ``certificate`` is one of the anchor's configuration signing certificates."""
        der = der_of(certificate)
        return any(der_of(c) == der for c in self.verification_certs)


def make_anchor(
    instance: str,
    sources: Iterable[str],
    verification_certs: Iterable[x509.Certificate],
    *,
    generated_at: dt.datetime,
) -> Anchor:
    """The anchor the registry hands to node operators (``generated_at`` kept to seconds)."""
    if generated_at.tzinfo is None:
        _bad("generated_at", "must be a timezone-aware time")
    return Anchor(
        instance,
        generated_at.astimezone(dt.UTC).replace(microsecond=0),
        tuple(AnchorSource(url) for url in sources),
        tuple(verification_certs),
    )


def _bad(path: str, problem: str) -> NoReturn:
    where = "" if path == "document" else f" field {path}"
    raise AnchorError(
        f"configuration anchor{where} {problem}; use the anchor file the registry generated"
    )


def _array(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        _bad(path, "must be an array")
    return value


def _check_url(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        _bad(path, f"{value!r} is not an http:// or https:// URL")
    if (
        len(value) > 2048
        or len(value) <= len("https://")
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        _bad(path, f"{value!r} is not a usable URL")
    return value


def _time(value: object) -> dt.datetime:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        _bad("generated_at", f"{value!r} is not an RFC 3339 UTC time like 2026-11-22T10:00:00Z")
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        _bad("generated_at", f"{value!r} is not a valid time ({exc})")


def _cert(value: object, path: str) -> x509.Certificate:
    if not isinstance(value, str):
        _bad(path, "must be a base64 string")
    try:
        return x509.load_der_x509_certificate(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError) as exc:
        _bad(path, f"is not a base64 DER X.509 certificate ({exc})")
