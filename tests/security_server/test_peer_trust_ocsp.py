"""Each node checks the OCSP status of the other node's authentication certificate.

Two real nodes over mutual TLS, and the test CA's OCSP responder served over HTTP on a port the
OS chose; the global configuration lists that responder for the CA.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from certs.status import CertStatus
from gateway.faults import FaultError
from gateway.globalconf import GlobalConf, SecurityServer
from gateway.globalconf import OcspResponder as ConfOcspResponder
from gateway.transport import (
    CONTENT_TYPE,
    ResponsePart,
    decode_message,
)
from security_server.own_ocsp import OwnOcsp, own_certificate
from security_server.peer_trust import PeerAuthStatus
from tests.clock import Clock
from tests.pki_factory import FixturePki
from tests.security_server.fakes import (
    CITIZEN_PATH,
    CONSUMER_NODE,
    PROVIDER_NODE,
    Network,
    Reply,
    assert_still_serving,
    der,
    post_exchange,
    rest,
    signed_envelope,
    two_nodes,
)
from tests.trust_services.responders import Mode, closed_url, listed_responder


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    async with two_nodes(tmp_path) as network:
        yield network


def message(reply: Reply) -> str:
    text: str = json.loads(reply.body)["message"]
    return text


def refresh_staples(net: Network) -> None:
    """New stapled OCSP responses for both members' signing certificates, at the clock's time."""
    for signers in (net.consumer_signers, net.provider_signers):
        for signer in signers.signers.values():
            signers.ocsp[der(signer.certificate)] = net.ocsp_response(signer.certificate)


async def post_directly(net: Network) -> Reply:
    """A signed request sent straight to the provider node, as the consumer node would."""
    return await post_exchange(net, signed_envelope(net, headers=())[1])


async def assert_serving_once_the_responder_is_back(net: Network) -> None:
    """The responder up again and the failed fetch's backoff (5 s) passed: exchanges go through."""
    net.ocsp_down = False
    net.clock.now += dt.timedelta(seconds=10)
    refresh_staples(net)
    await assert_still_serving(net)


def served(reply: Reply) -> bool:
    if reply.status != 200 or reply.headers.get("Content-Type") != CONTENT_TYPE:
        return False
    part = decode_message(CONTENT_TYPE, reply.body, prefix="Server.ClientProxy").signed_part
    return isinstance(part, ResponsePart) and part.status == 200


# ---- good certificates: asked once, then cached ---------------------------------------------


async def test_each_node_asks_the_responder_once_per_peer_certificate(net: Network) -> None:
    for _ in range(5):
        reply = await rest(net, CITIZEN_PATH)
        assert reply.status == 200, reply
    # the consumer asked about the provider's certificate, the provider about the consumer's
    assert net.ocsp_requests == 2


async def test_refreshes_a_peer_verdict_in_the_background_before_it_goes_stale(
    net: Network,
) -> None:
    assert (await rest(net, CITIZEN_PATH)).status == 200
    assert net.ocsp_requests == 2
    # two thirds of the default freshness (3600 s) used up: still fresh, but due for refresh
    net.clock.now += dt.timedelta(seconds=2500)
    refresh_staples(net)
    net.ocsp_down = True
    reply = await rest(net, CITIZEN_PATH)
    assert reply.status == 200, reply  # answered from the cache while the refresh fails
    net.ocsp_down = False
    net.clock.now += dt.timedelta(seconds=10)  # past the failed refresh's backoff
    before = net.ocsp_requests
    assert (await rest(net, CITIZEN_PATH)).status == 200
    for _ in range(200):  # the refresh runs in the background; wait for both nodes' fetches
        if net.ocsp_requests >= before + 2:
            break
        await asyncio.sleep(0.01)
    assert net.ocsp_requests == before + 2
    # the refreshed verdicts (thisUpdate = now) stay fresh where the old ones would not have
    net.clock.now += dt.timedelta(seconds=1500)
    refresh_staples(net)
    net.ocsp_down = True
    assert (await rest(net, CITIZEN_PATH)).status == 200


async def test_concurrent_first_requests_share_one_fetch(net: Network) -> None:
    status = PeerAuthStatus(clock=net.clock)
    conf = net.consumer_conf.conf
    assert conf is not None
    try:
        verdicts = await asyncio.gather(
            *(
                status.require_good(
                    net.provider_auth.cert, conf, node=PROVIDER_NODE, prefix="Server.ClientProxy"
                )
                for _ in range(20)
            )
        )
    finally:
        await status.close()
    assert {v.status.state for v in verdicts} == {"good"}
    assert status.fetches == 1
    assert net.ocsp_requests == 1


