"""The signed path under test: registry, trust services and two nodes, with their message logs.

Rules:

- The embedded PostgreSQL, the CA with its OCSP responder and TSA, and the central registry
  (auto-approval on, the demo members) run in the benchmark's own process, started with the
  demo's functions (:mod:`jisr.demo.network`). The nodes' databases live in the same embedded
  PostgreSQL, one database per node, so its CPU time can be reported beside the nodes'.
- Each node is set up as the demo sets up its nodes (:func:`jisr.demo.nodes.set_up_node`: the
  functions behind ``jisr node init``, ``import-cert``, ``register``, ``add-client``,
  ``service add`` and ``access grant``) and runs as its own process, ``jisr node serve``, so
  that its CPU time and memory are its own. Consumer:
  ``IQ/GOV/HJC/ss1`` hosting ``IQ/GOV/HJC/inheritance``; provider: ``IQ/GOV/NDC/ss1`` hosting
  ``IQ/GOV/NDC/population`` with the bench service's three services. The one setting changed
  from the node defaults is the archiving interval, 0: no archiver in the node process
  (:func:`archive_apart`).
- The network is ready when a request through both nodes is answered; a network that cannot be
  built (a step refused, the exchange never answering) is reported as
  :class:`NodesUnavailable` with the reason and the logs to read; the benchmark then still
  measures the baseline and records why the nodes were skipped.
- ``lost_records``: each node's message log must hold one request and one response record per
  successful call, all timestamped; the benchmark waits (bounded) for the last batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg

from bench.errors import BenchError
from bench.scenarios import (
    ECHO_SERVICE_CODE,
    SMALL_SERVICE_CODE,
    SOAP_SERVICE_CODE,
    Parties,
    node_spec,
)
from config.errors import JisrError
from gateway.identifiers import SecurityServerId, SubsystemId
from jisr.demo.members import DemoNode
from jisr.demo.network import embedded_postgres, registry, trust_services
from jisr.demo.nodes import CatalogueSetUp, running_nodes, set_up_node, wait_until_published
from security_server.catalogue_store import CatalogueStore
from security_server.log_stamps import TIMESTAMPED_THROUGH
from security_server.node_dir import NodeDir

#: Passphrase of the benchmark nodes' keys: throw-away keys of one run, never printed.
NODE_PASSPHRASE: Final = "jisr-bench-only-passphrase"  # noqa: S105 (a published bench value)
CONSUMER_SERVER: Final = SecurityServerId.parse("IQ/GOV/HJC/ss1")
PROVIDER_SERVER: Final = SecurityServerId.parse("IQ/GOV/NDC/ss1")
PARTIES: Final = Parties(
    SubsystemId.parse("IQ/GOV/HJC/inheritance"), SubsystemId.parse("IQ/GOV/NDC/population")
)
READY_TIMEOUT_S: Final = 180.0
#: The nodes' archiving interval: 0, no archiver in the node process (see
#: :func:`archive_apart`).
ARCHIVE_INTERVAL_S: Final = 0
#: Longest wait for the last timestamping batch after the load (the default interval is 60 s).
TIMESTAMP_WAIT_S: Final = 180.0
_ACTOR: Final = "bench"
_CONSUMER: Final = DemoNode("consumer", CONSUMER_SERVER, (PARTIES.consumer,))
_PROVIDER: Final = DemoNode("provider", PROVIDER_SERVER, (PARTIES.provider,))
_CONSUMER_DIRECTIONS: Final = ("request_out", "response_in")
_PROVIDER_DIRECTIONS: Final = ("request_in", "response_out")


class NodesUnavailable(BenchError):
    """The node network cannot be built on this tree; the message says what is missing."""


@dataclasses.dataclass
class RunningNodeProcess:
    name: str
    directory: Path
    database_url: str
    pid: int
    endpoints: dict[str, Any]
    directions: tuple[str, str]


@dataclasses.dataclass
class NodeNetwork:
    """The running node network as the benchmark uses it."""

    consumer: RunningNodeProcess
    provider: RunningNodeProcess
    parties: Parties
    #: Whether the nodes write a message log (the table exists and the probe call was logged).
    message_log: bool
    #: The embedded PostgreSQL's postmaster, when known.
    postgres_pid: int | None
    #: Successful calls made by the benchmark itself (the readiness probe).
    probe_calls: int = 0
    batch_timestamping: bool = False

    @property
    def consumer_url(self) -> str:
        return str(self.consumer.endpoints["client_http"])

    @property
    def node_pids(self) -> dict[str, int]:
        return {"consumer node": self.consumer.pid, "provider node": self.provider.pid}

    async def lost_records(self, successful_calls: int) -> dict[str, Any] | None:
        """Compare each node's message log with the calls that succeeded; None: no log."""
        if not self.message_log:
            return None
        expected = successful_calls + self.probe_calls
        deadline = time.monotonic() + TIMESTAMP_WAIT_S
        while True:
            counts = {node.name: await _log_counts(node) for node in (self.consumer, self.provider)}
            waiting = sum(c["untimestamped"] for c in counts.values())
            if waiting == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        lost = 0
        extra = 0
        for node in (self.consumer, self.provider):
            found = counts[node.name]
            for direction in node.directions:
                lost += max(0, expected - found[direction])
                extra += max(0, found[direction] - expected)
            lost += found["untimestamped"]
        self.batch_timestamping = any(c["timestamped"] for c in counts.values())
        return {
            "lost_records": lost,
            "extra_records": extra,
            "expected_per_direction": expected,
            "per_node": counts,
            "timestamp_wait_s": round(TIMESTAMP_WAIT_S - max(0.0, deadline - time.monotonic()), 1),
        }


