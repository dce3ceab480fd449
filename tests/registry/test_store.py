"""The registry store: writes with audit rows, refusals that leave the database unchanged."""

from __future__ import annotations

import pytest

from config.errors import IdentifierError, ValidationError
from gateway.identifiers import MemberId, SecurityServerId, SubsystemId
from registry.errors import ConflictError, DuplicateError, NotFoundError
from tests.pki_factory import FixturePki
from tests.registry.conftest import Registry

pytestmark = pytest.mark.postgres


async def _counts(registry: Registry) -> tuple[int, int, int]:
    async with registry.pool.acquire() as conn:
        return (
            await conn.fetchval("SELECT count(*) FROM members"),
            await conn.fetchval("SELECT count(*) FROM audit_log"),
            await conn.fetchval("SELECT change_serial FROM instance"),
        )


async def test_adds_member_and_subsystem_with_audit_rows(registry: Registry) -> None:
    store = registry.store
    await store.add_member("alice", MemberId.parse("IQ/GOV/NDC"), "National Data Centre")
    await store.add_subsystem("alice", SubsystemId.parse("IQ/GOV/NDC/population"))
    assert await store.list_members() == [
        {"id": "IQ/GOV/NDC", "name": "National Data Centre", "subsystems": ["population"]}
    ]
    audit = await store.list_audit(action="member.add")
    assert [(a["actor"], a["details"]["member"]) for a in audit] == [("alice", "IQ/GOV/NDC")]
    assert (await store.list_audit(action="subsystem.add"))[0]["details"] == {
        "subsystem": "IQ/GOV/NDC/population"
    }


async def test_refuses_duplicate_member_code_and_leaves_database_unchanged(
    registry: Registry,
) -> None:
    store = registry.store
    await store.add_member("alice", MemberId.parse("IQ/GOV/NDC"), "National Data Centre")
    before = await _counts(registry)
    with pytest.raises(DuplicateError, match=r"member IQ/GOV/NDC already exists"):
        await store.add_member("alice", MemberId.parse("IQ/GOV/NDC"), "Another name")
    assert await _counts(registry) == before
    assert (await store.get_member(MemberId.parse("IQ/GOV/NDC")))["name"] == "National Data Centre"


async def test_refuses_identifier_with_illegal_characters(registry: Registry) -> None:
    before = await _counts(registry)
    with pytest.raises(IdentifierError, match="do not allow"):
        await registry.store.add_member("alice", MemberId("IQ", "GOV", "N D/C"), "x")
    assert await _counts(registry) == before


async def test_refuses_member_of_another_instance_or_unknown_class(registry: Registry) -> None:
    with pytest.raises(ValidationError, match="this registry serves 'IQ'"):
        await registry.store.add_member("alice", MemberId.parse("EE/GOV/NDC"), "x")
    with pytest.raises(NotFoundError, match="member class COM does not exist"):
        await registry.store.add_member("alice", MemberId.parse("IQ/COM/ACME"), "Acme")


async def test_registers_server_with_clients_and_refuses_deleting_its_owner(
    registry: Registry,
) -> None:
    store = registry.store
    pki = FixturePki.create()
    auth = pki.authentication("IQ/GOV/NDC/ss1")
    from cryptography.hazmat.primitives.serialization import Encoding

    await store.add_member("op", MemberId.parse("IQ/GOV/NDC"), "National Data Centre")
    await store.add_subsystem("op", SubsystemId.parse("IQ/GOV/NDC/population"))
    server = SecurityServerId.parse("IQ/GOV/NDC/ss1")
    await store.add_server(
        "op", server, "ss1.ndc.gov.iq:5500", [auth.cert.public_bytes(Encoding.DER)]
    )
    await store.add_server_client("op", server, SubsystemId.parse("IQ/GOV/NDC/population"))
    listed = await store.get_server(server)
    assert listed["address"] == "ss1.ndc.gov.iq:5500"
    assert listed["clients"] == ["IQ/GOV/NDC/population"]
    with pytest.raises(ConflictError, match="still referred to"):
        await store.delete_member("op", MemberId.parse("IQ/GOV/NDC"))
    with pytest.raises(ValidationError, match="HOST:PORT"):
        await store.set_server_address("op", server, "https://ss1")


async def test_api_keys_are_stored_as_hashes_and_revocable(registry: Registry) -> None:
    store = registry.store
    key = await store.create_api_key("op", "auditor-1", "auditor")
    found = await store.authenticate(key)
    assert found is not None
    assert found.role == "auditor"
    async with registry.pool.acquire() as conn:
        stored = await conn.fetch("SELECT key_hash FROM api_keys")
    assert all(key not in r["key_hash"] for r in stored)
    await store.revoke_api_key("op", "auditor-1")
    assert await store.authenticate(key) is None


async def test_deletes_a_member_class_and_a_global_group_with_audit_rows(
    registry: Registry,
) -> None:
    store = registry.store
    await store.add_member_class("op", "COM", "Companies")
    await store.add_member("op", MemberId.parse("IQ/GOV/NDC"), "National Data Centre")
    await store.add_group("op", "security-servers", "Every owner")
    await store.add_group_member("op", "security-servers", MemberId.parse("IQ/GOV/NDC"))
    await store.delete_member_class("op", "COM")
    await store.delete_group("op", "security-servers")
    assert [c["code"] for c in await store.list_member_classes()] == ["GOV"]
    assert await store.list_groups() == []
    async with registry.pool.acquire() as conn:  # the group's members went with it
        assert await conn.fetchval("SELECT count(*) FROM global_group_members") == 0
    assert [a["details"] for a in await store.list_audit(action="member_class.delete")] == [
        {"member_class": "COM"}
    ]
    assert [a["details"] for a in await store.list_audit(action="group.delete")] == [
        {"code": "security-servers"}
    ]
    # What does not exist is reported and nothing is written, not even an audit row.
    before = await _counts(registry)
    with pytest.raises(NotFoundError, match="member class COM does not exist"):
        await store.delete_member_class("op", "COM")
    with pytest.raises(NotFoundError, match="global group 'security-servers' does not exist"):
        await store.delete_group("op", "security-servers")
    with pytest.raises(NotFoundError, match="no approved CA is named 'nope'"):
        await store.delete_ca("op", "nope")
    with pytest.raises(NotFoundError, match="no approved TSA is named 'nope'"):
        await store.delete_tsa("op", "nope")
    assert await _counts(registry) == before
