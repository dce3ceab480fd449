"""The demo network: everything on 127.0.0.1, started in order, stopped in reverse.

Rules:
- The demo is a user of Jisr, not a special case of it: it creates the CA, trust services and
  registry through the same functions as ``jisr pki``, ``jisr ocsp``/``tsa serve`` and
  ``jisr registry``.
- Every listener binds 127.0.0.1 on a port the operating system chooses, except the fixed
  points documented in ``docs/demo.md``; the bound URLs are written to
  ``<data dir>/network.json``.
- Each run starts from a clean slate: the data directory's CA, registry and node state are
  recreated; only the embedded PostgreSQL cluster is kept (its databases are recreated), so a
  second run starts faster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from cryptography.hazmat.primitives import serialization

from certs.ca import CaIndex, CertificateAuthority
from certs.keystore import SoftwareKeyStore
from certs.ocsp import OcspResponder
from certs.tsa import DEFAULT_POLICY_OID, TimestampAuthority
from config.files import write_atomically
from config.settings import RegistrySettings
from jisr.demo.members import ALL_GOVERNMENT, INSTANCE, MEMBER_CLASS, MEMBERS
from registry.conf_keys import export_anchor, initialise_registry
from registry.server import running_registry
from registry.store import RegistryStore
from storage.database import ensure_database
from storage.embedded import EmbeddedPostgres
from storage.migrations import apply_migrations
from trust_services.http_server import serve_app
from trust_services.ocsp_server import ocsp_app
from trust_services.tsa_server import SerialNumbers, tsa_app

log = structlog.get_logger(__name__)

#: Passphrase of every key the demo creates. A demo secret, printed nowhere; never reuse it.
DEMO_PASSPHRASE = "jisr-demo-only-passphrase"  # noqa: S105 (a published demo value)
DEFAULT_DATA_DIR = Path("jisr-demo")
REGISTRY_DATABASE = "jisr_registry"
DEMO_TIMESTAMPING_S = 3


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class Endpoints:
    """What the demo started, as written to ``network.json``."""

    data_dir: Path
    registry: str = ""
    globalconf: str = ""
    ocsp: str = ""
    tsa: str = ""
    anchor_file: str = ""
    anchor_digest: str = ""
    operator_api_key_file: str = ""
    nodes: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    sample_services: str = ""
    sample_national_ids: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["data_dir"] = str(self.data_dir)
        return data

    def write(self) -> Path:
        path = self.data_dir / "network.json"
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        write_atomically(path, text.encode("utf-8"))
        return path


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


async def fresh_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    return await ensure_database(server_url, name)


@dataclasses.dataclass
class TrustServices:
    ca: CertificateAuthority
    ocsp_url: str
    tsa_url: str
    ocsp_cert: bytes
    tsa_cert: bytes


@contextlib.asynccontextmanager
async def trust_services(data_dir: Path, *, now: dt.datetime) -> AsyncIterator[TrustServices]:
    """The demo CA (root + issuing CA), its OCSP responder and a TSA, serving while open."""
    ca_dir = data_dir / "ca"
    ca = CertificateAuthority.init(
        ca_dir, name="Jisr Demo", passphrase=DEMO_PASSPHRASE, intermediate=True, now=now
    )
    services = SoftwareKeyStore(data_dir / "trust-services" / "keys")
    ocsp_issued = ca.issue_for_new_key(
        "ocsp",
        "Jisr Demo OCSP Responder",
        keystore=services,
        label="ocsp",
        key_passphrase=DEMO_PASSPHRASE,
        now=now,
    )
    tsa_issued = ca.issue_for_new_key(
        "tsa",
        "Jisr Demo TSA",
        keystore=services,
        label="tsa",
        key_passphrase=DEMO_PASSPHRASE,
        now=now,
    )
    index = CaIndex.load(ca_dir)
    responder = OcspResponder(
        ca.issuer_certificate,
        services.signer("ocsp", DEMO_PASSPHRASE, ocsp_issued.certificate, ocsp_issued.chain),
        index.status,
    )
    authority = TimestampAuthority(
        tsa_issued.certificate,
        services.signer("tsa", DEMO_PASSPHRASE, tsa_issued.certificate, tsa_issued.chain),
        policy_oid=DEFAULT_POLICY_OID,
        chain=tsa_issued.chain,
    )
    serials = SerialNumbers(data_dir / "trust-services" / "tsa-serial")
    der = serialization.Encoding.DER
    async with (
        serve_app(ocsp_app(responder)) as ocsp_url,
        serve_app(tsa_app(authority, serials)) as tsa_url,
    ):
        yield TrustServices(
            ca,
            ocsp_url + "/",
            tsa_url + "/",
            ocsp_issued.certificate.public_bytes(der),
            tsa_issued.certificate.public_bytes(der),
        )


async def populate_registry(store: RegistryStore, trust: TrustServices) -> None:
    """The demo members, their subsystems, the global group, the approved CA and TSA."""
    actor = "demo"
    der = serialization.Encoding.DER
    await store.add_member_class(actor, MEMBER_CLASS, "Government bodies — الجهات الحكومية")
    for member in MEMBERS:
        await store.add_member(actor, member.id, member.name)
        for code in member.subsystems:
            await store.add_subsystem(actor, member.subsystem(code))
    await store.add_group(actor, ALL_GOVERNMENT, "All government subsystems")
    for member in MEMBERS:
        for code in member.subsystems:
            await store.add_group_member(actor, ALL_GOVERNMENT, member.subsystem(code))
    await store.add_ca(
        actor,
        "Jisr Demo CA",
        trust.ca.root_certificate.public_bytes(der),
        intermediates=[c.public_bytes(der) for c in trust.ca.intermediates],
        ocsp=[(trust.ocsp_url, trust.ocsp_cert)],
    )
    await store.add_tsa(actor, "Jisr Demo TSA", trust.tsa_url, trust.tsa_cert)


@dataclasses.dataclass
class RegistryRunning:
    url: str
    store: RegistryStore
    anchor_path: Path
    anchor_digest: str
    api_key_path: Path


@contextlib.asynccontextmanager
async def registry(
    data_dir: Path, server_url: str, trust: TrustServices, *, now: dt.datetime
) -> AsyncIterator[RegistryRunning]:
    """The central registry with the demo members, auto-approval on, serving while open."""
    reg_dir = _fresh_dir(data_dir / "registry")
    url = await fresh_database(server_url, REGISTRY_DATABASE)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=5)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn, "registry.migrations")
        store = RegistryStore(pool)
        # Timestamp batches every few seconds instead of X-Road's minute, so that the demo's
        # exchanges are timestamped (and can be archived and verified) before it ends.
        settings = RegistrySettings(
            instance=INSTANCE, auto_approve=True, timestamping_interval_s=DEMO_TIMESTAMPING_S
        )
        passphrase = DEMO_PASSPHRASE.encode()
        _key_id, api_key = await initialise_registry(
            store, reg_dir, passphrase, instance=INSTANCE, settings=settings, now=now
        )
        api_key_path = reg_dir / "operator-api-key"
        write_atomically(api_key_path, (api_key + "\n").encode("utf-8"), 0o600)
        await populate_registry(store, trust)
        async with running_registry(
            store,
            data_dir=reg_dir,
            passphrase=passphrase,
            host="127.0.0.1",
            port=0,
            interval_s=settings.conf_regenerate_interval_s,
        ) as (base_url, _publisher):
            anchor = await export_anchor(store, [base_url + "/globalconf/current"], now=now)
            anchor_path = data_dir / "anchor.json"
            anchor_path.write_bytes(anchor.to_bytes())
            yield RegistryRunning(base_url, store, anchor_path, anchor.digest, api_key_path)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """The embedded PostgreSQL server of the demo, shared by the registry and the nodes."""
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data directory, removing the previous run's state but not PostgreSQL's."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for entry in data_dir.iterdir():
        if entry.name == "postgres":
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return data_dir.resolve()
