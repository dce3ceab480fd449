"""``jisr node client`` and ``add-client --body-logging``: the per-subsystem body logging switch
as an operator types it, written to the node database with its audit row."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner, Result

from config.errors import JisrError
from gateway.anchor import make_anchor
from jisr.cli import cli
from registry.conf_keys import create_key
from security_server.node_keys import initialise_node
from tests.security_server.test_node_setup import PASSPHRASE, SERVER

pytestmark = pytest.mark.postgres

PROVIDER = "IQ/GOV/HJC/inheritance"
OTHER = "IQ/GOV/HJC/pensions"


@pytest.fixture
def node_dir(tmp_path: Path, fresh_db_url: str) -> Path:
    """A node directory whose database is the test's fresh database."""
    now = dt.datetime.now(dt.UTC)
    _, conf_cert, _ = create_key(tmp_path / "reg", "IQ", b"registry-passphrase", now=now)
    anchor = make_anchor(
        "IQ", ["http://127.0.0.1:9/globalconf/current"], [conf_cert], generated_at=now
    ).to_bytes()
    directory = tmp_path / "node"
    initialise_node(
        directory,
        server_id=SERVER,
        anchor=anchor,
        passphrase=PASSPHRASE,
        now=now,
        database_url=fresh_db_url,
    )
    return directory


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"JISR_NODE_KEY_PASSPHRASE": PASSPHRASE})


def _run(*args: str) -> str:
    result = _invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


async def _read_rows(url: str) -> tuple[dict[str, bool], list[tuple[str, str]]]:
    conn = await asyncpg.connect(url)
    try:
        switches = {
            r["client_id"]: r["body_logging"]
            for r in await conn.fetch("SELECT client_id, body_logging FROM local_clients")
        }
        audit = [
            (r["action"], r["details"])
            for r in await conn.fetch("SELECT action, details FROM audit_log ORDER BY id")
        ]
    finally:
        await conn.close()
    return switches, audit


def _rows(url: str) -> tuple[dict[str, bool], list[tuple[str, str]]]:
    return asyncio.run(_read_rows(url))


def test_operator_switches_a_subsystems_body_logging(node_dir: Path, fresh_db_url: str) -> None:
    data = str(node_dir)
    out = _run("node", "add-client", "--data-dir", data, PROVIDER, "--local-only")
    assert "body logging on" in out
    out = _run(
        "node", "add-client", "--data-dir", data, OTHER, "--body-logging", "off", "--local-only"
    )
    assert "body logging off" in out

    out = _run("node", "client", "set", "--data-dir", data, PROVIDER, "--body-logging", "off")
    assert f"{PROVIDER}: body logging off" in out
    listed = json.loads(_run("node", "client", "list", "--data-dir", data))
    assert {c["client_id"]: c["body_logging"] for c in listed} == {PROVIDER: False, OTHER: False}

    _run("node", "client", "set", "--data-dir", data, OTHER, "--body-logging", "on")
    switches, audit = _rows(fresh_db_url)
    assert switches == {PROVIDER: False, OTHER: True}
    changes = [(action, json.loads(details)) for action, details in audit]
    assert changes[-2:] == [
        ("client.body_logging", {"client": PROVIDER, "body_logging": False}),
        ("client.body_logging", {"client": OTHER, "body_logging": True}),
    ]


def test_refuses_an_unknown_client_or_a_missing_switch(node_dir: Path, fresh_db_url: str) -> None:
    data = str(node_dir)
    unknown = _invoke("node", "client", "set", "--data-dir", data, OTHER, "--body-logging", "off")
    assert unknown.exit_code != 0
    assert isinstance(unknown.exception, JisrError)
    assert "not a client of this node" in str(unknown.exception)

    _run("node", "add-client", "--data-dir", data, PROVIDER, "--local-only")
    for wrong in (["--body-logging", "maybe"], []):
        refused = _invoke("node", "client", "set", "--data-dir", data, PROVIDER, *wrong)
        assert refused.exit_code == 2, refused.output  # click's usage error
        assert "--body-logging" in refused.output
    switches, _ = _rows(fresh_db_url)
    assert switches == {PROVIDER: True}
