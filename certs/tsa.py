"""RFC 3161 timestamping: the authority that issues tokens and the checks a client makes.

Rules:

- Sans-IO. The authority turns request bytes into response bytes; the client side builds
  request bytes and checks response and token bytes. The time (``now``, ``at``) and the serial
  number are always passed in; nothing here reads a clock, a file or the network.
- Every token is a CMS ``SignedData`` over a ``TSTInfo`` (eContentType id-ct-TSTInfo) with the
  signed attributes contentType, messageDigest and signingCertificateV2 (ESSCertIDv2 over
  SHA-256), so ``openssl ts -verify`` accepts it. The TSTInfo is signed with SHA-256 whatever
  hash the request's imprint uses; imprints may be SHA-256, SHA-384 or SHA-512.
- A request the authority cannot honour still gets a well-formed ``TimeStampResp``: status
  rejection with the RFC 3161 failure bit (badDataFormat, badAlg, unacceptedPolicy,
  unacceptedExtension). Only a failure of the signing key itself raises.
- A token is trusted only when its signer is one of the TSA certificates the caller passes
  (as the global configuration lists them); certificates carried inside the token are never
  trusted on their own.
- The parts of a token that never change between tokens (certificate set, signer identifier,
  algorithm identifiers, the ESS attribute) are encoded once, when the authority is built, and
  spliced into each token as DER; a node asks for tokens in batches, and re-encoding them per
  token would dominate the cost of a response.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence
from typing import Final

from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import tsp as asn1_tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.signer import Signer, SigningKey, SoftwareSigner
from config.errors import PkiError

#: Largest TimeStampReq accepted; real requests are about 100 bytes.
MAX_REQUEST_BYTES: Final = 16 * 1024
#: Largest TimeStampResp or token accepted; a token with a long chain is a few kilobytes.
MAX_RESPONSE_BYTES: Final = 256 * 1024

#: Policy of Jisr's TSAs unless the operator names another: an OID under the UUID arc 2.25
#: (ITU-T X.667), which needs no registration and cannot clash with another organisation's.
DEFAULT_POLICY_OID: Final = "2.25.50036134044363814531661193313733990650"

#: Imprint hashes accepted, by asn1crypto name; the value is the digest length in bytes.
SUPPORTED_HASHES: Final = {"sha256": 32, "sha384": 48, "sha512": 64}
_HASH_OIDS: Final = {
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_CRYPTO_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

_OID_SIGNED_DATA: Final = "1.2.840.113549.1.7.2"
_OID_TST_INFO: Final = "1.2.840.113549.1.9.16.1.4"


class TimestampError(PkiError):
    """A timestamp could not be obtained, or a token does not prove what it claims."""

    fault_code = "TimestampingFailed"


class TimestampRejected(TimestampError):
    """The TSA answered, but refused to issue a token (RFC 3161 status other than granted)."""

    def __init__(self, message: str, *, status: str, fail_info: frozenset[str]) -> None:
        super().__init__(message)
        self.status = status
        self.fail_info = fail_info


@dataclasses.dataclass(frozen=True, slots=True)
class MessageImprint:
    """What a token timestamps: a digest and the name of the hash that made it."""

    hash: str
    digest: bytes

    def __post_init__(self) -> None:
        expected = SUPPORTED_HASHES.get(self.hash)
        if expected is None:
            raise TimestampError(
                f"hash {self.hash!r} is not supported for timestamping; "
                f"use one of {', '.join(SUPPORTED_HASHES)}"
            )
        if len(self.digest) != expected:
            raise TimestampError(
                f"a {self.hash} digest is {expected} bytes, this one is {len(self.digest)}"
            )

    @classmethod
    def of(cls, data: bytes, hash: str = "sha256") -> MessageImprint:
        """The imprint of ``data`` under ``hash``."""
        if hash not in SUPPORTED_HASHES:
            raise TimestampError(
                f"hash {hash!r} is not supported for timestamping; "
                f"use one of {', '.join(SUPPORTED_HASHES)}"
            )
        return cls(hash, hashlib.new(hash, data).digest())


@dataclasses.dataclass(frozen=True, slots=True)
class TimestampToken:
    """A token taken from a granted response; its signature has not been verified yet."""

    der: bytes
    gen_time: dt.datetime
    serial: int
    policy: str
    message_imprint: MessageImprint
    nonce: int | None
    certificates: tuple[x509.Certificate, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TimestampInfo:
    """What a verified token proves: ``message_imprint`` existed at ``gen_time``."""

    gen_time: dt.datetime
    serial: int
    policy: str
    message_imprint: MessageImprint
    tsa_cert: x509.Certificate
    nonce: int | None = None
    accuracy: dt.timedelta | None = None


# --- DER splicing -----------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


_INT_1: Final = asn1_core.Integer(1).dump()
_INT_3: Final = asn1_core.Integer(3).dump()
_GRANTED_STATUS: Final = asn1_tsp.PKIStatusInfo({"status": "granted"}).dump()
_OID_SIGNED_DATA_DER: Final = asn1_core.ObjectIdentifier(_OID_SIGNED_DATA).dump()
_OID_TST_INFO_DER: Final = asn1_core.ObjectIdentifier(_OID_TST_INFO).dump()
_SHA256_ALG_DER: Final = asn1_algos.DigestAlgorithm({"algorithm": "sha256"}).dump()
_CONTENT_TYPE_ATTR: Final = asn1_cms.CMSAttribute(
    {"type": "content_type", "values": [_OID_TST_INFO]}
).dump()
_MESSAGE_DIGEST_OID_DER: Final = asn1_core.ObjectIdentifier("1.2.840.113549.1.9.4").dump()


class _TimeStampResp(asn1_core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """RFC 3161 TimeStampResp; asn1crypto's own class wrongly makes the token mandatory."""

    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("status", asn1_tsp.PKIStatusInfo),
        ("time_stamp_token", asn1_cms.ContentInfo, {"optional": True}),
    ]


