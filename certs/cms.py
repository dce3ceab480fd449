"""Detached CMS signatures (RFC 5652 SignedData, CAdES-BES), the one signature format of Jisr.

Rules:

* Signatures are **detached**: the signed bytes travel beside the signature, never inside it.
* Digest SHA-256 only. Signature ECDSA-SHA256 for EC keys, RSA PKCS#1 v1.5 SHA-256 for RSA
  keys; the :class:`~certs.signer.Signer` decides, callers never choose.
* Signed attributes are always present: contentType (id-data), messageDigest, signingTime and
  signingCertificateV2 (ESSCertIDv2 naming the signer certificate by its SHA-256 and by issuer
  and serial), which binds the signature to one certificate so it cannot be swapped for
  another certificate over the same key.
* The ``certificates`` field carries the signer certificate and, unless told otherwise, its
  chain (no root). :func:`verify_detached` checks the signature against the certificate it
  names, **not** whether that certificate is trustworthy: the caller validates the path with
  :mod:`certs.validation` at the time it chooses.
* Any signature made here verifies with ``openssl cms -verify -binary -inform DER``.

Signatures are made once per message, so building is cheap: the parts that depend only on the
signer (the certificate set, the signer identifier, the signingCertificateV2 attribute) are
encoded once per certificate and cached; only the digest and time are encoded per call.

Verifying is made cheap the same way. The first signature of a signer goes through the full
ASN.1 parse and every check. Its signer-dependent parts (certificate set, signer identifier,
signingCertificateV2 attribute) are then remembered by their exact bytes together with the
signer they were found to name. A later signature in plain DER whose signer-dependent parts are
byte-identical has only its per-signature parts checked (contentType, messageDigest, signature
value, signingTime), read with a small strict DER reader; anything else in its layout, or any
check failing, sends it through the full path, which gives the precise error. The short path
can therefore only accept what the full path accepts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import hmac

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import tsp as asn1_tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from certs.errors import MalformedSignatureError, SignatureError
from certs.signer import Signer

__all__ = ["MAX_SIGNATURE_BYTES", "CmsVerified", "sign_detached", "verify_detached"]

#: Largest signature accepted for parsing; a signer certificate and a few CA certificates fit
#: many times over, and anything larger is refused before it reaches the ASN.1 parser.
MAX_SIGNATURE_BYTES = 256 * 1024

_OID_DATA = "1.2.840.113549.1.7.1"
_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"
_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_OID_SIGNING_TIME = "1.2.840.113549.1.9.5"
_OID_SIGNING_CERTIFICATE_V2 = "1.2.840.113549.1.9.16.2.47"
_OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_OID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_OID_SHA256_WITH_RSA = "1.2.840.113549.1.1.11"


def _tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length, content."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _oid(dotted: str) -> bytes:
    return bytes(asn1_core.ObjectIdentifier(dotted).dump())


_SEQUENCE = 0x30
_SET = 0x31
_OCTET_STRING = 0x04
_CONTEXT_0 = 0xA0

_DER_VERSION_1 = b"\x02\x01\x01"
_DER_SHA256_ALG = _tlv(_SEQUENCE, _oid(_OID_SHA256))
_DER_DIGEST_ALGORITHMS = _tlv(_SET, _DER_SHA256_ALG)
# Detached: encapContentInfo names id-data and carries no eContent.
_DER_ENCAP_CONTENT_INFO = _tlv(_SEQUENCE, _oid(_OID_DATA))
_DER_SIGNED_DATA_OID = _oid(_OID_SIGNED_DATA)
_DER_ATTR_CONTENT_TYPE = _tlv(_SEQUENCE, _oid(_OID_CONTENT_TYPE) + _tlv(_SET, _oid(_OID_DATA)))
_DER_MESSAGE_DIGEST_OID = _oid(_OID_MESSAGE_DIGEST)
_DER_SIGNING_TIME_OID = _oid(_OID_SIGNING_TIME)
_DER_ALG_ECDSA_SHA256 = _tlv(_SEQUENCE, _oid(_OID_ECDSA_SHA256))
# rsaEncryption with NULL parameters is what OpenSSL and most CMS tools write for PKCS#1 v1.5.
_DER_ALG_RSA = _tlv(_SEQUENCE, _oid(_OID_RSA_ENCRYPTION) + b"\x05\x00")


@dataclasses.dataclass(frozen=True, slots=True)
class _SignerParts:
    """The DER pieces of a SignedData that depend only on the signer's certificates."""

    certificates: bytes  # [0] IMPLICIT CertificateSet
    sid: bytes  # IssuerAndSerialNumber
    signing_certificate_attr: bytes  # Attribute signingCertificateV2
    signature_algorithm: bytes  # AlgorithmIdentifier


