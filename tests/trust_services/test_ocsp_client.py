from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import aiohttp
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from certs.ocsp import OcspCache, OcspError, OcspResponder
from certs.status import CertStatus
from tests.clock import Clock
from tests.pki_factory import NOW, FixturePki, Issued
from tests.trust_services.responders import Mode, closed_url, listed_responder
from trust_services.http_server import serve_app
from trust_services.ocsp_client import (
    OcspRefresher,
    OcspRespondersFailed,
    OwnCertificate,
    ResponderPreference,
    ask_responders,
    fetch_ocsp,
    fetch_verdict,
)
from trust_services.ocsp_server import ocsp_app


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


@pytest.fixture(scope="module")
def member(pki: FixturePki) -> Issued:
    return pki.signing("IQ/GOV/NDC")


@pytest.fixture(scope="module")
def revoked(pki: FixturePki) -> Issued:
    return pki.signing("IQ/GOV/MOH")


@pytest.fixture
def responder(pki: FixturePki, revoked: Issued) -> OcspResponder:
    signer = pki.ocsp_responder()

    def lookup(serial: int) -> CertStatus:
        if serial == revoked.cert.serial_number:
            return CertStatus("revoked", revoked_at=NOW, reason="superseded")
        return CertStatus("good")

    return OcspResponder(pki.root.cert, (signer.cert, signer.key), lookup)


async def test_fetches_and_verifies_with_nonce(
    responder: OcspResponder,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    member: Issued,
    revoked: Issued,
) -> None:
    async with serve_app(ocsp_app(responder, clock=lambda: NOW)) as url:
        good = await fetch_verdict(
            session, url + "/", member.cert, pki.root.cert, nonce=True, clock=lambda: NOW
        )
        bad = await fetch_verdict(
            session, url + "/", revoked.cert, pki.root.cert, clock=lambda: NOW
        )
    assert good.status == CertStatus("good")
    assert bad.status == CertStatus("revoked", revoked_at=NOW, reason="superseded")