async def test_refuses_peer_certificate_from_a_ca_the_configuration_does_not_approve(
    net: Network,
) -> None:
    foreign = FixturePki.create(cn="Unapproved CA").authentication(str(PROVIDER_NODE))
    conf = net.consumer_conf.conf
    assert conf is not None
    status = PeerAuthStatus(clock=net.clock)
    try:
        with pytest.raises(FaultError) as refused:
            await status.require_good(
                foreign.cert, conf, node=PROVIDER_NODE, prefix="Server.ClientProxy"
            )
    finally:
        await status.close()
    assert refused.value.fault_code == "Server.ClientProxy.SslAuthenticationFailed"
    assert "not issued by a CA the global configuration approves" in refused.value.message
    assert net.ocsp_requests == 0


async def test_only_the_good_certificates_of_a_node_being_rekeyed_are_accepted(
    net: Network,
) -> None:
    conf = net.consumer_conf.conf
    assert conf is not None
    old, unknown = net.pki.authentication("old"), net.pki.authentication("unknown")
    net.statuses[old.cert.serial_number] = CertStatus("revoked", revoked_at=net.clock.now)
    net.statuses[unknown.cert.serial_number] = CertStatus("unknown")
    server = SecurityServer(
        PROVIDER_NODE, "127.0.0.1:1", (old.cert, net.provider_auth.cert, unknown.cert)
    )
    status = PeerAuthStatus(clock=net.clock)
    try:
        good, refused = await status.good_certificates(server, conf, prefix="Server.ClientProxy")
    finally:
        await status.close()
    assert good == (net.provider_auth.cert,)
    assert [f.fault_code for f in refused] == ["Server.ClientProxy.CertValidation"] * 2
    assert "is revoked since" in refused[0].message
    assert "is unknown" in refused[1].message


# ---- revoked certificates -------------------------------------------------------------------


async def test_provider_refuses_consumer_whose_authentication_certificate_is_revoked(
    net: Network,
) -> None:
    net.statuses[net.consumer_auth.cert.serial_number] = CertStatus(
        "revoked", revoked_at=net.clock.now - dt.timedelta(hours=1), reason="key_compromise"
    )
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ServerProxy.CertValidation"
    assert "authentication certificate of node IQ/GOV/HJC/ss1" in message(reply)
    assert "revoked" in message(reply)
    assert not net.seen
    assert not net.provider_log.entries


async def test_consumer_refuses_provider_whose_authentication_certificate_is_revoked(
    net: Network,
) -> None:
    net.statuses[net.provider_auth.cert.serial_number] = CertStatus(
        "revoked", revoked_at=net.clock.now - dt.timedelta(hours=1)
    )
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CertValidation"
    assert "authentication certificate of node IQ/GOV/NDC/ss1" in message(reply)
    assert "revoked" in message(reply)
    # refused before anything was sent: the provider node saw nothing
    assert not net.provider_log.entries
    assert not net.seen


async def test_revocation_is_seen_once_the_cached_verdict_is_refreshed(net: Network) -> None:
    assert (await rest(net, CITIZEN_PATH)).status == 200
    net.statuses[net.provider_auth.cert.serial_number] = CertStatus(
        "revoked", revoked_at=net.clock.now
    )
    net.clock.now += dt.timedelta(hours=2)  # the cached good verdicts are stale now
    refresh_staples(net)
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CertValidation"
    assert "revoked" in message(reply)


# ---- responder outage -----------------------------------------------------------------------


async def test_consumer_refuses_when_the_responder_is_down_and_nothing_is_cached(
    net: Network,
) -> None:
    net.ocsp_down = True
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CertValidation"
    text = message(reply)
    assert "cannot be established" in text
    assert "HTTP 503" in text
    assert "IQ/GOV/NDC/ss1" in text
    assert not net.provider_log.entries
    # a dead responder is not asked again per message, only after a backoff
    asked = net.ocsp_requests
    again = await rest(net, CITIZEN_PATH)
    assert again.error == "Server.ClientProxy.CertValidation"
    assert net.ocsp_requests == asked
    await assert_serving_once_the_responder_is_back(net)


async def test_provider_refuses_when_the_responder_is_down_and_nothing_is_cached(
    net: Network,
) -> None:
    net.ocsp_down = True
    reply = await post_directly(net)
    assert reply.status == 500
    assert reply.headers["X-Road-Error"] == "Server.ServerProxy.CertValidation"
    assert reply.headers["Content-Type"].startswith("application/json")
    assert "cannot be established" in message(reply)
    assert str(CONSUMER_NODE) in message(reply)
    assert not net.seen


