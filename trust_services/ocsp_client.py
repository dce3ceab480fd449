"""Fetching OCSP responses over HTTP and keeping a node's own responses fresh.

Rules:

- :func:`fetch_ocsp` only moves bytes: it POSTs a request and returns the response body, with a
  timeout and a size limit. Whether the response is acceptable is decided by
  :func:`certs.ocsp.verify_response`; :func:`fetch_verdict` does both.
- Every failure a caller can meet is an :class:`certs.ocsp.OcspError` naming the URL and what
  went wrong; aiohttp and socket errors do not leak out.
- :func:`ask_responders` is the one place that fails over between the responders a CA lists
  (as X-Road does): it asks them in the listed order, each at most once, and stops at the first
  answer that verifies, whatever the certificate status it gives (a ``revoked`` answer is an
  answer: asking on in the hope of ``good`` would let the least informed responder win). A
  responder that cannot be reached, times out, answers an HTTP error, bytes that are no OCSP
  response, a status other than ``successful`` (``tryLater``, ``internalError``...) or a
  response that fails verification (signature, signer, freshness, nonce, serial) counts as
  failed, is logged, and the next one is asked. When all fail, :class:`OcspRespondersFailed`
  names each responder and why. Every caller that asks a CA's responders goes through it: the
  node's own certificates (:class:`OcspRefresher`, ``security_server.own_ocsp``) and the other
  node's authentication certificate (``security_server.peer_trust``).
- A :class:`ResponderPreference` passed to :func:`ask_responders` remembers, per issuing CA
  certificate, the responder that last gave a verified answer and puts it first in the next
  fetch; the others follow in the listed order. A first responder that accepts connections
  but never answers then costs its timeout once, not on every fetch. A preferred URL that a
  new configuration no longer lists is forgotten, and the listed order applies again. A
  change of preferred responder is logged once (``ocsp_preferred_responder_changed``).
- :class:`OcspRefresher` keeps a verdict for each of a node's own certificates in an
  :class:`certs.ocsp.OcspCache`, fetching a new one when the cache says it is due (well before
  the old one stops being fresh). A fetch asks the certificate's responders in turn; only when
  all of them failed does it count as a failure, after which that certificate is retried with
  bounded exponential backoff (per certificate, not per responder: the next attempt asks the
  whole list again, the preferred responder first). It always sleeps between passes, so dead
  responders never cause a busy loop. Time comes from an injected clock; tests drive
  :meth:`OcspRefresher.refresh_due` directly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs.ocsp import (
    DEFAULT_MAX_AGE,
    OcspCache,
    OcspError,
    OcspVerdict,
    build_request,
    request_nonce,
    verify_response,
)
from trust_services.http_messages import post_query
from trust_services.ocsp_server import CONTENT_TYPE_REQUEST, CONTENT_TYPE_RESPONSE

__all__ = [
    "MAX_RESPONSE_BYTES",
    "OcspRefresher",
    "OcspRespondersFailed",
    "OwnCertificate",
    "ResponderAnswer",
    "ResponderPreference",
    "ask_responders",
    "fetch_ocsp",
    "fetch_verdict",
]

#: Largest OCSP response accepted; a one-certificate response with its signer is about 1 KiB.
MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_TIMEOUT = dt.timedelta(seconds=10)

Clock = Callable[[], dt.datetime]

_log = structlog.get_logger(__name__)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def fetch_ocsp(
    session: aiohttp.ClientSession,
    url: str,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    request_der: bytes | None = None,
    request_timeout: dt.timedelta = DEFAULT_TIMEOUT,
) -> bytes:
    """POST an OCSP request about ``cert`` to ``url`` and return the DER response body.

    ``request_der`` overrides the request (e.g. one carrying a nonce the caller keeps); by
    default a request without nonce is built, which responders may answer from their cache.
    """
    der = request_der if request_der is not None else build_request(cert, issuer, nonce=False)
    return await post_query(
        session,
        url,
        der,
        content_type=CONTENT_TYPE_REQUEST,
        answer_types=(CONTENT_TYPE_RESPONSE,),
        limit=MAX_RESPONSE_BYTES,
        request_timeout=request_timeout,
        service="OCSP responder",
        error=OcspError,
    )


async def fetch_verdict(
    session: aiohttp.ClientSession,
    url: str,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    trusted_responders: Sequence[x509.Certificate] | None = None,
    max_age: dt.timedelta = DEFAULT_MAX_AGE,
    nonce: bool = False,
    clock: Clock = _utc_now,
    request_timeout: dt.timedelta = DEFAULT_TIMEOUT,
) -> OcspVerdict:
    """Fetch and verify the status of ``cert``; with ``nonce`` the answer must echo one.

    Every error names ``url``: a response that fails the checks of
    :func:`certs.ocsp.verify_response` is reported as the answer of that responder.
    """
    request_der = build_request(cert, issuer, nonce=nonce)
    der = await fetch_ocsp(
        session, url, cert, issuer, request_der=request_der, request_timeout=request_timeout
    )
    try:
        return verify_response(
            der,
            cert,
            issuer,
            trusted_responders=trusted_responders,
            now=clock(),
            max_age=max_age,
            nonce=request_nonce(request_der) if nonce else None,
        )
    except OcspError as exc:
        raise OcspError(
            f"the answer of the OCSP responder at {url} is not acceptable: {exc.message}"
        ) from exc


class OcspRespondersFailed(OcspError):
    """No responder of the list gave an acceptable answer; ``failures`` says why, per URL."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = tuple(failures)
        if len(self.failures) == 1:
            # The one error already names its URL; wrapping it would only add words.
            message = self.failures[0][1]
        else:
            listed = " ".join(
                f"({n}) {error}" for n, (_url, error) in enumerate(self.failures, start=1)
            )
            message = f"none of the {len(self.failures)} OCSP responders asked answered: {listed}"
        super().__init__(message)