@functools.lru_cache(maxsize=128)
def _signer_parts(cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> _SignerParts:
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    asn1_cert = asn1_x509.Certificate.load(cert_der)
    sid = asn1_cms.IssuerAndSerialNumber(
        {"issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number}
    ).dump()
    ess = asn1_tsp.SigningCertificateV2(
        {
            "certs": [
                {
                    # hashAlgorithm is omitted: its DEFAULT is SHA-256, and DER omits defaults.
                    "cert_hash": hashlib.sha256(cert_der).digest(),
                    "issuer_serial": {
                        "issuer": [
                            asn1_x509.GeneralName(name="directory_name", value=asn1_cert.issuer)
                        ],
                        "serial_number": asn1_cert.serial_number,
                    },
                }
            ]
        }
    ).dump()
    attr = _tlv(_SEQUENCE, _oid(_OID_SIGNING_CERTIFICATE_V2) + _tlv(_SET, ess))
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _DER_ALG_ECDSA_SHA256
    elif isinstance(key, rsa.RSAPublicKey):
        alg = _DER_ALG_RSA
    else:
        raise SignatureError(
            f"cannot sign with a {type(key).__name__} certificate; Jisr signs with ECDSA P-256 "
            "or RSA keys only"
        )
    certs_der = cert_der + b"".join(c.public_bytes(serialization.Encoding.DER) for c in chain)
    return _SignerParts(_tlv(_CONTEXT_0, certs_der), sid, attr, alg)


def _der_time(when: dt.datetime) -> bytes:
    """signingTime as RFC 5652 demands: UTCTime for 1950-2049, GeneralizedTime otherwise."""
    if when.tzinfo is None:
        raise ValueError("signing_time must be timezone-aware")
    when = when.astimezone(dt.UTC)
    if 1950 <= when.year < 2050:
        return _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def _der_set_of(elements: list[bytes]) -> bytes:
    """A DER SET OF: elements ordered by their encodings, shorter ones padded with zeros."""
    width = max(len(e) for e in elements)

    def padded(element: bytes) -> bytes:
        return element.ljust(width, b"\0")

    ordered: list[bytes] = sorted(elements, key=padded)
    return _tlv(_SET, b"".join(ordered))


def sign_detached(
    data: bytes, signer: Signer, *, signing_time: dt.datetime, include_chain: bool = True
) -> bytes:
    """Sign ``data`` for the signer's member; return a DER ``ContentInfo`` (SignedData).

    ``signing_time`` is the claimed time recorded in the signature; it is the caller's clock
    so that tests and batch signing control it. It is not proof of time (a timestamp is).
    """
    chain = tuple(signer.chain) if include_chain else ()
    parts = _signer_parts(signer.certificate, chain)
    attrs = [
        _DER_ATTR_CONTENT_TYPE,
        _tlv(
            _SEQUENCE,
            _DER_MESSAGE_DIGEST_OID
            + _tlv(_SET, _tlv(_OCTET_STRING, hashlib.sha256(data).digest())),
        ),
        _tlv(_SEQUENCE, _DER_SIGNING_TIME_OID + _tlv(_SET, _der_time(signing_time))),
        parts.signing_certificate_attr,
    ]
    signed_attrs = _der_set_of(attrs)
    # The signature covers the attributes encoded as a SET (tag 0x31); in the SignerInfo the
    # same bytes appear under the implicit [0] tag.
    signature_value = signer.sign(signed_attrs)
    signer_info = _tlv(
        _SEQUENCE,
        _DER_VERSION_1
        + parts.sid
        + _DER_SHA256_ALG
        + bytes((_CONTEXT_0,))
        + signed_attrs[1:]
        + parts.signature_algorithm
        + _tlv(_OCTET_STRING, signature_value),
    )
    signed_data = _tlv(
        _SEQUENCE,
        _DER_VERSION_1
        + _DER_DIGEST_ALGORITHMS
        + _DER_ENCAP_CONTENT_INFO
        + parts.certificates
        + _tlv(_SET, signer_info),
    )
    return _tlv(_SEQUENCE, _DER_SIGNED_DATA_OID + _tlv(_CONTEXT_0, signed_data))


@dataclasses.dataclass(frozen=True, slots=True)
class CmsVerified:
    """What a verified signature tells: who signed, with which certificates, when (claimed)."""

    signer: x509.Certificate
    #: Every certificate carried in the SignedData, the signer's included, in their order.
    certificates: tuple[x509.Certificate, ...]
    #: The signer's claimed signingTime (UTC), or None when the attribute is absent.
    signing_time: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Parsed:
    certificates: tuple[x509.Certificate, ...]
    signer_info: asn1_cms.SignerInfo
    attributes: dict[str, list[asn1_core.Asn1Value]]
    signed_attrs_der: bytes


@functools.lru_cache(maxsize=512)
def _load_certificate(der: bytes) -> x509.Certificate:
    """Certificates repeat in every signature of a signer; parse each one once."""
    return x509.load_der_x509_certificate(der)


def _malformed(what: str) -> MalformedSignatureError:
    return MalformedSignatureError(
        f"malformed signature: {what}; expected a detached CMS SignedData (DER) as made by "
        "Jisr or `openssl cms -sign -binary -outform DER -cades`"
    )


def _parse(signature: bytes) -> _Parsed:
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise _malformed(f"{len(signature)} bytes exceeds the limit of {MAX_SIGNATURE_BYTES}")
    try:
        info = asn1_cms.ContentInfo.load(signature, strict=True)
        if info["content_type"].dotted != _OID_SIGNED_DATA:
            raise _malformed(f"content type {info['content_type'].dotted} is not signedData")
        signed_data = info["content"]
        encap = signed_data["encap_content_info"]
        if encap["content_type"].dotted != _OID_DATA:
            raise _malformed("encapsulated content type is not id-data")
        if not isinstance(encap["content"], asn1_core.Void):
            raise _malformed("the signature embeds its content; Jisr uses detached signatures")
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise _malformed(f"{len(signer_infos)} signer infos, expected exactly one")
        signer_info = signer_infos[0]
        if signer_info["digest_algorithm"]["algorithm"].dotted != _OID_SHA256:
            raise _malformed("digest algorithm is not SHA-256")
        signed_attrs = signer_info["signed_attrs"]
        if isinstance(signed_attrs, asn1_core.Void):
            raise _malformed("no signed attributes")
        attributes: dict[str, list[asn1_core.Asn1Value]] = {}
        for attr in signed_attrs:
            oid = attr["type"].dotted
            if oid in attributes:
                raise _malformed(f"attribute {oid} appears twice")
            attributes[oid] = list(attr["values"])
        certificates: list[x509.Certificate] = []
        raw_certs = signed_data["certificates"]
        if not isinstance(raw_certs, asn1_core.Void):
            for choice in raw_certs:
                if choice.name == "certificate":
                    certificates.append(_load_certificate(choice.chosen.dump()))
        # The signature covers the attributes as a SET (0x31), not under their [0] tag.
        signed_attrs_der = b"\x31" + signed_attrs.dump()[1:]
    except MalformedSignatureError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise _malformed(str(exc) or type(exc).__name__) from exc
    return _Parsed(tuple(certificates), signer_info, attributes, signed_attrs_der)


def _single(parsed: _Parsed, oid: str, name: str) -> asn1_core.Asn1Value | None:
    values = parsed.attributes.get(oid)
    if values is None:
        return None
    if len(values) != 1:
        raise _malformed(f"attribute {name} must have exactly one value, has {len(values)}")
    return values[0]


def _find_signer(parsed: _Parsed) -> x509.Certificate:
    sid = parsed.signer_info["sid"]
    for cert in parsed.certificates:
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if (
                cert.serial_number == wanted["serial_number"].native
                and cert.issuer.public_bytes() == wanted["issuer"].dump()
            ):
                return cert
        elif sid.name == "subject_key_identifier":
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ski.value.digest == sid.chosen.native:
                return cert
    raise SignatureError(
        "the signer certificate is not included in the signature; sign with the certificate "
        "included (Jisr always includes it)"
    )


def _check_signature_value(parsed: _Parsed, signer: x509.Certificate) -> None:
    try:
        algorithm = parsed.signer_info["signature_algorithm"]["algorithm"].dotted
        value = bytes(parsed.signer_info["signature"].native)
    except (ValueError, TypeError) as exc:
        raise _malformed(str(exc)) from exc
    key = signer.public_key()
    try:
        if algorithm == _OID_ECDSA_SHA256 and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(value, parsed.signed_attrs_der, ec.ECDSA(hashes.SHA256()))
        elif algorithm in (_OID_RSA_ENCRYPTION, _OID_SHA256_WITH_RSA) and isinstance(
            key, rsa.RSAPublicKey
        ):
            key.verify(value, parsed.signed_attrs_der, padding.PKCS1v15(), hashes.SHA256())
        elif algorithm in (_OID_ECDSA_SHA256, _OID_RSA_ENCRYPTION, _OID_SHA256_WITH_RSA):
            raise SignatureError(
                f"signature algorithm {algorithm} does not fit the signer's "
                f"{type(key).__name__} key"
            )
        else:
            raise _malformed(
                f"signature algorithm {algorithm} is not ECDSA-SHA256 or RSA PKCS#1 v1.5 SHA-256"
            )
    except InvalidSignature as exc:
        raise SignatureError(
            "the signature value does not verify with the signer's certificate: the signature "
            "was altered or made with another key"
        ) from exc


def _names_issuer(general_names: list[asn1_x509.GeneralName], cert: x509.Certificate) -> bool:
    """Whether one of ``general_names`` is the certificate's issuer.

    Byte equality first (what Jisr and OpenSSL write); RFC 5280 name comparison, which is
    slow, only when the bytes differ.
    """
    issuer = asn1_x509.Name.load(cert.issuer.public_bytes())
    wanted = asn1_x509.GeneralName(name="directory_name", value=issuer).dump()
    if any(g.dump() == wanted for g in general_names):
        return True
    return any(g.chosen == issuer for g in general_names)


def _check_signing_certificate(parsed: _Parsed, signer: x509.Certificate) -> None:
    value = _single(parsed, _OID_SIGNING_CERTIFICATE_V2, "signingCertificateV2")
    if value is None:
        raise _malformed("no signingCertificateV2 attribute (CAdES-BES requires it)")
    try:
        first = value["certs"][0]
        hash_alg = first["hash_algorithm"]["algorithm"].dotted
        cert_hash = bytes(first["cert_hash"].native)
        issuer_serial = first["issuer_serial"]
        has_issuer_serial = not isinstance(issuer_serial, asn1_core.Void)
        if has_issuer_serial:
            serial = issuer_serial["serial_number"].native
            issuers = [g for g in issuer_serial["issuer"] if g.name == "directory_name"]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise _malformed(f"signingCertificateV2: {exc}") from exc
    if hash_alg != _OID_SHA256:
        raise _malformed("signingCertificateV2 does not use SHA-256")
    der = signer.public_bytes(serialization.Encoding.DER)
    if not hmac.compare_digest(cert_hash, hashlib.sha256(der).digest()):
        raise SignatureError(
            "signingCertificateV2 names another certificate than the one the signature "
            "identifies as signer"
        )
    if has_issuer_serial and (serial != signer.serial_number or not _names_issuer(issuers, signer)):
        raise SignatureError(
            "signingCertificateV2 issuer and serial do not match the signer certificate"
        )


def verify_detached(signature: bytes, data: bytes) -> CmsVerified:
    """Check that ``signature`` is a valid CAdES-BES detached signature over ``data``.

    Trust is not decided here: the returned signer certificate still has to be validated with
    :mod:`certs.validation` (and its revocation status checked) by the caller.
    """
    plain = type(signature) is bytes and len(signature) <= MAX_SIGNATURE_BYTES
    layout = _plain_layout(signature) if plain else None
    if layout is not None:
        known = _KNOWN_SIGNERS.get(layout.signer_parts)
        if known is not None:
            verified = _verify_known_signer(layout, known, data)
            if verified is not None:
                return verified
    verified = _verify_fully(signature, data)
    if layout is not None:
        if len(_KNOWN_SIGNERS) >= _KNOWN_SIGNERS_MAX:
            _KNOWN_SIGNERS.pop(next(iter(_KNOWN_SIGNERS)), None)
        _KNOWN_SIGNERS[layout.signer_parts] = verified
    return verified


def _verify_fully(signature: bytes, data: bytes) -> CmsVerified:
    parsed = _parse(signature)
    signer = _find_signer(parsed)

    content_type = _single(parsed, _OID_CONTENT_TYPE, "contentType")
    if content_type is None:
        raise _malformed("no contentType attribute")
    if content_type.dotted != _OID_DATA:
        raise SignatureError("the signed contentType attribute is not id-data")

    digest = _single(parsed, _OID_MESSAGE_DIGEST, "messageDigest")
    if digest is None:
        raise _malformed("no messageDigest attribute")
    if not hmac.compare_digest(bytes(digest.native), hashlib.sha256(data).digest()):
        raise SignatureError(
            "the data does not match the signature: its SHA-256 digest differs from the signed "
            "messageDigest (the data or the signature was changed)"
        )

    _check_signature_value(parsed, signer)
    _check_signing_certificate(parsed, signer)

    signing_time: dt.datetime | None = None
    time_value = _single(parsed, _OID_SIGNING_TIME, "signingTime")
    if time_value is not None:
        try:
            native = time_value.native
        except ValueError as exc:
            raise _malformed(f"signingTime: {exc}") from exc
        if isinstance(native, dt.datetime):
            signing_time = native.astimezone(dt.UTC)
    return CmsVerified(signer, parsed.certificates, signing_time)


# ---- the short path for signers already verified -------------------------------------------

#: Signer-dependent parts already verified (see the module rules), with what they named.
_KNOWN_SIGNERS: dict[tuple[bytes, bytes, bytes], CmsVerified] = {}
_KNOWN_SIGNERS_MAX = 256
_DER_OID_DATA = _oid(_OID_DATA)
_DER_CONTENT_TYPE_OID = _oid(_OID_CONTENT_TYPE)
_DER_SIGNING_CERTIFICATE_V2_OID = _oid(_OID_SIGNING_CERTIFICATE_V2)
_DER_SHA256_ALG_NULL = _tlv(_SEQUENCE, _oid(_OID_SHA256) + b"\x05\x00")


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    """The pieces of a SignedData in plain DER that the short path needs."""

    #: Certificate set, signer identifier and signingCertificateV2 attribute, as encoded.
    signer_parts: tuple[bytes, bytes, bytes]
    signed_attrs_der: bytes
    content_type: bytes
    message_digest: bytes
    signing_time: bytes | None
    signature_algorithm: bytes
    signature_value: bytes


def _element(buf: bytes, pos: int, end: int) -> tuple[int, int, int] | None:
    """(tag, content start, content end) of the DER element at ``pos``; None when it is not
    one (high tag numbers, indefinite or non-minimal lengths, running past ``end``)."""
    if end - pos < 2:
        return None
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        return None
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or end - pos < count or buf[pos] == 0:
            return None
        length = int.from_bytes(buf[pos : pos + count], "big")
        if length < 0x80:
            return None
        pos += count
    if end - pos < length:
        return None
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]] | None:
    """Every element between ``start`` and ``end`` as (tag, start, content start, end)."""
    found = []
    pos = start
    while pos < end:
        element = _element(buf, pos, end)
        if element is None:
            return None
        tag, content, after = element
        found.append((tag, pos, content, after))
        pos = after
    return found


