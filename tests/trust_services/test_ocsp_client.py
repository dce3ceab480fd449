from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from certs.ocsp import OcspCache, OcspError, OcspResponder
from certs.status import CertStatus
from tests.pki_factory import NOW, FixturePki, Issued
from trust_services.http_server import serve_app
from trust_services.ocsp_client import OcspRefresher, OwnCertificate, fetch_ocsp, fetch_verdict
from trust_services.ocsp_server import ocsp_app


@dataclasses.dataclass
class FakeClock:
    """A clock tests move by hand, shared by the responder and the client."""

    now: dt.datetime = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += dt.timedelta(**kwargs)


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


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _dead_url() -> str:
    """The URL of a server that has just stopped, so nothing listens there."""
    async with serve_app(web.Application()) as url:
        pass
    return url


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
    url = await _dead_url()
    with pytest.raises(OcspError, match="cannot reach the OCSP responder"):
        await fetch_ocsp(session, url + "/", member.cert, pki.root.cert)


async def test_reports_http_error_status(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    async with serve_app(ocsp_app(responder)) as url:
        with pytest.raises(OcspError, match="answered HTTP 405"):
            await fetch_ocsp(session, url + "/wrong-path", member.cert, pki.root.cert)


async def test_refresher_fetches_when_due_and_not_before(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    clock = FakeClock()
    cache = OcspCache(max_age=dt.timedelta(hours=1))
    async with serve_app(ocsp_app(responder, clock=clock)) as url:
        own = OwnCertificate(member.cert, pki.root.cert, url + "/")
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
    clock = FakeClock()
    cache = OcspCache()
    dead = OwnCertificate(member.cert, pki.root.cert, await _dead_url() + "/")
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
        refresher.replace_certificates([dataclasses.replace(dead, url=url + "/")])
        clock.now = refresher.retry_at(member.cert) or clock.now
        assert len(await refresher.refresh_due()) == 1
    assert refresher.failures(member.cert) == 0
    assert cache.get(member.cert, clock()) is not None


async def test_refresher_runs_in_background_until_stopped(
    responder: OcspResponder, session: aiohttp.ClientSession, pki: FixturePki, member: Issued
) -> None:
    cache = OcspCache()
    async with serve_app(ocsp_app(responder)) as url:
        own = OwnCertificate(member.cert, pki.root.cert, url + "/")
        async with OcspRefresher(session, [own], cache) as refresher:
            for _ in range(200):
                if cache.get(member.cert, dt.datetime.now(dt.UTC)) is not None:
                    break
                await asyncio.sleep(0.05)
            assert cache.get(member.cert, dt.datetime.now(dt.UTC)) is not None
        await refresher.stop()  # stopping twice is harmless