async def test_reports_unreachable_responder(
    session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    url = await closed_url()
    with pytest.raises(OcspError, match="cannot reach the OCSP responder"):
        await fetch_ocsp(session, url, member.cert, pki.root.cert)


async def test_reports_http_error_status(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    async with serve_app(ocsp_app(responder)) as url:
        with pytest.raises(OcspError, match="answered HTTP 405"):
            await fetch_ocsp(session, url + "/wrong-path", member.cert, pki.root.cert)


async def test_refresher_fetches_when_due_and_not_before(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    clock = Clock(NOW)
    cache = OcspCache(max_age=dt.timedelta(hours=1))
    async with serve_app(ocsp_app(responder, clock=clock)) as url:
        own = OwnCertificate(member.cert, pki.root.cert, (url + "/",))
        refresher = OcspRefresher(
            session, [own], cache, clock=clock, max_sleep=dt.timedelta(hours=1)
        )
        assert await refresher.refresh_due() == [own]
        first = cache.get(member.cert, clock())
        assert first is not None
        assert first.status.state == "good"

        clock.advance(minutes=10)
        assert await refresher.refresh_due() == []
        assert refresher.next_wakeup() == NOW + dt.timedelta(minutes=40)

        clock.advance(minutes=31)
        assert await refresher.refresh_due() == [own]
        second = cache.get(member.cert, clock())
        assert second is not None
        assert second.this_update == NOW + dt.timedelta(minutes=41)


async def test_refresher_backs_off_after_failures_and_recovers(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    clock = Clock(NOW)
    cache = OcspCache()
    dead = OwnCertificate(member.cert, pki.root.cert, (await closed_url(),))
    refresher = OcspRefresher(
        session,
        [dead],
        cache,
        clock=clock,
        min_backoff=dt.timedelta(seconds=5),
        max_backoff=dt.timedelta(seconds=15),
    )
    assert await refresher.refresh_due() == []
    assert refresher.failures(member.cert) == 1
    assert refresher.retry_at(member.cert) == NOW + dt.timedelta(seconds=5)
    assert refresher.next_wakeup() == NOW + dt.timedelta(seconds=5)

    await refresher.refresh_due()  # still backing off: no attempt
    assert refresher.failures(member.cert) == 1

    for expected_backoff in (10, 15, 15):
        clock.now = refresher.retry_at(member.cert) or clock.now
        await refresher.refresh_due()
        assert refresher.retry_at(member.cert) == clock.now + dt.timedelta(seconds=expected_backoff)

    async with serve_app(ocsp_app(responder, clock=clock)) as url:
        refresher.replace_certificates([dataclasses.replace(dead, urls=(url + "/",))])
        clock.now = refresher.retry_at(member.cert) or clock.now
        assert len(await refresher.refresh_due()) == 1
    assert refresher.failures(member.cert) == 0
    assert cache.get(member.cert, clock()) is not None


async def test_refresher_runs_in_background_until_stopped(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    cache = OcspCache()
    async with serve_app(ocsp_app(responder)) as url:
        own = OwnCertificate(member.cert, pki.root.cert, (url + "/",))
        async with OcspRefresher(session, [own], cache) as refresher:
            for _ in range(200):
                if cache.get(member.cert, dt.datetime.now(dt.UTC)) is not None:
                    break
                await asyncio.sleep(0.05)
            assert cache.get(member.cert, dt.datetime.now(dt.UTC)) is not None
        await refresher.stop()  # stopping twice is harmless


# ---- failover between the responders a CA lists ----------------------------------------------


class ForgedSigner:
    """Names the real responder certificate but signs with another key."""

    def __init__(self, certificate: x509.Certificate) -> None:
        self._certificate = certificate
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return ()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


async def test_asks_the_second_responder_when_the_first_refuses_connections(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    dead = await closed_url()
    async with listed_responder(responder, lambda: NOW) as second:
        answer = await ask_responders(
            session, (dead, second.url), member.cert, pki.root.cert, clock=lambda: NOW
        )
    assert answer.url == second.url
    assert answer.verdict.status.state == "good"
    assert second.requests == 1


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("http500", "answered HTTP 500"),
        ("garbage", "is not a DER OCSPResponse"),
        ("try_later", "refused the request: TRY_LATER"),
        ("internal_error", "refused the request: INTERNAL_ERROR"),
    ],
)
async def test_asks_the_second_responder_when_the_first_answers_no_usable_response(
    responder: OcspResponder,
    session: aiohttp.ClientSession,
    pki: FixturePki,
    member: Issued,
    mode: Mode,
    reason: str,
) -> None:
    async with (
        listed_responder(responder, lambda: NOW, mode) as first,
        listed_responder(responder, lambda: NOW) as second,
    ):
        answer = await ask_responders(
            session, (first.url, second.url), member.cert, pki.root.cert, clock=lambda: NOW
        )
        assert answer.url == second.url
        assert answer.verdict.status.state == "good"
        assert (first.requests, second.requests) == (1, 1)
        # the same first responder alone: its failure is the error, named by its URL
        with pytest.raises(OcspRespondersFailed) as failed:
            await ask_responders(session, (first.url,), member.cert, pki.root.cert)
    assert reason in failed.value.message
    assert first.url in failed.value.message


async def test_asks_the_second_responder_when_the_first_answer_does_not_verify(
    pki: FixturePki, session: aiohttp.ClientSession, member: Issued
) -> None:
    """A forged signature and a stale answer count as that responder failing."""
    signer = pki.ocsp_responder()
    good = OcspResponder(pki.root.cert, (signer.cert, signer.key), lambda _: CertStatus("good"))
    forged = OcspResponder(pki.root.cert, ForgedSigner(signer.cert), lambda _: CertStatus("good"))
    stale_clock = Clock(NOW - dt.timedelta(hours=2))
    async with (
        listed_responder(forged, lambda: NOW) as forging,
        listed_responder(good, stale_clock) as stale,
        listed_responder(good, lambda: NOW) as third,
    ):
        answer = await ask_responders(
            session,
            (forging.url, stale.url, third.url),
            member.cert,
            pki.root.cert,
            trusted_responders=(signer.cert,),
            clock=lambda: NOW,
        )
        assert answer.url == third.url
        assert (forging.requests, stale.requests, third.requests) == (1, 1, 1)
        with pytest.raises(OcspRespondersFailed) as failed:
            await ask_responders(
                session, (forging.url, stale.url), member.cert, pki.root.cert, clock=lambda: NOW
            )
    assert [url for url, _ in failed.value.failures] == [forging.url, stale.url]
    assert "signature does not verify" in failed.value.failures[0][1]
    assert "stale" in failed.value.failures[1][1]


async def test_a_revoked_answer_ends_the_search(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, revoked: Issued
) -> None:
    async with (
        listed_responder(responder, lambda: NOW) as first,
        listed_responder(responder, lambda: NOW) as second,
    ):
        answer = await ask_responders(
            session, (first.url, second.url), revoked.cert, pki.root.cert, clock=lambda: NOW
        )
    assert answer.url == first.url
    assert answer.verdict.status.state == "revoked"
    assert (first.requests, second.requests) == (1, 0)


async def test_names_every_responder_and_its_error_when_all_fail(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    dead = await closed_url()
    async with listed_responder(responder, lambda: NOW, "try_later") as busy:
        with pytest.raises(OcspRespondersFailed) as failed:
            await ask_responders(session, (dead, busy.url), member.cert, pki.root.cert)
    error = failed.value
    assert error.fault_code == "CertValidation"
    assert "none of the 2 OCSP responders asked answered" in error.message
    assert f"(1) cannot reach the OCSP responder at {dead}" in error.message
    assert f"(2) the answer of the OCSP responder at {busy.url} is not acceptable" in error.message
    assert "TRY_LATER" in error.message
    assert "\n" not in error.message
    assert [url for url, _ in error.failures] == [dead, busy.url]


async def test_refresher_fails_over_and_backs_off_only_when_every_responder_failed(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    clock = Clock(NOW)
    cache = OcspCache()
    dead = await closed_url()
    async with listed_responder(responder, clock, "http500") as second:
        own = OwnCertificate(member.cert, pki.root.cert, (dead, second.url))
        refresher = OcspRefresher(session, [own], cache, clock=clock)
        assert await refresher.refresh_due() == []
        assert refresher.failures(member.cert) == 1
        assert second.requests == 1

        second.mode = "answer"
        clock.now = refresher.retry_at(member.cert) or clock.now
        assert await refresher.refresh_due() == [own]
        assert refresher.failures(member.cert) == 0
        assert second.requests == 2
    verdict = cache.get(member.cert, clock())
    assert verdict is not None
    assert verdict.status.state == "good"


def test_own_certificate_needs_a_tuple_of_urls(pki: FixturePki, member: Issued) -> None:
    with pytest.raises(ValueError, match="non-empty tuple"):
        OwnCertificate(member.cert, pki.root.cert, "http://127.0.0.1:1/")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty tuple"):
        OwnCertificate(member.cert, pki.root.cert, ())


# ---- the responder that answered last is asked first -----------------------------------------


def _changes(logs: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [
        (e["old_url"], e["new_url"])
        for e in logs
        if e["event"] == "ocsp_preferred_responder_changed" and e["log_level"] == "info"
    ]


async def test_the_responder_that_answered_is_asked_first_next_time(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    preference = ResponderPreference()
    async with (
        listed_responder(responder, lambda: NOW, "http500") as first,
        listed_responder(responder, lambda: NOW) as second,
    ):
        urls = (first.url, second.url)

        async def ask() -> str:
            answer = await ask_responders(
                session, urls, member.cert, pki.root.cert, clock=lambda: NOW, preference=preference
            )
            return answer.url

        with structlog.testing.capture_logs() as logs:
            assert await ask() == second.url
        assert (first.requests, second.requests) == (1, 1)
        assert preference.preferred(pki.root.cert) == second.url
        assert _changes(logs) == [(first.url, second.url)]

        first.mode = "answer"  # would answer now, but is no longer asked first
        with structlog.testing.capture_logs() as logs:
            assert await ask() == second.url
        assert (first.requests, second.requests) == (1, 2)
        assert _changes(logs) == []

        second.mode = "try_later"
        with structlog.testing.capture_logs() as logs:
            assert await ask() == first.url
        assert (first.requests, second.requests) == (2, 3)
        assert preference.preferred(pki.root.cert) == first.url
        assert _changes(logs) == [(second.url, first.url)]

        second.mode = "answer"
        assert await ask() == first.url
        assert (first.requests, second.requests) == (3, 3)

        # all failing leaves the preference as it was, and the error lists them as asked
        first.mode = second.mode = "http500"
        with pytest.raises(OcspRespondersFailed) as failed:
            await ask()
        assert [url for url, _ in failed.value.failures] == [first.url, second.url]
        assert preference.preferred(pki.root.cert) == first.url


async def test_a_list_without_the_preferred_responder_is_asked_in_its_order(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    preference = ResponderPreference()
    dead = await closed_url()

    async def ask(*urls: str) -> str:
        answer = await ask_responders(
            session, urls, member.cert, pki.root.cert, clock=lambda: NOW, preference=preference
        )
        return answer.url

    async with (
        listed_responder(responder, lambda: NOW) as second,
        listed_responder(responder, lambda: NOW) as third,
        listed_responder(responder, lambda: NOW) as fourth,
    ):
        assert await ask(dead, second.url) == second.url
        assert preference.preferred(pki.root.cert) == second.url
        # a list that still has it, among others in a new order: it stays first
        assert await ask(third.url, second.url) == second.url
        assert (second.requests, third.requests) == (2, 0)
        # a list without it: the list's order, and the old preference is forgotten
        with structlog.testing.capture_logs() as logs:
            assert await ask(third.url, fourth.url) == third.url
        assert (second.requests, third.requests, fourth.requests) == (2, 1, 0)
        assert preference.preferred(pki.root.cert) is None
        assert _changes(logs) == [(second.url, third.url)]


async def test_the_refresher_asks_the_responder_that_answered_last_first(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    clock = Clock(NOW)
    cache = OcspCache(max_age=dt.timedelta(hours=1))
    async with (
        listed_responder(responder, clock, "http500") as first,
        listed_responder(responder, clock) as second,
        listed_responder(responder, clock) as third,
    ):
        own = OwnCertificate(member.cert, pki.root.cert, (first.url, second.url))
        refresher = OcspRefresher(session, [own], cache, clock=clock)

        async def refresh() -> tuple[int, int, int]:
            clock.advance(minutes=41)  # past two thirds of the hour: due again
            assert await refresher.refresh_due() == list(refresher.certificates)
            return first.requests, second.requests, third.requests

        assert await refresher.refresh_due() == [own]
        assert (first.requests, second.requests) == (1, 1)
        first.mode = "answer"
        assert await refresh() == (1, 2, 0)  # the first is not asked: 0 new requests
        second.mode = "http500"
        assert await refresh() == (2, 3, 0)  # the second fails once, the first answers
        second.mode = "answer"
        assert await refresh() == (3, 3, 0)  # and is asked first from now on
        assert refresher.preference.preferred(pki.root.cert) == first.url

        # a new configuration lists other responders: their order applies
        refresher.replace_certificates([dataclasses.replace(own, urls=(third.url, second.url))])
        assert await refresh() == (3, 3, 1)
        assert refresher.failures(member.cert) == 0


def test_the_preference_is_bounded(pki: FixturePki, member: Issued, revoked: Issued) -> None:
    preference = ResponderPreference(max_entries=2)
    urls = ("http://127.0.0.1:1/", "http://127.0.0.1:2/")
    for issuer in (pki.root.cert, member.cert, revoked.cert):
        preference.answered(issuer, urls, urls[1])
    assert len(preference) == 2
    assert preference.preferred(pki.root.cert) is None  # used least recently: dropped
    assert preference.preferred(revoked.cert) == urls[1]
    # the listed first answering is no change and adds nothing
    preference.answered(pki.root.cert, urls, urls[0])
    assert preference.preferred(pki.root.cert) is None
    with pytest.raises(ValueError, match="max_entries"):
        ResponderPreference(max_entries=0)
