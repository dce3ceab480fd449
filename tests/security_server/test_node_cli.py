"""``jisr node``: the commands as an operator types them, and ``serve`` as a real process."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import Encoding

from certs.ca import CertificateAuthority
from certs.keystore import SoftwareKeyStore
from gateway.anchor import make_anchor
from jisr.cli import cli
from registry.conf_keys import create_key
from security_server.node_dir import NodeDir
from security_server.registration import register_server
from storage.embedded import database_url
from tests.databases import temporary_database
from tests.security_server.test_node_setup import (
    PASSPHRASE,
    SERVER,
    Network,
    network,
    wait_for_server_in_conf,
)

__all__ = ["network"]  # the fixture, imported to be used here

pytestmark = pytest.mark.postgres

ENV = {"JISR_NODE_KEY_PASSPHRASE": PASSPHRASE}


def _run(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), env=ENV if env is None else env)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_operator_sets_up_a_node_with_the_commands(tmp_path: Path, fresh_db_url: str) -> None:
    now = dt.datetime.now(dt.UTC)
    _, conf_cert, _ = create_key(tmp_path / "reg", "IQ", b"registry-passphrase", now=now)
    anchor_file = tmp_path / "anchor.json"
    anchor_file.write_bytes(
        make_anchor(
            "IQ", ["http://127.0.0.1:9/globalconf/current"], [conf_cert], generated_at=now
        ).to_bytes()
    )
    data = tmp_path / "node"
    refused = CliRunner().invoke(
        cli,
        ["node", "init", "--data-dir", str(data), "--server-id", SERVER, "--anchor", "x"],
        env={"JISR_NODE_KEY_PASSPHRASE": ""},
    )
    assert refused.exit_code != 0
    no_passphrase = CliRunner().invoke(
        cli,
        f"node init --data-dir {data} --server-id {SERVER} --anchor {anchor_file}".split(),
        env={"JISR_NODE_KEY_PASSPHRASE": ""},
    )
    assert "JISR_NODE_KEY_PASSPHRASE" in str(no_passphrase.exception)
    assert not data.exists()

    out = _run(
        "node",
        "init",
        "--data-dir",
        str(data),
        "--server-id",
        SERVER,
        "--anchor",
        str(anchor_file),
        "--address",
        "ss1.hjc.gov.iq:5500",
        "--database-url",
        fresh_db_url,
    )
    assert "anchor digest: sha256:" in out
    assert "internal TLS certificate: sha256:" in out
    assert PASSPHRASE not in out
    node = NodeDir(data)

    ca = CertificateAuthority.init(tmp_path / "ca", name="Test", passphrase="ca-pass", now=now)
    for label, profile in (("auth", "auth"), ("sign-IQ.GOV.HJC", "sign")):
        cert = ca.issue(node.csr_file(label).read_bytes(), profile, now=now)  # type: ignore[arg-type]
        path = tmp_path / f"{label}.pem"
        path.write_bytes(cert.public_bytes(Encoding.PEM))
        assert f"for key {label}" in _run("node", "import-cert", "--data-dir", str(data), str(path))
    other = ca.issue_for_new_key(
        "sign",
        "x",
        keystore=SoftwareKeyStore(tmp_path / "k"),
        label="x",
        key_passphrase="ca-pass",
        now=now,
        member_id="IQ/GOV/NDC",
    )
    (tmp_path / "other.pem").write_bytes(other.certificate.public_bytes(Encoding.PEM))
    result = CliRunner().invoke(
        cli, ["node", "import-cert", "--data-dir", str(data), str(tmp_path / "other.pem")], env=ENV
    )
    assert "matches no key" in str(result.exception)

    provider = "IQ/GOV/HJC/inheritance"
    _run("node", "add-client", "--data-dir", str(data), provider, "--local-only")
    again = _run("node", "add-client", "--data-dir", str(data), provider, "--local-only")
    assert "already a client" in again
    _run(
        "node",
        "service",
        "add",
        "--data-dir",
        str(data),
        "--provider",
        provider,
        "--rest",
        "http://127.0.0.1:9100/cases",
        "--service-code",
        "cases",
    )
    _run(
        "node",
        "access",
        "grant",
        "--data-dir",
        str(data),
        "--provider",
        provider,
        "--service",
        "cases",
        "--subject",
        "IQ/GOV/NPA/pensions",
        "--method",
        "GET",
        "--path",
        "/cases/*",
    )
    duplicate = CliRunner().invoke(
        cli,
        f"node access grant --data-dir {data} --provider {provider} --service cases "
        "--subject IQ/GOV/NPA/pensions --method GET --path /cases/*".split(),
        env=ENV,
    )
    assert "already exists" in str(duplicate.exception)
    rights = json.loads(_run("node", "access", "list", "--data-dir", str(data)))
    assert [(r["subject"], r["path"]) for r in rights] == [("IQ/GOV/NPA/pensions", "/cases/*")]
    _run(
        "node",
        "service",
        "disable",
        "--data-dir",
        str(data),
        "--provider",
        provider,
        "--service-code",
        "cases",
        "--notice",
        "moving",
    )
    services = json.loads(_run("node", "service", "list", "--data-dir", str(data)))
    assert [(s["service_code"], s["enabled"]) for s in services] == [("cases", False)]
    key = _run(
        "node", "api-key", "create", "--data-dir", str(data), "--name", "ops", "--role", "auditor"
    )
    assert key.startswith("jisr_")


@pytest.fixture
async def node_db(pg_server_url: str) -> AsyncIterator[str]:
    async with temporary_database(pg_server_url, "n_") as name:
        yield database_url(pg_server_url, name)


@pytest.mark.e2e
async def test_serve_runs_as_a_process_and_stops_on_sigterm(network: Network, node_db: str) -> None:
    directory = network.new_node()
    config = directory / "node.toml"
    config.write_text(config.read_text().replace("admin_port = 4000", "admin_port = 0"))
    network.certify(directory)
    async with aiohttp.ClientSession() as session:
        await register_server(NodeDir(directory), PASSPHRASE, session=session)
    await wait_for_server_in_conf(directory, SERVER)

    env = {**os.environ, **ENV, "JISR_DATABASE_URL": node_db}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from jisr.cli import main; main()",
        "--log-format",
        "json",
        "node",
        "serve",
        "--data-dir",
        str(directory),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        ready = ""
        while not ready.startswith("jisr node ready"):
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            assert line, "the node exited before it was ready"
            ready = line.decode()
        endpoints = json.loads(NodeDir(directory).endpoints_file.read_text())
        assert endpoints["pid"] == process.pid
        assert endpoints["admin"] in ready
        async with (
            aiohttp.ClientSession() as session,
            session.get(endpoints["admin"] + "/api/v1/status") as resp,
        ):
            assert resp.status == 401
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        assert not NodeDir(directory).endpoints_file.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
