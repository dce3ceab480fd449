"""Setting a node up: init, CSRs, import-cert, register with a real registry, add a client.

The network here is real and in-process: a registry (``registry.server``) with auto-approval,
a CA made with ``certs.ca`` and its OCSP responder, all on 127.0.0.1 with OS-chosen ports.
The helpers and the ``network`` fixture are reused by the other node tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.ca import CaIndex, CertificateAuthority
from certs.errors import WrongProfileError
from certs.keystore import SoftwareKeyStore
from certs.ocsp import OcspResponder
from config.errors import IdentifierError
from config.settings import RegistrySettings
from gateway.identifiers import MemberId, SecurityServerId, SubsystemId
from registry.conf_keys import export_anchor, initialise_registry
from registry.server import running_registry
from registry.store import RegistryStore
from security_server.conf_client import ConfClient
from security_server.node_dir import NodeDir, NodeDirError, passphrase_from_env, render_node_toml
from security_server.node_keys import (
    AUTH_LABEL,
    NodeKeyError,
    NodeKeys,
    add_member_key,
    import_certificate,
    initialise_node,
    signing_label,
)
from security_server.registration import (
    RegistrationError,
    client_request,
    register_server,
)
from storage.database import open_pool
from trust_services.http_server import serve_app
from trust_services.ocsp_server import ocsp_app

pytestmark = pytest.mark.postgres

PASSPHRASE = "node-test-passphrase"
REGISTRY_PASSPHRASE = b"registry-test-passphrase"
CA_PASSPHRASE = "ca-test-passphrase"
SERVER = "IQ/GOV/HJC/ss1"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class Network:
    """A registry, a CA with its OCSP responder, and the anchor a node installs."""

    store: RegistryStore
    pool: asyncpg.Pool
    registry_url: str
    ca: CertificateAuthority
    ocsp_url: str
    anchor: bytes
    tmp: Path

    def issue(self, csr: Path, profile: str) -> bytes:
        cert = self.ca.issue(csr.read_bytes(), profile, now=utc_now())  # type: ignore[arg-type]
        return cert.public_bytes(Encoding.PEM)

    def new_node(self, name: str = "node", server_id: str = SERVER) -> Path:
        directory = self.tmp / name
        initialise_node(
            directory,
            server_id=server_id,
            anchor=self.anchor,
            passphrase=PASSPHRASE,
            now=utc_now(),
            public_address="127.0.0.1:5500",
            ports={"client_http_port": 0, "client_https_port": 0, "server_port": 0},
        )
        return directory

    def certify(self, directory: Path) -> None:
        """Have the CA sign the node's CSRs and import the certificates."""
        node = NodeDir(directory)
        for label in NodeKeys(node).store.labels():
            profile = "auth" if label == AUTH_LABEL else "sign"
            import_certificate(
                directory,
                self.issue(node.csr_file(label), profile),
                chain=self.ca.root_certificate.public_bytes(Encoding.PEM),
                now=utc_now(),
            )


@contextlib.asynccontextmanager
async def running_network(db_url: str, tmp: Path) -> AsyncIterator[Network]:
    async with open_pool(
        configured_url=db_url,
        data_dir=tmp,
        database="registry",
        migrations="registry.migrations",
        max_size=4,
    ) as pool:
        store = RegistryStore(pool)
        registry_dir = tmp / "registry"
        registry_dir.mkdir()
        await initialise_registry(
            store,
            registry_dir,
            REGISTRY_PASSPHRASE,
            instance="IQ",
            settings=RegistrySettings(auto_approve=True),
            now=utc_now(),
        )
        await store.add_member_class("test", "GOV", "Government")
        await store.add_member("test", MemberId.parse("IQ/GOV/HJC"), "Higher Judicial Council")
        await store.add_member("test", MemberId.parse("IQ/GOV/NDC"), "National Data Centre")
        ca = CertificateAuthority.init(
            tmp / "ca", name="Jisr Test", passphrase=CA_PASSPHRASE, now=utc_now()
        )
        responder_key = ca.issue_for_new_key(
            "ocsp",
            "Jisr Test OCSP",
            keystore=SoftwareKeyStore(tmp / "ocsp-keys"),
            label="ocsp",
            key_passphrase=CA_PASSPHRASE,
            now=utc_now(),
        )
        signer = SoftwareKeyStore(tmp / "ocsp-keys").signer(
            "ocsp", CA_PASSPHRASE, responder_key.certificate
        )
        responder = OcspResponder(ca.issuer_certificate, signer, CaIndex.load(tmp / "ca").status)
        async with serve_app(ocsp_app(responder)) as ocsp_url:
            await store.add_ca(
                "test",
                "Jisr Test CA",
                ca.root_certificate.public_bytes(Encoding.DER),
                ocsp=[(ocsp_url + "/", responder_key.certificate.public_bytes(Encoding.DER))],
            )
            async with running_registry(
                store,
                data_dir=registry_dir,
                passphrase=REGISTRY_PASSPHRASE,
                host="127.0.0.1",
                port=0,
                interval_s=60,
            ) as (registry_url, _publisher):
                anchor = await export_anchor(
                    store, [registry_url + "/globalconf/current"], now=utc_now()
                )
                yield Network(store, pool, registry_url, ca, ocsp_url + "/", anchor.to_bytes(), tmp)


