"""Trust for an offline audit: which global-configuration versions hold, and what they approve.

Rules:

- Trust starts from a configuration anchor: the auditor's own (``--anchor``, compared out of
  band with the registry operator's digest), or, failing that, the anchor the archive carries,
  which is then only as trustworthy as the archive and is reported as such.
- Each configuration version in the archive is accepted only through
  :func:`gateway.globalconf.verify_globalconf`, in version order, each with the last accepted
  version as ``previous`` (so keys announced in one version may sign later ones), and checked
  at its own ``generated_at`` (an archive is read long after the configurations expired).
- A record names the version its node had in force. The archive holds that version, or the
  nearest earlier version with the same trust content (CAs, OCSP responders, TSAs, OCSP
  freshness); the version used is reported.
- Approved means: the signing certificate chains to an approved CA of that version; the OCSP
  response is signed by the CA or by one of the responders that version lists for the CA (any
  responder the CA delegated to, when the version lists none); the token is signed by a TSA
  that version lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from asn1crypto import keys as a_keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from audit.archive_format import ANCHOR_NAME, globalconf_names, globalconf_version_of
from certs.validation import PathValidator
from config.errors import JisrError
from gateway.anchor import Anchor
from gateway.globalconf import ApprovedCa, GlobalConf, verify_globalconf


@dataclasses.dataclass(frozen=True, slots=True)
class ConfChoice:
    """The configuration used for a record, and whether it is the exact version it names."""

    conf: GlobalConf
    exact: bool

    def describe(self, named: int) -> str:
        if self.exact:
            return f"configuration version {named}"
        return (
            f"configuration version {self.conf.version} (the record names {named}; the archive "
            "keeps the nearest earlier version with the same trust content)"
        )


class Trust:
    """The configuration versions that verified, with per-version validators."""

    def __init__(self, confs: Mapping[int, GlobalConf], anchor: Anchor | None) -> None:
        self.confs = dict(sorted(confs.items()))
        self.anchor = anchor
        self._validators: dict[int, PathValidator | None] = {}

    def conf_for(self, version: int) -> ConfChoice | None:
        """The version itself, or the nearest earlier one the archive holds."""
        if version in self.confs:
            return ConfChoice(self.confs[version], True)
        earlier = [v for v in self.confs if v < version]
        if not earlier:
            return None
        return ConfChoice(self.confs[max(earlier)], False)

    def validator(self, conf: GlobalConf) -> PathValidator | None:
        if conf.version not in self._validators:
            roots = [ca.certificate for ca in conf.approved_cas]
            intermediates = [c for ca in conf.approved_cas for c in ca.intermediates]
            self._validators[conf.version] = PathValidator(roots, intermediates) if roots else None
        return self._validators[conf.version]

    def all_ca_certificates(self) -> list[x509.Certificate]:
        """Every approved CA certificate (roots and intermediates) of every version, once."""
        seen: dict[bytes, x509.Certificate] = {}
        for conf in self.confs.values():
            for ca in conf.approved_cas:
                for cert in (ca.certificate, *ca.intermediates):
                    seen.setdefault(cert.fingerprint(hashes.SHA256()), cert)
        return list(seen.values())


def approved_ca(conf: GlobalConf, issuer: x509.Certificate) -> ApprovedCa | None:
    """The approved CA whose root or intermediate is ``issuer``."""
    der = issuer.public_bytes(serialization.Encoding.DER)
    for ca in conf.approved_cas:
        for cert in (ca.certificate, *ca.intermediates):
            if cert.public_bytes(serialization.Encoding.DER) == der:
                return ca
    return None


def ocsp_signer_problem(
    response_der: bytes, issuer: x509.Certificate, ca: ApprovedCa | None
) -> str | None:
    """Why the response's signer is not an approved responder for ``issuer``, or None."""
    try:
        response = ocsp.load_der_ocsp_response(response_der)
        key_hash = response.responder_key_hash
        name = response.responder_name
    except ValueError as exc:
        return f"the OCSP response cannot be read: {exc}"

    def is_signer(cert: x509.Certificate) -> bool:
        if key_hash is not None:
            digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - RFC 6960 names responders by SHA-1 key hash
            spki = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            bits = a_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]
            digest.update(bytes(bits))
            return digest.finalize() == key_hash
        return cert.subject == name

    if is_signer(issuer):
        return None
    listed = [o.certificate for o in ca.ocsp] if ca is not None else []
    if not listed:
        return None  # verify_response already required a responder the CA delegated to
    if any(is_signer(c) for c in listed):
        return None
    return (
        "the OCSP response is signed by a responder the configuration does not list for this "
        "CA; only the CA or its approved responders may vouch for its certificates"
    )


