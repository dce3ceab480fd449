"""OCSP responses for the node's own certificates, fetched ahead of time and stapled.

Rules:

- The node keeps a fresh, *verified* OCSP response for its authentication certificate and for
  every signing certificate it holds, so that no message waits for a responder.
- Which responders to ask comes from the global configuration: the approved CA that issued the
  certificate (directly or through one of its listed intermediates) and that CA's OCSP
  responders, asked in the listed order until one gives a verified answer
  (:func:`trust_services.ocsp_client.ask_responders`), except that the responder that last
  answered for the same issuing CA is asked first
  (:class:`trust_services.ocsp_client.ResponderPreference`, kept when the refresher is rebuilt
  for a new configuration). A node passes its one preference
  (``NodeRuntime.ocsp_preference``), which its checks of the other nodes' authentication
  certificates (``security_server.peer_trust.PeerAuthStatus``) share: what either path learns
  about a CA's responders, the other uses. The responders' certificates listed there are
  trusted as delegated signers.
- Responses are verified (:func:`certs.ocsp.verify_response`) before they are kept, persisted
  in ``DIR/ocsp/<sha256 of the certificate>.der`` (atomically) and reloaded at start, so a
  restart does not need the responder. Refreshing happens once two thirds of the freshness
  period (the configuration's ``ocsp_freshness_s``) is used up; a refresh for which every
  listed responder failed backs off, per certificate
  (:class:`trust_services.ocsp_client.OcspRefresher`).
- :meth:`OwnOcsp.response_for` answers from memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from certs.ocsp import OcspCache, OcspError, OcspVerdict, verify_response
from config.files import write_atomically
from gateway.globalconf import GlobalConf
from trust_services.ocsp_client import (
    OcspRefresher,
    OwnCertificate,
    ResponderPreference,
    ask_responders,
)

log = structlog.get_logger(__name__)

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def own_certificate(conf: GlobalConf, cert: x509.Certificate) -> OwnCertificate:
    """Where to ask about ``cert``: its issuer and responders from the approved CA list."""
    ca = conf.approved_ca_for(cert)
    if ca is None:
        raise OcspError(
            f"certificate {cert.subject.rfc4514_string()} was not issued by an approved CA of "
            "the global configuration; import a certificate from an approved CA"
        )
    issuer = next(
        (c for c in (ca.certificate, *ca.intermediates) if _issued_by(cert, c)), ca.certificate
    )
    if not ca.ocsp:
        raise OcspError(
            f"the approved CA {ca.name!r} lists no OCSP responder in the global configuration; "
            "ask the registry operator to add one"
        )
    return OwnCertificate(
        cert=cert,
        issuer=issuer,
        urls=tuple(o.url for o in ca.ocsp),
        trusted_responders=tuple(o.certificate for o in ca.ocsp),
    )


async def fetch_own_ocsp(
    session: aiohttp.ClientSession,
    conf: GlobalConf,
    cert: x509.Certificate,
    *,
    now: dt.datetime,
    preference: ResponderPreference | None = None,
) -> OcspVerdict:
    """A fresh, verified, *good* OCSP verdict for ``cert`` from its CA's listed responders.

    With ``preference`` (inside a node process, the node's ``NodeRuntime.ocsp_preference``),
    the responder that last answered for the same CA is asked first and the one that answers
    is remembered; without it, the listed order applies and nothing is remembered.
    """
    own = own_certificate(conf, cert)
    answer = await ask_responders(
        session,
        own.urls,
        own.cert,
        own.issuer,
        trusted_responders=own.trusted_responders,
        max_age=dt.timedelta(seconds=conf.settings.ocsp_freshness_s),
        clock=lambda: now,
        preference=preference,
    )
    verdict = answer.verdict
    if verdict.status.state != "good":
        raise OcspError(
            f"the OCSP responder at {answer.url} reports certificate "
            f"{cert.subject.rfc4514_string()} as {verdict.status.state}; it cannot be used"
        )
    return verdict


def _file_name(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex() + ".der"


class OwnOcsp:
    """Keeps and persists OCSP responses for the node's own certificates.

    ``preference`` is the node's one :class:`ResponderPreference`, shared with its
    :class:`security_server.peer_trust.PeerAuthStatus`; without it, this object keeps one of
    its own (tests, tools).
    """

    def __init__(
        self,
        directory: Path,
        session: aiohttp.ClientSession,
        certificates: Sequence[x509.Certificate],
        *,
        conf: Callable[[], GlobalConf | None],
        clock: Clock = _utc_now,
        min_backoff: dt.timedelta = dt.timedelta(seconds=5),
        preference: ResponderPreference | None = None,
    ) -> None:
        self.directory = directory
        self._session = session
        self._certificates = tuple(certificates)
        self._conf = conf
        self._clock = clock
        self._min_backoff = min_backoff
        self._cache = OcspCache()
        #: Outlives the refresher, which is rebuilt when the freshness setting changes; in a
        #: node, the one the peer checks use too.
        self.preference = preference if preference is not None else ResponderPreference()
        self._refresher: OcspRefresher | None = None
        self._freshness: int | None = None
        self._tracked: tuple[OwnCertificate, ...] = ()
        self._task: asyncio.Task[None] | None = None

    def response_for(self, cert: x509.Certificate) -> bytes | None:
        verdict = self._cache.get(cert, self._clock())
        if verdict is None or verdict.status.state != "good":
            return None
        return verdict.response_der

    def verdict_for(self, cert: x509.Certificate) -> OcspVerdict | None:
        return self._cache.get(cert, self._clock())

    def _owns(self, conf: GlobalConf) -> list[OwnCertificate]:
        owns = []
        for cert in self._certificates:
            try:
                owns.append(own_certificate(conf, cert))
            except OcspError as exc:
                log.warning("own certificate has no OCSP source", error=exc.message)
        return owns

    def _sync(self) -> OcspRefresher | None:
        """(Re)build the refresher when the configuration changed what it needs."""
        conf = self._conf()
        if conf is None:
            return None
        freshness = conf.settings.ocsp_freshness_s
        owns = tuple(self._owns(conf))
        if self._refresher is None or freshness != self._freshness:
            max_age = dt.timedelta(seconds=freshness)
            old = self._cache
            self._cache = OcspCache(max_age)
            for own in owns:
                held = old.get(own.cert, self._clock())
                if held is not None:
                    self._cache.put(own.cert, held)
            self._refresher = OcspRefresher(
                self._session,
                owns,
                self._cache,
                max_age=max_age,
                clock=self._clock,
                min_backoff=self._min_backoff,
                preference=self.preference,
            )
            self._freshness = freshness
            self._tracked = owns
            self._load_disk(owns, max_age)
        elif owns != self._tracked:
            self._refresher.replace_certificates(owns)
            self._tracked = owns
        return self._refresher

    def _load_disk(self, owns: Sequence[OwnCertificate], max_age: dt.timedelta) -> None:
        for own in owns:
            path = self.directory / _file_name(own.cert)
            if not path.is_file():
                continue
            try:
                verdict = verify_response(
                    path.read_bytes(),
                    own.cert,
                    own.issuer,
                    trusted_responders=own.trusted_responders,
                    now=self._clock(),
                    max_age=max_age,
                )
            except (OSError, OcspError) as exc:
                log.info("stored OCSP response not usable", file=path.name, reason=str(exc))
                continue
            self._cache.put(own.cert, verdict)

    async def refresh_due(self) -> list[x509.Certificate]:
        """Fetch what is due now; persist what was fetched. Returns the refreshed certs."""
        refresher = self._sync()
        if refresher is None:
            return []
        refreshed = await refresher.refresh_due()
        for own in refreshed:
            verdict = self._cache.get(own.cert, self._clock())
            if verdict is not None:
                write_atomically(self.directory / _file_name(own.cert), verdict.response_der)
        return [own.cert for own in refreshed]

    def replace_certificates(self, certificates: Sequence[x509.Certificate]) -> None:
        self._certificates = tuple(certificates)

    async def run(self, *, idle_s: float = 5.0) -> None:
        """Refresh forever; returns only when cancelled."""
        while True:
            delay = idle_s
            try:
                await self.refresh_due()
                if self._refresher is not None:
                    delay = (self._refresher.next_wakeup() - self._clock()).total_seconds()
            except Exception:  # a defect must not silently end OCSP refreshing
                log.exception("own OCSP refresh pass failed")
            await asyncio.sleep(max(0.5, min(delay, 300.0)))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="own-ocsp")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