@pytest.fixture
async def network(fresh_db_url: str, tmp_path: Path) -> AsyncIterator[Network]:
    async with running_network(fresh_db_url, tmp_path) as net:
        yield net


async def wait_for_server_in_conf(directory: Path, server: str) -> ConfClient:
    """Poll the registry until the published configuration lists ``server``."""
    node = NodeDir(directory)
    async with aiohttp.ClientSession() as s:
        client = ConfClient(node.globalconf_dir, node.load_anchor(), session=s)
        for _ in range(200):
            await client.poll_once()
            conf = client.latest
            if conf is not None and conf.server(SecurityServerId.parse(server)) is not None:
                return client
            await asyncio.sleep(0.05)
    raise AssertionError(f"{server} never appeared in the global configuration")


# -- init ------------------------------------------------------------------------------------


def test_init_creates_layout_keys_and_csrs(tmp_path: Path, network: Network) -> None:
    directory = network.new_node()
    node = NodeDir(directory)
    settings = node.load_settings(env={})
    assert settings.node.server_id == SERVER
    assert settings.node.public_address == "127.0.0.1:5500"
    assert settings.node.server_port == 0
    assert settings.node.admin_port == 4000
    assert node.load_anchor().to_bytes() == network.anchor
    assert NodeKeys(node).store.labels() == [AUTH_LABEL, "sign-IQ.GOV.HJC"]
    auth_csr = x509.load_pem_x509_csr(node.csr_file(AUTH_LABEL).read_bytes())
    assert auth_csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == SERVER
    sign_csr = x509.load_pem_x509_csr(node.csr_file("sign-IQ.GOV.HJC").read_bytes())
    serial = sign_csr.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    assert serial[0].value == "IQ/GOV/HJC"
    assert node.internal_cert_file.is_file()
    key_pem = (node.keys_dir / "auth.key.pem").read_bytes()
    assert b"ENCRYPTED" in key_pem
    assert (node.keys_dir.stat().st_mode & 0o777) == 0o700
    assert PASSPHRASE.encode() not in node.config_file.read_bytes()


def test_init_refuses_existing_node_and_wrong_instance(tmp_path: Path, network: Network) -> None:
    network.new_node()
    with pytest.raises(NodeDirError, match="already holds a node"):
        network.new_node()
    with pytest.raises(NodeDirError, match="instance"):
        network.new_node("other", server_id="XX/GOV/HJC/ss1")
    with pytest.raises(IdentifierError):
        network.new_node("bad", server_id="IQ/GOV/HJC")
    assert not (tmp_path / "other").exists()


def test_passphrase_is_required() -> None:
    with pytest.raises(NodeDirError, match="JISR_NODE_KEY_PASSPHRASE"):
        passphrase_from_env("JISR_NODE_KEY_PASSPHRASE", {})
    with pytest.raises(NodeDirError, match="shorter"):
        passphrase_from_env("JISR_NODE_KEY_PASSPHRASE", {"JISR_NODE_KEY_PASSPHRASE": "short"})


# -- import-cert -----------------------------------------------------------------------------


def test_import_cert_matches_key_by_public_key(network: Network) -> None:
    directory = network.new_node()
    network.certify(directory)
    keys = NodeKeys(NodeDir(directory))
    auth = keys.require_auth()
    assert (
        auth.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == SERVER
    )
    signers = keys.load_signers(PASSPHRASE)
    assert list(signers) == [MemberId.parse("IQ/GOV/HJC")]
    tls = keys.tls_files(PASSPHRASE)
    assert tls.certificate == auth.certificate


