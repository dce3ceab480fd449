"""The demo's node network on 127.0.0.1, brought up once for the end-to-end tests.

Rules:
- Built from the demo's own parts (``jisr.demo.network`` and ``jisr.demo.nodes``): a private
  embedded PostgreSQL, the demo CA with its OCSP responder and TSA, the registry with
  auto-approval, the sample services, and the three demo nodes set up through the
  ``jisr node`` functions and run as ``jisr node serve`` processes. Every port is chosen by the
  OS; nothing listens on the demo's fixed 8080/8443.
- What the tests need beyond the demo is added the way an operator would: extra provider
  services (:mod:`tests.e2e.extra_services`) through the NDC node's catalogue, a smaller body
  limit in each ``node.toml``, and one *impostor*: the node ``IQ/GOV/MOH/ss2`` is registered
  with one authentication certificate while the listener at its address shows another one.
- The CA is created three days in the past so that a certificate which has already expired
  can still be issued inside the CA's own validity.
- Everything started is stopped when the block ends, last started first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.sample_services import run_sample_services
from certs.keystore import SoftwareKeyStore
from gateway.identifiers import SecurityServerId, SubsystemId
from jisr.demo.members import INHERITANCE, NODES, POPULATION, DemoNode
from jisr.demo.network import (
    DEMO_PASSPHRASE,
    RegistryRunning,
    TrustServices,
    embedded_postgres,
    prepare_data_dir,
    registry,
    trust_services,
    utc_now,
)
from jisr.demo.nodes import (
    certify,
    free_port,
    running_nodes,
    set_up_node,
    wait_until_published,
)
from security_server.catalogue_store import CatalogueStore
from security_server.node_dir import NodeDir
from security_server.node_keys import initialise_node
from security_server.registration import client_request, register_server
from security_server.tls import server_context
from storage.database import open_pool
from tests.e2e.extra_services import ExtraServices, Received, publish_extras
from trust_services.http_server import serve_app

#: Largest body each node accepts (the default is 10 MiB; smaller keeps the tests light).
MAX_BODY_BYTES = 1024 * 1024
#: How far in the past the demo CA is created.
CA_AGE = dt.timedelta(days=3)

IMPOSTOR_NODE = SecurityServerId.parse("IQ/GOV/MOH/ss2")
#: A subsystem served only by the impostor node.
LAB = SubsystemId.parse("IQ/GOV/MOH/lab")


@dataclasses.dataclass
class RunningNodeInfo:
    """One ``jisr node serve`` process: its spec, directory, database and bound URLs."""

    spec: DemoNode
    directory: Path
    database_url: str
    endpoints: dict[str, Any]
    log_path: Path

    @property
    def client_url(self) -> str:
        return str(self.endpoints["client_http"])

    @property
    def server_url(self) -> str:
        return str(self.endpoints["server"])

    @property
    def node_dir(self) -> NodeDir:
        return NodeDir(self.directory)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the node process's output, to show beside a failed assertion."""
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class Impostor:
    """The registered node whose address is served with a certificate the registry never saw."""

    server_id: SecurityServerId
    subsystem: SubsystemId
    received: list[Received]


@dataclasses.dataclass
class E2eNetwork:
    data_dir: Path
    trust: TrustServices
    registry: RegistryRunning
    ca_created_at: dt.datetime
    samples_url: str
    extras: ExtraServices
    nodes: dict[str, RunningNodeInfo]
    impostor: Impostor
    session: aiohttp.ClientSession

    @property
    def consumer(self) -> RunningNodeInfo:
        """The HJC/NPA node, whose clients call the other nodes' services."""
        return self.nodes["hjc"]

    @property
    def provider(self) -> RunningNodeInfo:
        """The NDC/MOH node, which serves the population register and the extra services."""
        return self.nodes["ndc"]


def _limit_body_size(directory: Path, max_body_bytes: int) -> None:
    """Add ``max_body_bytes`` to the ``[node]`` table of ``node.toml``, as an operator would."""
    config = NodeDir(directory).config_file
    text = config.read_text("utf-8")
    assert "[node]\n" in text, text
    assert "max_body_bytes" not in text, text
    config.write_text(text.replace("[node]\n", f"[node]\nmax_body_bytes = {max_body_bytes}\n"))


