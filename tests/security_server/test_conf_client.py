"""The global-configuration client against a real HTTP source, driven by an injected clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from certs.signer import SoftwareSigner
from gateway.anchor import make_anchor
from gateway.globalconf import (
    GlobalConf,
    GlobalConfPointer,
    GlobalSettings,
    MemberClass,
    OutdatedGlobalConf,
    SigningKey,
    build_globalconf,
    sign_globalconf,
)
from registry.conf_keys import create_key, load_signer
from security_server.conf_client import DOCUMENT_FILE, ConfClient
from trust_services.http_server import serve_app

T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


@dataclasses.dataclass
class Clock:
    now: dt.datetime = T0

    def __call__(self) -> dt.datetime:
        return self.now


@dataclasses.dataclass
class Source:
    """A registry's publication: versions by number, a pointer, and an off switch."""

    signer: SoftwareSigner
    versions: dict[int, tuple[bytes, bytes]] = dataclasses.field(default_factory=dict)
    latest: int = 0
    down: bool = False
    tamper: bool = False

    def publish(self, at: dt.datetime, *, refresh_s: int = 60) -> GlobalConf:
        previous = GlobalConf.from_document(self.versions[self.latest][0]) if self.latest else None
        conf = build_globalconf(
            "IQ",
            self.latest + 1,
            at,
            None,
            previous.digest if previous else None,
            GlobalSettings(conf_refresh_s=refresh_s),
            [MemberClass("GOV", "Government")],
            [],
            [],
            [],
            [],
            [],
            [SigningKey(self.signer.certificate, "active")],
        )
        self.versions[conf.version] = sign_globalconf(conf, self.signer, now=at)
        self.latest = conf.version
        return conf

    def app(self) -> web.Application:
        app = web.Application()

        async def current(_: web.Request) -> web.Response:
            if self.down:
                return web.Response(status=503)
            return web.Response(
                body=GlobalConfPointer.for_version(self.latest).to_bytes(),
                content_type="application/json",
            )

        async def file(request: web.Request) -> web.Response:
            document, signature = self.versions[int(request.match_info["n"])]
            if self.tamper:
                document = document.replace(b"Government", b"Governmenz")
            name = request.match_info["name"]
            return web.Response(body=signature if name.endswith(".p7s") else document)

        app.router.add_get("/globalconf/current", current)
        app.router.add_get("/globalconf/v/{n}/{name}", file)
        return app


@pytest.fixture
def source(tmp_path: Path) -> Source:
    _, cert, ref = create_key(tmp_path, "IQ", b"conf-key-passphrase", now=T0 - dt.timedelta(days=1))
    return Source(load_signer(tmp_path, ref, cert, b"conf-key-passphrase"))


@pytest.fixture
async def url(source: Source) -> AsyncIterator[str]:
    async with serve_app(source.app()) as base:
        yield base + "/globalconf/current"


def client_for(
    tmp_path: Path, source: Source, url: str, clock: Clock, session: aiohttp.ClientSession
) -> ConfClient:
    anchor = make_anchor("IQ", [url], [source.signer.certificate], generated_at=T0)
    return ConfClient(
        tmp_path / "globalconf", anchor, session=session, clock=clock, poll_s=30, max_backoff_s=20
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_downloads_verifies_keeps_on_disk_and_notifies(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source.publish(T0)
    client = client_for(tmp_path, source, url, clock, session)
    seen: list[int] = []
    client.on_change.append(lambda conf: seen.append(conf.version))
    with pytest.raises(OutdatedGlobalConf, match="no global configuration yet"):
        client.current(clock())
    assert await client.poll_once()
    assert client.current(clock()).version == 1
    assert (tmp_path / "globalconf" / DOCUMENT_FILE).read_bytes() == source.versions[1][0]
    assert not await client.poll_once()  # same version: nothing downloaded
    source.publish(T0 + dt.timedelta(seconds=30))
    clock.now = T0 + dt.timedelta(seconds=31)
    assert await client.poll_once()
    assert seen == [1, 2]
    assert client.next_delay() == 60


async def test_starts_from_the_disk_copy_without_the_registry(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source.publish(T0)
    await client_for(tmp_path, source, url, clock, session).poll_once()
    source.down = True
    restarted = client_for(tmp_path, source, url, clock, session)
    assert restarted.load_cached() is not None
    assert not await restarted.poll_once()
    assert restarted.current(clock()).version == 1
    assert restarted.failures == 1


async def test_expires_then_recovers_when_the_registry_is_back(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source.publish(T0)
    client = client_for(tmp_path, source, url, clock, session)
    await client.poll_once()
    source.down = True
    clock.now = T0 + dt.timedelta(seconds=599)
    assert not await client.poll_once()
    assert client.current(clock()).version == 1  # still in force until it expires
    clock.now = T0 + dt.timedelta(seconds=601)
    await client.poll_once()
    with pytest.raises(OutdatedGlobalConf, match="expired") as info:
        client.current(clock())
    assert info.value.fault_code == "Server.ClientProxy.OutdatedGlobalConf"
    assert "503" in (client.last_error or "")
    assert client.status().in_force is False
    # Backoff grows but stays bounded by max_backoff_s and the refresh interval.
    assert client.next_delay() == 2
    client.failures = 40
    assert client.next_delay() == 20

    source.down = False
    source.publish(clock.now)
    assert await client.poll_once()
    assert client.current(clock()).version == 2
    assert (client.failures, client.last_error) == (0, None)
    # A restart after expiry keeps the stale copy as the previous version, not in force.
    clock.now += dt.timedelta(hours=1)
    restarted = client_for(tmp_path, source, url, clock, session)
    assert restarted.load_cached() is not None
    with pytest.raises(OutdatedGlobalConf):
        restarted.current(clock())


async def test_refuses_tampered_document_and_keeps_the_held_version(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source.publish(T0)
    client = client_for(tmp_path, source, url, clock, session)
    await client.poll_once()
    source.publish(T0 + dt.timedelta(seconds=10))
    source.tamper = True
    clock.now = T0 + dt.timedelta(seconds=11)
    assert not await client.poll_once()
    assert "signature" in (client.last_error or "")
    assert client.current(clock()).version == 1
    assert (tmp_path / "globalconf" / DOCUMENT_FILE).read_bytes() == source.versions[1][0]


async def test_refuses_a_rollback(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    source.publish(T0)
    source.publish(T0 + dt.timedelta(seconds=1))
    client = client_for(tmp_path, source, url, clock, session)
    await client.poll_once()
    source.latest = 1
    assert not await client.poll_once()
    assert "rollback" in (client.last_error or "")
    assert client.current(clock()).version == 2
