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
- The other node's authentication certificate (the consumer's TLS client certificate on the
  provider's node, the provider's TLS server certificate on the consumer's node) must have a
  good OCSP status no older than ``ocsp_freshness_s``, asked of the responders the global
  configuration lists for the CA that issued it, in the listed order until one gives a
  verified answer, the responder that last answered for that CA first (:class:`PeerAuthStatus`,
  :func:`trust_services.ocsp_client.ask_responders`; the node's one preference, which the
  refresher of its own OCSP responses shares). TLS carries no OCSP evidence, so each
  node asks itself: at most one fetch per certificate and freshness period (refreshed in the
  background once two thirds of it are used up), one fetch shared by concurrent first
  requests, and after a failed fetch (every listed responder failed) none before a backoff has
  passed. Revoked, unknown, or not establishable while no fresh verdict is cached: the
  exchange is refused with ``CertValidation``.
- Every refusal is a :class:`~gateway.faults.FaultError` under the prefix the caller gives:
  ``Server.ServerProxy`` when checking a request, ``Server.ClientProxy`` when checking a response.
- Nothing is rebuilt per message that can be kept: the path validator is built once per
  configuration version, and OCSP verdicts are remembered per (certificate, response bytes) and
  only re-checked for freshness.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.errors import CertValidityError, PathValidationError, WrongProfileError
from certs.ocsp import DEFAULT_ALLOWED_SKEW, OcspCache, OcspError, OcspVerdict, verify_response
from certs.profiles import member_id_of
from certs.validation import PathValidator
from config.errors import PkiError
from gateway.faults import FaultError
from gateway.globalconf import GlobalConf, SecurityServer
from gateway.identifiers import ClientId, MemberId, SecurityServerId
from gateway.transport import VerifiedMessage
from security_server.own_ocsp import own_certificate
from trust_services.ocsp_client import OwnCertificate, ResponderPreference, ask_responders

log = structlog.get_logger("jisr.peer_trust")

#: OCSP verdicts kept; one per signing certificate in use across the federation is enough.
_MAX_VERDICTS = 4096
#: Peer authentication certificates whose OCSP state is kept; one per node is enough.
_MAX_PEER_CERTS = 4096


def _fault(prefix: str, name: str, message: str) -> FaultError:
    return FaultError(f"{prefix}.{name}", message)


#: DER and SHA-256 of certificates met lately, by object identity (the object is kept in the
#: entry, so its id cannot be reused while the entry lives). The same certificate objects come
#: back on every message (from the configuration, the signature cache, the TLS peer cache), and
#: encoding them again each time was a visible share of a node's CPU.
_ENCODED: dict[int, tuple[x509.Certificate, bytes, bytes]] = {}
_ENCODED_MAX = 1024


def _encoded(cert: x509.Certificate) -> tuple[x509.Certificate, bytes, bytes]:
    entry = _ENCODED.get(id(cert))
    if entry is None or entry[0] is not cert:
        der = cert.public_bytes(serialization.Encoding.DER)
        entry = (cert, der, hashlib.sha256(der).digest())
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.pop(next(iter(_ENCODED)), None)
        _ENCODED[id(cert)] = entry
    return entry


def certificate_der(cert: x509.Certificate) -> bytes:
    """The certificate's DER encoding."""
    return _encoded(cert)[1]


def certificates_der(certs: tuple[x509.Certificate, ...]) -> tuple[bytes, ...]:
    """The DER encodings of ``certs``, as the message log keeps them."""
    return tuple(_encoded(c)[1] for c in certs)


#: Certificates presented by TLS peers, by their DER: one object per certificate, so that
#: everything keyed on it downstream is computed once per peer rather than once per request.
_PEER_CERTS: dict[bytes, x509.Certificate] = {}
_PEER_CERTS_MAX = 1024


