"""Configuration signing keys: made here, kept encrypted in the data directory, never in the DB.

Rules:

- A key is ECDSA P-256 with a self-signed certificate; nodes trust it because the anchor (or a
  configuration they already trust) lists the certificate, not because of a CA.
- Its id is the hex SHA-256 of the certificate's DER (``gateway.globalconf.key_id_of``).
- The private key lives in a software key store (:class:`certs.keystore.SoftwareKeyStore`) in
  ``<data_dir>/registry/conf-keys/``, labelled with the key id: written once as encrypted
  PKCS#8 (``<key_id>.key.pem``), readable by its owner only. The database stores only the
  label (``key_ref``). The passphrase comes from the environment variable the settings name and
  is never logged or stored.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certs.keys import generate_key
from certs.keystore import SoftwareKeyStore
from certs.signer import SoftwareSigner
from config.errors import ConfigError
from config.settings import RegistrySettings
from gateway.anchor import Anchor, make_anchor
from gateway.globalconf import key_id_of
from registry.store import RegistryStore

#: How long a configuration signing certificate is valid; rollover happens well before.
CERT_VALIDITY = dt.timedelta(days=5 * 365)
MIN_PASSPHRASE_LENGTH = 8


def keys_dir(data_dir: Path) -> Path:
    return data_dir / "registry" / "conf-keys"


def passphrase_from_env(env_name: str, environ: dict[str, str] | None = None) -> bytes:
    """The key store passphrase from the environment variable ``env_name``."""
    value = (os.environ if environ is None else environ).get(env_name, "")
    if len(value) < MIN_PASSPHRASE_LENGTH:
        raise ConfigError(
            f"the configuration signing key passphrase is missing or shorter than "
            f"{MIN_PASSPHRASE_LENGTH} characters; set the environment variable {env_name}"
        )
    return value.encode("utf-8")


def create_key(
    data_dir: Path, instance: str, passphrase: bytes, *, now: dt.datetime
) -> tuple[str, x509.Certificate, str]:
    """Make a key and its certificate; write the key encrypted. Return (key_id, cert, key_ref)."""
    key = generate_key("ec")
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Jisr registry {instance}"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"{instance} global configuration signing {now:%Y%m%d%H%M%S}"
            ),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_id = key_id_of(cert)
    # The key id is the label: the key store refuses to overwrite a label, and the database
    # names the key by it.
    _key_store(data_dir).store(key_id, _text(passphrase), key)
    return key_id, cert, key_id


def load_signer(
    data_dir: Path, key_ref: str, certificate: x509.Certificate, passphrase: bytes
) -> SoftwareSigner:
    """Open the encrypted key labelled ``key_ref`` and pair it with its certificate."""
    store = _key_store(data_dir)
    if key_ref not in store.labels():
        raise ConfigError(
            f"the configuration signing key {key_ref!r} is missing from {store.directory}; "
            "restore it from the backup of the registry data directory"
        )
    return store.signer(key_ref, _text(passphrase), certificate)


def _key_store(data_dir: Path) -> SoftwareKeyStore:
    return SoftwareKeyStore(keys_dir(data_dir))


def _text(passphrase: bytes) -> str:
    # The registry passes passphrases as the UTF-8 bytes passphrase_from_env returns.
    return passphrase.decode("utf-8")


async def announce_new_key(
    store: RegistryStore, data_dir: Path, passphrase: bytes, *, actor: str, now: dt.datetime
) -> str:
    """Create a key and record it as announced; it is published with the next version."""
    instance = (await store.settings()).instance_id
    key_id, cert, key_ref = create_key(data_dir, instance, passphrase, now=now)
    await store.add_conf_key(actor, key_id, cert.public_bytes(serialization.Encoding.DER), key_ref)
    return key_id


async def initialise_registry(
    store: RegistryStore,
    data_dir: Path,
    passphrase: bytes,
    *,
    instance: str,
    settings: RegistrySettings,
    now: dt.datetime,
    actor: str = "init",
) -> tuple[str, str]:
    """Bootstrap an empty registry: instance settings, the first (active) signing key and the
    first operator API key. Returns ``(key_id, api_key)``; show the API key once."""
    await store.initialise(
        actor,
        instance,
        ocsp_freshness_s=settings.ocsp_freshness_s,
        timestamping_interval_s=settings.timestamping_interval_s,
        conf_expiry_s=settings.conf_expiry_s,
        conf_refresh_s=settings.conf_regenerate_interval_s,
        auto_approve=settings.auto_approve,
    )
    key_id = await announce_new_key(store, data_dir, passphrase, actor=actor, now=now)
    await store.activate_conf_key(actor, key_id, first=True)
    api_key = await store.create_api_key(actor, "initial-operator", "operator")
    return key_id, api_key


async def export_anchor(
    store: RegistryStore, sources: Sequence[str], *, now: dt.datetime
) -> Anchor:
    """The anchor for node operators: every non-retired signing certificate, the sources."""
    instance = (await store.settings()).instance_id
    certs = [
        x509.load_der_x509_certificate(k.certificate)
        for k in await store.list_conf_keys()
        if k.state != "retired"
    ]
    return make_anchor(instance, sources, certs, generated_at=now)
