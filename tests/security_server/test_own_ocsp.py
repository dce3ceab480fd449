"""The node's own OCSP responses come from whichever responder listed for the CA answers first.

Real responders over HTTP on 127.0.0.1 (the test network's, counting its requests, and more of
the same CA's when a test needs them), real configuration, real HTTP client.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from certs.ocsp import OcspError
from certs.status import CertStatus
from security_server.own_ocsp import OwnOcsp, fetch_own_ocsp, own_certificate
from security_server.peer_trust import PeerAuthStatus
from tests.security_server.fakes import PROVIDER_NODE, Network, two_nodes
from tests.security_server.test_peer_trust_ocsp import list_responders
from tests.trust_services.responders import closed_url, listed_responder
from trust_services.ocsp_client import OcspRespondersFailed, ResponderPreference


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    async with two_nodes(tmp_path) as network:
        yield network


async def test_lists_every_responder_of_the_ca_in_order(net: Network) -> None:
    conf = list_responders(net, "http://127.0.0.1:1/a", "http://127.0.0.1:2/b")
    own = own_certificate(conf, net.consumer_auth.cert)
    assert own.urls == ("http://127.0.0.1:1/a", "http://127.0.0.1:2/b")


async def test_keeps_and_persists_the_second_responders_answer_when_the_first_is_down(
    net: Network, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    conf = list_responders(net, await closed_url(), net.ocsp_url)
    cert = net.consumer_auth.cert
    ocsp = OwnOcsp(tmp_path / "ocsp", session, [cert], conf=lambda: conf, clock=net.clock)
    (tmp_path / "ocsp").mkdir()
    assert await ocsp.refresh_due() == [cert]
    assert ocsp.response_for(cert) is not None
    assert len(list((tmp_path / "ocsp").iterdir())) == 1
    assert net.ocsp_requests == 1


async def test_fetch_asks_the_second_responder_after_try_later(
    net: Network, session: aiohttp.ClientSession
) -> None:
    async with listed_responder(net.responder, net.clock, "try_later") as first:
        conf = list_responders(net, first.url, net.ocsp_url)
        verdict = await fetch_own_ocsp(session, conf, net.consumer_auth.cert, now=net.clock.now)
    assert verdict.status.state == "good"
    assert (first.requests, net.ocsp_requests) == (1, 1)


async def test_a_revoked_answer_of_the_first_responder_is_final(
    net: Network, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cert = net.consumer_auth.cert
    net.statuses[cert.serial_number] = CertStatus(
        "revoked", revoked_at=net.clock.now - dt.timedelta(hours=1)
    )
    async with listed_responder(net.responder, net.clock) as first:
        conf = list_responders(net, first.url, net.ocsp_url)
        with pytest.raises(OcspError, match="revoked") as refused:
            await fetch_own_ocsp(session, conf, cert, now=net.clock.now)
        assert first.url in refused.value.message
        ocsp = OwnOcsp(tmp_path, session, [cert], conf=lambda: conf, clock=net.clock)
        await ocsp.refresh_due()
        verdict = ocsp.verdict_for(cert)
        assert verdict is not None
        assert verdict.status.state == "revoked"
        assert ocsp.response_for(cert) is None
    assert first.requests == 2
    assert net.ocsp_requests == 0


async def test_names_both_responders_when_neither_answers(
    net: Network, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dead = await closed_url()
    async with listed_responder(net.responder, net.clock, "http500") as broken:
        conf = list_responders(net, dead, broken.url)
        with pytest.raises(OcspRespondersFailed) as failed:
            await fetch_own_ocsp(session, conf, net.consumer_auth.cert, now=net.clock.now)
        ocsp = OwnOcsp(
            tmp_path, session, [net.consumer_auth.cert], conf=lambda: conf, clock=net.clock
        )
        assert await ocsp.refresh_due() == []
        assert ocsp.response_for(net.consumer_auth.cert) is None
    assert [url for url, _ in failed.value.failures] == [dead, broken.url]
    assert f"cannot reach the OCSP responder at {dead}" in failed.value.message
    assert f"the OCSP responder at {broken.url} answered HTTP 500" in failed.value.message
    assert broken.requests == 2


async def test_the_responder_that_answered_last_is_asked_first_across_a_new_refresher(
    net: Network, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cert = net.consumer_auth.cert
    async with (
        listed_responder(net.responder, net.clock, "http500") as first,
        listed_responder(net.responder, net.clock) as second,
    ):
        conf = list_responders(net, first.url, second.url)
        ocsp = OwnOcsp(tmp_path, session, [cert], conf=lambda: conf, clock=net.clock)
        assert await ocsp.refresh_due() == [cert]
        assert (first.requests, second.requests) == (1, 1)

        # a new freshness setting rebuilds the refresher; what was learnt is kept
        conf = dataclasses.replace(
            conf, settings=dataclasses.replace(conf.settings, ocsp_freshness_s=1800)
        )
        first.mode = "answer"
        net.clock.now += dt.timedelta(seconds=1201)  # two thirds of 1800 s: due
        assert await ocsp.refresh_due() == [cert]
        assert (first.requests, second.requests) == (1, 2)  # the first got 0 new requests

        second.mode = "http500"
        net.clock.now += dt.timedelta(seconds=1201)
        assert await ocsp.refresh_due() == [cert]
        assert (first.requests, second.requests) == (2, 3)
        assert ocsp.preference.preferred(own_certificate(conf, cert).issuer) == first.url
    assert ocsp.response_for(cert) is not None


async def test_fetch_with_the_nodes_preference_asks_first_what_the_peer_checks_learnt(
    net: Network, session: aiohttp.ClientSession
) -> None:
    """Registration inside the node process passes the node's preference to fetch_own_ocsp."""
    preference = ResponderPreference()
    status = PeerAuthStatus(clock=net.clock, session=session, preference=preference)
    cert = net.consumer_auth.cert
    try:
        async with (
            listed_responder(net.responder, net.clock, "try_later") as first,
            listed_responder(net.responder, net.clock) as second,
        ):
            conf = list_responders(net, first.url, second.url)
            await status.require_good(
                net.provider_auth.cert, conf, node=PROVIDER_NODE, prefix="Server.ClientProxy"
            )
            assert (first.requests, second.requests) == (1, 1)

            first.mode = "answer"
            verdict = await fetch_own_ocsp(
                session, conf, cert, now=net.clock.now, preference=preference
            )
            assert verdict.status.state == "good"
            assert (first.requests, second.requests) == (1, 2)  # the first got 0 new requests

            # without it (a command running alone with nothing learnt): the listed order
            await fetch_own_ocsp(session, conf, cert, now=net.clock.now)
            assert (first.requests, second.requests) == (2, 2)
    finally:
        await status.close()
