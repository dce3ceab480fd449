"""``openssl ts -verify`` accepts a message-log batch token for the batch's tree root, so an
auditor can check batch timestamps without Jisr."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from certs.tsa import TimestampAuthority
from gateway.globalconf import ApprovedTsa
from gateway.log_record import batch_tree
from security_server.message_log import PostgresMessageLog
from security_server.timestamper import Timestamper
from tests.clock import Clock
from tests.pki_factory import NOW, FixturePki
from tests.security_server.test_message_log import NODE, make_entry, open_log_pool
from tests.security_server.test_timestamper import Conf
from trust_services.http_server import serve_app
from trust_services.tsa_server import SerialNumbers, tsa_app

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.openssl,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]


def _verify(directory: Path, digest_hex: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "ts",
            "-verify",
            "-digest",
            digest_hex,
            "-in",
            str(directory / "token.der"),
            "-token_in",
            "-CAfile",
            str(directory / "root.pem"),
            "-untrusted",
            str(directory / "tsa.pem"),
            "-attime",
            str(int(NOW.timestamp())),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def test_openssl_verifies_a_batch_token_against_the_tree_root(
    fresh_db_url: str, tmp_path: Path
) -> None:
    pki = FixturePki.create()
    tsa = pki.tsa()
    authority = TimestampAuthority(tsa.cert, tsa.key, policy_oid="2.25.1234")
    app = tsa_app(authority, SerialNumbers(tmp_path / "serial"), clock=lambda: NOW)
    pool = await open_log_pool(fresh_db_url)
    try:
        async with serve_app(app) as url, aiohttp.ClientSession() as session:
            conf = Conf(pki, [ApprovedTsa("Jisr Test TSA", url + "/", tsa.cert)])
            stamper = Timestamper(pool, conf, session, clock=Clock(NOW))
            async with PostgresMessageLog(pool, NODE, clock=Clock(NOW), timestamper=stamper) as log:
                for i in range(7):
                    await log.record(make_entry(f"msg-{i}"))
                await stamper.timestamp_pending()
                records = await log.read_records()
    finally:
        await pool.close()

    stamp = records[0].timestamp
    assert stamp is not None
    # The root is what an auditor recomputes from the records' hashes.
    root, _ = batch_tree([r.record_hash for r in records])
    assert root == stamp.batch.root
    (tmp_path / "token.der").write_bytes(stamp.batch.token)
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    (tmp_path / "tsa.pem").write_bytes(tsa.pem)

    accepted = _verify(tmp_path, root.hex())
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Verification: OK" in accepted.stdout

    other = _verify(tmp_path, records[0].record_hash.hex())
    assert other.returncode != 0
    assert "Verification: OK" not in other.stdout
