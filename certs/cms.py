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
