"""The body logging switch through the node admin API: operator only, audited, validated."""

from __future__ import annotations

import pytest

from tests.security_server.test_admin_api import CONSUMER, PROVIDER, Api, apis, pool

__all__ = ["apis", "pool"]  # the fixtures, imported to be used here

pytestmark = pytest.mark.postgres


async def test_operator_switches_body_logging_off_and_on(apis: dict[str, Api]) -> None:
    op = apis["operator"]
    assert (await op.call("POST", "/clients", {"client_id": PROVIDER}))[0] == 201
    status, clients = await op.call("GET", "/clients")
    assert (status, clients[0]["body_logging"]) == (200, True)

    body = {"client_id": PROVIDER, "body_logging": False}
    status, answer = await op.call("PUT", "/clients/body-logging", body)
    assert (status, answer) == (200, {"client_id": PROVIDER, "body_logging": False})
    clients = (await apis["auditor"].call("GET", "/clients"))[1]
    assert [(c["client_id"], c["body_logging"]) for c in clients] == [(PROVIDER, False)]
    # The same request again is no error: the switch is set, not toggled.
    assert (await op.call("PUT", "/clients/body-logging", body))[1]["body_logging"] is False

    body["body_logging"] = True
    assert (await op.call("PUT", "/clients/body-logging", body))[1]["body_logging"] is True
    audit = (await apis["auditor"].call("GET", "/audit-log", limit="3"))[1]
    assert [(a["actor"], a["action"], a["details"]["body_logging"]) for a in audit] == [
        ("api:ops", "client.body_logging", True),
        ("api:ops", "client.body_logging", False),
        ("api:ops", "client.body_logging", False),
    ]


async def test_a_client_can_be_added_with_body_logging_off(apis: dict[str, Api]) -> None:
    op = apis["operator"]
    status, added = await op.call(
        "POST", "/clients", {"client_id": CONSUMER, "body_logging": False}
    )
    assert (status, added) == (201, {"client_id": CONSUMER, "body_logging": False})
    # GET /clients answers from the snapshot the proxies read.
    clients = (await op.call("GET", "/clients"))[1]
    assert [(c["client_id"], c["body_logging"]) for c in clients] == [(CONSUMER, False)]


async def test_auditor_may_not_switch_body_logging(apis: dict[str, Api]) -> None:
    assert (await apis["operator"].call("POST", "/clients", {"client_id": PROVIDER}))[0] == 201
    body = {"client_id": PROVIDER, "body_logging": False}
    status, error = await apis["auditor"].call("PUT", "/clients/body-logging", body)
    assert status == 403
    assert "operator" in error["message"]
    assert (await apis["anonymous"].call("PUT", "/clients/body-logging", body))[0] == 401
    clients = (await apis["auditor"].call("GET", "/clients"))[1]
    assert clients[0]["body_logging"] is True


async def test_refuses_a_bad_body_logging_request(apis: dict[str, Api]) -> None:
    op = apis["operator"]
    assert (await op.call("POST", "/clients", {"client_id": PROVIDER}))[0] == 201
    cases = [
        ({"client_id": PROVIDER}, 400, "'body_logging' is required"),
        ({"client_id": PROVIDER, "body_logging": "off"}, 400, "true or false"),
        ({"body_logging": False}, 400, "'client_id' is required"),
        ({"client_id": "IQ/GOV", "body_logging": False}, 400, "IQ/GOV"),
        ({"client_id": CONSUMER, "body_logging": False}, 404, "not a client of this node"),
    ]
    for body, expected, words in cases:
        status, error = await op.call("PUT", "/clients/body-logging", body)
        assert status == expected, (body, error)
        assert words in error["message"], (body, error)
    status, error = await op.call("POST", "/clients", {"client_id": CONSUMER, "body_logging": 0})
    assert (status, error["type"]) == (400, "ValidationError")
    audit = (await apis["auditor"].call("GET", "/audit-log"))[1]
    assert [a["action"] for a in audit if a["actor"] == "api:ops"] == ["client.add"]