# --- the authority ----------------------------------------------------------------------------


def rejection(fail_info: str, message: str, *, status: str = "rejection") -> bytes:
    """A TimeStampResp refusing a request; ``fail_info`` is an RFC 3161 PKIFailureInfo name
    in asn1crypto spelling (``bad_alg``, ``bad_data_format``, ``system_failure``, ...)."""
    if fail_info not in asn1_tsp.PKIFailureInfo._map.values():
        raise ValueError(f"{fail_info!r} is not an RFC 3161 PKIFailureInfo name")
    status_info = {"status": status, "status_string": [message], "fail_info": {fail_info}}
    return bytes(_TimeStampResp({"status": status_info}).dump())


class _RequestRefused(Exception):
    def __init__(self, fail_info: str, message: str) -> None:
        super().__init__(message)
        self.fail_info = fail_info
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class _AcceptedRequest:
    imprint_der: bytes
    nonce: int | None
    cert_req: bool


class TimestampAuthority:
    """Issues RFC 3161 tokens signed by one TSA certificate under one policy.

    ``key_or_signer`` is the TSA's private key (ECDSA or RSA) or any :class:`Signer` for the
    same certificate (for example a PKCS#11 token). ``chain`` holds intermediate CA
    certificates, nearest first; they travel in tokens whose request asked for certificates.
    """

    def __init__(
        self,
        cert: x509.Certificate,
        key_or_signer: SigningKey | Signer,
        *,
        policy_oid: str,
        chain: Sequence[x509.Certificate] = (),
        accuracy_s: int = 1,
    ) -> None:
        if isinstance(key_or_signer, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            signer: Signer = SoftwareSigner(key_or_signer, cert, chain)
        else:
            signer = key_or_signer
            if signer.certificate != cert:
                raise TimestampError(
                    "the signer holds a different certificate than the TSA certificate given; "
                    "use the certificate issued for the signer's key"
                )
        _require_timestamping_eku(cert)
        public_key = cert.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            signature_algorithm = "sha256_ecdsa"
        elif isinstance(public_key, rsa.RSAPublicKey):
            signature_algorithm = "sha256_rsa"
        else:
            raise TimestampError(
                "the TSA certificate's key is neither ECDSA nor RSA; issue the TSA an ECDSA P-256 "
                "or RSA key"
            )
        try:
            policy_der = asn1_core.ObjectIdentifier(policy_oid).dump()
        except ValueError as exc:
            raise TimestampError(
                f"TSA policy {policy_oid!r} is not a dotted object identifier such as 2.25.1234"
            ) from exc
        if accuracy_s < 0:
            raise TimestampError("the TSA accuracy must be zero or more seconds")

        self._signer = signer
        self.certificate = cert
        self.policy_oid = policy_oid
        self.accuracy_s = accuracy_s

        cert_der = cert.public_bytes(serialization.Encoding.DER)
        asn1_cert = asn1_x509.Certificate.load(cert_der)
        issuer = asn1_cert["tbs_certificate"]["issuer"]
        serial = asn1_cert["tbs_certificate"]["serial_number"].native
        chain_ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]

        self._policy_der = policy_der
        self._accuracy_der = (
            asn1_tsp.Accuracy({"seconds": accuracy_s}).dump() if accuracy_s else b""
        )
        self._tsa_name_der = _tlv(
            0xA0, asn1_x509.GeneralName(name="directory_name", value=asn1_cert.subject).dump()
        )
        self._certificates_der = _tlv(0xA0, b"".join(sorted([cert_der, *chain_ders])))
        ess = asn1_tsp.SigningCertificateV2(
            {
                "certs": [
                    {
                        "cert_hash": hashlib.sha256(cert_der).digest(),
                        "issuer_serial": {
                            "issuer": [asn1_x509.GeneralName(name="directory_name", value=issuer)],
                            "serial_number": serial,
                        },
                    }
                ]
            }
        )
        self._ess_attr = asn1_cms.CMSAttribute(
            {"type": "signing_certificate_v2", "values": [ess]}
        ).dump()
        sid = asn1_cms.SignerIdentifier(
            name="issuer_and_serial_number",
            value={"issuer": issuer, "serial_number": serial},
        ).dump()
        self._signer_info_head = _INT_1 + sid + _SHA256_ALG_DER
        self._signature_algorithm_der = asn1_cms.SignedDigestAlgorithm(
            {"algorithm": signature_algorithm}
        ).dump()
        self._signed_data_head = _INT_3 + _tlv(0x31, _SHA256_ALG_DER)

    def respond(self, request_der: bytes, *, now: dt.datetime, serial: int) -> bytes:
        """Answer one TimeStampReq with a TimeStampResp (granted, or a rejection).

        ``serial`` must be unique for this TSA; ``now`` becomes the token's genTime.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if serial <= 0:
            raise ValueError("timestamp serial numbers are positive")
        try:
            accepted = self._accept(request_der)
        except _RequestRefused as refused:
            return rejection(refused.fail_info, refused.message)
        token = self._issue_token(accepted, now=now, serial=serial)
        return _seq(_GRANTED_STATUS, token)

    def _accept(self, request_der: bytes) -> _AcceptedRequest:
        if len(request_der) > MAX_REQUEST_BYTES:
            raise _RequestRefused(
                "bad_data_format", f"the request is larger than {MAX_REQUEST_BYTES} bytes"
            )
        try:
            request = asn1_tsp.TimeStampReq.load(request_der, strict=True)
            version = int(request["version"])
            imprint = request["message_imprint"]
            hash_oid = imprint["hash_algorithm"]["algorithm"].dotted
            digest = imprint["hashed_message"].native
            policy = request["req_policy"]
            policy_oid = None if isinstance(policy, asn1_core.Void) else policy.dotted
            nonce = request["nonce"].native
            cert_req = bool(request["cert_req"].native)
            extensions = request["extensions"].native
            imprint_der = imprint.dump()
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise _RequestRefused(
                "bad_data_format", f"the request is not a DER TimeStampReq: {exc}"
            ) from exc
        if version != 1:
            raise _RequestRefused("bad_data_format", f"request version {version} is not 1")
        hash_name = _HASH_OIDS.get(hash_oid)
        if hash_name is None:
            raise _RequestRefused(
                "bad_alg",
                f"hash {hash_oid} is not accepted; use SHA-256, SHA-384 or SHA-512",
            )
        if not isinstance(digest, bytes) or len(digest) != SUPPORTED_HASHES[hash_name]:
            raise _RequestRefused(
                "bad_data_format", f"the message imprint is not a {hash_name} digest"
            )
        if policy_oid is not None and policy_oid != self.policy_oid:
            raise _RequestRefused(
                "unaccepted_policy",
                f"policy {policy_oid} is not offered; this TSA issues under {self.policy_oid}",
            )
        if extensions:
            raise _RequestRefused("unaccepted_extensions", "this TSA accepts no request extensions")
        return _AcceptedRequest(imprint_der, nonce, cert_req)

    def _issue_token(self, request: _AcceptedRequest, *, now: dt.datetime, serial: int) -> bytes:
        tst_info = _seq(
            _INT_1,
            self._policy_der,
            request.imprint_der,
            asn1_core.Integer(serial).dump(),
            asn1_core.GeneralizedTime(now.astimezone(dt.UTC)).dump(),
            self._accuracy_der,
            asn1_core.Integer(request.nonce).dump() if request.nonce is not None else b"",
            self._tsa_name_der,
        )
        message_digest_attr = _seq(
            _MESSAGE_DIGEST_OID_DER,
            _tlv(0x31, _tlv(0x04, hashlib.sha256(tst_info).digest())),
        )
        attrs = b"".join(sorted([_CONTENT_TYPE_ATTR, message_digest_attr, self._ess_attr]))
        try:
            signature = self._signer.sign(_tlv(0x31, attrs))
        except Exception as exc:  # a key store can fail in its own ways
            raise TimestampError(f"the TSA key could not sign the token: {exc}") from exc
        signer_info = _seq(
            self._signer_info_head,
            _tlv(0xA0, attrs),
            self._signature_algorithm_der,
            _tlv(0x04, signature),
        )
        signed_data = _seq(
            self._signed_data_head,
            _seq(_OID_TST_INFO_DER, _tlv(0xA0, _tlv(0x04, tst_info))),
            self._certificates_der if request.cert_req else b"",
            _tlv(0x31, signer_info),
        )
        return _seq(_OID_SIGNED_DATA_DER, _tlv(0xA0, signed_data))


def _require_timestamping_eku(cert: x509.Certificate) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or not eku.critical or ExtendedKeyUsageOID.TIME_STAMPING not in eku.value:
        raise TimestampError(
            f"certificate {cert.subject.rfc4514_string()} is not a TSA certificate: RFC 3161 "
            "requires a critical extended key usage of timeStamping; have the CA issue one"
        )


# --- the client side --------------------------------------------------------------------------


def new_nonce() -> int:
    """A fresh random 63-bit nonce (eight bytes in DER), so a replayed old reply cannot answer
    a new request."""
    return secrets.randbits(63) | 1 << 62


def build_request(
    data_or_digest: bytes | MessageImprint,
    *,
    hash: str = "sha256",
    nonce: int | None = None,
    cert_req: bool = True,
    policy_oid: str | None = None,
) -> bytes:
    """A DER TimeStampReq. ``bytes`` are hashed with ``hash``; a :class:`MessageImprint` is
    sent as it is (its own hash wins)."""
    imprint = (
        data_or_digest
        if isinstance(data_or_digest, MessageImprint)
        else MessageImprint.of(data_or_digest, hash)
    )
    fields: dict[str, object] = {
        "version": 1,
        "message_imprint": {
            "hash_algorithm": {"algorithm": imprint.hash},
            "hashed_message": imprint.digest,
        },
        "cert_req": cert_req,
    }
    if policy_oid is not None:
        fields["req_policy"] = policy_oid
    if nonce is not None:
        fields["nonce"] = nonce
    return bytes(asn1_tsp.TimeStampReq(fields).dump())


def parse_response(resp_der: bytes, request: bytes) -> TimestampToken:
    """The token of a granted response to ``request`` (the DER built by :func:`build_request`).

    Checks that the TSA granted the request and that the token answers this request (nonce,
    imprint, policy asked for); the signature is checked later by :func:`verify_token`.
    """
    if len(resp_der) > MAX_RESPONSE_BYTES:
        raise TimestampError(f"the TSA response is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        req = asn1_tsp.TimeStampReq.load(request, strict=True)
        req_imprint = _imprint_of(req["message_imprint"])
        req_nonce = req["nonce"].native
        req_policy = req["req_policy"]
        req_policy_oid = None if isinstance(req_policy, asn1_core.Void) else req_policy.dotted
        req_cert = bool(req["cert_req"].native)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"request is not a DER TimeStampReq: {exc}") from exc
    try:
        resp = _TimeStampResp.load(resp_der, strict=True)
        status_info = resp["status"]
        status = status_info["status"].native
        texts = status_info["status_string"].native or []
        fail_info = status_info["fail_info"].native or set()
        token_asn1 = resp["time_stamp_token"]
        token_der = None if isinstance(token_asn1, asn1_core.Void) else token_asn1.dump()
    except (ValueError, TypeError, KeyError) as exc:
        raise TimestampError(f"the TSA's answer is not a DER TimeStampResp: {exc}") from exc
    if status not in ("granted", "granted_with_mods"):
        reasons = ", ".join(sorted(fail_info)) or "no reason given"
        text = "; ".join(texts)
        raise TimestampRejected(
            f"the TSA refused the timestamp request ({status}: {reasons})"
            + (f": {text}" if text else ""),
            status=str(status),
            fail_info=frozenset(fail_info),
        )
    if token_der is None:
        raise TimestampError("the TSA granted the request but sent no token")
    token = _ParsedToken.load(token_der)
    info = token.tst_info
    if info.message_imprint != req_imprint:
        raise TimestampError("the token timestamps another imprint than the one requested")
    if info.nonce != req_nonce:
        raise TimestampError(
            "the token's nonce differs from the request's; the response may be a replay"
        )
    if req_policy_oid is not None and info.policy != req_policy_oid:
        raise TimestampError(
            f"the token is issued under policy {info.policy}, not {req_policy_oid} as requested"
        )
    if req_cert and not token.certificates:
        raise TimestampError("the request asked for the TSA certificate but the token has none")
    return TimestampToken(
        der=token_der,
        gen_time=info.gen_time,
        serial=info.serial,
        policy=info.policy,
        message_imprint=info.message_imprint,
        nonce=info.nonce,
        certificates=token.certificates,
    )


def verify_token(
    token_der: bytes,
    *,
    data: bytes | None = None,
    digest: bytes | None = None,
    tsa_certs: Sequence[x509.Certificate],
    at: dt.datetime | None = None,
) -> TimestampInfo:
    """Check that ``token_der`` was signed by one of ``tsa_certs`` and timestamps ``data``
    (or ``digest``, made with the token's imprint hash).

    The genTime must fall within the TSA certificate's validity. With ``at`` (the time of the
    check) the certificate must also be valid at ``at`` and the token must not come from after
    ``at`` beyond its accuracy. Revocation of the TSA certificate is the caller's concern (OCSP).
    """
    if (data is None) == (digest is None):
        raise ValueError("give exactly one of data or digest")
    if at is not None and at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    token = _ParsedToken.load(token_der)
    info = token.tst_info
    tsa_cert = token.find_signer(tsa_certs)
    token.check_signed_attributes(tsa_cert)
    token.check_signature(tsa_cert)
    _require_timestamping_eku(tsa_cert)

    if data is not None:
        expected = hashlib.new(info.message_imprint.hash, data).digest()
    else:
        assert digest is not None
        expected = digest
    if not secrets.compare_digest(expected, info.message_imprint.digest):
        raise TimestampError("the token timestamps other data than the data given")

    if not tsa_cert.not_valid_before_utc <= info.gen_time <= tsa_cert.not_valid_after_utc:
        raise TimestampError(
            f"the token's time {info.gen_time.isoformat()} lies outside the validity of the "
            f"TSA certificate {tsa_cert.subject.rfc4514_string()}"
        )
    if at is not None:
        if not tsa_cert.not_valid_before_utc <= at <= tsa_cert.not_valid_after_utc:
            raise TimestampError(
                f"the TSA certificate {tsa_cert.subject.rfc4514_string()} is not valid at "
                f"{at.isoformat()}"
            )
        if info.gen_time > at + (info.accuracy or dt.timedelta(0)):
            raise TimestampError(
                f"the token's time {info.gen_time.isoformat()} is after {at.isoformat()}"
            )
    return TimestampInfo(
        gen_time=info.gen_time,
        serial=info.serial,
        policy=info.policy,
        message_imprint=info.message_imprint,
        tsa_cert=tsa_cert,
        nonce=info.nonce,
        accuracy=info.accuracy,
    )


def token_of_response(resp_der: bytes) -> bytes:
    """The token inside a granted TimeStampResp, without checks (for storing what arrived)."""
    try:
        token = _TimeStampResp.load(resp_der, strict=True)["time_stamp_token"]
    except (ValueError, TypeError, KeyError) as exc:
        raise TimestampError(f"the TSA's answer is not a DER TimeStampResp: {exc}") from exc
    if isinstance(token, asn1_core.Void):
        raise TimestampError("the TSA response carries no token")
    return bytes(token.dump())


# --- reading tokens ---------------------------------------------------------------------------


def _imprint_of(imprint: asn1_tsp.MessageImprint) -> MessageImprint:
    oid = imprint["hash_algorithm"]["algorithm"].dotted
    name = _HASH_OIDS.get(oid)
    if name is None:
        raise TimestampError(f"imprint hash {oid} is not supported")
    return MessageImprint(name, imprint["hashed_message"].native)


@dataclasses.dataclass(frozen=True, slots=True)
class _TstInfo:
    gen_time: dt.datetime
    serial: int
    policy: str
    message_imprint: MessageImprint
    nonce: int | None
    accuracy: dt.timedelta | None


@dataclasses.dataclass(frozen=True, slots=True)
class _ParsedToken:
    signed_data: asn1_cms.SignedData
    signer_info: asn1_cms.SignerInfo
    tst_info_der: bytes
    tst_info: _TstInfo
    certificates: tuple[x509.Certificate, ...]

    @classmethod
    def load(cls, token_der: bytes) -> _ParsedToken:
        if len(token_der) > MAX_RESPONSE_BYTES:
            raise TimestampError(f"the token is larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            content_info = asn1_cms.ContentInfo.load(token_der, strict=True)
            if content_info["content_type"].dotted != _OID_SIGNED_DATA:
                raise TimestampError("the token is not CMS SignedData")
            signed_data = content_info["content"]
            encap = signed_data["encap_content_info"]
            if encap["content_type"].dotted != _OID_TST_INFO:
                raise TimestampError("the token's signed content is not a TSTInfo")
            tst_info_der = bytes(encap["content"].contents)
            tst = asn1_tsp.TSTInfo.load(tst_info_der, strict=True)
            if int(tst["version"]) != 1:
                raise TimestampError("the token's TSTInfo version is not 1")
            accuracy = tst["accuracy"]
            accuracy_delta = None
            if not isinstance(accuracy, asn1_core.Void):
                acc = accuracy.native
                accuracy_delta = dt.timedelta(
                    seconds=acc.get("seconds") or 0,
                    milliseconds=acc.get("millis") or 0,
                    microseconds=acc.get("micros") or 0,
                )
            gen_time = tst["gen_time"].native
            if not isinstance(gen_time, dt.datetime):
                raise TimestampError("the token's genTime is not a time")
            info = _TstInfo(
                gen_time=gen_time.astimezone(dt.UTC),
                serial=int(tst["serial_number"].native),
                policy=str(tst["policy"].dotted),
                message_imprint=_imprint_of(tst["message_imprint"]),
                nonce=tst["nonce"].native,
                accuracy=accuracy_delta,
            )
            signer_infos = signed_data["signer_infos"]
            if len(signer_infos) != 1:
                raise TimestampError("a timestamp token must have exactly one signer")
            certs_field = signed_data["certificates"]
            certificates: list[x509.Certificate] = []
            if not isinstance(certs_field, asn1_core.Void):
                for choice in certs_field:
                    if choice.name == "certificate":
                        certificates.append(x509.load_der_x509_certificate(choice.chosen.dump()))
        except TimestampError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise TimestampError(f"the timestamp token is malformed: {exc}") from exc
        return cls(signed_data, signer_infos[0], tst_info_der, info, tuple(certificates))

    def find_signer(self, tsa_certs: Sequence[x509.Certificate]) -> x509.Certificate:
        try:
            sid = self.signer_info["sid"]
            if sid.name == "issuer_and_serial_number":
                issuer = sid.chosen["issuer"]
                serial = sid.chosen["serial_number"].native
                for cert in tsa_certs:
                    candidate = asn1_x509.Certificate.load(
                        cert.public_bytes(serialization.Encoding.DER)
                    )
                    if candidate.serial_number == serial and candidate.issuer == issuer:
                        return cert
            else:
                key_id = sid.chosen.native
                for cert in tsa_certs:
                    try:
                        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
                    except x509.ExtensionNotFound:
                        continue
                    if ski.value.digest == key_id:
                        return cert
        except (ValueError, TypeError, KeyError) as exc:
            raise TimestampError(f"the token's signer identifier is malformed: {exc}") from exc
        raise TimestampError(
            "the token was signed by a TSA that is not trusted here; only TSAs listed in the "
            "global configuration are accepted"
        )

    def _hash_name(self) -> str:
        name = self.signer_info["digest_algorithm"]["algorithm"].native
        if name not in SUPPORTED_HASHES:
            raise TimestampError(f"the token is signed with digest {name}, which is not accepted")
        return str(name)

    def check_signed_attributes(self, tsa_cert: x509.Certificate) -> None:
        try:
            attrs = self.signer_info["signed_attrs"]
            if isinstance(attrs, asn1_core.Void) or not len(attrs):
                raise TimestampError("the token has no signed attributes")
            by_type: dict[str, asn1_core.SetOf] = {}
            for attr in attrs:
                name = attr["type"].native
                if name in by_type:
                    raise TimestampError(f"the token repeats the signed attribute {name}")
                if len(attr["values"]) != 1:
                    raise TimestampError(f"the signed attribute {name} must have one value")
                by_type[name] = attr["values"]
            content_type = by_type.get("content_type")
            if content_type is None or content_type[0].dotted != _OID_TST_INFO:
                raise TimestampError("the token's signed contentType is not id-ct-TSTInfo")
            digest = by_type.get("message_digest")
            expected = hashlib.new(self._hash_name(), self.tst_info_der).digest()
            if digest is None or not secrets.compare_digest(digest[0].native, expected):
                raise TimestampError("the token's TSTInfo does not match its signed digest")
            cert_der = tsa_cert.public_bytes(serialization.Encoding.DER)
            if "signing_certificate_v2" in by_type:
                ess = by_type["signing_certificate_v2"][0]["certs"][0]
                hash_name = ess["hash_algorithm"]["algorithm"].native
                if hash_name not in _CRYPTO_HASHES or hash_name == "sha1":
                    raise TimestampError(f"ESSCertIDv2 uses unaccepted hash {hash_name}")
            elif "signing_certificate" in by_type:
                ess = by_type["signing_certificate"][0]["certs"][0]
                hash_name = "sha1"
            else:
                raise TimestampError(
                    "the token does not name its signing certificate (signingCertificate[V2])"
                )
            cert_hash = hashlib.new(hash_name, cert_der).digest()
            if not secrets.compare_digest(ess["cert_hash"].native, cert_hash):
                raise TimestampError("the token's ESSCertID names another certificate")
            issuer_serial = ess["issuer_serial"]
            if not isinstance(issuer_serial, asn1_core.Void):
                asn1_cert = asn1_x509.Certificate.load(cert_der)
                if issuer_serial["serial_number"].native != asn1_cert.serial_number or not any(
                    name.name == "directory_name" and name.chosen == asn1_cert.issuer
                    for name in issuer_serial["issuer"]
                ):
                    raise TimestampError("the token's ESSCertID issuer and serial do not match")
        except TimestampError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise TimestampError(f"the token's signed attributes are malformed: {exc}") from exc

    def check_signature(self, tsa_cert: x509.Certificate) -> None:
        try:
            signed = _tlv(0x31, bytes(self.signer_info["signed_attrs"].contents))
            signature = self.signer_info["signature"].native
            algorithm = self.signer_info["signature_algorithm"]["algorithm"].native
        except (ValueError, TypeError, KeyError) as exc:
            raise TimestampError(f"the token's signature is malformed: {exc}") from exc
        hash_name = self._hash_name()
        if algorithm.endswith("_ecdsa"):
            kind, hash_name = "ecdsa", algorithm.removesuffix("_ecdsa")
        elif algorithm.endswith("_rsa"):
            kind, hash_name = "rsa", algorithm.removesuffix("_rsa")
        elif algorithm == "rsassa_pkcs1v15":
            kind = "rsa"
        else:
            raise TimestampError(f"the token's signature algorithm {algorithm} is not accepted")
        if hash_name not in SUPPORTED_HASHES:
            raise TimestampError(f"the token's signature hash {hash_name} is not accepted")
        hash_algorithm = _CRYPTO_HASHES[hash_name]()
        public_key = tsa_cert.public_key()
        try:
            if kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
                public_key.verify(signature, signed, ec.ECDSA(hash_algorithm))
            elif kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
                public_key.verify(signature, signed, padding.PKCS1v15(), hash_algorithm)
            else:
                raise TimestampError(
                    "the token's signature algorithm does not fit the TSA certificate's key"
                )
        except InvalidSignature as exc:
            raise TimestampError(
                "the token's signature does not verify with the TSA certificate; the token "
                "was altered or signed by another key"
            ) from exc