@dataclasses.dataclass(frozen=True, slots=True)
class ResponderAnswer:
    """The verified verdict of :func:`ask_responders` and the responder that gave it."""

    url: str
    verdict: OcspVerdict


#: Issuing CAs whose preferred responder a :class:`ResponderPreference` keeps by default; a
#: federation approves a handful, so the bound only matters against a runaway caller.
DEFAULT_PREFERENCE_ENTRIES = 256


class ResponderPreference:
    """Per issuing CA certificate, the responder URL that last gave a verified answer.

    Keyed by the issuer (its SHA-256 fingerprint), not by the list of URLs: a new
    configuration version that adds, removes or reorders *other* responders keeps the
    preference, and one that no longer lists the preferred URL falls back to the listed order.
    Several certificates of one CA (a node's authentication and signing certificates, or many
    nodes' authentication certificates) share what was learnt. At most ``max_entries`` CAs are
    kept; the one used least recently is dropped first. Only fetches use it, never the cached
    verdicts a request is answered from.
    """

    def __init__(self, max_entries: int = DEFAULT_PREFERENCE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self._max = max_entries
        self._preferred: collections.OrderedDict[bytes, str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._preferred)

    def preferred(self, issuer: x509.Certificate) -> str | None:
        """The URL remembered for ``issuer``'s certificates, if any."""
        return self._preferred.get(_key(issuer))

    def order(self, issuer: x509.Certificate, urls: Sequence[str]) -> tuple[str, ...]:
        """``urls`` with the preferred responder first and the rest in the listed order."""
        listed = tuple(urls)
        key = _key(issuer)
        preferred = self._preferred.get(key)
        if preferred is None or not listed:
            return listed
        if preferred not in listed:
            del self._preferred[key]
            _log.info(
                "ocsp_preferred_responder_changed",
                issuer=issuer.subject.rfc4514_string(),
                old_url=preferred,
                new_url=listed[0],
                reason="the global configuration no longer lists the preferred responder",
            )
            return listed
        self._preferred.move_to_end(key)
        if preferred == listed[0]:
            return listed
        return (preferred, *(url for url in listed if url != preferred))

    def answered(self, issuer: x509.Certificate, urls: Sequence[str], url: str) -> None:
        """Record that ``url``, one of ``urls``, gave a verified answer about a certificate
        ``issuer`` issued; it is asked first from now on."""
        key = _key(issuer)
        stored = self._preferred.get(key)
        current = stored if stored is not None and stored in urls else (urls[0] if urls else None)
        if url == current:
            if stored is not None:
                self._preferred.move_to_end(key)
            return
        _log.info(
            "ocsp_preferred_responder_changed",
            issuer=issuer.subject.rfc4514_string(),
            old_url=current,
            new_url=url,
            reason="the old one failed and the new one answered",
        )
        self._preferred[key] = url
        self._preferred.move_to_end(key)
        while len(self._preferred) > self._max:
            self._preferred.popitem(last=False)


async def ask_responders(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    trusted_responders: Sequence[x509.Certificate] | None = None,
    max_age: dt.timedelta = DEFAULT_MAX_AGE,
    nonce: bool = False,
    clock: Clock = _utc_now,
    request_timeout: dt.timedelta = DEFAULT_TIMEOUT,
    preference: ResponderPreference | None = None,
) -> ResponderAnswer:
    """The first verified answer about ``cert`` from ``urls``, asked in order.

    With ``preference``, the responder that last answered about a certificate of ``issuer`` is
    asked first and the others follow in the listed order; the one that answers becomes the
    preferred one. Each responder gets its own request (its own nonce) and
    ``request_timeout``, so a list of *n* dead responders that do not refuse connections can
    take *n* times the timeout. A verified ``revoked`` or ``unknown`` verdict is returned like a
    ``good`` one; only failures move on to the next URL. Raises :class:`OcspRespondersFailed`
    when every one failed; its failures are in the order the responders were asked.
    """
    if not urls:
        raise OcspError(
            "no OCSP responder is listed for the certificate's CA; ask the registry operator "
            "to add one"
        )
    listed = urls
    if preference is not None:
        urls = preference.order(issuer, listed)
    failures: list[tuple[str, str]] = []
    for index, url in enumerate(urls):
        try:
            verdict = await fetch_verdict(
                session,
                url,
                cert,
                issuer,
                trusted_responders=trusted_responders,
                max_age=max_age,
                nonce=nonce,
                clock=clock,
                request_timeout=request_timeout,
            )
        except OcspError as exc:
            failures.append((url, exc.message))
            if index + 1 < len(urls):
                _log.warning(
                    "ocsp_responder_failed",
                    serial=f"{cert.serial_number:x}",
                    url=url,
                    error=exc.message,
                    next_url=urls[index + 1],
                )
            continue
        if preference is not None:
            preference.answered(issuer, listed, url)
        return ResponderAnswer(url, verdict)
    raise OcspRespondersFailed(failures)


@dataclasses.dataclass(frozen=True, slots=True)
class OwnCertificate:
    """One of a node's certificates whose OCSP response it keeps ready to staple."""

    cert: x509.Certificate
    issuer: x509.Certificate
    #: The issuing CA's OCSP responder URLs, in the order the global configuration lists them;
    #: :func:`ask_responders` asks them in turn.
    urls: tuple[str, ...]
    trusted_responders: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.urls, str) or not self.urls:
            raise ValueError("OwnCertificate.urls must be a non-empty tuple of responder URLs")


