"""Pieces of the two-node networks that node tests build on a running registry: each node's
own database, a node initialised, certified and registered with its client, and the wait for
the registry to publish them.

The networks themselves differ (``test_node_exchange`` relays one exchange,
``test_node_log_network`` adds a TSA the tests stop and a shared clock) and are assembled in
their modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import asyncpg

from gateway.identifiers import SubsystemId
from jisr.demo.nodes import free_port
from security_server.conf_client import ConfClient
from security_server.node_dir import NodeDir
from security_server.node_keys import initialise_node
from security_server.registration import RegistrationError, client_request, register_server
from storage.database import open_pool
from storage.embedded import database_url
from tests.databases import temporary_database
from tests.security_server.test_node_setup import PASSPHRASE, Network, utc_now

__all__ = ["NodeDatabase", "free_port", "node_database", "registered_node", "wait_until_published"]


@dataclasses.dataclass
class NodeDatabase:
    name: str
    url: str
    pool: asyncpg.Pool


@contextlib.asynccontextmanager
async def node_database(pg_server_url: str, tmp: Path) -> AsyncIterator[NodeDatabase]:
    """A node's own database (the registry of the network uses the test's), migrated, with a
    pool of up to four connections; dropped afterwards."""
    async with temporary_database(pg_server_url, "n_") as name:
        url = database_url(pg_server_url, name)
        async with open_pool(
            configured_url=url,
            data_dir=tmp,
            database=name,
            migrations="security_server.migrations",
            max_size=4,
        ) as pool:
            yield NodeDatabase(name, url, pool)


async def registered_node(
    network: Network,
    session: aiohttp.ClientSession,
    server_id: str,
    client: str,
    db_url: str = "",
) -> NodeDir:
    """A node initialised in the network's directory (its server port free now, the others
    chosen when it starts), certified by the network's CA, registered with the registry, with
    ``client`` requested; ``db_url`` goes into its ``node.toml``."""
    port = free_port()
    directory = network.tmp / server_id.replace("/", "_")
    initialise_node(
        directory,
        server_id=server_id,
        anchor=network.anchor,
        passphrase=PASSPHRASE,
        now=utc_now(),
        public_address=f"127.0.0.1:{port}",
        ports={"client_http_port": 0, "client_https_port": 0, "server_port": port, "admin_port": 0},
        database_url=db_url,
    )
    network.certify(directory)
    node = NodeDir(directory)
    await register_server(node, PASSPHRASE, session=session)
    for _ in range(200):
        try:
            await client_request(node, PASSPHRASE, SubsystemId.parse(client), session=session)
            break
        except RegistrationError as exc:  # the registry may not have executed it yet
            if "not registered" not in str(exc):
                raise
            await asyncio.sleep(0.05)
    return node


async def wait_until_published(
    node: NodeDir, clients: Sequence[str], *, with_tsa: bool = False
) -> None:
    """Poll the registry as ``node`` does until every one of ``clients`` has a server in the
    global configuration (and, ``with_tsa``, an approved TSA is listed)."""
    async with aiohttp.ClientSession() as s:
        conf_client = ConfClient(node.globalconf_dir, node.load_anchor(), session=s)
        for _ in range(200):
            await conf_client.poll_once()
            conf = conf_client.latest
            if (
                conf is not None
                and (conf.tsas or not with_tsa)
                and all(conf.servers_for_client(SubsystemId.parse(c)) for c in clients)
            ):
                return
            await asyncio.sleep(0.05)
    what = "and the TSA " if with_tsa else ""
    raise AssertionError(f"{list(clients)} {what}never appeared in the global configuration")
