"""The pieces of the node network that need no running network."""

from __future__ import annotations

from pathlib import Path

from bench.network import ARCHIVE_INTERVAL_S, PARTIES, archive_apart, bench_wsdl
from bench.scenarios import SOAP_SERVICE_CODE, node_spec
from config.settings import load_settings
from security_server.catalogue import parse_wsdl
from security_server.node_dir import NodeDir, render_node_toml


def test_the_soap_service_description_is_accepted_by_the_catalogue() -> None:
    entries = parse_wsdl(bench_wsdl("http://127.0.0.1:1/soap"))
    assert [(e.service_code, e.address) for e in entries] == [
        (SOAP_SERVICE_CODE, "http://127.0.0.1:1/soap")
    ]


def test_rest_calls_name_the_provider_service_and_the_consumer() -> None:
    spec = node_spec("rest_small", "http://127.0.0.1:1", PARTIES)
    assert spec.url == "http://127.0.0.1:1/r1/IQ/GOV/NDC/population/benchSmall"
    assert spec.headers == {"X-Road-Client": "IQ/GOV/HJC/inheritance"}
    soap = node_spec("soap_small", "http://127.0.0.1:1", PARTIES)
    assert soap.unique_placeholder is not None
    assert soap.unique_placeholder in soap.body
    assert b"IQ</id:xRoadInstance>" in soap.body


def test_nodes_archive_only_after_the_run_and_keep_their_other_settings(tmp_path: Path) -> None:
    node_dir = NodeDir(tmp_path)
    node_dir.config_file.write_bytes(
        render_node_toml(
            server_id="IQ/GOV/NDC/ss1",
            host="127.0.0.1",
            public_address="127.0.0.1:5500",
            ports={"server_port": 5500},
            database_url="postgresql://bench@/db",
        )
    )
    archive_apart(tmp_path)
    archive_apart(tmp_path)  # a second call changes nothing
    settings = load_settings(node_dir.config_file, env={})
    assert settings.node.archive_interval_s == ARCHIVE_INTERVAL_S
    assert settings.node.server_id == "IQ/GOV/NDC/ss1"
    assert settings.node.server_port == 5500
    assert settings.database.url == "postgresql://bench@/db"