@dataclasses.dataclass(slots=True)
class _Attempts:
    failures: int = 0
    retry_at: dt.datetime | None = None
    last_error: str | None = None


class OcspRefresher:
    """Keeps fresh OCSP verdicts for a set of own certificates in ``cache``.

    Use as ``async with refresher:`` to run it in the background, or call
    :meth:`refresh_due` yourself (tests, or a node's own scheduler).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        certificates: Sequence[OwnCertificate],
        cache: OcspCache,
        *,
        max_age: dt.timedelta = DEFAULT_MAX_AGE,
        clock: Clock = _utc_now,
        min_backoff: dt.timedelta = dt.timedelta(seconds=5),
        max_backoff: dt.timedelta = dt.timedelta(minutes=5),
        min_sleep: dt.timedelta = dt.timedelta(seconds=1),
        max_sleep: dt.timedelta = dt.timedelta(minutes=5),
        request_timeout: dt.timedelta = DEFAULT_TIMEOUT,
        preference: ResponderPreference | None = None,
    ) -> None:
        if min_backoff <= dt.timedelta(0) or min_sleep <= dt.timedelta(0):
            raise ValueError("backoff and sleep must be positive, or the refresher would spin")
        self._session = session
        self._certificates = tuple(certificates)
        self._cache = cache
        self._max_age = max_age
        self._clock = clock
        self._min_backoff = min_backoff
        self._max_backoff = max(max_backoff, min_backoff)
        self._min_sleep = min_sleep
        self._max_sleep = max(max_sleep, min_sleep)
        self._timeout = request_timeout
        self._preference = preference if preference is not None else ResponderPreference()
        self._attempts: dict[bytes, _Attempts] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def certificates(self) -> tuple[OwnCertificate, ...]:
        return self._certificates

    @property
    def preference(self) -> ResponderPreference:
        """Which responder each issuing CA's certificates are asked about first."""
        return self._preference

    def replace_certificates(self, certificates: Sequence[OwnCertificate]) -> None:
        """Track a new set of certificates (e.g. after a key rotation) from the next pass."""
        self._certificates = tuple(certificates)
        keep = {_key(own.cert) for own in self._certificates}
        self._attempts = {k: v for k, v in self._attempts.items() if k in keep}
        self._wake.set()

    def failures(self, cert: x509.Certificate) -> int:
        """Consecutive failed refreshes of ``cert`` (0 after a success)."""
        attempts = self._attempts.get(_key(cert))
        return attempts.failures if attempts else 0

    def retry_at(self, cert: x509.Certificate) -> dt.datetime | None:
        """When a failed refresh of ``cert`` will be tried again; None when none failed."""
        attempts = self._attempts.get(_key(cert))
        return attempts.retry_at if attempts else None

    async def refresh_due(self) -> list[OwnCertificate]:
        """Refresh every certificate that is due and not waiting out a backoff.

        Returns the certificates refreshed successfully; failures are recorded, logged and
        retried later, never raised.
        """
        refreshed: list[OwnCertificate] = []
        for own in self._certificates:
            now = self._clock()
            attempts = self._attempts.setdefault(_key(own.cert), _Attempts())
            if not self._cache.needs_refresh(own.cert, now):
                continue
            if attempts.retry_at is not None and now < attempts.retry_at:
                continue
            try:
                answer = await ask_responders(
                    self._session,
                    own.urls,
                    own.cert,
                    own.issuer,
                    trusted_responders=own.trusted_responders,
                    max_age=self._max_age,
                    clock=self._clock,
                    request_timeout=self._timeout,
                    preference=self._preference,
                )
            except OcspError as exc:
                attempts.failures += 1
                backoff = min(self._max_backoff, self._min_backoff * 2 ** (attempts.failures - 1))
                attempts.retry_at = self._clock() + backoff
                attempts.last_error = exc.message
                _log.warning(
                    "ocsp_refresh_failed",
                    serial=f"{own.cert.serial_number:x}",
                    urls=list(own.urls),
                    failures=attempts.failures,
                    retry_in_s=backoff.total_seconds(),
                    error=exc.message,
                )
                continue
            verdict = answer.verdict
            self._cache.put(own.cert, verdict)
            self._attempts[_key(own.cert)] = _Attempts()
            refreshed.append(own)
            if verdict.status.state != "good":
                _log.warning(
                    "ocsp_own_certificate_not_good",
                    serial=f"{own.cert.serial_number:x}",
                    url=answer.url,
                    state=verdict.status.state,
                )
        return refreshed

    def next_wakeup(self) -> dt.datetime:
        """When the next pass should run: the earliest due refresh or retry, within bounds."""
        now = self._clock()
        earliest = now + self._max_sleep
        for own in self._certificates:
            due = self._cache.refresh_at(own.cert) or now
            attempts = self._attempts.get(_key(own.cert))
            if attempts and attempts.retry_at is not None:
                due = max(due, attempts.retry_at)
            earliest = min(earliest, due)
        return max(earliest, now + self._min_sleep)

    async def run(self) -> None:
        """Refresh forever; returns only when cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.refresh_due()
            except Exception:  # a defect must not silently end the node's OCSP refreshing
                _log.exception("ocsp_refresher_pass_failed")
            delay = (self.next_wakeup() - self._clock()).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.0))

    async def __aenter__(self) -> OcspRefresher:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="ocsp-refresher")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _key(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())
