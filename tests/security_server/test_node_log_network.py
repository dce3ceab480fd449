"""A two-node network with a TSA the test can stop, for the message-log tests of running nodes.

Everything is real and on 127.0.0.1: a registry with auto-approval, a CA with its OCSP
responder, an approved TSA, a consumer node (``IQ/GOV/HJC/ss1``, client
``IQ/GOV/HJC/inheritance``) and a provider node (``IQ/GOV/NDC/ss1``, provider
``IQ/GOV/NDC/population`` with a REST service ``citizens``), each node with its own database
(named in its ``node.toml``, so ``jisr node`` commands find it too). The nodes share a clock
that a test can move forward. The tests here check how the settings reach the node; the other
``test_node_log_*`` modules and ``tests/audit/test_live_search.py`` use the fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from certs.keystore import SoftwareKeyStore
from certs.tsa import DEFAULT_POLICY_OID, TimestampAuthority
from config.errors import ConfigError
from config.settings import NodeSettings, Settings
from jisr.cli import cli
from security_server.catalogue_store import CatalogueStore
from security_server.node import (
    RunningNode,
    archive_directory,
    archive_store,
    build_archiver,
    message_log_options,
    running_node,
)
from security_server.node_dir import NodeDir
from tests.security_server.test_node_setup import (
    CA_PASSPHRASE,
    PASSPHRASE,
    Network,
    running_network,
    utc_now,
)
from tests.security_server.two_nodes import (
    NodeDatabase,
    node_database,
    registered_node,
    wait_until_published,
)
from trust_services.http_server import serve_app
from trust_services.tsa_server import SerialNumbers, tsa_app

pytestmark = pytest.mark.postgres

CONSUMER = "IQ/GOV/HJC/inheritance"
PROVIDER = "IQ/GOV/NDC/population"
CONSUMER_SERVER = "IQ/GOV/HJC/ss1"
PROVIDER_SERVER = "IQ/GOV/NDC/ss1"


class DrivenClock:
    """The real time plus an offset the test moves forward (nodes and TSA checks share it)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return utc_now() + self.offset


