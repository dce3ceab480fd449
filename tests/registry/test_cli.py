"""``jisr registry`` end to end: real processes, a real database, real HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.anchor import Anchor
from gateway.globalconf import verify_globalconf
from tests.pki_factory import FixturePki

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

JISR = [sys.executable, "-c", "from jisr.cli import main; main()"]


def _env(db_url: str, data_dir: Path, api_key: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "JISR_DATABASE_URL": db_url,
            "JISR_DATA_DIR": str(data_dir),
            "JISR_REGISTRY_KEY_PASSPHRASE": "cli-test-passphrase",
            "JISR_LOGGING_FORMAT": "json",
        }
    )
    if api_key:
        env["JISR_REGISTRY_API_KEY"] = api_key
    return env


async def _jisr(env: dict[str, str], *args: str, check: bool = True) -> str:
    done = await asyncio.to_thread(
        subprocess.run, [*JISR, *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check and done.returncode != 0:
        raise AssertionError(f"jisr {' '.join(args)} failed: {done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr if not check else done.stdout


async def test_init_serve_operate_and_export_anchor(fresh_db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _env(fresh_db_url, data_dir)
    out = await _jisr(env, "registry", "init", "--instance", "IQ", "--auto-approve")
    api_key = out.strip().splitlines()[-1]
    assert api_key.startswith("jisr_")
    again = await _jisr(env, "registry", "init", "--instance", "IQ", check=False)
    assert "already initialised" in again

    server = await asyncio.create_subprocess_exec(
        *JISR,
        "registry",
        "serve",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        url = ""
        assert server.stdout is not None
        while not url:
            line = (await asyncio.wait_for(server.stdout.readline(), timeout=60)).decode()
            assert line, "jisr registry serve exited before listening"
            if line.startswith("registry listening on "):
                url = line.split()[-1]
        drain = asyncio.create_task(server.stdout.read())
        env = _env(fresh_db_url, data_dir, api_key) | {"JISR_REGISTRY_PUBLIC_URL": url}

        await _jisr(env, "registry", "member-class", "add", "GOV", "--description", "Government")
        await _jisr(env, "registry", "member", "add", "IQ/GOV/NDC", "National Data Centre")
        await _jisr(env, "registry", "subsystem", "add", "IQ/GOV/NDC/population")
        pki = FixturePki.create()
        cert_path, _ = pki.root.write(tmp_path, "root")
        responder_path, _ = pki.ocsp_responder().write(tmp_path, "ocsp")
        tsa_path, _ = pki.tsa().write(tmp_path, "tsa")
        await _jisr(
            env, "registry", "ca", "add", "Test CA", "--cert", str(cert_path),
            "--ocsp-url", "http://127.0.0.1:9/ocsp", "--ocsp-cert", str(responder_path),
        )  # fmt: skip
        await _jisr(
            env, "registry", "tsa", "add", "Test TSA", "--url", "http://127.0.0.1:9/tsa",
            "--cert", str(tsa_path),
        )  # fmt: skip
        await _jisr(env, "registry", "group", "add", "owners")
        await _jisr(env, "registry", "group", "add-member", "owners", "IQ/GOV/NDC")
        members = json.loads(await _jisr(env, "registry", "member", "list"))
        assert members == [
            {"id": "IQ/GOV/NDC", "name": "National Data Centre", "subsystems": ["population"]}
        ]
        assert json.loads(await _jisr(env, "registry", "requests", "list")) == []
        changed = await _jisr(env, "registry", "instance", "set", "--no-auto-approve")
        assert json.loads(changed)["auto_approve"] is False
        duplicate = await _jisr(
            env, "registry", "member", "add", "IQ/GOV/NDC", "Again", check=False
        )
        assert "member IQ/GOV/NDC already exists" in duplicate

        added = json.loads(await _jisr(env, "registry", "conf-key", "add"))
        keys = json.loads(await _jisr(env, "registry", "conf-key", "list"))
        assert {k["key_id"]: k["state"] for k in keys}[added["key_id"]] == "announced"

        anchor_path = tmp_path / "anchor.json"
        out = await _jisr(env, "registry", "export-anchor", "--out", str(anchor_path))
        anchor = Anchor.from_bytes(anchor_path.read_bytes())
        assert anchor.digest in out
        assert len(anchor.verification_certs) == 2
        assert [s.url for s in anchor.sources] == [url + "/globalconf/current"]

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for _ in range(300):
                async with session.get(url + "/globalconf/current") as resp:
                    pointer = await resp.json()
                async with session.get(f"{url}/globalconf/{pointer['document']}") as resp:
                    document = await resp.read()
                async with session.get(f"{url}/globalconf/{pointer['signature']}") as resp:
                    signature = await resp.read()
                conf = verify_globalconf(
                    document, signature, anchor=anchor, previous=None, now=dt.datetime.now(dt.UTC)
                )
                if conf.group_members("owners") and len(conf.signing_keys) == 2:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the served configuration never showed the changes")
        assert [t.name for t in conf.approved_tsas] == ["Test TSA"]
    finally:
        server.terminate()
        assert await asyncio.wait_for(server.wait(), timeout=30) == 0
        if "drain" in locals():
            await drain
