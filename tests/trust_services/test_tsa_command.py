"""``jisr tsa serve``: loading the TSA from files, and the real process answering openssl."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from certs.tsa import TimestampError, parse_response, verify_token
from config.errors import ConfigError
from jisr.cli import cli
from jisr.commands.tsa import load_authority
from tests.pki_factory import FixturePki, Issued

PASSPHRASE = "correct horse battery staple"
DATA = b"records 1-10000 of the message log"


def _write_tsa(directory: Path, issued: Issued, *, encrypted: bool = True) -> tuple[Path, Path]:
    cert_path = directory / "tsa.pem"
    key_path = directory / "tsa.key"
    cert_path.write_bytes(issued.pem)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(PASSPHRASE.encode())
        if encrypted
        else serialization.NoEncryption()
    )
    key_path.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    return cert_path, key_path


def test_loads_an_encrypted_key_with_its_passphrase(tmp_path: Path) -> None:
    pki = FixturePki.create()
    cert_path, key_path = _write_tsa(tmp_path, pki.tsa())
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    authority = load_authority(
        cert_path=cert_path,
        key_path=key_path,
        passphrase=PASSPHRASE.encode(),
        chain_path=tmp_path / "root.pem",
    )
    assert authority.certificate.subject == pki.tsa().cert.subject


def test_refuses_an_encrypted_key_without_passphrase(tmp_path: Path) -> None:
    cert_path, key_path = _write_tsa(tmp_path, FixturePki.create().tsa())
    with pytest.raises(ConfigError, match="--key-passphrase-env"):
        load_authority(cert_path=cert_path, key_path=key_path, passphrase=None)


def test_refuses_an_unencrypted_key_and_says_how_to_encrypt_it(tmp_path: Path) -> None:
    cert_path, key_path = _write_tsa(tmp_path, FixturePki.create().tsa(), encrypted=False)
    for passphrase in (None, PASSPHRASE.encode()):
        with pytest.raises(ConfigError, match="is not encrypted") as caught:
            load_authority(cert_path=cert_path, key_path=key_path, passphrase=passphrase)
        assert "jisr pki keygen" in str(caught.value)


def test_refuses_a_wrong_passphrase(tmp_path: Path) -> None:
    cert_path, key_path = _write_tsa(tmp_path, FixturePki.create().tsa())
    with pytest.raises(ConfigError, match="passphrase is wrong"):
        load_authority(cert_path=cert_path, key_path=key_path, passphrase=b"guess")


def test_refuses_a_certificate_without_timestamping_usage(tmp_path: Path) -> None:
    cert_path, key_path = _write_tsa(tmp_path, FixturePki.create().ocsp_responder())
    with pytest.raises(TimestampError, match="timeStamping"):
        load_authority(cert_path=cert_path, key_path=key_path, passphrase=PASSPHRASE.encode())


def test_serve_refuses_an_unset_passphrase_variable(tmp_path: Path) -> None:
    cert_path, key_path = _write_tsa(tmp_path, FixturePki.create().tsa())
    result = CliRunner().invoke(
        cli,
        [
            "tsa",
            "serve",
            "--cert",
            str(cert_path),
            "--key",
            str(key_path),
            "--key-passphrase-env",
            "JISR_TEST_UNSET_TSA_PASSPHRASE",
        ],
        env={"JISR_TEST_UNSET_TSA_PASSPHRASE": None},
    )
    assert isinstance(result.exception, ConfigError)
    assert "JISR_TEST_UNSET_TSA_PASSPHRASE is not set" in str(result.exception)


async def _openssl(*args: str | Path) -> tuple[int | None, str]:
    """Run openssl without blocking the loop; return its status and combined output."""
    process = await asyncio.create_subprocess_exec(
        "openssl",
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, output.decode()


@pytest.mark.e2e
@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_serve_answers_openssl_queries_until_terminated(tmp_path: Path) -> None:
    # The process stamps with the real clock, so the PKI is valid now.
    pki = FixturePki.create(now=dt.datetime.now(dt.UTC))
    tsa_issued = pki.tsa()
    cert_path, key_path = _write_tsa(tmp_path, tsa_issued)
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    (tmp_path / "data").write_bytes(DATA)
    state_dir = tmp_path / "state"
    env = {**os.environ, "JISR_TEST_TSA_PASSPHRASE": PASSPHRASE, "JISR_LOGGING_FORMAT": "json"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from jisr.cli import main; main()",
        "tsa",
        "serve",
        "--cert",
        str(cert_path),
        "--key",
        str(key_path),
        "--key-passphrase-env",
        "JISR_TEST_TSA_PASSPHRASE",
        "--port",
        "0",
        "--state-dir",
        str(state_dir),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line.startswith("TSA listening on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()

        query = tmp_path / "req.tsq"
        made = await _openssl(
            "ts", "-query", "-data", tmp_path / "data", "-sha256", "-cert", "-out", query
        )
        assert made[0] == 0, made[1]
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url,
                data=query.read_bytes(),
                headers={"Content-Type": "application/timestamp-query"},
            ) as resp,
        ):
            assert resp.status == 200
            reply = await resp.read()
        (tmp_path / "resp.tsr").write_bytes(reply)
        verified = await _openssl(
            "ts",
            "-verify",
            "-queryfile",
            query,
            "-in",
            tmp_path / "resp.tsr",
            "-CAfile",
            tmp_path / "root.pem",
        )
        assert "Verification: OK" in verified[1], verified[1]
        token = parse_response(reply, query.read_bytes())
        assert verify_token(token.der, data=DATA, tsa_certs=[tsa_issued.cert]).serial == 1
        assert (state_dir / "serial").is_file()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr
    assert PASSPHRASE.encode() not in stderr[1]
