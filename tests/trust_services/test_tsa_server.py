from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from certs.tsa import (
    MAX_REQUEST_BYTES,
    TimestampAuthority,
    TimestampRejected,
    build_request,
    parse_response,
    verify_token,
)
from config.errors import ConfigError
from tests.pki_factory import NOW, FixturePki, Issued
from trust_services.http_server import serve_app
from trust_services.tsa_server import SerialNumbers, tsa_app

POLICY = "2.25.1234"
DATA = b"message log batch root"
QUERY = {"Content-Type": "application/timestamp-query"}


@pytest.fixture(scope="module")
def tsa_issued() -> Issued:
    return FixturePki.create().tsa()


@pytest.fixture
def serials(tmp_path: Path) -> SerialNumbers:
    return SerialNumbers(tmp_path / "tsa" / "serial", block=4)


@pytest.fixture
async def url(tsa_issued: Issued, serials: SerialNumbers) -> AsyncIterator[str]:
    authority = TimestampAuthority(tsa_issued.cert, tsa_issued.key, policy_oid=POLICY)
    async with serve_app(tsa_app(authority, serials, clock=lambda: NOW)) as bound:
        yield bound + "/"


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> bytes:
    async with session.post(url, data=body, headers=QUERY) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/timestamp-reply"
        return await resp.read()


async def test_answers_a_query_with_a_verifiable_token(
    url: str, session: aiohttp.ClientSession, tsa_issued: Issued
) -> None:
    request = build_request(DATA, nonce=77)
    token = parse_response(await _post(session, url, request), request)
    info = verify_token(token.der, data=DATA, tsa_certs=[tsa_issued.cert], at=NOW)
    assert info.gen_time == NOW
    assert info.nonce == 77


async def test_serial_numbers_increase_across_requests(
    url: str, session: aiohttp.ClientSession
) -> None:
    seen = []
    for _ in range(10):  # more than one block of the counter
        request = build_request(DATA)
        seen.append(parse_response(await _post(session, url, request), request).serial)
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


async def test_answers_malformed_query_with_a_rejection(
    url: str, session: aiohttp.ClientSession
) -> None:
    reply = await _post(session, url, b"not a request")
    with pytest.raises(TimestampRejected) as caught:
        parse_response(reply, build_request(DATA))
    assert caught.value.fail_info == {"bad_data_format"}


async def test_refuses_other_content_types(url: str, session: aiohttp.ClientSession) -> None:
    async with session.post(
        url, data=build_request(DATA), headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 415
        assert "application/timestamp-query" in await resp.text()


async def test_refuses_oversized_bodies(url: str, session: aiohttp.ClientSession) -> None:
    async with session.post(url, data=b"\x30" * (MAX_REQUEST_BYTES + 1), headers=QUERY) as resp:
        assert resp.status == 413


async def test_refuses_get(url: str, session: aiohttp.ClientSession) -> None:
    async with session.get(url) as resp:
        assert resp.status == 405


class _BrokenSigner:
    """A key store whose token has been pulled out."""

    def __init__(self, cert: x509.Certificate) -> None:
        self._cert = cert

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def chain(self) -> Sequence[x509.Certificate]:
        return ()

    def sign(self, data: bytes) -> bytes:
        raise OSError("token removed")


async def test_reports_a_failing_key_as_system_failure(
    tsa_issued: Issued, serials: SerialNumbers, session: aiohttp.ClientSession
) -> None:
    authority = TimestampAuthority(
        tsa_issued.cert, _BrokenSigner(tsa_issued.cert), policy_oid=POLICY
    )
    async with serve_app(tsa_app(authority, serials, clock=lambda: NOW)) as bound:
        reply = await _post(session, bound + "/", build_request(DATA))
    with pytest.raises(TimestampRejected) as caught:
        parse_response(reply, build_request(DATA))
    assert caught.value.fail_info == {"system_failure"}


# --- the serial counter ----------------------------------------------------------------------


def test_serials_start_at_one_and_persist_the_reserved_block(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    counter = SerialNumbers(path, block=3)
    assert [counter.next() for _ in range(4)] == [1, 2, 3, 4]
    assert path.read_text().strip() == "7"


def test_serials_keep_increasing_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    first = SerialNumbers(path, block=100)
    issued = [first.next() for _ in range(5)]
    again = SerialNumbers(path, block=100)
    assert again.next() > max(issued)


def test_counters_sharing_a_file_never_hand_out_the_same_serial(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    counters = [SerialNumbers(path, block=2) for _ in range(3)]
    results: list[int] = []
    lock = threading.Lock()

    def take(counter: SerialNumbers) -> None:
        for _ in range(20):
            serial = counter.next()
            with lock:
                results.append(serial)

    threads = [threading.Thread(target=take, args=(c,)) for c in counters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 60


def test_refuses_a_corrupted_counter_file(tmp_path: Path) -> None:
    path = tmp_path / "serial"
    path.write_text("garbage\n")
    with pytest.raises(ConfigError, match="not a number"):
        SerialNumbers(path).next()


def test_refuses_an_unwritable_state_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot open the TSA serial counter"):
        SerialNumbers(blocker / "tsa" / "serial").next()