def test_import_cert_refuses_foreign_certificate_and_wrong_profile(network: Network) -> None:
    directory = network.new_node()
    node = NodeDir(directory)
    other = network.new_node("other")
    foreign = network.issue(NodeDir(other).csr_file(AUTH_LABEL), "auth")
    with pytest.raises(NodeKeyError, match="matches no key"):
        import_certificate(directory, foreign, now=utc_now())
    wrong = network.ca.issue(
        node.csr_file("sign-IQ.GOV.HJC").read_bytes(),
        "auth",
        now=utc_now(),
        server_id=SERVER,
    )
    with pytest.raises(WrongProfileError, match="signing"):
        import_certificate(directory, wrong.public_bytes(Encoding.PEM), now=utc_now())
    assert not list(node.certs_dir.iterdir())


def test_add_member_key_makes_a_second_signing_key(network: Network) -> None:
    directory = network.new_node()
    csr = add_member_key(directory, "IQ/GOV/NDC", PASSPHRASE)
    assert csr.name == f"{signing_label(MemberId.parse('IQ/GOV/NDC'))}.csr.pem"
    with pytest.raises(NodeKeyError, match="already has a signing key"):
        add_member_key(directory, "IQ/GOV/NDC", PASSPHRASE)


# -- registration ----------------------------------------------------------------------------


async def test_register_server_and_client_are_executed(
    network: Network, session: aiohttp.ClientSession
) -> None:
    directory = network.new_node()
    network.certify(directory)
    node = NodeDir(directory)
    state = await register_server(node, PASSPHRASE, session=session)
    assert (state.type, state.server, state.state) == ("register_server", SERVER, "executed")
    registered = await network.store.get_server(SecurityServerId.parse(SERVER))
    assert registered["address"] == "127.0.0.1:5500"

    client = await wait_for_server_in_conf(directory, SERVER)
    conf = client.latest
    assert conf is not None
    auth = NodeKeys(node).require_auth().certificate
    assert conf.auth_cert_registered(SecurityServerId.parse(SERVER), auth)

    sub = SubsystemId.parse("IQ/GOV/HJC/inheritance")
    state = await client_request(node, PASSPHRASE, sub, session=session)
    assert (state.type, state.client, state.state) == ("register_client", str(sub), "executed")
    assert str(sub) in (await network.store.get_server(SecurityServerId.parse(SERVER)))["clients"]


async def test_register_refused_twice_with_the_registry_message(
    network: Network, session: aiohttp.ClientSession
) -> None:
    directory = network.new_node()
    network.certify(directory)
    await register_server(NodeDir(directory), PASSPHRASE, session=session)
    with pytest.raises(RegistrationError, match="already registered"):
        await register_server(NodeDir(directory), PASSPHRASE, session=session)


async def test_register_needs_imported_certificates(
    network: Network, session: aiohttp.ClientSession
) -> None:
    directory = network.new_node()
    with pytest.raises(NodeKeyError, match="import-cert"):
        await register_server(NodeDir(directory), PASSPHRASE, session=session)


def test_settings_file_is_valid_toml_and_environment_overrides_it(tmp_path: Path) -> None:
    text = render_node_toml(
        server_id=SERVER,
        host="0.0.0.0",  # noqa: S104 (a value written to a file, nothing binds here)
        public_address='ss1."hjc".gov.iq:5500',
        ports={"admin_port": 0},
        database_url="postgresql://jisr@db.hjc.gov.iq/jisr",
    )
    node = NodeDir(tmp_path)
    node.config_file.write_bytes(text)
    node.anchor_file.write_text("{}")
    settings = node.load_settings(env={"JISR_NODE_ADMIN_PORT": "4100"})
    assert settings.node.public_address == 'ss1."hjc".gov.iq:5500'
    assert settings.node.admin_port == 4100
    assert settings.database.url == "postgresql://jisr@db.hjc.gov.iq/jisr"
    assert settings.data_dir == tmp_path
    with pytest.raises(NodeDirError, match="control characters"):
        render_node_toml(server_id=SERVER, host="h\n", public_address="", ports={}, database_url="")
