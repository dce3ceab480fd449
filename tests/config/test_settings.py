from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import load_settings


def test_defaults_without_file_or_environment() -> None:
    s = load_settings(env={})
    assert s.database.url == ""
    assert s.registry.conf_expiry_s == 600


def test_file_then_environment_override(tmp_path: Path) -> None:
    f = tmp_path / "jisr.toml"
    f.write_text('data_dir = "/srv/jisr"\n[registry]\nport = 5000\nauto_approve = true\n')
    s = load_settings(f, env={"JISR_REGISTRY_PORT": "6000"})
    assert s.data_dir == Path("/srv/jisr")
    assert s.registry.port == 6000
    assert s.registry.auto_approve is True


def test_unknown_setting_is_refused_by_name(tmp_path: Path) -> None:
    f = tmp_path / "jisr.toml"
    f.write_text("[registry]\nprot = 5000\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(f, env={})


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="JISR_REGISTRY_PORT"):
        load_settings(env={"JISR_REGISTRY_PORT": "eighty"})
    with pytest.raises(ConfigError, match="JISR_REGISTRY_AUTO_APPROVE"):
        load_settings(env={"JISR_REGISTRY_AUTO_APPROVE": "maybe"})


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[registry\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})


def test_log_body_compression_takes_only_known_methods() -> None:
    assert load_settings(env={}).node.log_body_compression == "auto"
    for method in ("auto", "lz4", "pglz", "none"):
        env = {"JISR_NODE_LOG_BODY_COMPRESSION": method}
        assert load_settings(env=env).node.log_body_compression == method
    with pytest.raises(ConfigError, match="log_body_compression 'zstd' must be one of"):
        load_settings(env={"JISR_NODE_LOG_BODY_COMPRESSION": "zstd"})


def test_a_node_runs_as_one_process(tmp_path: Path) -> None:
    assert load_settings(env={}).node.workers == 1
    assert load_settings(env={"JISR_NODE_WORKERS": "1"}).node.workers == 1
    with pytest.raises(ConfigError, match=r"workers 4: a node runs as one process"):
        load_settings(env={"JISR_NODE_WORKERS": "4"})
    f = tmp_path / "jisr.toml"
    f.write_text("[node]\nworkers = 2\n")
    with pytest.raises(ConfigError, match=r"workers 2: .*set it to 1"):
        load_settings(f, env={})
