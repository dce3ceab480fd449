"""The publisher: chained versions, regeneration on change, verification against the anchor."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from gateway.globalconf import GlobalConf, digest_of, verify_globalconf
from gateway.identifiers import MemberId
from registry.conf_keys import announce_new_key, export_anchor
from registry.errors import ConflictError
from tests.registry.conftest import PASSPHRASE, Registry

pytestmark = pytest.mark.postgres

SOURCE = "http://127.0.0.1:4400/globalconf/current"


async def test_versions_chain_by_previous_digest(registry: Registry) -> None:
    first = await registry.publisher.publish()
    second = await registry.publisher.publish()
    assert (first.version, second.version) == (1, 2)
    assert first.previous_digest is None
    assert second.previous_digest == first.digest == digest_of(first.document)
    conf = GlobalConf.from_document(second.document)
    assert conf.previous_digest == first.digest
    assert conf.expires_at - conf.generated_at == dt.timedelta(seconds=600)


async def test_publishes_only_when_changed_or_due(registry: Registry) -> None:
    publisher = registry.publisher
    assert (await publisher.publish_if_due()) is not None
    assert (await publisher.publish_if_due()) is None
    await registry.store.add_member("op", MemberId.parse("IQ/GOV/NDC"), "National Data Centre")
    changed = await publisher.publish_if_due()
    assert changed is not None
    assert GlobalConf.from_document(changed.document).is_member(MemberId.parse("IQ/GOV/NDC"))


async def test_background_task_regenerates_on_change(registry: Registry) -> None:
    task = asyncio.create_task(registry.publisher.run())
    try:
        await asyncio.wait_for(registry.publisher.published.wait(), timeout=30)
        registry.publisher.published.clear()
        await registry.store.add_member("op", MemberId.parse("IQ/GOV/MOH"), "Ministry of Health")
        await asyncio.wait_for(registry.publisher.published.wait(), timeout=30)
        latest = await registry.store.latest_version()
        assert latest is not None
        assert GlobalConf.from_document(latest.document).is_member(MemberId.parse("IQ/GOV/MOH"))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_published_version_verifies_against_exported_anchor(registry: Registry) -> None:
    version = await registry.publisher.publish()
    now = dt.datetime.now(dt.UTC)
    anchor = await export_anchor(registry.store, [SOURCE], now=now)
    conf = verify_globalconf(
        version.document, version.signature, anchor=anchor, previous=None, now=now
    )
    assert conf.version == version.version
    assert [k.key_id for k in conf.signing_keys] == [registry.key_id]


async def test_key_rollover_announces_then_activates(registry: Registry) -> None:
    store, publisher = registry.store, registry.publisher
    now = dt.datetime.now(dt.UTC)
    anchor = await export_anchor(store, [SOURCE], now=now)
    v1 = await publisher.publish()
    conf1 = verify_globalconf(v1.document, v1.signature, anchor=anchor, previous=None, now=now)

    new_key = await announce_new_key(
        store, registry.data_dir, PASSPHRASE, actor="op", now=dt.datetime.now(dt.UTC)
    )
    with pytest.raises(ConflictError, match="has not been published yet"):
        await store.activate_conf_key("op", new_key)
    v2 = await publisher.publish()
    conf2 = verify_globalconf(v2.document, v2.signature, anchor=anchor, previous=conf1, now=now)
    states = {k.key_id: k.state for k in conf2.signing_keys}
    assert states == {registry.key_id: "active", new_key: "announced"}

    await store.activate_conf_key("op", new_key)
    v3 = await publisher.publish()
    assert v3.signing_key_id == new_key
    # A node that followed the chain accepts the version signed by the new key ...
    conf3 = verify_globalconf(v3.document, v3.signature, anchor=anchor, previous=conf2, now=now)
    assert [(k.key_id, k.state) for k in conf3.signing_keys] == [(new_key, "active")]
    # ... and a node installed afterwards trusts it through a newly exported anchor.
    new_anchor = await export_anchor(store, [SOURCE], now=now)
    assert (
        verify_globalconf(
            v3.document, v3.signature, anchor=new_anchor, previous=None, now=now
        ).version
        == 3
    )
    assert {k.key_id: k.state for k in await store.list_conf_keys()} == {
        registry.key_id: "retired",
        new_key: "active",
    }


async def test_republishes_when_interval_passed_without_change(registry: Registry) -> None:
    clock = [dt.datetime.now(dt.UTC)]
    publisher = registry.publisher
    publisher.clock = lambda: clock[0]
    first = await publisher.publish_if_due()
    assert first is not None
    clock[0] += dt.timedelta(seconds=59)
    assert await publisher.publish_if_due() is None
    clock[0] += dt.timedelta(seconds=2)
    again = await publisher.publish_if_due()
    assert again is not None
    assert again.version == first.version + 1
    assert again.previous_digest == first.digest


async def test_signing_key_is_stored_encrypted_outside_the_database(registry: Registry) -> None:
    (key,) = await registry.store.list_conf_keys()
    # Kept in a software key store labelled with the key id (certs.keystore's file layout).
    path = registry.data_dir / "registry" / "conf-keys" / f"{key.key_ref}.key.pem"
    assert key.key_ref == key.key_id
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in path.read_bytes()
    async with registry.pool.acquire() as conn:
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'conf_signing_keys'"
        )
    assert {c["column_name"] for c in columns} >= {"key_id", "certificate", "key_ref"}
    assert not any("private" in c["column_name"] for c in columns)
