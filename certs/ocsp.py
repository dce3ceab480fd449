"""OCSP (RFC 6960): the responder's answers, the client's requests and checks, and a cache.

Rules:

- Sans-IO. Bytes in, bytes or verdicts out; the HTTP shells live in ``trust_services``. The
  time is always an argument (``now``), never read from the clock here.
- The responder answers for exactly one issuing CA. It signs with a *delegated* responder
  certificate (extended key usage ``OCSPSigning``, issued by that CA) or with the CA's own
  certificate, identifies itself by key hash, and sets ``thisUpdate = producedAt = now`` and
  ``nextUpdate = now + validity``. A request's nonce is echoed. A request it cannot parse gets
  ``malformedRequest``; a request about another CA's certificates gets ``unauthorized``; a
  failing status lookup gets ``internalError``. It never raises for a bad request.
- The client accepts a response only when: its status is ``successful``; it is signed by the
  issuing CA, by a responder certificate the CA issued with ``OCSPSigning`` and valid at
  ``now``, or by a responder certificate the caller trusts explicitly; it answers for the asked
  certificate; ``thisUpdate`` is not in the future beyond the allowed skew and not older than
  ``max_age``; ``nextUpdate``, when present, has not passed. Anything else is an
  :class:`OcspError`.
- The cache hands out only verdicts that are still fresh under the same rules, and says when a
  verdict should be refreshed, well before it stops being fresh.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from collections.abc import Callable, Sequence

from asn1crypto import core as a_core
from asn1crypto import keys as a_keys
from asn1crypto import ocsp as a_ocsp
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.signer import Signer, SigningKey, SoftwareSigner
from certs.status import CertStatus
from config.errors import PkiError

__all__ = [
    "DEFAULT_ALLOWED_SKEW",
    "DEFAULT_MAX_AGE",
    "DEFAULT_VALIDITY",
    "OcspCache",
    "OcspError",
    "OcspResponder",
    "OcspVerdict",
    "StatusLookup",
    "build_request",
    "request_nonce",
    "verify_response",
]

#: How long a response stays valid (``nextUpdate - thisUpdate``) unless the operator says otherwise.
DEFAULT_VALIDITY = dt.timedelta(hours=1)
#: The X-Road default OCSP freshness: a response older than this is not accepted.
DEFAULT_MAX_AGE = dt.timedelta(seconds=3600)
#: Clock difference tolerated between responder and client.
DEFAULT_ALLOWED_SKEW = dt.timedelta(minutes=1)
#: Largest OCSP request the responder parses; a one-certificate request is about 100 bytes.
MAX_REQUEST_BYTES = 16 * 1024

#: Looks up the status of a certificate the CA issued, by serial number.
StatusLookup = Callable[[int], CertStatus]

_NONCE_BYTES = 16

_HASH_NAMES: dict[type[hashes.HashAlgorithm], str] = {
    hashes.SHA1: "sha1",
    hashes.SHA256: "sha256",
    hashes.SHA384: "sha384",
    hashes.SHA512: "sha512",
}

_REASONS = frozenset(flag.name for flag in x509.ReasonFlags)


class OcspError(PkiError):
    """An OCSP request cannot be made or a response is not acceptable."""

    fault_code = "CertValidation"


@dataclasses.dataclass(frozen=True, slots=True)
class OcspVerdict:
    """A verified OCSP answer about one certificate, with the response it came from."""

    status: CertStatus
    this_update: dt.datetime
    next_update: dt.datetime | None
    produced_at: dt.datetime
    #: The complete DER response, to staple to messages and keep as evidence.
    response_der: bytes


# --------------------------------------------------------------------------------- shared


def _public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents that RFC 6960 key hashes are computed over."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bit_string = a_keys.PublicKeyInfo.load(spki)["public_key"]
    return bytes(bit_string.contents[1:])  # first content byte counts unused bits (always 0)


def _digest(name: str, data: bytes) -> bytes:
    return hashlib.new(name, data).digest()


def _issuer_hashes(issuer: x509.Certificate, hash_name: str) -> tuple[bytes, bytes]:
    return (
        _digest(hash_name, issuer.subject.public_bytes()),
        _digest(hash_name, _public_key_bits(issuer)),
    )


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("times passed to certs.ocsp must be timezone-aware")
    return value.astimezone(dt.UTC)


def _has_ocsp_signing(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    return _public_key_bits(a) == _public_key_bits(b)


# ------------------------------------------------------------------------------ responder


@dataclasses.dataclass(slots=True)
class _CachedAnswer:
    produced_at: dt.datetime
    response_der: bytes


class OcspResponder:
    """Answers OCSP requests about the certificates of one issuing CA.

    ``on_lookup_error`` is told about a failing status lookup (the answer is then
    ``internalError``), so that the process serving the responder can log it.

    Answers without a nonce are the same for every asker, so they are kept for
    ``reuse_for`` per (hash algorithm, serial) and served again: under load the responder
    signs once per certificate per interval instead of once per request.
    """

    def __init__(
        self,
        issuer_cert: x509.Certificate,
        responder_signer: Signer | tuple[x509.Certificate, SigningKey],
        lookup: StatusLookup,
        validity: dt.timedelta = DEFAULT_VALIDITY,
        *,
        reuse_for: dt.timedelta = dt.timedelta(seconds=30),
        max_cached: int = 10_000,
        on_lookup_error: Callable[[int, Exception], None] | None = None,
    ) -> None:
        if isinstance(responder_signer, tuple):
            cert, key = responder_signer
            responder_signer = SoftwareSigner(key, cert)
        responder_cert = responder_signer.certificate
        delegated = not _same_key(responder_cert, issuer_cert)
        if delegated and not _issued_by(responder_cert, issuer_cert):
            raise OcspError(
                "the OCSP responder certificate was not issued by the CA it answers for; "
                "issue the responder certificate from that CA"
            )
        if delegated and not _has_ocsp_signing(responder_cert):
            raise OcspError(
                "the OCSP responder certificate lacks the OCSPSigning extended key usage; "
                "issue it with extendedKeyUsage = OCSPSigning"
            )
        if validity <= dt.timedelta(0):
            raise OcspError("the OCSP response validity must be positive")
        self._issuer = issuer_cert
        self._signer = responder_signer
        self._lookup = lookup
        self._on_lookup_error = on_lookup_error
        self._validity = validity
        self._reuse_for = min(reuse_for, validity / 10)
        self._max_cached = max_cached
        self._cache: dict[tuple[str, int], _CachedAnswer] = {}
        self._issuer_hashes: dict[str, tuple[bytes, bytes]] = {}
        a_cert = a_x509.Certificate.load(responder_cert.public_bytes(serialization.Encoding.DER))
        self._responder_cert_asn1 = a_cert
        self._responder_key_hash = _digest("sha1", _public_key_bits(responder_cert))
        public_key = responder_cert.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            self._signature_algorithm = "sha256_ecdsa"
        elif isinstance(public_key, rsa.RSAPublicKey):
            self._signature_algorithm = "sha256_rsa"
        else:
            raise OcspError(
                "the OCSP responder key must be ECDSA or RSA; issue a responder certificate "
                "for such a key"
            )

    @property
    def issuer(self) -> x509.Certificate:
        return self._issuer

    @property
    def responder_certificate(self) -> x509.Certificate:
        return self._signer.certificate

    def respond(self, request_der: bytes, *, now: dt.datetime) -> bytes:
        """The DER OCSP response to ``request_der``; never raises for a bad request."""
        now = _utc(now).replace(microsecond=0)
        if len(request_der) > MAX_REQUEST_BYTES:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        try:
            request = ocsp.load_der_ocsp_request(request_der)
            hash_name = _HASH_NAMES[type(request.hash_algorithm)]
            nonce = _nonce_of(request.extensions)
        except (ValueError, KeyError, UnsupportedAlgorithm):
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if self._hashes(hash_name) != (request.issuer_name_hash, request.issuer_key_hash):
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        serial = request.serial_number
        key = (hash_name, serial)
        if nonce is None:
            cached = self._cache.get(key)
            if cached and cached.produced_at <= now < cached.produced_at + self._reuse_for:
                return cached.response_der
        try:
            status = self._lookup(serial)
        except Exception as exc:  # a broken lookup must become internalError, never a crash
            if self._on_lookup_error is not None:
                self._on_lookup_error(serial, exc)
            return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
        response_der = self._signed_response(hash_name, serial, status, nonce, now)
        if nonce is None:
            if len(self._cache) >= self._max_cached:
                self._cache.clear()
            self._cache[key] = _CachedAnswer(now, response_der)
        return response_der

    def _hashes(self, hash_name: str) -> tuple[bytes, bytes]:
        found = self._issuer_hashes.get(hash_name)
        if found is None:
            found = self._issuer_hashes[hash_name] = _issuer_hashes(self._issuer, hash_name)
        return found

    def _signed_response(
        self,
        hash_name: str,
        serial: int,
        status: CertStatus,
        nonce: bytes | None,
        now: dt.datetime,
    ) -> bytes:
        name_hash, key_hash = self._hashes(hash_name)
        single = a_ocsp.SingleResponse(
            {
                "cert_id": {
                    "hash_algorithm": {"algorithm": hash_name},
                    "issuer_name_hash": name_hash,
                    "issuer_key_hash": key_hash,
                    "serial_number": serial,
                },
                "cert_status": _asn1_status(status),
                "this_update": now,
                "next_update": now + self._validity,
            }
        )
        data: dict[str, object] = {
            "version": "v1",
            "responder_id": a_ocsp.ResponderId(name="by_key", value=self._responder_key_hash),
            "produced_at": now,
            "responses": [single],
        }
        if nonce is not None:
            data["response_extensions"] = [
                {"extn_id": "nonce", "critical": False, "extn_value": nonce}
            ]
        tbs = a_ocsp.ResponseData(data)
        signature = self._signer.sign(tbs.dump())
        basic = a_ocsp.BasicOCSPResponse(
            {
                "tbs_response_data": tbs,
                "signature_algorithm": {"algorithm": self._signature_algorithm},
                "signature": signature,
                "certs": [self._responder_cert_asn1],
            }
        )
        response = a_ocsp.OCSPResponse(
            {
                "response_status": "successful",
                "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
            }
        )
        return bytes(response.dump())


def _asn1_status(status: CertStatus) -> a_ocsp.CertStatus:
    if status.state == "good":
        return a_ocsp.CertStatus(name="good", value=a_core.Null())
    if status.state == "revoked":
        if status.revoked_at is None:
            raise OcspError("a revoked certificate's status must carry its revocation time")
        # GeneralizedTime without fractional seconds: strict DER parsers refuse fractions.
        revoked_at = _utc(status.revoked_at).replace(microsecond=0)
        revoked: dict[str, object] = {"revocation_time": revoked_at}
        if status.reason is not None:
            if status.reason not in _REASONS:
                raise OcspError(f"unknown revocation reason {status.reason!r}")
            revoked["revocation_reason"] = status.reason
        return a_ocsp.CertStatus(name="revoked", value=revoked)
    return a_ocsp.CertStatus(name="unknown", value=a_core.Null())


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def _nonce_of(extensions: x509.Extensions) -> bytes | None:
    try:
        return extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


# --------------------------------------------------------------------------------- client


def build_request(cert: x509.Certificate, issuer: x509.Certificate, *, nonce: bool) -> bytes:
    """A DER OCSP request for ``cert`` (CertID hashed with SHA-1, as X-Road and openssl do).

    With ``nonce`` the request carries 16 random bytes that the response must echo; read them
    back with :func:`request_nonce` to pass to :func:`verify_response`.
    """
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        cert,
        issuer,
        hashes.SHA1(),  # noqa: S303 - RFC 6960 CertIDs use SHA-1 by convention; not a signature
    )
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(_NONCE_BYTES)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def request_nonce(request_der: bytes) -> bytes | None:
    """The nonce carried by a request made with :func:`build_request`, if any."""
    try:
        return _nonce_of(ocsp.load_der_ocsp_request(request_der).extensions)
    except ValueError as exc:
        raise OcspError("the OCSP request is malformed") from exc


def verify_response(
    response_der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    trusted_responders: Sequence[x509.Certificate] | None,
    now: dt.datetime,
    max_age: dt.timedelta = DEFAULT_MAX_AGE,
    nonce: bytes | None = None,
    allowed_skew: dt.timedelta = DEFAULT_ALLOWED_SKEW,
) -> OcspVerdict:
    """Check ``response_der`` as an answer about ``cert`` (issued by ``issuer``) at ``now``.

    ``trusted_responders`` are responder certificates accepted without being issued by
    ``issuer`` (an operator's explicit choice). ``nonce``, when given, must be echoed.
    """
    now = _utc(now)
    try:
        response = ocsp.load_der_ocsp_response(response_der)
    except ValueError as exc:
        raise OcspError("the OCSP response is not a DER OCSPResponse") from exc
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(
            f"the OCSP responder refused the request: {response.response_status.name}; "
            "check that the responder serves this certificate's CA"
        )
    try:
        signer_cert = _responder_of(response, issuer, trusted_responders or (), now)
        _check_signature(response, signer_cert)
        single = _single_for(response, cert, issuer)
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        produced_at = response.produced_at_utc
        if nonce is not None and _nonce_of(response.extensions) != nonce:
            raise OcspError("the OCSP response does not echo the request's nonce (replayed?)")
        status = _status_of(single)
    except ValueError as exc:
        raise OcspError(f"the OCSP response is malformed: {exc}") from exc
    except UnsupportedAlgorithm as exc:
        # e.g. a signature algorithm cryptography does not know: no verdict, not a crash.
        raise OcspError(f"the OCSP response uses an algorithm Jisr does not accept: {exc}") from exc
    _check_fresh(this_update, next_update, now, max_age, allowed_skew)
    return OcspVerdict(status, this_update, next_update, produced_at, response_der)


def _responder_of(
    response: ocsp.OCSPResponse,
    issuer: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    now: dt.datetime,
) -> x509.Certificate:
    """The certificate whose key signed the response, after checking that it may."""
    key_hash = response.responder_key_hash
    name = response.responder_name

    def matches(candidate: x509.Certificate) -> bool:
        if key_hash is not None:
            return _digest("sha1", _public_key_bits(candidate)) == key_hash
        return candidate.subject == name

    if matches(issuer):
        return issuer
    for candidate in trusted:
        if matches(candidate):
            _check_responder_validity(candidate, now)
            return candidate
    for candidate in response.certificates:
        if not matches(candidate):
            continue
        if not _issued_by(candidate, issuer):
            raise OcspError(
                "the OCSP response is signed by a certificate the issuing CA did not issue; "
                "trust that responder explicitly or use the CA's own responder"
            )
        if not _has_ocsp_signing(candidate):
            raise OcspError(
                "the OCSP response is signed by a certificate without the OCSPSigning extended "
                "key usage; the responder must use a delegated OCSP signing certificate"
            )
        _check_responder_validity(candidate, now)
        return candidate
    raise OcspError(
        "the OCSP response is signed by an unknown responder; it names no certificate issued "
        "by the CA with OCSPSigning"
    )


def _check_responder_validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise OcspError(
            f"the OCSP responder certificate {cert.subject.rfc4514_string()} is expired or not "
            "yet valid; the responder needs a current certificate"
        )


def _check_signature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    key = signer.public_key()
    data = response.tbs_response_bytes
    signature = response.signature
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            raise OcspError("the OCSP response uses a signature algorithm Jisr does not accept")
    except InvalidSignature as exc:
        raise OcspError(
            "the OCSP response signature does not verify; it was altered or forged"
        ) from exc


def _single_for(
    response: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    for single in response.responses:
        hash_name = _HASH_NAMES.get(type(single.hash_algorithm))
        if hash_name is None or single.serial_number != cert.serial_number:
            continue
        if _issuer_hashes(issuer, hash_name) == (single.issuer_name_hash, single.issuer_key_hash):
            return single
    raise OcspError(
        f"the OCSP response does not answer for certificate serial {cert.serial_number:x} of "
        "this issuer"
    )


def _status_of(single: ocsp.OCSPSingleResponse) -> CertStatus:
    state = single.certificate_status
    if state == ocsp.OCSPCertStatus.GOOD:
        return CertStatus("good")
    if state == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        return CertStatus(
            "revoked",
            revoked_at=single.revocation_time_utc,
            reason=reason.name if reason is not None else None,
        )
    return CertStatus("unknown")


def _check_fresh(
    this_update: dt.datetime,
    next_update: dt.datetime | None,
    now: dt.datetime,
    max_age: dt.timedelta,
    allowed_skew: dt.timedelta,
) -> None:
    if this_update > now + allowed_skew:
        raise OcspError(
            f"the OCSP response's thisUpdate {this_update.isoformat()} is in the future; "
            "check the clocks of the responder and this node"
        )
    if now - this_update > max_age:
        raise OcspError(
            f"the OCSP response is stale: thisUpdate {this_update.isoformat()} is older than "
            f"{int(max_age.total_seconds())} s; fetch a fresh response"
        )
    if next_update is not None and next_update < now - allowed_skew:
        raise OcspError(
            f"the OCSP response expired at its nextUpdate {next_update.isoformat()}; "
            "fetch a fresh response"
        )


# ---------------------------------------------------------------------------------- cache


def _cache_key(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


class OcspCache:
    """Verified OCSP verdicts per certificate (keyed by the certificate's SHA-256).

    A verdict is *fresh* while ``thisUpdate`` is at most ``max_age`` old and ``nextUpdate`` has
    not passed. It *needs refresh* once two thirds of that fresh period are used up, or once
    it is older than ``refresh_interval`` when one is set, so a node always holds a response
    it can staple.
    """

    def __init__(
        self,
        max_age: dt.timedelta = DEFAULT_MAX_AGE,
        *,
        refresh_interval: dt.timedelta | None = None,
        allowed_skew: dt.timedelta = DEFAULT_ALLOWED_SKEW,
    ) -> None:
        self._max_age = max_age
        self._refresh_interval = refresh_interval
        self._skew = allowed_skew
        self._verdicts: dict[bytes, OcspVerdict] = {}

    def put(self, cert: x509.Certificate, verdict: OcspVerdict) -> None:
        """Keep ``verdict`` unless the cache already holds a newer one for ``cert``."""
        key = _cache_key(cert)
        held = self._verdicts.get(key)
        if held is None or held.this_update <= verdict.this_update:
            self._verdicts[key] = verdict

    def get(self, cert: x509.Certificate, now: dt.datetime) -> OcspVerdict | None:
        """The verdict for ``cert`` if it is fresh at ``now``, else None."""
        verdict = self._verdicts.get(_cache_key(cert))
        if verdict is None or not self._is_fresh(verdict, _utc(now)):
            return None
        return verdict

    def expires_at(self, verdict: OcspVerdict) -> dt.datetime:
        """When ``verdict`` stops being fresh."""
        end = verdict.this_update + self._max_age
        if verdict.next_update is not None:
            end = min(end, verdict.next_update)
        return end

    def refresh_at(self, cert: x509.Certificate) -> dt.datetime | None:
        """When the verdict for ``cert`` should be refreshed; None when there is none yet."""
        verdict = self._verdicts.get(_cache_key(cert))
        if verdict is None:
            return None
        due = verdict.this_update + (self.expires_at(verdict) - verdict.this_update) * 2 / 3
        if self._refresh_interval is not None:
            due = min(due, verdict.this_update + self._refresh_interval)
        return due

    def needs_refresh(self, cert: x509.Certificate, now: dt.datetime) -> bool:
        """Whether a new response should be fetched for ``cert`` at ``now``."""
        due = self.refresh_at(cert)
        return due is None or _utc(now) >= due

    def forget(self, cert: x509.Certificate) -> None:
        self._verdicts.pop(_cache_key(cert), None)

    def _is_fresh(self, verdict: OcspVerdict, now: dt.datetime) -> bool:
        return verdict.this_update - self._skew <= now < self.expires_at(verdict)
