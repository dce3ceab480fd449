"""Trust in the other node and in the member that signed a message.

Rules:

- A message's signature has already been checked by ``gateway.transport.verify_message``;
  this module decides whether its *signer* is trusted, in the order of transport v1 §7/§9:
  certificate path to a CA the global configuration approves (``InvalidCertPath``), validity
  at ``now`` (``CertValidityTime``), the certificate issued for signing
  (``IncorrectCertificate``), the stapled OCSP response good and no older than the
  configuration's ``ocsp_freshness_s`` (``CertValidation``), and the certificate naming the
  member the message comes from (``IncorrectCertificate``).
- The TLS peer of the server side must present an authentication certificate the configuration
  lists for a node, and that node must host the request's client (``SslAuthenticationFailed``).
- Every refusal is a :class:`~gateway.faults.FaultError` under the prefix the caller gives:
  ``Server.ServerProxy`` when checking a request, ``Server.ClientProxy`` when checking a response.
- Nothing is rebuilt per message that can be kept: the path validator is built once per
  configuration version, and OCSP verdicts are remembered per (certificate, response bytes) and
  only re-checked for freshness.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.errors import CertValidityError, PathValidationError, WrongProfileError
from certs.ocsp import DEFAULT_ALLOWED_SKEW, OcspError, OcspVerdict, verify_response
from certs.profiles import member_id_of
from certs.validation import PathValidator
from config.errors import PkiError
from gateway.faults import FaultError
from gateway.globalconf import GlobalConf, SecurityServer
from gateway.identifiers import ClientId, MemberId
from gateway.transport import VerifiedMessage

#: OCSP verdicts kept; one per signing certificate in use across the federation is enough.
_MAX_VERDICTS = 4096


def _fault(prefix: str, name: str, message: str) -> FaultError:
    return FaultError(f"{prefix}.{name}", message)


@dataclasses.dataclass(frozen=True, slots=True)
class _Trust:
    """What one configuration version says about CAs: a validator and OCSP responder certs."""

    version: tuple[str, int, dt.datetime]
    validator: PathValidator | None
    responders: tuple[x509.Certificate, ...]


class PeerTrust:
    """Decides whether signers and TLS peers are trusted under the configuration in force."""

    def __init__(self) -> None:
        self._trust: _Trust | None = None
        self._verdicts: collections.OrderedDict[bytes, OcspVerdict] = collections.OrderedDict()

    def _trust_for(self, conf: GlobalConf) -> _Trust:
        # Keyed by version, not identity: a configuration source may hand out a new object for
        # the same version, and rebuilding the trust store per message would be wasted work.
        version = (conf.instance, conf.version, conf.generated_at)
        trust = self._trust
        if trust is not None and trust.version == version:
            return trust
        roots = [ca.certificate for ca in conf.approved_cas]
        intermediates = [c for ca in conf.approved_cas for c in ca.intermediates]
        validator = PathValidator(roots, intermediates) if roots else None
        responders = tuple(o.certificate for ca in conf.approved_cas for o in ca.ocsp)
        trust = _Trust(version, validator, responders)
        self._trust = trust
        return trust

    def check_signer(
        self,
        verified: VerifiedMessage,
        member: MemberId,
        conf: GlobalConf,
        *,
        now: dt.datetime,
        prefix: str,
    ) -> None:
        """Refuse the message unless ``member`` signed it with a trusted, unrevoked certificate."""
        trust = self._trust_for(conf)
        signer = verified.signer
        if trust.validator is None:
            raise _fault(
                prefix,
                "InvalidCertPath",
                "the global configuration approves no certification authority, so no signature "
                "can be trusted; ask the registry operator to add the members' CA",
            )
        try:
            chain = trust.validator.validate(
                signer, at=now, profile="sign", intermediates=verified.certificates[1:]
            )
        except WrongProfileError as exc:
            raise _fault(prefix, "IncorrectCertificate", exc.message) from exc
        except CertValidityError as exc:
            raise _fault(prefix, "CertValidityTime", exc.message) from exc
        except PathValidationError as exc:
            raise _fault(prefix, "InvalidCertPath", exc.message) from exc
        issuer = chain[1] if len(chain) > 1 else chain[0]
        self._check_ocsp(
            verified.ocsp,
            signer,
            issuer,
            trust.responders,
            now=now,
            max_age=dt.timedelta(seconds=conf.settings.ocsp_freshness_s),
            prefix=prefix,
        )
        try:
            signer_member = member_id_of(signer)
        except PkiError as exc:
            raise _fault(prefix, "IncorrectCertificate", exc.message) from exc
        if signer_member != str(member):
            raise _fault(
                prefix,
                "IncorrectCertificate",
                f"the message comes from member {member} but is signed with the certificate of "
                f"member {signer_member}",
            )

    def _check_ocsp(
        self,
        ocsp_der: bytes,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        responders: tuple[x509.Certificate, ...],
        *,
        now: dt.datetime,
        max_age: dt.timedelta,
        prefix: str,
    ) -> None:
        key = hashlib.sha256(
            cert.public_bytes(serialization.Encoding.DER) + b"\x00" + ocsp_der
        ).digest()
        verdict = self._verdicts.get(key)
        try:
            if verdict is None:
                verdict = verify_response(
                    ocsp_der,
                    cert,
                    issuer,
                    trusted_responders=responders,
                    now=now,
                    max_age=max_age,
                )
                self._verdicts[key] = verdict
                while len(self._verdicts) > _MAX_VERDICTS:
                    self._verdicts.popitem(last=False)
            else:
                self._verdicts.move_to_end(key)
                _check_still_fresh(verdict, now=now, max_age=max_age)
        except OcspError as exc:
            raise _fault(
                prefix,
                "CertValidation",
                f"the stapled OCSP response for the signing certificate is not acceptable: "
                f"{exc.message}",
            ) from exc
        if verdict.status.state != "good":
            when = verdict.status.revoked_at
            detail = f" at {when.isoformat()}" if when is not None else ""
            raise _fault(
                prefix,
                "CertValidation",
                f"the signing certificate {cert.subject.rfc4514_string()} is "
                f"{verdict.status.state}{detail} according to its OCSP response",
            )

    def check_peer_node(
        self,
        peer_cert: x509.Certificate | None,
        conf: GlobalConf,
        *,
        now: dt.datetime,
        prefix: str,
    ) -> SecurityServer:
        """The node whose authentication certificate the TLS peer presented."""
        if peer_cert is None:
            raise _fault(
                prefix,
                "SslAuthenticationFailed",
                "the peer presented no TLS client certificate; nodes authenticate with their "
                "authentication certificate",
            )
        server = conf.server_by_auth_cert(peer_cert)
        if server is None:
            raise _fault(
                prefix,
                "SslAuthenticationFailed",
                f"the peer's TLS certificate {peer_cert.subject.rfc4514_string()} is not an "
                "authentication certificate the global configuration lists for any node",
            )
        if not peer_cert.not_valid_before_utc <= now <= peer_cert.not_valid_after_utc:
            raise _fault(
                prefix,
                "SslAuthenticationFailed",
                f"the authentication certificate of node {server.id} is not valid at "
                f"{now.isoformat()}",
            )
        return server

    @staticmethod
    def check_node_hosts(server: SecurityServer, client: ClientId, *, prefix: str) -> None:
        """Refuse a request whose client the sending node does not host (transport §2)."""
        if client in server.clients or client.member == server.id.owner:
            return
        raise _fault(
            prefix,
            "SslAuthenticationFailed",
            f"node {server.id} sent a request for client {client}, which the global "
            "configuration does not list on that node",
        )


def _check_still_fresh(verdict: OcspVerdict, *, now: dt.datetime, max_age: dt.timedelta) -> None:
    if verdict.this_update > now + DEFAULT_ALLOWED_SKEW:
        raise OcspError(
            f"the OCSP response's thisUpdate {verdict.this_update.isoformat()} is in the future"
        )
    if now - verdict.this_update > max_age:
        raise OcspError(
            f"the OCSP response is stale: thisUpdate {verdict.this_update.isoformat()} is older "
            f"than {int(max_age.total_seconds())} s; the signing node must fetch a fresh one"
        )
    if verdict.next_update is not None and verdict.next_update < now - DEFAULT_ALLOWED_SKEW:
        raise OcspError(f"the OCSP response expired at {verdict.next_update.isoformat()}")