def _plain_layout(signature: bytes) -> _Layout | None:
    """The pieces of ``signature`` when it is a detached SignedData in plain DER with one
    signer and only the attributes Jisr writes; None for anything else."""
    top = _element(signature, 0, len(signature))
    if top is None or top[0] != _SEQUENCE or top[2] != len(signature):
        return None
    info = _children(signature, top[1], top[2])
    if info is None or len(info) != 2 or info[1][0] != _CONTEXT_0:
        return None
    if signature[info[0][1] : info[0][3]] != _DER_SIGNED_DATA_OID:
        return None
    wrapped = _children(signature, info[1][2], info[1][3])
    if wrapped is None or len(wrapped) != 1 or wrapped[0][0] != _SEQUENCE:
        return None
    fields = _children(signature, wrapped[0][2], wrapped[0][3])
    if fields is None or len(fields) < 4:
        return None
    version, digest_algorithms, encap, *rest = fields
    if version[0] != 0x02 or digest_algorithms[0] != _SET:
        return None
    if signature[encap[1] : encap[3]] != _DER_ENCAP_CONTENT_INFO:
        return None
    if not rest or rest[0][0] != _CONTEXT_0:
        return None
    certificates = signature[rest[0][1] : rest[0][3]]
    rest = rest[1:]
    if rest and rest[0][0] == 0xA1:  # crls: not used for verification
        rest = rest[1:]
    if len(rest) != 1 or rest[0][0] != _SET:
        return None
    signer_infos = _children(signature, rest[0][2], rest[0][3])
    if signer_infos is None or len(signer_infos) != 1 or signer_infos[0][0] != _SEQUENCE:
        return None
    parts = _children(signature, signer_infos[0][2], signer_infos[0][3])
    if parts is None or len(parts) not in (6, 7):
        return None
    version, sid, digest_algorithm, attrs, algorithm, value = parts[:6]
    if version[0] != 0x02 or sid[0] not in (_SEQUENCE, 0x80) or attrs[0] != _CONTEXT_0:
        return None
    if len(parts) == 7 and parts[6][0] != 0xA1:
        return None
    if signature[digest_algorithm[1] : digest_algorithm[3]] not in (
        _DER_SHA256_ALG,
        _DER_SHA256_ALG_NULL,
    ):
        return None
    if algorithm[0] != _SEQUENCE or value[0] != _OCTET_STRING:
        return None
    values = _attribute_values(signature, attrs[2], attrs[3])
    if values is None:
        return None
    content_type = values.get(_DER_CONTENT_TYPE_OID)
    message_digest = values.get(_DER_MESSAGE_DIGEST_OID)
    signing_certificate = values.get(_DER_SIGNING_CERTIFICATE_V2_OID)
    if content_type is None or message_digest is None or signing_certificate is None:
        return None
    digest = _element(message_digest, 0, len(message_digest))
    if digest is None or digest[0] != _OCTET_STRING or digest[2] != len(message_digest):
        return None
    return _Layout(
        signer_parts=(certificates, signature[sid[1] : sid[3]], signing_certificate),
        signed_attrs_der=b"\x31" + signature[attrs[1] + 1 : attrs[3]],
        content_type=content_type,
        message_digest=message_digest[digest[1] :],
        signing_time=values.get(_DER_SIGNING_TIME_OID),
        signature_algorithm=signature[algorithm[1] : algorithm[3]],
        signature_value=signature[value[2] : value[3]],
    )


