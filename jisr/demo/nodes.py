"""The demo's security server nodes: set up as an operator would, then run as processes.

Rules:
- Each node is set up with the functions behind ``jisr node init``, ``add-member-key``,
  ``import-cert``, ``register``, ``add-client``, ``service add`` and ``access grant``; the demo
  plays the CA operator (it issues the certificates from the nodes' CSRs) and the registry
  operator (auto-approval is on).
- Each node then runs as its own process, ``jisr node serve --data-dir DIR``, exactly as a
  ministry runs it; it is ready when it has written ``DIR/run/endpoints.json``. Its output goes
  to ``<data dir>/logs/<node>.log``.
- Processes run in their own session and are stopped with SIGTERM (SIGKILL after a grace
  period), last started first, whatever ends the demo (:mod:`jisr.processes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.sample_services import SAMPLE_SERVICES
from config.errors import ConfigError
from gateway.identifiers import SubsystemId
from jisr.demo.members import (
    ALL_GOVERNMENT,
    CERTIFICATES,
    FORENSIC,
    INHERITANCE,
    PENSIONS,
    POPULATION,
    DemoNode,
)
from jisr.demo.network import DEMO_PASSPHRASE, TrustServices, fresh_database
from jisr.processes import ChildProcess, ChildProcesses, python_argv
from security_server.catalogue_store import CatalogueStore
from security_server.conf_client import ConfClient
from security_server.node_dir import NodeDir
from security_server.node_keys import (
    AUTH_LABEL,
    NodeKeys,
    add_member_key,
    import_certificate,
    initialise_node,
)
from security_server.registration import client_request, register_server
from storage.database import open_pool

READY_TIMEOUT_S = 90.0
CONF_POLL_S = 5
_ACTOR = "demo"


#: Fills a node's service catalogue during its set-up (what ``jisr node service add`` and
#: ``access grant`` do), while the node's database is open and before the node runs.
CatalogueSetUp = Callable[[CatalogueStore], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class PublishedService:
    """A sample service published on a provider node, and who may call it."""

    provider: SubsystemId
    kind: str  # key of adapters.sample_services.SAMPLE_SERVICES
    service_code: str
    allowed: tuple[str, ...]


#: What the providers publish (see docs/demo.md for the access-right table).
PUBLISHED = (
    PublishedService(POPULATION, "ndc", "getCitizen", (str(INHERITANCE),)),
    PublishedService(FORENSIC, "moh", "getDeathRecord", (str(INHERITANCE), str(PENSIONS))),
    PublishedService(CERTIFICATES, "mohesr", "verifyDocument", (f"group:{ALL_GOVERNMENT}",)),
)


@dataclasses.dataclass
class NodeProcess:
    spec: DemoNode
    directory: Path
    process: asyncio.subprocess.Process
    log_path: Path
    endpoints: dict[str, Any]


#: Where the system hands out ports of its own (Linux; the default range elsewhere).
_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT: Final = 10_000
_ATTEMPTS: Final = 64


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text("ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port free now on 127.0.0.1, for the server side a node registers before it starts.

    The port must stay free from now until the node listens on it, which may be seconds later.
    A port the system chose (``bind`` to port 0) comes from its ephemeral range, from which it
    also gives local ports to outgoing connections and to other port-0 listeners: one of those
    could take it in between. So the port is drawn at random below that range, and kept only
    if binding to it succeeds now (the system says it is free); if no such port is found, the
    system's own choice is returned.
    """
    top = _ephemeral_start()
    if top > _LOWEST_PORT + _ATTEMPTS:
        for _ in range(_ATTEMPTS):
            port = _LOWEST_PORT + secrets.randbelow(top - _LOWEST_PORT)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def certify(directory: Path, trust: TrustServices, now: dt.datetime) -> None:
    """The CA issues certificates for every CSR the node wrote; the node imports them."""
    node = NodeDir(directory)
    ca = trust.ca
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (*ca.intermediates, ca.root_certificate))
    for label in NodeKeys(node).store.labels():
        profile: Literal["auth", "sign"] = "auth" if label == AUTH_LABEL else "sign"
        issued = ca.issue(node.csr_file(label).read_bytes(), profile, now=now)
        import_certificate(directory, issued.public_bytes(Encoding.PEM), chain=chain, now=now)


