"""``jisr audit search/show --node``: an auditor reads a running node's message log through its
admin API; keys that are missing, unknown or of another role are refused."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from security_server.catalogue_store import CatalogueStore
from tests.security_server.test_node_log_network import (
    CONSUMER,
    PROVIDER,
    LogNetwork,
    log_network,
    run_cli,
    sha256_hex,
)
from trust_services.http_server import serve_app

__all__ = ["log_network"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

KEY_ENV = "JISR_TEST_AUDITOR_KEY"
SERVICE = f"{PROVIDER}/citizens"


async def test_auditor_finds_and_reads_exchanges_in_a_running_nodes_log(
    log_network: LogNetwork,
) -> None:
    net = log_network
    store = CatalogueStore(net.consumer_db.pool)
    key = await store.create_api_key("setup", "auditor-1", "auditor")
    env = {KEY_ENV: key}
    async with net.running() as (consumer, _provider):
        wanted = await net.call(consumer, user_id="IQ1234567890", issue="case-77/2026")
        other = await net.call(consumer, user_id="IQ0000000001")
        assert wanted.ok
        assert other.ok
        node = ["--node", consumer.endpoints["admin"], "--api-key-env", KEY_ENV]

        found = await run_cli(["audit", "search", *node, "--user-id", "IQ1234567890"], env)
        assert found.exit_code == 0, found.output
        assert wanted.exchange in found.output
        assert other.exchange not in found.output
        assert "request_out" in found.output
        assert "response_in" in found.output
        assert "issue=case-77/2026" in found.output
        assert "waiting-for-timestamp" in found.output

        await consumer.timestamper.timestamp_pending()
        as_json = await run_cli(
            ["audit", "search", *node, "--client", CONSUMER, "--service", SERVICE, "--json"],
            env,
        )
        assert as_json.exit_code == 0, as_json.output
        assert as_json.output.count('"message_id"') == 4  # two exchanges, two records each
        assert '"archived": false' in as_json.output

        shown = await run_cli(["audit", "show", *node, "--message-id", wanted.exchange], env)
        assert shown.exit_code == 0, shown.output
        assert f"message id  {wanted.exchange}" in shown.output
        assert "protocol    REST GET" in shown.output
        assert "user id     IQ1234567890" in shown.output
        assert "status      200" in shown.output
        assert f"body sha256 {sha256_hex(wanted.body)}" in shown.output
        assert wanted.body.decode() in shown.output
        assert shown.output.count("consistency record hash and body digest check out") == 2
        assert "timestamp   " in shown.output
        assert "by http://127.0.0.1:" in shown.output

        missing = await run_cli(["audit", "show", *node, "--message-id", "no-such-id"], env)
        assert missing.exit_code == 2
        assert "no record with message id 'no-such-id'" in missing.output

        # A node (or something posing as one) that alters a body is caught by show.
        admin = consumer.endpoints["admin"] + "/api/v1/message-log/records"
        headers = {"Authorization": f"Bearer {key}"}
        async with net.session.get(
            admin, params={"message_id": wanted.exchange}, headers=headers
        ) as resp:
            listing = await resp.json()
        seq = listing["records"][-1]["seq"]
        async with net.session.get(f"{admin}/{seq}", headers=headers) as resp:
            record = await resp.json()
        record["parts"]["body"] = base64.b64encode(b'{"alive": false}').decode()
        listing["records"] = listing["records"][-1:]
        async with serve_app(_posing_node(listing, record)) as posing:
            caught = await run_cli(
                [
                    "audit",
                    "show",
                    "--node",
                    posing,
                    "--api-key-env",
                    KEY_ENV,
                    "--message-id",
                    wanted.exchange,
                ],
                env,
            )
        assert caught.exit_code == 1, caught.output
        assert "consistency FAILED" in caught.output


def _posing_node(listing: dict[str, Any], record: dict[str, Any]) -> web.Application:
    app = web.Application()

    async def search(request: web.Request) -> web.Response:
        return web.json_response(listing)

    async def show(request: web.Request) -> web.Response:
        return web.json_response(record)

    app.router.add_get("/api/v1/message-log/records", search)
    app.router.add_get("/api/v1/message-log/records/{seq}", show)
    return app


async def test_message_log_routes_refuse_missing_unknown_and_operator_keys(
    log_network: LogNetwork,
) -> None:
    net = log_network
    store = CatalogueStore(net.consumer_db.pool)
    auditor = await store.create_api_key("setup", "auditor-1", "auditor")
    operator = await store.create_api_key("setup", "operator-1", "operator")
    async with net.running() as (consumer, _provider), aiohttp.ClientSession() as session:
        assert (await net.call(consumer)).ok
        base = consumer.endpoints["admin"] + "/api/v1/message-log/records"

        async def status(method: str, url: str, key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with session.request(method, url, headers=headers) as resp:
                return resp.status

        assert await status("GET", base, None) == 401
        assert await status("GET", base, "not-a-key") == 401
        assert await status("GET", base, operator) == 403
        assert await status("GET", base + "/1", operator) == 403
        assert await status("GET", base, auditor) == 200
        assert await status("GET", base + "/1", auditor) == 200
        assert await status("GET", base + "/999", auditor) == 404
        assert await status("GET", base + "?since=yesterday", auditor) == 400
        assert await status("GET", base + "?client=not-a-client", auditor) == 400
        # Nothing may write to the log through the API.
        assert await status("DELETE", base + "/1", auditor) == 403
        assert await status("DELETE", base + "/1", operator) == 405
        assert await status("POST", base, operator) == 405

        node = ["--node", consumer.endpoints["admin"], "--api-key-env", KEY_ENV]
        wrong = await run_cli(["audit", "search", *node], {KEY_ENV: "not-a-key"})
        assert wrong.exit_code == 2
        assert "the node refused (401)" in wrong.output
        as_operator = await run_cli(["audit", "search", *node], {KEY_ENV: operator})
        assert as_operator.exit_code == 2
        assert "the node refused (403)" in as_operator.output
        assert "auditor" in as_operator.output
        without = await run_cli(["audit", "search", *node], {KEY_ENV: ""})
        assert without.exit_code == 2
        assert f"set the environment variable {KEY_ENV}" in without.output
        both = await run_cli(["audit", "search", "archives", *node], {KEY_ENV: auditor})
        assert both.exit_code != 0
        assert "either PATH" in both.output
