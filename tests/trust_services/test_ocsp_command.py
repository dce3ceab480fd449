"""``jisr ocsp serve``: loading the responder from files, serving, and the real command."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from certs.errors import KeyStoreError
from certs.ocsp import OcspError
from certs.status import CertStatus
from config.errors import ConfigError
from jisr.commands.ocsp import load_certificate, load_responder, run_responder
from tests.pki_factory import FixturePki
from trust_services.ocsp_client import fetch_verdict


def _write_encrypted_key(path: Path, key: object, passphrase: bytes) -> None:
    assert hasattr(key, "private_bytes")
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )


async def test_serves_a_responder_loaded_from_files_until_stopped(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    pki = FixturePki.create(now=dt.datetime.now(dt.UTC))
    member = pki.signing("IQ/GOV/NDC")
    responder_cert = pki.ocsp_responder()
    cert_path = responder_cert.write(tmp_path, "responder")[0]
    key_path = tmp_path / "responder.enc.pem"
    _write_encrypted_key(key_path, responder_cert.key, b"responder secret")
    ca_path = pki.root.write(tmp_path, "ca")[0]

    responder = load_responder(
        cert_path=cert_path,
        key_path=key_path,
        issuer=load_certificate(ca_path, "issuing CA"),
        lookup=lambda serial: CertStatus("good"),
        passphrase=b"responder secret",
    )
    stop = asyncio.Event()
    started = asyncio.Event()
    urls: list[str] = []

    def ready(url: str) -> None:
        urls.append(url)
        started.set()

    server = asyncio.create_task(run_responder(responder, "127.0.0.1", 0, stop=stop, ready=ready))
    try:
        await started.wait()
        verdict = await fetch_verdict(session, urls[0], member.cert, pki.root.cert, nonce=True)
        assert verdict.status.state == "good"
    finally:
        stop.set()
        await server


def test_explains_encrypted_key_without_passphrase(tmp_path: Path) -> None:
    pki = FixturePki.create()
    responder_cert = pki.ocsp_responder()
    key_path = tmp_path / "responder.enc.pem"
    _write_encrypted_key(key_path, responder_cert.key, b"right")
    cert_path = responder_cert.write(tmp_path, "responder")[0]
    for passphrase, message in ((None, "--key-passphrase-env"), (b"wrong", "passphrase is wrong")):
        with pytest.raises(KeyStoreError, match=message):
            load_responder(
                cert_path=cert_path,
                key_path=key_path,
                issuer=pki.root.cert,
                lookup=lambda serial: CertStatus("good"),
                passphrase=passphrase,
            )


def test_refuses_a_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    path = tmp_path / "nonsense.pem"
    path.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM or DER certificate"):
        load_certificate(path, "issuing CA")


def test_refuses_responder_certificate_of_another_ca(tmp_path: Path) -> None:
    pki = FixturePki.create()
    foreign = FixturePki.create(cn="Foreign Root").ocsp_responder()
    cert_path = foreign.write(tmp_path, "foreign")[0]
    key_path = tmp_path / "foreign.enc.pem"
    _write_encrypted_key(key_path, foreign.key, b"foreign secret")
    with pytest.raises(OcspError, match="not issued by the CA"):
        load_responder(
            cert_path=cert_path,
            key_path=key_path,
            issuer=pki.root.cert,
            lookup=lambda serial: CertStatus("good"),
            passphrase=b"foreign secret",
        )


def test_refuses_an_unencrypted_key_and_says_how_to_encrypt_it(tmp_path: Path) -> None:
    pki = FixturePki.create()
    cert_path, key_path = pki.ocsp_responder().write(tmp_path, "responder")
    for passphrase in (None, b"any passphrase"):
        with pytest.raises(KeyStoreError, match="is not encrypted") as caught:
            load_responder(
                cert_path=cert_path,
                key_path=key_path,
                issuer=pki.root.cert,
                lookup=lambda serial: CertStatus("good"),
                passphrase=passphrase,
            )
        assert "openssl pkcs8 -topk8 -v2 aes-256-cbc" in str(caught.value)


@pytest.mark.e2e
async def test_jisr_ocsp_serve_answers_from_the_ca_directory(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The real command, on a CA directory made by certs.ca, sees revocations while running."""
    ca_module = pytest.importorskip("certs.ca")
    keystore_module = pytest.importorskip("certs.keystore")
    now = dt.datetime.now(dt.UTC)
    ca = ca_module.CertificateAuthority.init(
        tmp_path / "ca", name="Jisr OCSP Test", passphrase="ca passphrase 1", now=now
    )
    keys = keystore_module.SoftwareKeyStore(tmp_path / "keys")
    ocsp_key = ca.issue_for_new_key(
        "ocsp", "Jisr OCSP Test Responder", keystore=keys, label="ocsp",
        key_passphrase="ocsp passphrase 1", now=now,
    )  # fmt: skip
    member_key = ca.issue_for_new_key(
        "sign", "NDC", keystore=keys, label="member", key_passphrase="member passphrase 1",
        now=now, member_id="IQ/GOV/NDC",
    )  # fmt: skip
    ocsp_cert_path = tmp_path / "ocsp.pem"
    ocsp_cert_path.write_bytes(ocsp_key.certificate.public_bytes(serialization.Encoding.PEM))
    (key_file,) = (p for p in keys.directory.iterdir() if p.name.startswith("ocsp"))
    issuer = ca_module.CaIndex.load(tmp_path / "ca").issuer_certificate

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from jisr.cli import main; main()",
        "--log-format", "json", "ocsp", "serve",
        "--ca-dir", str(tmp_path / "ca"), "--cert", str(ocsp_cert_path),
        "--key", str(key_file), "--key-passphrase-env", "TEST_OCSP_KEY_PASSPHRASE",
        "--port", "0",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "TEST_OCSP_KEY_PASSPHRASE": "ocsp passphrase 1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
        assert line.startswith("OCSP responder listening on "), line
        url = line.rsplit(" ", 1)[1].strip()
        member = member_key.certificate

        verdict = await fetch_verdict(session, url, member, issuer, nonce=True)
        assert verdict.status.state == "good"

        ca.revoke(member.serial_number, reason="key_compromise", at=now)
        verdict = await fetch_verdict(session, url, member, issuer, nonce=True)
        assert verdict.status.state == "revoked"
        assert verdict.status.reason == "key_compromise"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await process.wait()
    assert code == 0