async def test_fresh_cached_verdicts_carry_both_nodes_through_a_responder_outage(
    net: Network,
) -> None:
    assert served(await post_directly(net))
    assert (await rest(net, CITIZEN_PATH)).status == 200
    asked = net.ocsp_requests
    net.ocsp_down = True
    assert served(await post_directly(net))
    await assert_still_serving(net)
    assert net.ocsp_requests == asked


async def test_refuses_once_the_cached_verdict_is_stale_and_the_responder_is_down(
    net: Network,
) -> None:
    assert (await rest(net, CITIZEN_PATH)).status == 200
    net.ocsp_down = True
    net.clock.now += dt.timedelta(seconds=3601)
    refresh_staples(net)  # the members' own staples are fresh; only the peer verdicts are stale
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CertValidation"
    assert "cannot be established" in message(reply)


# ---- several responders listed for the CA ---------------------------------------------------


def list_responders(net: Network, *urls: str) -> GlobalConf:
    """Make both nodes' configuration list ``urls`` as the CA's responders, in that order."""
    conf = net.consumer_conf.conf
    assert conf is not None
    (ca,) = conf.approved_cas
    signer = ca.ocsp[0].certificate
    listed = dataclasses.replace(ca, ocsp=tuple(ConfOcspResponder(u, signer) for u in urls))
    conf = dataclasses.replace(conf, approved_cas=(listed,))
    net.consumer_conf.conf = net.provider_conf.conf = conf
    return conf


async def test_both_nodes_ask_the_second_responder_when_the_first_refuses_connections(
    net: Network,
) -> None:
    list_responders(net, await closed_url(), net.ocsp_url)
    reply = await rest(net, CITIZEN_PATH)
    assert reply.status == 200, reply
    assert net.ocsp_requests == 2  # one per node, both from the second responder


@pytest.mark.parametrize("mode", ["http500", "garbage", "try_later"])
async def test_both_nodes_ask_the_second_responder_when_the_first_answers_no_usable_response(
    net: Network, mode: Mode
) -> None:
    async with listed_responder(net.responder, net.clock, mode) as first:
        list_responders(net, first.url, net.ocsp_url)
        reply = await rest(net, CITIZEN_PATH)
    assert reply.status == 200, reply
    assert first.requests == 2
    assert net.ocsp_requests == 2


async def test_a_stale_answer_of_the_first_responder_sends_both_nodes_to_the_second(
    net: Network,
) -> None:
    stale_clock = Clock(net.clock.now - dt.timedelta(hours=2))
    async with listed_responder(net.responder, stale_clock) as first:
        list_responders(net, first.url, net.ocsp_url)
        reply = await rest(net, CITIZEN_PATH)
    assert reply.status == 200, reply
    assert (first.requests, net.ocsp_requests) == (2, 2)


async def test_a_revoked_answer_of_the_first_responder_is_final(net: Network) -> None:
    net.statuses[net.provider_auth.cert.serial_number] = CertStatus(
        "revoked", revoked_at=net.clock.now - dt.timedelta(hours=1)
    )
    async with listed_responder(net.responder, net.clock) as first:
        list_responders(net, first.url, net.ocsp_url)
        reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CertValidation"
    assert "revoked" in message(reply)
    assert first.requests == 1
    assert net.ocsp_requests == 0  # the second responder was never asked
    assert not net.seen


async def test_refusal_names_every_responder_when_all_fail_and_backs_off_for_all(
    net: Network,
) -> None:
    dead = await closed_url()
    list_responders(net, dead, net.ocsp_url)
    net.ocsp_down = True
    reply = await rest(net, CITIZEN_PATH)
    assert reply.error == "Server.ClientProxy.CertValidation"
    text = message(reply)
    assert "cannot be established" in text
    assert f"cannot reach the OCSP responder at {dead}" in text
    assert f"the OCSP responder at {net.ocsp_url} answered HTTP 503" in text
    assert "listed in the global configuration are reachable" in text
    assert net.ocsp_requests == 1
    # within the backoff neither responder is asked again
    again = await rest(net, CITIZEN_PATH)
    assert again.error == "Server.ClientProxy.CertValidation"
    assert net.ocsp_requests == 1
    # after it the whole list is asked again, and the second responder serves
    await assert_serving_once_the_responder_is_back(net)


# ---- the responder that answered last is asked first ----------------------------------------


