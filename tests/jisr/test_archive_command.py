"""``jisr node archive --every``: archiving as a process of its own, beside a node whose own
archiver is switched off (``archive_interval_s = 0``), stopped cleanly by SIGTERM; and the
archive settings' validation."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit.verifier import verify_path
from config.errors import ConfigError
from config.settings import NodeSettings, load_settings
from gateway.anchor import Anchor
from jisr.cli import cli
from jisr.processes import child_environment
from tests.security_server.test_node_log_network import LogNetwork, log_network

__all__ = ["log_network"]  # the fixture, imported to be used here

ROOT = Path(__file__).resolve().parents[2]


async def _wait_for_archives(
    directory: Path, count: int, process: asyncio.subprocess.Process
) -> None:
    for _ in range(600):
        found = await asyncio.to_thread(lambda: list(directory.glob("archive-*.zip")))
        if len(found) >= count:
            return
        if process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} archive(s) in {directory}")


@pytest.mark.postgres
@pytest.mark.e2e
async def test_archive_every_archives_beside_a_node_without_its_own_archiver(
    log_network: LogNetwork,
) -> None:
    net = log_network
    archives = net.consumer_dir.root / "archives"
    async with net.running(consumer={"archive_interval_s": 0}) as (consumer, _provider):
        assert not consumer.archiver.running
        assert (await net.call(consumer)).ok
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jisr", "node", "archive",
            "--data-dir", str(net.consumer_dir.root), "--every", "1", "--now",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=child_environment(import_root=ROOT), start_new_session=True,
        )  # fmt: skip
        try:
            await _wait_for_archives(archives, 1, process)
            # Long-running: the next exchange goes into the next pass's archive.
            assert (await net.call(consumer)).ok
            await _wait_for_archives(archives, 2, process)
            process.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, err.decode()
        text = out.decode()
        assert "archiving every 1 s" in text
        assert "wrote archive-00000001-" in text
        assert "wrote archive-00000002-" in text
        assert text.rstrip().endswith("archiving stopped")
        assert await consumer.message_log.archived_through() == 4
        assert consumer.archiver.written == []  # the node itself wrote none
    assert not list(archives.glob(".archive-*"))  # nothing half-written left behind
    report = verify_path(archives, anchor=Anchor.from_bytes(net.network.anchor))
    assert report.ok, report.failures()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("JISR_NODE_ARCHIVE_INTERVAL_S", "-1", "archive_interval_s -1 must be 0"),
        ("JISR_NODE_ARCHIVE_INTERVAL_S", "999999999", "or 1..604800 seconds"),
        ("JISR_NODE_ARCHIVE_PERIOD", "week", "archive_period 'week' must be one of hour, day"),
    ],
)
def test_archive_settings_are_validated_when_loaded(setting: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={setting: value})


def test_archive_interval_zero_means_no_archiver_in_the_node() -> None:
    settings = load_settings(env={"JISR_NODE_ARCHIVE_INTERVAL_S": "0"})
    assert settings.node.archive_interval_s == 0
    assert NodeSettings().archive_interval_s == 60


def test_archive_every_refuses_a_zero_interval(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["node", "archive", "--data-dir", str(tmp_path), "--every", "0"]
    )
    assert result.exit_code == 2
    assert "--every" in result.output
