"""Interoperability with the ``openssl ocsp`` command-line client (OpenSSL 3)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certs.ocsp import OcspResponder, request_nonce, verify_response
from certs.status import CertStatus
from tests.pki_factory import FixturePki, Issued
from trust_services.http_server import serve_app
from trust_services.ocsp_server import ocsp_app

pytestmark = [
    pytest.mark.openssl,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]

REVOKED_AT = dt.datetime(2026, 11, 2, 8, 30, tzinfo=dt.UTC)


@dataclasses.dataclass
class Files:
    ca: Path
    good: Path
    revoked: Path
    unknown: Path
    responder: Path


@dataclasses.dataclass
class Setup:
    pki: FixturePki
    good: Issued
    revoked: Issued
    files: Files
    responder: OcspResponder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    # openssl checks validity against the real clock, so the PKI starts a day ago.
    pki = FixturePki.create(now=dt.datetime.now(dt.UTC).replace(microsecond=0))
    good = pki.signing("IQ/GOV/NDC")
    revoked = pki.signing("IQ/GOV/MOH")
    unknown = pki.signing("IQ/GOV/NOBODY")
    responder_cert = pki.ocsp_responder()
    directory = tmp_path_factory.mktemp("ocsp-openssl")
    files = Files(
        ca=pki.root.write(directory, "ca")[0],
        good=good.write(directory, "good")[0],
        revoked=revoked.write(directory, "revoked")[0],
        unknown=unknown.write(directory, "unknown")[0],
        responder=responder_cert.write(directory, "responder")[0],
    )
    statuses = {
        good.cert.serial_number: CertStatus("good"),
        revoked.cert.serial_number: CertStatus(
            "revoked", revoked_at=REVOKED_AT, reason="key_compromise"
        ),
    }
    responder = OcspResponder(
        pki.root.cert,
        (responder_cert.cert, responder_cert.key),
        lambda serial: statuses.get(serial, CertStatus("unknown")),
    )
    return Setup(pki, good, revoked, files, responder)


@pytest.fixture
async def url(setup: Setup) -> AsyncIterator[str]:
    async with serve_app(ocsp_app(setup.responder), "127.0.0.1", 0) as bound:
        yield bound + "/"


async def _openssl(*args: str | Path) -> tuple[int, str]:
    """Run openssl without blocking the event loop that serves the responder."""
    process = await asyncio.create_subprocess_exec(
        "openssl",
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")


async def test_openssl_accepts_good_answer_with_ca_file(setup: Setup, url: str) -> None:
    f = setup.files
    code, out = await _openssl(
        "ocsp", "-issuer", f.ca, "-cert", f.good, "-url", url, "-CAfile", f.ca, "-resp_text"
    )
    assert code == 0, out
    assert "Response verify OK" in out
    assert f"{f.good}: good" in out
    assert "Responder Id:" in out


async def test_openssl_accepts_revoked_answer_with_reason_and_time(setup: Setup, url: str) -> None:
    f = setup.files
    code, out = await _openssl(
        "ocsp", "-issuer", f.ca, "-cert", f.revoked, "-url", url, "-CAfile", f.ca, "-resp_text"
    )
    assert code == 0, out
    assert "Response verify OK" in out
    assert f"{f.revoked}: revoked" in out
    assert "Reason: keyCompromise" in out
    assert "Revocation Time: Nov  2 08:30:00 2026 GMT" in out


async def test_openssl_accepts_unknown_answer_with_va_file(setup: Setup, url: str) -> None:
    f = setup.files
    code, out = await _openssl(
        "ocsp", "-issuer", f.ca, "-cert", f.unknown, "-url", url, "-VAfile", f.responder
    )
    assert code == 0, out
    assert "Response verify OK" in out
    assert f"{f.unknown}: unknown" in out


async def test_answers_openssl_built_request_with_nonce(setup: Setup, tmp_path: Path) -> None:
    f = setup.files
    request_path = tmp_path / "request.der"
    code, out = await _openssl(
        "ocsp", "-issuer", f.ca, "-cert", f.revoked, "-reqout", request_path, "-req_text"
    )
    assert code == 0, out
    assert "OCSP Nonce" in out
    request = request_path.read_bytes()
    now = dt.datetime.now(dt.UTC)
    response = setup.responder.respond(request, now=now)
    verdict = verify_response(
        response,
        setup.revoked.cert,
        setup.pki.root.cert,
        trusted_responders=None,
        now=now,
        nonce=request_nonce(request),
    )
    assert verdict.status == CertStatus("revoked", revoked_at=REVOKED_AT, reason="key_compromise")

    response_path = tmp_path / "response.der"
    response_path.write_bytes(response)
    code, out = await _openssl(
        "ocsp",
        "-reqin", request_path,
        "-respin", response_path,
        "-CAfile", f.ca,
        "-resp_text",
    )  # fmt: skip
    # Without -cert, openssl checks the response against the request read back (nonce
    # included) instead of building a new request with a fresh nonce.
    assert code == 0, out
    assert "Response verify OK" in out
    assert "WARNING: no nonce" not in out
    assert "nonce verify error" not in out.lower()
    assert "Cert Status: revoked" in out
    assert "OCSP Nonce" in out
