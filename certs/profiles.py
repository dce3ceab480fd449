"""Certificate profiles: what each kind of Jisr certificate must contain, and how to read it.

Rules:

* The **profile**, not the CSR, decides a certificate's subject layout and extensions. The CA
  copies from a CSR only its public key, and for authentication certificates its requested
  DNS names and IP addresses.
* Four end-entity profiles exist:

  ============== ===================================== =======================================
  profile        extensions                            subject
  ============== ===================================== =======================================
  ``auth``       KU digitalSignature; EKU serverAuth   CN = node id ``INST/CLASS/MEMBER/CODE``;
                 + clientAuth; SAN DNS/IP              SAN from the request or the operator
  ``sign``       KU digitalSignature +                 serialNumber = member id
                 nonRepudiation (contentCommitment)    ``INST/CLASS/CODE``; CN = name or id
  ``ocsp``       KU digitalSignature; EKU OCSPSigning; CN from the request
                 id-pkix-ocsp-nocheck
  ``tsa``        KU digitalSignature; EKU timeStamping CN from the request
                 (critical, the only EKU, RFC 3161)
  ============== ===================================== =======================================

* :func:`conformance_problem` is what validation uses to refuse a certificate presented for
  the wrong purpose (an authentication certificate used to sign, and so on).
* Identifiers are checked here with X-Road's character rules; this layer sits below
  ``gateway`` and so does not import its identifier classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import CsrError, PkiError

__all__ = [
    "AUTHENTICATION",
    "OCSP_RESPONDER",
    "PROFILES",
    "SIGNING",
    "TSA",
    "Profile",
    "ProfileName",
    "cert_sha256",
    "check_member_id",
    "check_server_id",
    "conformance_problem",
    "member_id_of",
    "profile_named",
    "server_id_of",
]

ProfileName = Literal["auth", "sign", "ocsp", "tsa"]

#: One identifier part: X-Road's allowed characters (identifiers.xsd), non-empty.
_PART = r"[A-Za-z0-9'()+,\-.=?]+"
_MEMBER_ID = re.compile(rf"{_PART}/{_PART}/{_PART}")
_SERVER_ID = re.compile(rf"{_PART}/{_PART}/{_PART}/{_PART}")

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
}

_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """What one kind of end-entity certificate contains."""

    name: ProfileName
    title: str
    #: KeyUsage flags set (names of :class:`x509.KeyUsage` attributes); the extension is critical.
    key_usage: frozenset[str]
    extended_key_usage: tuple[x509.ObjectIdentifier, ...]
    eku_critical: bool
    ocsp_nocheck: bool
    default_days: int

    def key_usage_extension(self) -> x509.KeyUsage:
        flags = {flag: flag in self.key_usage for flag in _KEY_USAGE_FLAGS}
        return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)

    def extensions(
        self, *, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()
    ) -> list[tuple[x509.ExtensionType, bool]]:
        """The profile's extensions with their criticality (no key identifiers, no
        basicConstraints: the CA adds those)."""
        exts: list[tuple[x509.ExtensionType, bool]] = [(self.key_usage_extension(), True)]
        if self.extended_key_usage:
            exts.append((x509.ExtendedKeyUsage(list(self.extended_key_usage)), self.eku_critical))
        if self.ocsp_nocheck:
            exts.append((x509.OCSPNoCheck(), False))
        if self.name == "auth":
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
            for ip in ip_addresses:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(ip)))
                except ValueError:
                    raise CsrError(f"{ip!r} is not an IPv4 or IPv6 address") from None
            if names:
                exts.append((x509.SubjectAlternativeName(names), False))
        return exts


AUTHENTICATION = Profile(
    name="auth",
    title="node authentication (TLS)",
    key_usage=frozenset({"digital_signature"}),
    extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    eku_critical=False,
    ocsp_nocheck=False,
    default_days=730,
)
SIGNING = Profile(
    name="sign",
    title="member signing",
    key_usage=frozenset({"digital_signature", "content_commitment"}),
    extended_key_usage=(),
    eku_critical=False,
    ocsp_nocheck=False,
    default_days=730,
)
OCSP_RESPONDER = Profile(
    name="ocsp",
    title="OCSP responder",
    key_usage=frozenset({"digital_signature"}),
    extended_key_usage=(ExtendedKeyUsageOID.OCSP_SIGNING,),
    eku_critical=False,
    ocsp_nocheck=True,
    default_days=365,
)
TSA = Profile(
    name="tsa",
    title="timestamping authority",
    key_usage=frozenset({"digital_signature"}),
    extended_key_usage=(ExtendedKeyUsageOID.TIME_STAMPING,),
    eku_critical=True,
    ocsp_nocheck=False,
    default_days=1825,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (AUTHENTICATION, SIGNING, OCSP_RESPONDER, TSA)}


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise PkiError(
            f"unknown certificate profile {name!r}; use one of {', '.join(PROFILES)}"
        ) from None


def check_member_id(member_id: str) -> str:
    if not _MEMBER_ID.fullmatch(member_id):
        raise CsrError(
            f"{member_id!r} is not a member id; expected INSTANCE/CLASS/CODE, e.g. IQ/GOV/NDC"
        )
    return member_id


def check_server_id(server_id: str) -> str:
    if not _SERVER_ID.fullmatch(server_id):
        raise CsrError(
            f"{server_id!r} is not a node id; expected INSTANCE/CLASS/MEMBER/SERVERCODE, "
            "e.g. IQ/GOV/NDC/ss1"
        )
    return server_id


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def member_id_of(cert: x509.Certificate) -> str:
    """The member id a signing certificate was issued to (subject serialNumber)."""
    value = _attribute(cert.subject, NameOID.SERIAL_NUMBER)
    if value is None or not _MEMBER_ID.fullmatch(value):
        raise PkiError(
            f"certificate {cert.subject.rfc4514_string()} names no member id in its subject "
            "serialNumber; it is not a Jisr signing certificate"
        )
    return value


def server_id_of(cert: x509.Certificate) -> str:
    """The node id an authentication certificate was issued to (subject CN)."""
    value = _attribute(cert.subject, NameOID.COMMON_NAME)
    if value is None or not _SERVER_ID.fullmatch(value):
        raise PkiError(
            f"certificate {cert.subject.rfc4514_string()} names no node id "
            "(INSTANCE/CLASS/MEMBER/SERVERCODE) in its subject CN; it is not a Jisr "
            "authentication certificate"
        )
    return value


def cert_sha256(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` over the certificate's DER: how configuration and logs name it."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _extension(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def conformance_problem(cert: x509.Certificate, profile: Profile) -> str | None:
    """Why ``cert`` cannot serve as a ``profile`` certificate, or None if it can.

    Checks what the purpose depends on: key usage bits, extended key usages, the identifier the
    subject must carry, and that an end-entity certificate is not a CA.
    """
    bc = _extension(cert, x509.BasicConstraints)
    if bc is not None and isinstance(bc.value, x509.BasicConstraints) and bc.value.ca:
        return "it is a CA certificate"
    ku = _extension(cert, x509.KeyUsage)
    if ku is not None and isinstance(ku.value, x509.KeyUsage):
        missing = sorted(f for f in profile.key_usage if not getattr(ku.value, f))
        if missing:
            return f"its key usage lacks {', '.join(missing)}"
    elif profile.name in ("auth", "sign"):
        return "it has no key usage extension"
    eku = _extension(cert, x509.ExtendedKeyUsage)
    usages: list[x509.ObjectIdentifier] = (
        list(eku.value) if eku is not None and isinstance(eku.value, x509.ExtendedKeyUsage) else []
    )
    for oid in profile.extended_key_usage:
        if oid not in usages:
            return f"its extended key usage lacks {_EKU_NAMES.get(oid, oid.dotted_string)}"
    if profile.name == "tsa" and (eku is None or not eku.critical or len(usages) != 1):
        return "its extended key usage must be timeStamping only, marked critical (RFC 3161)"
    if profile.name == "sign":
        if _attribute(cert.subject, NameOID.SERIAL_NUMBER) is None:
            return "its subject has no serialNumber naming the member"
        if ExtendedKeyUsageOID.SERVER_AUTH in usages:
            return "it is a TLS server certificate"
    if profile.name == "auth" and not _SERVER_ID.fullmatch(
        _attribute(cert.subject, NameOID.COMMON_NAME) or ""
    ):
        return "its subject CN is not a node id INSTANCE/CLASS/MEMBER/SERVERCODE"
    return None
