"""Interoperability with the ``openssl ts`` command: its verifier accepts our tokens and our
server answers its queries. Certificate validity is checked by openssl at the pinned time."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from certs.tsa import TimestampAuthority, build_request, parse_response, verify_token
from tests.certs.test_tsa import same_tsa_with_key
from tests.pki_factory import NOW, FixturePki, Issued, new_key
from trust_services.http_server import serve_app
from trust_services.tsa_server import SerialNumbers, tsa_app

pytestmark = [
    pytest.mark.openssl,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]

POLICY = "2.25.50036134044363814531661193313733990650"
DATA = "سجل الرسائل — message log".encode()


@pytest.fixture(scope="module")
def pki() -> FixturePki:
    return FixturePki.create()


@pytest.fixture(scope="module")
def tsa_issued(pki: FixturePki) -> Issued:
    return pki.tsa()


@pytest.fixture
def files(tmp_path: Path, pki: FixturePki, tsa_issued: Issued) -> Path:
    (tmp_path / "data").write_bytes(DATA)
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    (tmp_path / "tsa.pem").write_bytes(tsa_issued.pem)
    return tmp_path


@pytest.fixture
async def url(tsa_issued: Issued, tmp_path: Path) -> AsyncIterator[str]:
    authority = TimestampAuthority(tsa_issued.cert, tsa_issued.key, policy_oid=POLICY)
    app = tsa_app(authority, SerialNumbers(tmp_path / "serial"), clock=lambda: NOW)
    async with serve_app(app) as bound:
        yield bound + "/"


async def _post(url: str, body: bytes) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers={"Content-Type": "application/timestamp-query"}
        ) as resp,
    ):
        assert resp.status == 200
        return await resp.read()


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


def _verify(files: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return _openssl(
        "ts",
        "-verify",
        *extra,
        "-CAfile",
        files / "root.pem",
        "-untrusted",
        files / "tsa.pem",
        "-attime",
        str(int(NOW.timestamp())),
    )


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification: OK" in result.stdout


async def test_openssl_verifies_our_reply_against_the_data(url: str, files: Path) -> None:
    request = build_request(DATA, nonce=4242)
    (files / "resp.tsr").write_bytes(await _post(url, request))
    _assert_ok(_verify(files, "-data", files / "data", "-in", files / "resp.tsr"))


async def test_openssl_verifies_our_bare_token(url: str, files: Path) -> None:
    request = build_request(DATA, cert_req=False)
    token = parse_response(await _post(url, request), request)
    (files / "token.der").write_bytes(token.der)
    _assert_ok(_verify(files, "-data", files / "data", "-in", files / "token.der", "-token_in"))


async def test_openssl_refuses_our_token_for_other_data(url: str, files: Path) -> None:
    """A control: the verifier used above does reject what it should."""
    request = build_request(DATA)
    (files / "resp.tsr").write_bytes(await _post(url, request))
    (files / "other").write_bytes(DATA + b"!")
    result = _verify(files, "-data", files / "other", "-in", files / "resp.tsr")
    assert result.returncode != 0
    assert "Verification: OK" not in result.stdout


@pytest.mark.parametrize("digest", ["-sha256", "-sha384", "-sha512"])
async def test_answers_openssl_queries(
    url: str, files: Path, tsa_issued: Issued, digest: str
) -> None:
    query = files / "req.tsq"
    made = _openssl("ts", "-query", "-data", files / "data", digest, "-cert", "-out", query)
    assert made.returncode == 0, made.stderr
    reply = await _post(url, query.read_bytes())
    (files / "resp.tsr").write_bytes(reply)

    _assert_ok(_verify(files, "-queryfile", query, "-in", files / "resp.tsr"))
    _assert_ok(_verify(files, "-data", files / "data", "-in", files / "resp.tsr"))
    token = parse_response(reply, query.read_bytes())
    assert token.certificates == (tsa_issued.cert,)
    assert verify_token(token.der, data=DATA, tsa_certs=[tsa_issued.cert], at=NOW)


async def test_answers_openssl_query_without_nonce_or_certificate(url: str, files: Path) -> None:
    query = files / "req.tsq"
    made = _openssl("ts", "-query", "-data", files / "data", "-sha256", "-no_nonce", "-out", query)
    assert made.returncode == 0, made.stderr
    (files / "resp.tsr").write_bytes(await _post(url, query.read_bytes()))
    _assert_ok(_verify(files, "-queryfile", query, "-in", files / "resp.tsr"))


async def test_openssl_verifies_tokens_of_an_rsa_tsa(
    pki: FixturePki, files: Path, tmp_path: Path
) -> None:
    rsa_tsa = same_tsa_with_key(pki, pki.tsa(), new_key("rsa"))
    (files / "tsa.pem").write_bytes(rsa_tsa.pem)
    authority = TimestampAuthority(rsa_tsa.cert, rsa_tsa.key, policy_oid=POLICY)
    request = build_request(DATA, nonce=1)
    (files / "resp.tsr").write_bytes(authority.respond(request, now=NOW, serial=1))
    _assert_ok(_verify(files, "-data", files / "data", "-in", files / "resp.tsr"))


async def test_openssl_reads_our_rejections(url: str, files: Path) -> None:
    (files / "resp.tsr").write_bytes(await _post(url, b"garbage"))
    shown = _openssl("ts", "-reply", "-in", files / "resp.tsr", "-text")
    assert shown.returncode == 0, shown.stderr
    assert "Rejected" in shown.stdout
    assert "the data submitted has the wrong format" in shown.stdout