class StoppableTsa:
    """The approved TSA on a fixed port, stopped and started again by the test."""

    def __init__(self, authority: TimestampAuthority, serials: Path) -> None:
        self._authority = authority
        self._serials = serials
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        runner = web.AppRunner(tsa_app(self._authority, SerialNumbers(self._serials)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@dataclasses.dataclass
class Answer:
    """What the consumer's information system got back."""

    exchange: str
    status: int
    error: str | None
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclasses.dataclass
class LogNetwork:
    network: Network
    tsa: StoppableTsa
    clock: DrivenClock
    session: aiohttp.ClientSession
    consumer_dir: NodeDir
    provider_dir: NodeDir
    consumer_db: NodeDatabase
    provider_db: NodeDatabase
    #: Exchange tokens (the citizen number in the path) the provider's service received.
    served: list[str]

    def settings(self, node: NodeDir, overrides: Mapping[str, Any]) -> Settings:
        settings = node.load_settings(env={})
        return dataclasses.replace(settings, node=dataclasses.replace(settings.node, **overrides))

    @contextlib.asynccontextmanager
    async def running(
        self,
        consumer: Mapping[str, Any] | None = None,
        provider: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[tuple[RunningNode, RunningNode]]:
        """Both nodes, with these NodeSettings fields changed for each."""
        async with (
            running_node(
                self.consumer_dir,
                PASSPHRASE,
                pool=self.consumer_db.pool,
                settings=self.settings(self.consumer_dir, consumer or {}),
                clock=self.clock,
            ) as consumer_node,
            running_node(
                self.provider_dir,
                PASSPHRASE,
                pool=self.provider_db.pool,
                settings=self.settings(self.provider_dir, provider or {}),
                clock=self.clock,
            ) as provider_node,
        ):
            yield consumer_node, provider_node

    async def call(
        self,
        consumer: RunningNode,
        *,
        user_id: str | None = None,
        issue: str | None = None,
    ) -> Answer:
        """One REST exchange through both nodes; its message id is also its citizen number."""
        exchange = uuid.uuid4().hex
        headers = {"X-Road-Client": CONSUMER, "X-Road-Id": exchange}
        if user_id:
            headers["X-Road-UserId"] = user_id
        if issue:
            headers["X-Road-Issue"] = issue
        url = f"{consumer.endpoints['client_http']}/r1/{PROVIDER}/citizens/citizens/{exchange}"
        async with self.session.get(url, headers=headers) as resp:
            return Answer(
                exchange, resp.status, resp.headers.get("X-Road-Error"), await resp.read()
            )


def _tsa_authority(network: Network) -> TimestampAuthority:
    keystore = SoftwareKeyStore(network.tmp / "tsa-keys")
    issued = network.ca.issue_for_new_key(
        "tsa",
        "Jisr Test TSA",
        keystore=keystore,
        label="tsa",
        key_passphrase=CA_PASSPHRASE,
        now=utc_now(),
    )
    return TimestampAuthority(
        issued.certificate,
        keystore.signer("tsa", CA_PASSPHRASE, issued.certificate, issued.chain),
        policy_oid=DEFAULT_POLICY_OID,
        chain=issued.chain,
    )


@contextlib.asynccontextmanager
async def log_network_for(
    fresh_db_url: str, pg_server_url: str, tmp: Path
) -> AsyncIterator[LogNetwork]:
    from cryptography.hazmat.primitives.serialization import Encoding

    backend = web.Application()
    served: list[str] = []

    async def citizen(request: web.Request) -> web.Response:
        served.append(request.match_info["id"])
        return web.json_response({"nationalId": request.match_info["id"], "alive": True})

    backend.router.add_get("/api/citizens/{id}", citizen)

    async with (
        running_network(fresh_db_url, tmp) as network,
        aiohttp.ClientSession() as session,
        serve_app(backend) as backend_url,
        node_database(pg_server_url, tmp) as consumer_db,
        node_database(pg_server_url, tmp) as provider_db,
    ):
        authority = _tsa_authority(network)
        tsa = StoppableTsa(authority, tmp / "tsa-serial")
        await tsa.start()
        try:
            await network.store.add_tsa(
                "test", "Jisr Test TSA", tsa.url, authority.certificate.public_bytes(Encoding.DER)
            )
            consumer = await registered_node(
                network, session, CONSUMER_SERVER, CONSUMER, consumer_db.url
            )
            provider = await registered_node(
                network, session, PROVIDER_SERVER, PROVIDER, provider_db.url
            )
            await wait_until_published(consumer, [CONSUMER, PROVIDER], with_tsa=True)
            await wait_until_published(provider, [CONSUMER, PROVIDER], with_tsa=True)
            await CatalogueStore(consumer_db.pool).add_client("setup", CONSUMER)
            provider_store = CatalogueStore(provider_db.pool)
            await provider_store.add_client("setup", PROVIDER)
            await provider_store.add_rest("setup", PROVIDER, "citizens", backend_url + "/api")
            await provider_store.grant(
                "setup", PROVIDER, "citizens", CONSUMER, method="GET", path="/citizens/*"
            )
            yield LogNetwork(
                network,
                tsa,
                DrivenClock(),
                session,
                consumer,
                provider,
                consumer_db,
                provider_db,
                served,
            )
        finally:
            await tsa.stop()


@pytest.fixture
async def log_network(
    fresh_db_url: str, pg_server_url: str, tmp_path: Path
) -> AsyncIterator[LogNetwork]:
    async with log_network_for(fresh_db_url, pg_server_url, tmp_path) as net:
        yield net


# -- helpers the tests share -----------------------------------------------------------------


async def run_cli(args: list[str], env: Mapping[str, str] | None = None) -> Result:
    """``jisr ARGS`` in a worker thread (the command runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, args, env=dict(env or {}))


async def records_of(pool: asyncpg.Pool, exchange: str) -> dict[str, asyncpg.Record]:
    """The records of one exchange in a node's log, by direction."""
    rows = await pool.fetch(
        "SELECT seq, direction, body, "
        "seq <= (SELECT message_log_timestamped_through()) AS timestamped "
        "FROM message_log WHERE message_id = $1",
        exchange,
    )
    return {row["direction"]: row for row in rows}


async def untimestamped(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval(
        "SELECT count(*) FROM message_log WHERE seq > (SELECT message_log_timestamped_through())"
    )
    assert isinstance(value, int)
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- how the settings reach the node ----------------------------------------------------------


def _settings(tmp_path: Path, **node: Any) -> Settings:
    return Settings(data_dir=tmp_path, node=NodeSettings(server_id=CONSUMER_SERVER, **node))


def test_message_log_settings_become_the_logs_options(tmp_path: Path) -> None:
    options = message_log_options(
        _settings(
            tmp_path,
            log_bodies=False,
            timestamp_immediately=True,
            timestamp_failure_period_s=120,
            retention_days=7,
        ).node
    )
    assert options["log_bodies"] is False
    assert options["timestamp_immediately"] is True
    assert options["acceptable_period"] == dt.timedelta(seconds=120)
    assert options["retention"] == dt.timedelta(days=7)


def test_refuses_nonsensical_message_log_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timestamp_failure_period_s"):
        message_log_options(_settings(tmp_path, timestamp_failure_period_s=0).node)
    with pytest.raises(ConfigError, match="retention_days"):
        message_log_options(_settings(tmp_path, retention_days=-1).node)


def test_archives_go_to_the_data_directory_unless_configured(tmp_path: Path) -> None:
    assert archive_directory(_settings(tmp_path)) == tmp_path / "archives"
    assert archive_directory(_settings(tmp_path, archive_dir="evidence")) == tmp_path / "evidence"
    elsewhere = tmp_path / "mounted" / "archives"
    assert archive_directory(_settings(tmp_path, archive_dir=str(elsewhere))) == elsewhere
    store = archive_store(_settings(tmp_path))
    assert (tmp_path / "archives").is_dir()
    assert store.staging == tmp_path / "archives"


def test_refuses_an_archive_url_that_is_not_s3(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        archive_store(_settings(tmp_path, archive_url="ftp://archives.example/jisr"))


def test_archiving_to_s3_without_boto3_is_a_clear_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if boto3 were not installed
    with pytest.raises(ConfigError, match="boto3"):
        archive_store(_settings(tmp_path, archive_url="s3://jisr-archives/hjc"))


async def test_refuses_an_unknown_archive_period(tmp_path: Path) -> None:
    node = NodeDir(tmp_path)
    with pytest.raises(ConfigError, match="archive_period"):
        build_archiver(
            _settings(tmp_path, archive_period="week"),
            node,
            source=None,  # type: ignore[arg-type]  # refused before the source is used
            pool=None,  # type: ignore[arg-type]
        )
