"""The global-configuration client against a real HTTP source, driven by an injected clock."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import structlog
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
from security_server.conf_client import DOCUMENT_FILE, MAX_EXPLANATION_BYTES, ConfClient
from tests.clock import Clock
from trust_services.http_server import serve_app

T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


@dataclasses.dataclass
class Source:
    """A registry's publication: versions by number, a pointer, and an off switch."""

    signer: SoftwareSigner
    versions: dict[int, tuple[bytes, bytes]] = dataclasses.field(default_factory=dict)
    latest: int = 0
    down: bool = False
    tamper: bool = False
    #: Answer requests for a version's files with this handler instead (an error, say).
    files_answer: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

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

        async def file(request: web.Request) -> web.StreamResponse:
            if self.files_answer is not None:
                return await self.files_answer(request)
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


async def test_downloads_verifies_keeps_on_disk_and_notifies(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    clock = Clock(T0)
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
    clock = Clock(T0)
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
    clock = Clock(T0)
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
    clock = Clock(T0)
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
    clock = Clock(T0)
    source.publish(T0)
    source.publish(T0 + dt.timedelta(seconds=1))
    client = client_for(tmp_path, source, url, clock, session)
    await client.poll_once()
    source.latest = 1
    assert not await client.poll_once()
    assert "rollback" in (client.last_error or "")
    assert client.current(clock()).version == 2


# -- what an HTTP error says ------------------------------------------------------------------

#: The registry's answer for a pruned version (registry.store, ``_missing_version``).
PRUNED = (
    "configuration version 2 is no longer kept by the registry (old versions are pruned; the "
    "oldest kept is 5); read globalconf/current for the version in force (6)"
)


def answer(
    status: int, body: bytes, content_type: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


async def _fails_with(
    tmp_path: Path,
    source: Source,
    url: str,
    session: aiohttp.ClientSession,
    files_answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[ConfClient, str]:
    """Version 1 held, version 2 announced but its files answered by ``files_answer``."""
    clock = Clock(T0)
    source.publish(T0)
    client = client_for(tmp_path, source, url, clock, session)
    assert await client.poll_once()
    source.files_answer = files_answer
    source.publish(T0 + dt.timedelta(seconds=10))
    clock.now = T0 + dt.timedelta(seconds=11)
    with structlog.testing.capture_logs() as logs:
        assert not await client.poll_once()
    assert client.current(clock()).version == 1
    assert client.failures == 1
    assert client.last_error is not None
    (warning,) = [e for e in logs if e["event"] == "global configuration download failed"]
    assert warning["error"] == client.last_error
    return client, client.last_error


async def test_an_http_error_carries_the_registrys_explanation(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    body = json.dumps({"type": "NotFoundError", "message": PRUNED}).encode()
    client, error = await _fails_with(
        tmp_path, source, url, session, answer(404, body, "application/json")
    )

    doc_url = url.removesuffix("current") + "v/2/conf.json"
    assert error == (
        f"{url}: the configuration source answered HTTP 404 for the configuration document "
        f"({doc_url}): {PRUNED}"
    )
    assert client.next_delay() == 1  # backoff, then current is read again
    source.files_answer = None
    assert await client.poll_once()
    assert (client.current(T0 + dt.timedelta(seconds=12)).version, client.failures) == (2, 0)
    assert client.last_error is None


async def test_every_source_is_tried_and_each_explanation_kept(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    """A mirror answering plain text before the registry: both errors are named, in order."""
    mirror = web.Application()
    mirror.router.add_get("/{tail:.*}", answer(503, b"mirror under maintenance\n", "text/plain"))
    source.files_answer = answer(
        404, json.dumps({"type": "NotFoundError", "message": PRUNED}).encode(), "application/json"
    )
    source.publish(T0)
    async with serve_app(mirror) as mirror_base:
        anchor = make_anchor(
            "IQ",
            [f"{mirror_base}/globalconf/current", url],
            [source.signer.certificate],
            generated_at=T0,
        )
        client = ConfClient(tmp_path / "globalconf", anchor, session=session, clock=Clock(T0))
        assert not await client.poll_once()
    error = client.last_error or ""
    first, second = error.split("; ", 1)[0], error.split(f"; {url}: ", 1)[1]
    assert first.endswith(
        "answered HTTP 503 for the configuration pointer "
        f"({mirror_base}/globalconf/current): mirror under maintenance"
    )
    assert second.endswith(
        "(old versions are pruned; the oldest kept is 5); read globalconf/current for the version "
        "in force (6)"
    )


async def test_a_huge_error_body_is_read_only_up_to_the_bound(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    """The body never ends: the client stops reading it, or it would wait for its timeout."""

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=404)
        resp.content_type = "text/plain"
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:  # until the client hangs up (or the server shuts down)
                await resp.write(b"no such version; " * 4096)
        return resp

    _, error = await _fails_with(tmp_path, source, url, session, endless)

    assert "HTTP 404 for the configuration document" in error
    explanation = error.split("conf.json): ", 1)[1]
    assert explanation.startswith("no such version; no such version;")
    assert explanation.endswith(" ...")
    assert len(explanation.encode()) <= MAX_EXPLANATION_BYTES + 4
    assert "Timeout" not in error


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\x00\xffPK\x03\x04\x89PNG\r\n\x1a\n" * 8, "application/octet-stream"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe not text", "text/plain"),
        (b"<html><body>Not Found</body></html>", "text/html"),
    ],
)
async def test_a_binary_or_other_error_body_is_not_shown(
    tmp_path: Path,
    source: Source,
    url: str,
    session: aiohttp.ClientSession,
    body: bytes,
    content_type: str,
) -> None:
    _, error = await _fails_with(tmp_path, source, url, session, answer(404, body, content_type))

    assert error.endswith(
        "answered HTTP 404 for the configuration document "
        f"({url.removesuffix('current')}v/2/conf.json)"
    )


async def test_control_characters_in_an_explanation_never_break_the_log_line(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    message = (
        "version gone\n2026-11-22 [info] global configuration accepted\x1b[2J\u202etxt.exe\r\t end"
    )
    _, error = await _fails_with(
        tmp_path,
        source,
        url,
        session,
        answer(
            404,
            json.dumps({"type": "NotFoundError", "message": message}).encode(),
            "application/json",
        ),
    )

    explanation = error.split("conf.json): ", 1)[1]
    assert explanation == (
        "version gone 2026-11-22 [info] global configuration accepted [2J txt.exe end"
    )
    assert error.isprintable()


async def test_json_without_a_message_is_shown_as_text(
    tmp_path: Path, source: Source, url: str, session: aiohttp.ClientSession
) -> None:
    _, error = await _fails_with(
        tmp_path, source, url, session, answer(410, b'{"error":\n  "gone"}', "application/json")
    )

    assert error.endswith('conf.json): {"error": "gone"}')