def archive_apart(directory: Path) -> None:
    """Run the node without its in-process archiver (``archive_interval_s = 0`` in its
    ``node.toml``), as a busy node is advised to run.

    Archiving is a batch job (X-Road runs it as a service of its own; a Jisr node runs it as
    ``jisr node archive --every SECONDS``): a pass that happened to fall into a measured window
    would add its cost to that window's requests only. ``python -m bench.archiving`` measures
    it apart.
    """
    config = NodeDir(directory).config_file
    text = config.read_text("utf-8")
    if "\narchive_interval_s" in text:
        return
    header = "[node]\n"
    if header not in text:
        raise NodesUnavailable(f"{config} has no [node] table to set archive_interval_s in")
    config.write_text(
        text.replace(header, f"{header}archive_interval_s = {ARCHIVE_INTERVAL_S}\n", 1), "utf-8"
    )


async def _log_counts(node: RunningNodeProcess) -> dict[str, int]:
    conn = await asyncpg.connect(node.database_url)
    try:
        rows = await conn.fetch(
            "SELECT direction, count(*) AS total, "  # noqa: S608 (constant SQL text)
            f"count(*) FILTER (WHERE seq <= {TIMESTAMPED_THROUGH}) AS stamped "
            "FROM message_log GROUP BY direction"
        )
    finally:
        await conn.close()
    counts = {direction: 0 for direction in node.directions}
    counts["untimestamped"] = 0
    counts["timestamped"] = 0
    for row in rows:
        counts[row["direction"]] = counts.get(row["direction"], 0) + int(row["total"])
        counts["timestamped"] += int(row["stamped"])
        counts["untimestamped"] += int(row["total"]) - int(row["stamped"])
    return counts


