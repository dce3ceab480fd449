"""The archiver and the retention job inside running nodes, ``jisr node archive``, and body
logging switched off: archives written by the node are what ``jisr audit verify`` accepts."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import asyncpg
import pytest

from audit.verifier import verify_path
from gateway.anchor import Anchor
from gateway.log_record import verify_chain
from security_server.archiver import Archiver, ConfHistory, DirectoryStore
from security_server.message_log import PostgresMessageLog
from security_server.node import ARCHIVE_LOCK_KEY, archive_lock
from storage.migrations import apply_migrations
from tests.audit.evidence import HJC_SS1
from tests.security_server.test_node_log_network import (
    PROVIDER,
    LogNetwork,
    log_network,
    records_of,
    run_cli,
    sha256_hex,
    untimestamped,
)

__all__ = ["log_network"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

#: Far enough ahead that the hour of the exchanges is closed (an hour, plus the 2 min grace).
PERIOD_CLOSED = dt.timedelta(hours=1, minutes=3)


async def _wait_for_archives(directory: Path, count: int) -> list[Path]:
    for _ in range(400):
        found = await asyncio.to_thread(lambda: sorted(directory.glob("archive-*.zip")))
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"the node wrote no archive into {directory}")


def _anchor(net: LogNetwork) -> Anchor:
    return Anchor.from_bytes(net.network.anchor)


async def test_archiver_in_the_node_writes_archives_the_auditor_verifies(
    log_network: LogNetwork,
) -> None:
    net = log_network
    async with net.running() as (consumer, provider):
        answers = [await net.call(consumer, user_id="IQ1234567890") for _ in range(3)]
        assert all(a.ok for a in answers), answers
        for node in (consumer, provider):
            assert await node.timestamper.timestamp_pending() == 6
            assert node.archiver.written == []  # the hour is still open
        net.clock.offset = PERIOD_CLOSED
        for node in (consumer, provider):
            node.archiver.wake()
        consumer_archives = await _wait_for_archives(net.consumer_dir.root / "archives", 1)
        provider_archives = await _wait_for_archives(net.provider_dir.root / "archives", 1)
        assert await consumer.message_log.archived_through() == 6
        assert [name for name, _ in consumer.archiver.written] == [consumer_archives[0].name]
        status = consumer.status()["message_log"]
        assert status["archives_written"] == [consumer_archives[0].name]
        assert status["oldest_untimestamped"] is None

    for directory in (consumer_archives[0].parent, provider_archives[0].parent):
        report = verify_path(directory, anchor=_anchor(net))
        assert report.ok, report.failures()
    # The trust material came from the node's configuration history.
    history = ConfHistory(net.consumer_dir.root / "conf-history")
    assert history.versions()
    assert history.anchor() == net.consumer_dir.anchor_file.read_bytes()


async def test_retention_deletes_archived_records_only_once_they_are_old_enough(
    log_network: LogNetwork,
) -> None:
    net = log_network
    async with net.running(consumer={"retention_days": 30}) as (consumer, _provider):
        for _ in range(2):
            assert (await net.call(consumer)).ok
        await consumer.timestamper.timestamp_pending()
        written = await consumer.archiver.archive_once(close_open_period=True)
        assert len(written) == 1
        assert await consumer.message_log.archived_through() == 4
        later = [await net.call(consumer) for _ in range(2)]
        assert all(a.ok for a in later)

        net.clock.offset = dt.timedelta(days=29)
        assert await consumer.message_log.purge_expired() == 0
        net.clock.offset = dt.timedelta(days=31)
        assert await consumer.message_log.purge_expired() == 4

    pool = net.consumer_db.pool
    kept = [r["seq"] for r in await pool.fetch("SELECT seq FROM message_log ORDER BY seq")]
    assert kept == [5, 6, 7, 8]  # none of them archived, so none deleted, however old
    for answer in later:
        assert set(await records_of(pool, answer.exchange)) == {"request_out", "response_in"}
    # What is left still chains on from the archive's last record.
    message_log = PostgresMessageLog(pool, consumer.runtime.server_id)
    records = await message_log.read_records()
    archive = sorted((net.consumer_dir.root / "archives").glob("archive-*.zip"))[0]
    report = verify_path(archive, anchor=_anchor(net))
    assert report.ok, report.failures()
    verify_chain(records, previous_seq=4, previous_hash=await _record_hash_of(archive, 4))


async def _record_hash_of(archive: Path, seq: int) -> bytes:
    from audit.archive_format import ArchiveReader, read_linking

    with ArchiveReader(str(archive), label=archive.name) as reader:
        linking = read_linking(reader)
    assert linking.records.last_sequence == seq
    return bytes.fromhex(linking.records.last_hash)


@pytest.mark.parametrize("where", ["node", "subsystem"])
async def test_body_logging_off_keeps_digests_and_the_archive_still_verifies(
    log_network: LogNetwork, where: str, tmp_path: Path
) -> None:
    """Off for the whole consumer node (``log_bodies``), or for the provider's subsystem only
    (``local_clients.body_logging``): only the side that switched it off drops bodies."""
    net = log_network
    if where == "subsystem":
        await net.provider_db.pool.execute(
            "UPDATE local_clients SET body_logging = false WHERE client_id = $1", PROVIDER
        )
    consumer_settings = {"log_bodies": False} if where == "node" else {}
    async with net.running(consumer=consumer_settings) as (consumer, provider):
        answer = await net.call(consumer)
        assert answer.ok, answer
        await provider.timestamper.timestamp_pending()
        await consumer.timestamper.timestamp_pending()
        mine = await records_of(net.consumer_db.pool, answer.exchange)
        theirs = await records_of(net.provider_db.pool, answer.exchange)
        consumer_drops, provider_drops = where == "node", where == "subsystem"
        for direction in ("request_out", "response_in"):
            assert (mine[direction]["body"] is None) is consumer_drops
        for direction in ("request_in", "response_out"):
            assert (theirs[direction]["body"] is None) is provider_drops
        node_dir = net.consumer_dir if where == "node" else net.provider_dir

        # An operator archives now, beside the running node.
        result = await run_cli(["node", "archive", "--data-dir", str(node_dir.root), "--now"])
        assert result.exit_code == 0, result.output
        assert "wrote archive-00000001-" in result.output
        assert "records archived through 2" in result.output

    anchor_file = tmp_path / "anchor.json"
    anchor_file.write_bytes(net.network.anchor)
    archives = node_dir.root / "archives"
    result = await run_cli(["audit", "verify", "--anchor", str(anchor_file), str(archives)])
    assert result.exit_code == 0, result.output
    shown = await run_cli(["audit", "show", str(archives), "--message-id", answer.exchange])
    assert shown.exit_code == 0, shown.output
    assert "not logged: body logging was off" in shown.output
    # The digest kept is the digest of the body the client received.
    assert f"body sha256 {sha256_hex(answer.body)}" in shown.output


async def test_archive_command_without_now_waits_for_the_period_to_end(
    log_network: LogNetwork,
) -> None:
    net = log_network
    async with net.running() as (consumer, _provider):
        assert (await net.call(consumer)).ok
        data_dir = str(net.consumer_dir.root)
        waiting = await run_cli(["node", "archive", "--data-dir", data_dir])
        assert waiting.exit_code == 0, waiting.output
        assert "no archive written" in waiting.output
        assert "2 record(s) not archived yet: 2 of them wait for a timestamp" in waiting.output

        await consumer.timestamper.timestamp_pending()
        open_period = await run_cli(["node", "archive", "--data-dir", data_dir])
        assert "their period is still open (use --now to close it)" in open_period.output

        closed = await run_cli(["node", "archive", "--data-dir", data_dir, "--now"])
        assert closed.exit_code == 0, closed.output
        assert "wrote archive-00000001-" in closed.output
        again = await run_cli(["node", "archive", "--data-dir", data_dir, "--now"])
        assert "no archive written" in again.output
        assert "records archived through 2" in again.output
        assert await untimestamped(net.consumer_db.pool) == 0


async def _until_a_session_waits_for_the_archive_lock(pool: asyncpg.Pool) -> None:
    for _ in range(400):
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND objid = $1",
            ARCHIVE_LOCK_KEY,
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the explicit pass never waited for the archive lock")


async def test_archivers_sharing_a_database_take_turns(fresh_db_url: str, tmp_path: Path) -> None:
    """A background pass skips its turn while another process archives; an explicit pass
    (``jisr node archive``) waits for it."""
    pool = await asyncpg.create_pool(fresh_db_url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn, "security_server.log_migrations")
        message_log = PostgresMessageLog(pool, HJC_SS1)
        history = ConfHistory(tmp_path / "history")
        first = Archiver(
            message_log, DirectoryStore(tmp_path / "a"), history, lock=archive_lock(pool)
        )
        second = Archiver(
            message_log, DirectoryStore(tmp_path / "a"), history, lock=archive_lock(pool)
        )
        lock = archive_lock(pool)
        async with lock(True) as held:
            assert held
            assert await second.archive_once(wait=False) == []
            waiting = asyncio.create_task(first.archive_once(close_open_period=True))
            await _until_a_session_waits_for_the_archive_lock(pool)
            assert not waiting.done()
        assert await waiting == []  # nothing to archive in an empty log, but it had its turn
        async with lock(False) as again:
            assert again  # released after each pass
    finally:
        await pool.close()