def _attribute_values(buf: bytes, start: int, end: int) -> dict[bytes, bytes] | None:
    """The single value of each signed attribute, by the attribute's encoded OID (the whole
    attribute for signingCertificateV2); None for an unknown, repeated or multi-valued one."""
    attributes = _children(buf, start, end)
    if attributes is None:
        return None
    found: dict[bytes, bytes] = {}
    for tag, begin, content, after in attributes:
        if tag != _SEQUENCE:
            return None
        pair = _children(buf, content, after)
        if pair is None or len(pair) != 2 or pair[0][0] != 0x06 or pair[1][0] != _SET:
            return None
        oid = buf[pair[0][1] : pair[0][3]]
        if oid in found:
            return None
        values = _children(buf, pair[1][2], pair[1][3])
        if values is None or len(values) != 1:
            return None
        if oid == _DER_SIGNING_CERTIFICATE_V2_OID:
            found[oid] = buf[begin:after]
        elif oid in (_DER_CONTENT_TYPE_OID, _DER_MESSAGE_DIGEST_OID, _DER_SIGNING_TIME_OID):
            found[oid] = buf[values[0][1] : values[0][3]]
        else:
            return None
    return found


def _short_time(value: bytes) -> dt.datetime | None:
    """signingTime as Jisr writes it (UTCTime or GeneralizedTime, seconds, ``Z``); None for
    any other form, which the full path reads."""
    element = _element(value, 0, len(value))
    if element is None or element[2] != len(value):
        return None
    tag, start, end = element
    text = value[start:end]
    if tag == 0x17 and len(text) == 13:
        year = int(text[0:2]) if text[:12].isdigit() else -1
        year += 2000 if 0 <= year < 50 else 1900
        rest = text[2:12]
    elif tag == 0x18 and len(text) == 15:
        year = int(text[0:4]) if text[:14].isdigit() else -1
        rest = text[4:14]
    else:
        return None
    if not text.endswith(b"Z") or not rest.isdigit() or year < 1:
        return None
    try:
        return dt.datetime(
            year,
            int(rest[0:2]),
            int(rest[2:4]),
            int(rest[4:6]),
            int(rest[6:8]),
            int(rest[8:10]),
            tzinfo=dt.UTC,
        )
    except ValueError:
        return None


def _verify_known_signer(layout: _Layout, known: CmsVerified, data: bytes) -> CmsVerified | None:
    """The per-signature checks of a signature whose signer-dependent parts were verified
    before; None when any of them does not pass (the full path then says why)."""
    if layout.content_type != _DER_OID_DATA:
        return None
    if not hmac.compare_digest(layout.message_digest, hashlib.sha256(data).digest()):
        return None
    key = known.signer.public_key()
    if layout.signature_algorithm != _DER_ALG_ECDSA_SHA256 or not isinstance(
        key, ec.EllipticCurvePublicKey
    ):
        return None
    signing_time = None
    if layout.signing_time is not None:
        signing_time = _short_time(layout.signing_time)
        if signing_time is None:
            return None
    try:
        key.verify(layout.signature_value, layout.signed_attrs_der, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return None
    return CmsVerified(known.signer, known.certificates, signing_time)