async def _has_message_log(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        table = await conn.fetchval("SELECT to_regclass('message_log')")
        if table is None:
            return False
        return bool(await conn.fetchval("SELECT count(*) FROM message_log"))
    finally:
        await conn.close()


def bench_wsdl(address: str) -> bytes:
    """The SOAP service's description: one operation, ``benchSoap``."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:tns="http://jisr.example/bench" targetNamespace="http://jisr.example/bench"
    name="bench">
  <wsdl:portType name="benchPortType">
    <wsdl:operation name="{SOAP_SERVICE_CODE}"/>
  </wsdl:portType>
  <wsdl:binding name="benchBinding" type="tns:benchPortType">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="{SOAP_SERVICE_CODE}">
      <soap:operation soapAction=""/>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="benchService">
    <wsdl:port name="benchPort" binding="tns:benchBinding">
      <soap:address location="{address}"/>
    </wsdl:port>
  </wsdl:service>
</wsdl:definitions>
""".encode()


def _bench_catalogue(service_url: str) -> CatalogueSetUp:
    """``jisr node service add`` and ``access grant`` for the provider."""

    async def publish(store: CatalogueStore) -> None:
        provider, consumer = str(PARTIES.provider), str(PARTIES.consumer)
        await store.add_rest(_ACTOR, provider, SMALL_SERVICE_CODE, service_url + "/small")
        await store.add_rest(_ACTOR, provider, ECHO_SERVICE_CODE, service_url + "/echo")
        await store.add_wsdl(_ACTOR, provider, document=bench_wsdl(service_url + "/soap"))
        for code in (SMALL_SERVICE_CODE, ECHO_SERVICE_CODE, SOAP_SERVICE_CODE):
            await store.grant(_ACTOR, provider, code, consumer)

    return publish


async def _probe(consumer_url: str, session: aiohttp.ClientSession, logs: Path) -> int:
    """Call through both nodes until every scenario answers; returns the calls that succeeded."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    succeeded = 0
    for name in ("rest_small", "rest_100k", "soap_small"):
        spec = node_spec(name, consumer_url, PARTIES)
        last = ""
        while True:
            body = spec.body
            if spec.unique_placeholder is not None:
                body = body.replace(spec.unique_placeholder, f"probe-{time.time_ns()}".encode())
            try:
                async with session.request(
                    spec.method, spec.url, data=body or None, headers=spec.headers
                ) as response:
                    problem = spec.check(response.status, await response.read())
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                succeeded += 1
                break
            last = problem
            if time.monotonic() > deadline:
                raise NodesUnavailable(
                    f"{name} through the nodes never succeeded in {READY_TIMEOUT_S:.0f} s; last "
                    f"answer: {last[:300]}; see the node logs in {logs}"
                )
            await asyncio.sleep(1.0)
    return succeeded


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postgres" / "postmaster.pid").read_text("ascii").splitlines()[0]
        return int(first)
    except (OSError, ValueError, IndexError):
        return None


@contextlib.asynccontextmanager
async def node_network(
    data_dir: Path, service_url: str, log_dir: Path
) -> AsyncIterator[NodeNetwork]:
    """Start the registry, trust services and both nodes; stop them when the block ends."""
    now = dt.datetime.now(dt.UTC)
    async with contextlib.AsyncExitStack() as stack:
        try:
            server_url = await stack.enter_async_context(embedded_postgres(data_dir))
            trust = await stack.enter_async_context(trust_services(data_dir, now=now))
            reg = await stack.enter_async_context(registry(data_dir, server_url, trust, now=now))
            anchor = reg.anchor_path.read_bytes()
            session = await stack.enter_async_context(aiohttp.ClientSession())
            urls: dict[str, str] = {}
            for spec, catalogue in (
                (_CONSUMER, None),
                (_PROVIDER, _bench_catalogue(service_url)),
            ):
                urls[spec.name] = await set_up_node(
                    spec,
                    data_dir / f"node-{spec.name}",
                    anchor=anchor,
                    server_url=server_url,
                    trust=trust,
                    session=session,
                    now=now,
                    catalogue=catalogue,
                    passphrase=NODE_PASSPHRASE,
                    database_prefix="bench_",
                    actor=_ACTOR,
                )
            for name in urls:
                archive_apart(data_dir / f"node-{name}")
            for name in urls:
                await wait_until_published(
                    data_dir / f"node-{name}",
                    (_CONSUMER, _PROVIDER),
                    session,
                    timeout_s=READY_TIMEOUT_S,
                )
            # Entered last, so the nodes stop before the registry, trust services and
            # PostgreSQL they use, also when the network fails to come up.
            running = await stack.enter_async_context(
                running_nodes(
                    [(spec, data_dir / f"node-{spec.name}") for spec in (_CONSUMER, _PROVIDER)],
                    log_dir,
                    passphrase=NODE_PASSPHRASE,
                    ready_timeout_s=READY_TIMEOUT_S,
                )
            )
            consumer, provider = (
                RunningNodeProcess(
                    node.spec.name,
                    node.directory,
                    urls[node.spec.name],
                    node.process.pid,
                    node.endpoints,
                    directions,
                )
                for node, directions in zip(
                    running, (_CONSUMER_DIRECTIONS, _PROVIDER_DIRECTIONS), strict=True
                )
            )
            probe_calls = await _probe(str(consumer.endpoints["client_http"]), session, log_dir)
            logged = await _has_message_log(urls["consumer"]) and await _has_message_log(
                urls["provider"]
            )
        except JisrError as exc:
            if isinstance(exc, NodesUnavailable):
                raise
            raise NodesUnavailable(f"{type(exc).__name__}: {exc}") from exc
        network = NodeNetwork(
            consumer,
            provider,
            PARTIES,
            message_log=logged,
            postgres_pid=_postmaster_pid(data_dir),
            probe_calls=probe_calls,
        )
        yield network