async def test_the_responder_that_answered_last_is_asked_first_about_peer_certificates(
    net: Network,
) -> None:
    status = PeerAuthStatus(clock=net.clock)
    cert = net.provider_auth.cert

    async def fetch(conf: GlobalConf) -> None:
        net.clock.now += dt.timedelta(seconds=3601)  # the cached verdict is stale: fetch
        verdict = await status.require_good(
            cert, conf, node=PROVIDER_NODE, prefix="Server.ClientProxy"
        )
        assert verdict.this_update == net.clock.now

    try:
        async with (
            listed_responder(net.responder, net.clock, "http500") as first,
            listed_responder(net.responder, net.clock) as second,
            listed_responder(net.responder, net.clock) as third,
        ):
            conf = list_responders(net, first.url, second.url)
            issuer = own_certificate(conf, cert).issuer
            await status.require_good(cert, conf, node=PROVIDER_NODE, prefix="Server.ClientProxy")
            assert (first.requests, second.requests) == (1, 1)
            assert status.preference.preferred(issuer) == second.url

            first.mode = "answer"
            await fetch(conf)
            assert (first.requests, second.requests) == (1, 2)  # the first got 0 new requests

            second.mode = "garbage"
            await fetch(conf)
            assert (first.requests, second.requests) == (2, 3)
            second.mode = "answer"
            await fetch(conf)
            assert (first.requests, second.requests) == (3, 3)  # the first is preferred now
            assert status.preference.preferred(issuer) == first.url

            # a new configuration version without the preferred responder: its order applies
            conf = list_responders(net, third.url, second.url)
            await fetch(conf)
            assert (first.requests, second.requests, third.requests) == (3, 3, 1)
            assert status.preference.preferred(issuer) is None
    finally:
        await status.close()
    assert status.fetches == 5
    assert net.ocsp_requests == 0


# ---- one preference per node: its own certificates and the other nodes' ---------------------


def own_refreshers(
    net: Network, session: aiohttp.ClientSession, tmp: Path
) -> tuple[OwnOcsp, OwnOcsp]:
    """Each node's refresher of its own authentication certificate's OCSP response, wired as
    the node assembly wires it: with the node's one preference, ``NodeRuntime.ocsp_preference``
    (which its transport client gave its peer checks)."""
    refreshers = []
    for name, cert, conf, runtime in (
        ("consumer", net.consumer_auth.cert, net.consumer_conf, net.consumer_runtime),
        ("provider", net.provider_auth.cert, net.provider_conf, net.provider_runtime),
    ):
        (tmp / name).mkdir()
        refreshers.append(
            OwnOcsp(
                tmp / name,
                session,
                [cert],
                conf=lambda conf=conf: conf.conf,
                clock=net.clock,
                preference=runtime.ocsp_preference,
            )
        )
    return refreshers[0], refreshers[1]


async def test_peer_checks_ask_first_the_responder_the_own_refresher_found_answering(
    net: Network, tmp_path: Path
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        listed_responder(net.responder, net.clock, "http500") as first,
        listed_responder(net.responder, net.clock) as second,
    ):
        list_responders(net, first.url, second.url)
        consumer_own, provider_own = own_refreshers(net, session, tmp_path)
        assert await consumer_own.refresh_due() == [net.consumer_auth.cert]
        assert await provider_own.refresh_due() == [net.provider_auth.cert]
        assert (first.requests, second.requests) == (2, 2)

        first.mode = "answer"  # it would answer now, if it were asked
        reply = await rest(net, CITIZEN_PATH)
        assert reply.status == 200, reply
        # each node checked the other's certificate (same CA) with the second responder alone
        assert (first.requests, second.requests) == (2, 4)
    assert net.ocsp_requests == 0


async def test_the_own_refresher_asks_first_the_responder_the_peer_checks_found_answering(
    net: Network, tmp_path: Path
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        listed_responder(net.responder, net.clock, "garbage") as first,
        listed_responder(net.responder, net.clock) as second,
    ):
        conf = list_responders(net, first.url, second.url)
        reply = await rest(net, CITIZEN_PATH)
        assert reply.status == 200, reply
        assert (first.requests, second.requests) == (2, 2)  # one per node, each failed over

        first.mode = "answer"
        consumer_own, provider_own = own_refreshers(net, session, tmp_path)
        assert await consumer_own.refresh_due() == [net.consumer_auth.cert]
        assert await provider_own.refresh_due() == [net.provider_auth.cert]
        assert (first.requests, second.requests) == (2, 4)  # the first got 0 new requests
    issuer = own_certificate(conf, net.consumer_auth.cert).issuer
    for runtime in (net.consumer_runtime, net.provider_runtime):
        assert runtime.ocsp_preference.preferred(issuer) == second.url
    assert net.consumer_runtime.ocsp_preference is not net.provider_runtime.ocsp_preference
