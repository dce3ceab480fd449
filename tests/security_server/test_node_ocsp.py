"""OCSP stapling for the node's own certificates: fetched from the configuration's responder,
persisted, reloaded without the responder, and never stapled when not good."""

from __future__ import annotations

import aiohttp
import pytest

from certs.ocsp import OcspError
from gateway.globalconf import GlobalConf
from security_server.conf_client import ConfClient
from security_server.node_dir import NodeDir
from security_server.node_keys import NodeKeys
from security_server.own_ocsp import OwnOcsp, fetch_own_ocsp, own_certificate
from tests.pki_factory import FixturePki
from tests.security_server.test_node_setup import (
    Network,
    network,
    utc_now,
)

__all__ = ["network"]  # the fixture, imported to be used here

pytestmark = pytest.mark.postgres


async def _setup(network: Network, session: aiohttp.ClientSession) -> tuple[NodeDir, GlobalConf]:
    directory = network.new_node()
    network.certify(directory)
    node = NodeDir(directory)
    conf = await ConfClient(node.globalconf_dir, node.load_anchor(), session=session).download()
    return node, conf


async def test_fetches_persists_and_reloads_without_the_responder(
    network: Network, session: aiohttp.ClientSession
) -> None:
    node, conf = await _setup(network, session)
    keys = NodeKeys(node)
    certs = [
        keys.require_auth().certificate,
        *(i.certificate for i in keys.signing_certificates().values()),
    ]
    ocsp = OwnOcsp(node.ocsp_dir, session, certs, conf=lambda: conf)
    assert ocsp.response_for(certs[0]) is None
    assert await ocsp.refresh_due() == certs
    assert all(ocsp.response_for(c) is not None for c in certs)
    assert len(list(node.ocsp_dir.iterdir())) == 2
    assert await ocsp.refresh_due() == []  # fresh: nothing is due

    async with aiohttp.ClientSession() as nowhere:
        restarted = OwnOcsp(node.ocsp_dir, nowhere, certs, conf=lambda: conf)
        assert await restarted.refresh_due() == []  # loaded from disk, nothing fetched
        assert restarted.response_for(certs[1]) == ocsp.response_for(certs[1])


async def test_revoked_certificate_is_not_stapled(
    network: Network, session: aiohttp.ClientSession
) -> None:
    node, conf = await _setup(network, session)
    auth = NodeKeys(node).require_auth().certificate
    network.ca.revoke(auth.serial_number, reason="key_compromise", at=utc_now())
    ocsp = OwnOcsp(node.ocsp_dir, session, [auth], conf=lambda: conf)
    await ocsp.refresh_due()
    verdict = ocsp.verdict_for(auth)
    assert verdict is not None
    assert verdict.status.state == "revoked"
    assert ocsp.response_for(auth) is None
    with pytest.raises(OcspError, match="revoked"):
        await fetch_own_ocsp(session, conf, auth, now=utc_now())


async def test_certificate_of_an_unapproved_ca_has_no_responder(
    network: Network, session: aiohttp.ClientSession
) -> None:
    _, conf = await _setup(network, session)
    stranger = FixturePki.create(now=utc_now()).signing("IQ/GOV/HJC").cert
    with pytest.raises(OcspError, match="not issued by an approved CA"):
        own_certificate(conf, stranger)