def _parse_versions(entries: Mapping[str, bytes]) -> dict[int, tuple[bytes, bytes | None]]:
    versions: dict[int, tuple[bytes, bytes | None]] = {}
    for name, data in entries.items():
        version = globalconf_version_of(name)
        if version is not None:
            versions[version] = (data, entries.get(globalconf_names(version)[1]))
    return versions


def load_trust(
    entries: Mapping[str, bytes], *, anchor: Anchor | None
) -> tuple[Trust, list[str], list[str]]:
    """Verify the configuration versions among ``entries`` (``trust/...`` files).

    Returns the trust, the problems (a version that does not verify), and notes (where the
    anchor came from). ``anchor`` None takes the archive's own anchor.
    """
    problems: list[str] = []
    notes: list[str] = []
    if anchor is None:
        anchor_bytes = entries.get(ANCHOR_NAME)
        if anchor_bytes is None:
            problems.append(
                "no configuration anchor: the archive carries none and none was given; pass "
                "the registry's anchor file with --anchor"
            )
            return Trust({}, None), problems, notes
        try:
            anchor = Anchor.from_bytes(anchor_bytes)
        except JisrError as exc:
            problems.append(f"{ANCHOR_NAME} is not a valid anchor: {exc.message}")
            return Trust({}, None), problems, notes
        notes.append(
            f"trust anchor taken from the archive itself ({anchor.digest}); compare this digest "
            "with the registry operator's, or pass your own copy with --anchor"
        )
    accepted: dict[int, GlobalConf] = {}
    previous: GlobalConf | None = None
    for version, (document, signature) in sorted(_parse_versions(entries).items()):
        name = globalconf_names(version)[0]
        if signature is None:
            problems.append(f"{name} has no signature ({name}.p7s is missing)")
            continue
        try:
            generated_at = GlobalConf.from_document(document).generated_at
            conf = verify_globalconf(
                document, signature, anchor=anchor, previous=previous, now=generated_at
            )
        except JisrError as exc:
            problems.append(f"{name} does not verify: {exc.message}")
            continue
        if conf.version != version:
            problems.append(f"{name} holds version {conf.version}, not {version}")
            continue
        accepted[version] = conf
        previous = conf
    if not accepted and not problems:
        problems.append("the archive holds no global configuration to check signers against")
    return Trust(accepted, anchor), problems, notes


def bundle_problems(
    trust: Trust, bundles: Iterable[tuple[str, list[x509.Certificate]]]
) -> list[str]:
    """Convenience PEM bundles must hold only certificates the verified versions approve."""
    known = {c.fingerprint(hashes.SHA256()) for c in trust.all_ca_certificates()}
    for conf in trust.confs.values():
        known.update(t.certificate.fingerprint(hashes.SHA256()) for t in conf.approved_tsas)
        for ca in conf.approved_cas:
            known.update(o.certificate.fingerprint(hashes.SHA256()) for o in ca.ocsp)
    problems = []
    for name, certs in bundles:
        for cert in certs:
            if cert.fingerprint(hashes.SHA256()) not in known:
                problems.append(
                    f"{name} holds {cert.subject.rfc4514_string()}, which no verified "
                    "configuration version approves"
                )
    return problems