async def _set_up_impostor(
    directory: Path,
    keys_dir: Path,
    *,
    anchor: bytes,
    trust: TrustServices,
    session: aiohttp.ClientSession,
    now: dt.datetime,
) -> tuple[int, Path, Path]:
    """Register the impostor node and its subsystem; return its port and the TLS files it shows.

    The node directory holds the registered authentication certificate; the listener that
    tests start on the registered address shows a second certificate, issued by the same CA for
    the same node id, with another key.
    """
    port = free_port()
    initialise_node(
        directory,
        server_id=str(IMPOSTOR_NODE),
        anchor=anchor,
        passphrase=DEMO_PASSPHRASE,
        now=now,
        public_address=f"127.0.0.1:{port}",
        ports={"client_http_port": 0, "client_https_port": 0, "server_port": port, "admin_port": 0},
    )
    certify(directory, trust, now)
    node = NodeDir(directory)
    await register_server(node, DEMO_PASSPHRASE, session=session)
    await client_request(node, DEMO_PASSPHRASE, LAB, session=session)
    shown = trust.ca.issue_for_new_key(
        "auth",
        str(IMPOSTOR_NODE),
        keystore=SoftwareKeyStore(keys_dir),
        label="shown-auth",
        key_passphrase=DEMO_PASSPHRASE,
        now=now,
        server_id=str(IMPOSTOR_NODE),
    )
    cert_file = keys_dir / "shown-auth.pem"
    cert_file.write_bytes(
        b"".join(c.public_bytes(Encoding.PEM) for c in (shown.certificate, *shown.chain))
    )
    return port, cert_file, keys_dir / "shown-auth.key.pem"


def _recording_app(received: list[Received]) -> web.Application:
    async def anything(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(
            Received(request.method, request.raw_path, tuple(request.headers.items()), body)
        )
        return web.Response(status=500, text="the impostor should never be reached")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


@contextlib.asynccontextmanager
async def running_e2e_network(data_dir: Path) -> AsyncIterator[E2eNetwork]:
    """Bring the network up in ``data_dir`` (empty or absent) and stop it when the block ends."""
    data_dir = prepare_data_dir(data_dir)
    now = utc_now()
    ca_created_at = now - CA_AGE
    extras = ExtraServices()
    async with contextlib.AsyncExitStack() as stack:
        server_url = await stack.enter_async_context(embedded_postgres(data_dir))
        trust = await stack.enter_async_context(trust_services(data_dir, now=ca_created_at))
        reg = await stack.enter_async_context(registry(data_dir, server_url, trust, now=now))
        await reg.store.add_subsystem("e2e", LAB)
        samples = await stack.enter_async_context(await run_sample_services())
        extras_url = await stack.enter_async_context(serve_app(extras.app()))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        anchor = reg.anchor_path.read_bytes()

        layout: list[tuple[DemoNode, Path]] = []
        database_urls: dict[str, str] = {}
        for spec in NODES:
            directory = data_dir / "nodes" / spec.name
            database_urls[spec.name] = await set_up_node(
                spec,
                directory,
                anchor=anchor,
                server_url=server_url,
                trust=trust,
                session=session,
                sample_base_url=samples.base_url,
                http_port=0,
                https_port=0,
                now=now,
            )
            _limit_body_size(directory, MAX_BODY_BYTES)
            layout.append((spec, directory))
        async with open_pool(
            configured_url=database_urls["ndc"],
            data_dir=data_dir,
            database="jisr_node_ndc",
            migrations="security_server.migrations",
            max_size=2,
        ) as pool:
            store = CatalogueStore(pool)
            await store.load()
            await publish_extras(
                store,
                POPULATION,
                base_url=extras_url,
                unreachable_url=f"http://127.0.0.1:{free_port()}",
                allowed=str(INHERITANCE),
            )

        port, shown_cert, shown_key = await _set_up_impostor(
            data_dir / "nodes" / "impostor",
            data_dir / "impostor-shown-keys",
            anchor=anchor,
            trust=trust,
            session=session,
            now=now,
        )
        impostor = Impostor(IMPOSTOR_NODE, LAB, [])
        await stack.enter_async_context(
            serve_app(
                _recording_app(impostor.received),
                port=port,
                ssl_context=server_context(
                    shown_cert, shown_key, password=DEMO_PASSPHRASE.encode()
                ),
            )
        )
        await wait_until_published(
            layout[0][1], (*NODES, DemoNode("impostor", IMPOSTOR_NODE, (LAB,))), session
        )
        processes = await stack.enter_async_context(running_nodes(layout, data_dir / "logs"))
        nodes = {
            p.spec.name: RunningNodeInfo(
                p.spec, p.directory, database_urls[p.spec.name], p.endpoints, p.log_path
            )
            for p in processes
        }
        yield E2eNetwork(
            data_dir=data_dir,
            trust=trust,
            registry=reg,
            ca_created_at=ca_created_at,
            samples_url=samples.base_url,
            extras=extras,
            nodes=nodes,
            impostor=impostor,
            session=session,
        )


@contextlib.asynccontextmanager
async def node_database(node: RunningNodeInfo) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on a running node's database, for reading its message log."""
    pool = await asyncpg.create_pool(node.database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