def load_peer_certificate(der: bytes) -> x509.Certificate:
    """The certificate object for a TLS peer's DER certificate."""
    cert = _PEER_CERTS.get(der)
    if cert is None:
        cert = x509.load_der_x509_certificate(der)
        if len(_PEER_CERTS) >= _PEER_CERTS_MAX:
            _PEER_CERTS.pop(next(iter(_PEER_CERTS)), None)
        _PEER_CERTS[der] = cert
    return cert


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
        key = hashlib.sha256(_encoded(cert)[2] + ocsp_der).digest()
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


# ---- OCSP status of the other node's authentication certificate ---------------------------


@dataclasses.dataclass(slots=True)
class _Attempts:
    failures: int = 0
    retry_at: dt.datetime | None = None
    last_error: str = ""


def _cert_key(cert: x509.Certificate) -> bytes:
    return _encoded(cert)[2]


class PeerAuthStatus:
    """OCSP verdicts about other nodes' authentication certificates, asked of their CA.

    One per node process, shared by its client and its server side (the transport client owns
    it), so a certificate is asked about once whichever side meets it. Verdicts live in a
    :class:`certs.ocsp.OcspCache` whose freshness is the configuration's ``ocsp_freshness_s``.

    A fetch asks the CA's listed responders and ends at the first verified answer, whatever
    its status. The responder that last answered for the same issuing CA is asked first, the
    others follow in the listed order (``preference``, a
    :class:`trust_services.ocsp_client.ResponderPreference`; the one that answers becomes the
    preferred one), so a first responder that never answers costs its timeout once rather than
    on every fetch. A node passes its one preference (``NodeRuntime.ocsp_preference``), which
    the refresher of its own certificates' responses (``security_server.own_ocsp.OwnOcsp``)
    uses too: a responder either path found dead is not asked first by the other. Without
    one, this object keeps its own. The backoff counts fetches, not responders: it starts only
    when every responder failed, and the next fetch asks the whole list again, preferred
    responder first.
    ``request_timeout`` applies to each responder, so a fetch may wait that long once per
    responder that does not answer. Requests answered from a settled verdict do not look at
    the preference at all.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], dt.datetime],
        session: aiohttp.ClientSession | None = None,
        min_backoff: dt.timedelta = dt.timedelta(seconds=5),
        max_backoff: dt.timedelta = dt.timedelta(minutes=2),
        request_timeout: dt.timedelta = dt.timedelta(seconds=10),
        preference: ResponderPreference | None = None,
    ) -> None:
        if min_backoff <= dt.timedelta(0):
            raise ValueError(
                "the backoff must be positive, or a dead responder would be asked per message"
            )
        self._clock = clock
        self._session = session
        self._owns_session = session is None
        self._min_backoff = min_backoff
        self._max_backoff = max(max_backoff, min_backoff)
        self._timeout = request_timeout
        #: Which responder each issuing CA's certificates are asked about first.
        self.preference = preference if preference is not None else ResponderPreference()
        self._cache = OcspCache()
        #: Per certificate: its verdict while fresh and not yet due for refresh, with when
        #: that ends, so a request is answered with one lookup and two comparisons.
        self._settled: dict[bytes, tuple[OcspVerdict, dt.datetime, dt.datetime]] = {}
        self._freshness: int | None = None
        self._known: collections.OrderedDict[bytes, x509.Certificate] = collections.OrderedDict()
        self._attempts: dict[bytes, _Attempts] = {}
        self._fetching: dict[bytes, asyncio.Task[OcspVerdict]] = {}
        #: How many times a responder was asked; operators see it in logs, tests count it.
        self.fetches = 0

    # ---- checks

    async def require_good(
        self,
        cert: x509.Certificate,
        conf: GlobalConf,
        *,
        node: SecurityServerId,
        prefix: str,
    ) -> OcspVerdict:
        """The good, fresh verdict about node ``node``'s authentication certificate ``cert``.

        Raises ``{prefix}.CertValidation`` when the certificate is revoked or unknown to its
        CA's responder, or when no fresh verdict is cached and none can be fetched now;
        ``{prefix}.SslAuthenticationFailed`` when no approved CA issued it.
        """
        verdict = await self._verdict(cert, conf, node=node, prefix=prefix)
        if verdict.status.state == "good":
            return verdict
        when = verdict.status.revoked_at
        since = f" since {when.isoformat()}" if when is not None else ""
        raise _fault(
            prefix,
            "CertValidation",
            f"the authentication certificate of node {node} ({cert.subject.rfc4514_string()}) "
            f"is {verdict.status.state}{since} according to its CA's OCSP responder; that node "
            "is not trusted until a new authentication certificate is registered for it",
        )

    async def good_certificates(
        self, server: SecurityServer, conf: GlobalConf, *, prefix: str
    ) -> tuple[tuple[x509.Certificate, ...], tuple[FaultError, ...]]:
        """Which of ``server``'s listed authentication certificates may be trusted now.

        Returns the certificates with a good, fresh verdict, and the refusal of each other
        one (a node being re-keyed lists two; only the good one may be pinned).
        """
        if len(server.auth_certs) == 1:
            # The usual case, on every request: no tasks to gather.
            (only,) = server.auth_certs
            try:
                await self.require_good(only, conf, node=server.id, prefix=prefix)
            except FaultError as refusal:
                return (), (refusal,)
            return (only,), ()
        results = await asyncio.gather(
            *(
                self.require_good(cert, conf, node=server.id, prefix=prefix)
                for cert in server.auth_certs
            ),
            return_exceptions=True,
        )
        good: list[x509.Certificate] = []
        refused: list[FaultError] = []
        for cert, result in zip(server.auth_certs, results, strict=True):
            if isinstance(result, FaultError):
                refused.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                good.append(cert)
        return tuple(good), tuple(refused)

    # ---- the cache and fetching

    def _cache_for(self, conf: GlobalConf) -> OcspCache:
        freshness = conf.settings.ocsp_freshness_s
        if freshness != self._freshness:
            # A new freshness limit changes which verdicts count as fresh: start over.
            self._cache = OcspCache(dt.timedelta(seconds=freshness))
            self._settled.clear()
            self._freshness = freshness
        return self._cache

    def _source(
        self, cert: x509.Certificate, conf: GlobalConf, *, node: SecurityServerId, prefix: str
    ) -> OwnCertificate:
        if conf.approved_ca_for(cert) is None:
            raise _fault(
                prefix,
                "SslAuthenticationFailed",
                f"the authentication certificate of node {node} "
                f"({cert.subject.rfc4514_string()}) was not issued by a CA the global "
                "configuration approves",
            )
        try:
            return own_certificate(conf, cert)
        except OcspError as exc:
            raise _fault(prefix, "CertValidation", exc.message) from exc

    async def _verdict(
        self, cert: x509.Certificate, conf: GlobalConf, *, node: SecurityServerId, prefix: str
    ) -> OcspVerdict:
        now = self._clock()
        cache = self._cache_for(conf)
        key = _cert_key(cert)
        settled = self._settled.get(key)
        if settled is not None and settled[1] <= now < settled[2]:
            return settled[0]
        verdict = cache.get(cert, now)
        if verdict is not None:
            if cache.needs_refresh(cert, now) and self._may_fetch(key, now):
                try:
                    self._start_fetch(key, self._source(cert, conf, node=node, prefix=prefix))
                except FaultError as exc:
                    log.warning("peer OCSP refresh impossible", node=str(node), error=exc.message)
            return verdict
        task = self._fetching.get(key)
        if task is None:
            attempts = self._attempts.get(key)
            if attempts is not None and attempts.retry_at is not None and now < attempts.retry_at:
                raise self._unavailable(cert, node, attempts, prefix)
            task = self._start_fetch(key, self._source(cert, conf, node=node, prefix=prefix))
        try:
            # Shielded: a caller that gives up must not cancel the fetch others wait for.
            return await asyncio.shield(task)
        except OcspError as exc:
            attempts = self._attempts.get(key) or _Attempts(last_error=exc.message)
            raise self._unavailable(cert, node, attempts, prefix) from exc

    def _may_fetch(self, key: bytes, now: dt.datetime) -> bool:
        if key in self._fetching:
            return False
        attempts = self._attempts.get(key)
        return attempts is None or attempts.retry_at is None or now >= attempts.retry_at

    def _start_fetch(self, key: bytes, source: OwnCertificate) -> asyncio.Task[OcspVerdict]:
        task = asyncio.get_running_loop().create_task(
            self._fetch(key, source), name="peer-auth-ocsp"
        )
        self._fetching[key] = task
        task.add_done_callback(_retrieve)
        return task

    async def _fetch(self, key: bytes, source: OwnCertificate) -> OcspVerdict:
        assert self._freshness is not None
        max_age = dt.timedelta(seconds=self._freshness)
        self.fetches += 1
        try:
            answer = await ask_responders(
                self._http(),
                source.urls,
                source.cert,
                source.issuer,
                trusted_responders=source.trusted_responders,
                max_age=max_age,
                clock=self._clock,
                request_timeout=self._timeout,
                preference=self.preference,
            )
        except Exception as exc:
            message = exc.message if isinstance(exc, OcspError) else "internal error"
            if not isinstance(exc, OcspError):
                log.exception("peer OCSP fetch failed", urls=list(source.urls))
            self._failed(key, message, source)
            raise OcspError(message) from exc
        finally:
            self._fetching.pop(key, None)
        verdict = answer.verdict
        self._attempts.pop(key, None)
        self._cache.put(source.cert, verdict)
        self._settle(key, source.cert)
        self._known[key] = source.cert
        self._known.move_to_end(key)
        while len(self._known) > _MAX_PEER_CERTS:
            old_key, old = self._known.popitem(last=False)
            self._cache.forget(old)
            self._settled.pop(old_key, None)
        if verdict.status.state != "good":
            log.warning(
                "peer authentication certificate not good",
                subject=source.cert.subject.rfc4514_string(),
                serial=f"{source.cert.serial_number:x}",
                url=answer.url,
                state=verdict.status.state,
            )
        return verdict

    def _settle(self, key: bytes, cert: x509.Certificate) -> None:
        """Remember the verdict the cache now holds for ``cert`` until it is due for refresh
        (or stops being fresh, whichever comes first)."""
        held = self._cache.get(cert, self._clock())
        due = self._cache.refresh_at(cert)
        if held is None or due is None:
            self._settled.pop(key, None)
            return
        until = min(due, self._cache.expires_at(held))
        self._settled[key] = (held, held.this_update - DEFAULT_ALLOWED_SKEW, until)

    def _failed(self, key: bytes, message: str, source: OwnCertificate) -> None:
        if len(self._attempts) >= _MAX_PEER_CERTS:
            self._attempts.clear()
        attempts = self._attempts.setdefault(key, _Attempts())
        attempts.failures += 1
        backoff = min(self._max_backoff, self._min_backoff * 2 ** min(attempts.failures - 1, 16))
        attempts.retry_at = self._clock() + backoff
        attempts.last_error = message
        log.warning(
            "peer OCSP fetch failed",
            subject=source.cert.subject.rfc4514_string(),
            urls=list(source.urls),
            failures=attempts.failures,
            retry_in_s=backoff.total_seconds(),
            error=message,
        )

    def _unavailable(
        self, cert: x509.Certificate, node: SecurityServerId, attempts: _Attempts, prefix: str
    ) -> FaultError:
        retry = (
            f"; it is asked again from {attempts.retry_at.isoformat()}"
            if attempts.retry_at is not None
            else ""
        )
        return _fault(
            prefix,
            "CertValidation",
            f"the OCSP status of node {node}'s authentication certificate "
            f"({cert.subject.rfc4514_string()}) cannot be established and no fresh answer is "
            f"held: {attempts.last_error or 'no responder answered'}{retry}; check that the "
            "CA's OCSP responders listed in the global configuration are reachable",
        )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        """Stop fetches under way and close the HTTP session this object opened."""
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._fetching.clear()
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _retrieve(task: asyncio.Task[OcspVerdict]) -> None:
    # A background refresh that nobody awaits must not be reported as an unretrieved error;
    # its failure was already logged and recorded for the backoff.
    if not task.cancelled():
        task.exception()
