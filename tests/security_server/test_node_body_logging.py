"""The per-subsystem body logging switch on running nodes: set with ``jisr node client set``
beside a running provider node, it reaches that node's log within its catalogue reload, and
only that node's log."""

from __future__ import annotations

import asyncio

import pytest

from gateway.identifiers import parse_client
from security_server.node import RunningNode
from tests.security_server.test_node_log_network import (
    PROVIDER,
    LogNetwork,
    log_network,
    records_of,
    run_cli,
    sha256_hex,
)

__all__ = ["log_network"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]


async def _until_applied(node: RunningNode, enabled: bool) -> None:
    """Wait for the node's catalogue reload to pick up the switch (it polls every 2 s)."""
    for _ in range(500):
        found = node.catalogue.client(parse_client(PROVIDER))
        if found is not None and found.body_logging is enabled:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the running node never saw body logging {enabled}")


async def test_switch_set_beside_a_running_node_applies_to_its_later_messages(
    log_network: LogNetwork,
) -> None:
    net = log_network
    data_dir = str(net.provider_dir.root)
    async with net.running() as (consumer, provider):
        before = await net.call(consumer)
        assert before.ok, before

        result = await run_cli(
            ["node", "client", "set", "--data-dir", data_dir, PROVIDER, "--body-logging", "off"]
        )
        assert result.exit_code == 0, result.output
        await _until_applied(provider, False)
        during = await net.call(consumer)
        assert during.ok, during

        result = await run_cli(
            ["node", "client", "set", "--data-dir", data_dir, PROVIDER, "--body-logging", "on"]
        )
        assert result.exit_code == 0, result.output
        await _until_applied(provider, True)
        after = await net.call(consumer)
        assert after.ok, after

    for answer, provider_keeps in ((before, True), (during, False), (after, True)):
        theirs = await records_of(net.provider_db.pool, answer.exchange)
        mine = await records_of(net.consumer_db.pool, answer.exchange)
        for direction in ("request_in", "response_out"):
            assert (theirs[direction]["body"] is not None) is provider_keeps, (answer, direction)
        # The consumer's node has its own switch, still on.
        for direction in ("request_out", "response_in"):
            assert mine[direction]["body"] is not None
        assert sha256_hex(bytes(mine["response_in"]["body"])) == sha256_hex(answer.body)
    # The record written while the switch was off still carries the body's digest.
    digest = await net.provider_db.pool.fetchval(
        "SELECT convert_from(record, 'UTF8')::jsonb ->> 'body_sha256' FROM message_log "
        "WHERE message_id = $1 AND direction = 'response_out'",
        during.exchange,
    )
    assert digest == sha256_hex(during.body)
