"""Certificate path validation: is this certificate, at time T, a trusted one of profile P?

Rules:

* The validation time is always an argument (``at``); nothing here reads the clock.
* Trust anchors (``roots``) and known intermediates come from the caller, normally the global
  configuration's approved CAs; intermediates carried in a message may be added per call.
* Paths are built and checked by ``cryptography.x509.verification`` (RFC 5280 with the Web PKI
  rules for CA certificates). The end-entity certificate is judged by Jisr's own profiles
  (:mod:`certs.profiles`) instead of the Web PKI's server/client rules, because signing, OCSP
  and TSA certificates are not TLS certificates.
* Errors, in the order checked:

  - :class:`~certs.errors.WrongProfileError` (``IncorrectCertificate``): valid maybe, but not
    for this purpose;
  - :class:`~certs.errors.CertValidityError` (``CertValidityTime``): the certificate, or a CA
    certificate it needs, is expired or not yet valid at ``at``;
  - :class:`~certs.errors.PathValidationError` (``InvalidCertPath``): no path to a trusted root.

* Revocation is not checked here; OCSP evidence is checked separately.

:class:`PathValidator` holds the trust store and remembers paths it has built: a path found
once is valid for every time inside all its certificates' validity periods, so verifying many
messages from the same signer builds the path once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from certs.errors import CertValidityError, PathValidationError, WrongProfileError
from certs.profiles import Profile, ProfileName, conformance_problem, profile_named

__all__ = ["PathValidator", "validate_path"]

#: Paths remembered per validator; enough for every member of a large federation.
_CACHE_SIZE = 4096


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def _check_validity(cert: x509.Certificate, at: dt.datetime, role: str) -> None:
    if at < cert.not_valid_before_utc:
        raise CertValidityError(
            f"the {role} certificate {_describe(cert)} is not valid before "
            f"{cert.not_valid_before_utc.isoformat()} (checked at {at.isoformat()})"
        )
    if at > cert.not_valid_after_utc:
        raise CertValidityError(
            f"the {role} certificate {_describe(cert)} expired at "
            f"{cert.not_valid_after_utc.isoformat()} (checked at {at.isoformat()}); "
            "renew it"
        )


class PathValidator:
    """A trust store (roots and known intermediates) reusable across validations."""

    def __init__(
        self, roots: Sequence[x509.Certificate], intermediates: Sequence[x509.Certificate] = ()
    ) -> None:
        if not roots:
            raise PathValidationError("no trusted root certificates are configured")
        self.roots = tuple(roots)
        self.intermediates = tuple(intermediates)
        self._store = Store(list(self.roots))
        self._cache: dict[
            tuple[x509.Certificate, ProfileName, tuple[x509.Certificate, ...]],
            tuple[dt.datetime, dt.datetime, list[x509.Certificate]],
        ] = {}

    def validate(
        self,
        cert: x509.Certificate,
        *,
        at: dt.datetime,
        profile: Profile | ProfileName,
        intermediates: Iterable[x509.Certificate] = (),
    ) -> list[x509.Certificate]:
        """The path from ``cert`` to a trusted root (leaf first, root last), or an error."""
        if isinstance(profile, str):
            profile = profile_named(profile)
        if at.tzinfo is None:
            raise ValueError("validation time must be timezone-aware")
        extra = tuple(c for c in intermediates if c not in self.roots)
        key = (cert, profile.name, extra)
        cached = self._cache.get(key)
        if cached is not None and cached[0] <= at <= cached[1]:
            return list(cached[2])

        problem = conformance_problem(cert, profile)
        if problem is not None:
            raise WrongProfileError(
                f"the certificate {_describe(cert)} is not a {profile.title} certificate: {problem}"
            )
        _check_validity(cert, at, "end-entity")
        candidates = list(self.intermediates) + [c for c in extra if c not in self.intermediates]
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(cert, candidates)
        except VerificationError as exc:
            self._explain_ca_validity(cert, candidates, at)
            raise PathValidationError(
                f"the certificate {_describe(cert)} does not chain to a trusted CA: {exc}; "
                "it must be issued by a CA the configuration approves"
            ) from exc
        chain = list(verified.chain)
        start = max(c.not_valid_before_utc for c in chain)
        end = min(c.not_valid_after_utc for c in chain)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (start, end, chain)
        return list(chain)

    def _explain_ca_validity(
        self, cert: x509.Certificate, candidates: Sequence[x509.Certificate], at: dt.datetime
    ) -> None:
        """If the path failed because an issuing CA is out of its validity, say so."""
        by_subject: dict[bytes, list[x509.Certificate]] = {}
        for ca in (*candidates, *self.roots):
            by_subject.setdefault(ca.subject.public_bytes(), []).append(ca)
        current, seen = cert, 0
        while seen < 8:
            issuers = by_subject.get(current.issuer.public_bytes(), [])
            if not issuers:
                return
            issuer = issuers[0]
            _check_validity(issuer, at, "CA")
            if issuer.subject == issuer.issuer:
                return
            current, seen = issuer, seen + 1


def validate_path(
    cert: x509.Certificate,
    *,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: dt.datetime,
    profile: Profile | ProfileName,
) -> list[x509.Certificate]:
    """One-off validation; keep a :class:`PathValidator` when validating repeatedly."""
    return PathValidator(roots, intermediates).validate(cert, at=at, profile=profile)
