"""A running node holds one OCSP responder preference: its own-certificate refresher and its
checks of the other nodes' authentication certificates use the same object, and registration
requests use the one they are given.

What sharing it does (a responder one path found dead is not asked first by the other) is
tested with real responders in ``test_peer_trust_ocsp``; this checks the node assembly and
registration against a running registry.
"""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from gateway.identifiers import SubsystemId
from security_server.node import running_node
from security_server.node_dir import NodeDir
from security_server.registration import client_request, register_server
from tests.security_server.test_node_serve import node_pool
from tests.security_server.test_node_setup import (
    PASSPHRASE,
    SERVER,
    Network,
    network,
    wait_for_server_in_conf,
)
from trust_services.ocsp_client import ResponderPreference

__all__ = ["network", "node_pool"]  # the fixtures, imported to be used here

pytestmark = pytest.mark.postgres


def certified_node(network: Network) -> NodeDir:
    directory = network.new_node()
    text = (directory / "node.toml").read_text()
    (directory / "node.toml").write_text(text.replace("admin_port = 4000", "admin_port = 0"))
    network.certify(directory)
    return NodeDir(directory)


def stale_preference(network: Network) -> ResponderPreference:
    """A preference naming, for the network's CA, a responder its configuration does not list:
    the first fetch that uses it forgets it and asks the listed one."""
    preference = ResponderPreference()
    unlisted = ("http://127.0.0.1:1/listed-once", "http://127.0.0.1:1/unlisted")
    preference.answered(network.ca.issuer_certificate, unlisted, unlisted[1])
    assert preference.preferred(network.ca.issuer_certificate) == unlisted[1]
    return preference


async def test_registration_asks_with_the_preference_it_is_given(network: Network) -> None:
    node = certified_node(network)
    async with aiohttp.ClientSession() as session:
        preference = stale_preference(network)
        state = await register_server(node, PASSPHRASE, session=session, preference=preference)
        assert state.type == "register_server"
        assert preference.preferred(network.ca.issuer_certificate) is None  # it was consulted

        await wait_for_server_in_conf(node.root, SERVER)
        preference = stale_preference(network)
        state = await client_request(
            node,
            PASSPHRASE,
            SubsystemId.parse("IQ/GOV/HJC/inheritance"),
            session=session,
            preference=preference,
        )
        assert state.type == "register_client"
        assert preference.preferred(network.ca.issuer_certificate) is None


async def test_the_own_refresher_and_the_runtime_share_one_preference(
    network: Network, node_pool: asyncpg.Pool
) -> None:
    node = certified_node(network)
    async with aiohttp.ClientSession() as session:
        await register_server(node, PASSPHRASE, session=session)
    await wait_for_server_in_conf(node.root, SERVER)
    async with running_node(node, PASSPHRASE, pool=node_pool) as running:
        # the transport client gives its peer checks the runtime's (test_peer_trust_ocsp)
        assert running.ocsp.preference is running.runtime.ocsp_preference
        assert running.runtime.signers.ocsp_for(running.runtime.tls.certificate) is not None