async def set_up_node(
    spec: DemoNode,
    directory: Path,
    *,
    anchor: bytes,
    server_url: str,
    trust: TrustServices,
    session: aiohttp.ClientSession,
    now: dt.datetime,
    sample_base_url: str | None = None,
    catalogue: CatalogueSetUp | None = None,
    http_port: int = 0,
    https_port: int = 0,
    passphrase: str = DEMO_PASSPHRASE,
    database_prefix: str = "jisr_node_",
    actor: str = _ACTOR,
) -> str:
    """Set a node up and register it and its clients; return its database URL.

    The node publishes the sample services of :data:`PUBLISHED` it hosts when
    ``sample_base_url`` says where they run, then whatever ``catalogue`` adds: the demo, the
    benchmark and the end-to-end tests build their nodes the same way and differ only there.
    """
    database = f"{database_prefix}{spec.name}"
    url = await fresh_database(server_url, database)
    server_port = free_port()
    initialise_node(
        directory,
        server_id=str(spec.server_id),
        anchor=anchor,
        passphrase=passphrase,
        now=now,
        public_address=f"127.0.0.1:{server_port}",
        ports={
            "client_http_port": http_port,
            "client_https_port": https_port,
            "server_port": server_port,
            "admin_port": 0,
        },
        database_url=url,
    )
    for member in spec.members[1:]:
        add_member_key(directory, str(member), passphrase)
    certify(directory, trust, now)
    node = NodeDir(directory)
    await register_server(node, passphrase, session=session)
    async with open_pool(
        configured_url=url,
        data_dir=directory,
        database=database,
        migrations="security_server.migrations",
        max_size=2,
    ) as pool:
        store = CatalogueStore(pool)
        await store.load()
        for client in spec.clients:
            await store.add_client(actor, str(client), connection_type="http")
        if sample_base_url is not None:
            await _publish_samples(store, spec, sample_base_url, actor)
        if catalogue is not None:
            await catalogue(store)
    for client in spec.clients:
        await client_request(node, passphrase, client, session=session)
    return url


async def _publish_samples(
    store: CatalogueStore, spec: DemoNode, sample_base_url: str, actor: str
) -> None:
    for published in PUBLISHED:
        if published.provider not in spec.clients:
            continue
        sample = SAMPLE_SERVICES[published.kind]
        await store.add_wsdl(
            actor,
            str(published.provider),
            document=sample.wsdl(),
            address=sample.rest_url(sample_base_url).rstrip("/") + "/",
        )
        for subject in published.allowed:
            await store.grant(actor, str(published.provider), published.service_code, subject)


async def wait_until_published(
    directory: Path,
    specs: Sequence[DemoNode],
    session: aiohttp.ClientSession,
    *,
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    """Poll the registry as a node does until every node and client is in the configuration."""
    node = NodeDir(directory)
    client = ConfClient(node.globalconf_dir, node.load_anchor(), session=session)
    deadline = time.monotonic() + timeout_s
    while True:
        await client.poll_once()
        conf = client.latest
        if conf is not None and all(
            conf.server(spec.server_id) is not None
            and all(conf.servers_for_client(c) for c in spec.clients)
            for spec in specs
        ):
            return
        if time.monotonic() > deadline:
            raise ConfigError(
                f"the registry did not publish every demo node within {timeout_s:.0f} s"
            )
        await asyncio.sleep(0.3)


def _serve_argv(directory: Path) -> list[str]:
    """``jisr node serve`` for the node in ``directory``, logging JSON lines."""
    return python_argv(
        "jisr", "--log-format", "json", "node", "serve", "--data-dir", str(directory)
    )


@contextlib.asynccontextmanager
async def running_nodes(
    nodes: Sequence[tuple[DemoNode, Path]],
    log_dir: Path,
    *,
    passphrase: str = DEMO_PASSPHRASE,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> AsyncIterator[list[NodeProcess]]:
    """Start ``jisr node serve`` for each node; stop them all when the block ends."""
    env = dict(os.environ)
    env.update(
        {
            "JISR_NODE_KEY_PASSPHRASE": passphrase,
            "JISR_NODE_CONF_POLL_S": str(CONF_POLL_S),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("JISR_CONFIG", None)
    async with ChildProcesses(log_dir) as children:
        started: list[tuple[NodeProcess, ChildProcess]] = []
        for spec, directory in nodes:
            child = await children.spawn(
                f"node-{spec.name}",
                _serve_argv(directory),
                env=env,
                ready_file=NodeDir(directory).endpoints_file,
            )
            started.append((NodeProcess(spec, directory, child.process, child.log_path, {}), child))
        for running, child in started:
            running.endpoints = await children.wait_ready(child, ready_timeout_s)
        yield [running for running, _child in started]
