"""Configuration signing keys live encrypted in a software key store, labelled by key id."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from certs.errors import KeyStoreError
from certs.keystore import SoftwareKeyStore
from config.errors import ConfigError
from gateway.globalconf import key_id_of
from registry.conf_keys import create_key, keys_dir, load_signer

PASSPHRASE = b"conf-key-passphrase"
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def test_a_new_key_is_in_the_key_store_under_its_id_and_signs(tmp_path: Path) -> None:
    key_id, cert, key_ref = create_key(tmp_path, "IQ", PASSPHRASE, now=NOW)
    assert key_ref == key_id == key_id_of(cert)
    assert SoftwareKeyStore(keys_dir(tmp_path)).labels() == [key_id]
    signer = load_signer(tmp_path, key_ref, cert, PASSPHRASE)
    assert signer.certificate == cert
    assert signer.sign(b"configuration")


def test_refuses_a_wrong_passphrase_without_showing_it(tmp_path: Path) -> None:
    _, cert, key_ref = create_key(tmp_path, "IQ", PASSPHRASE, now=NOW)
    with pytest.raises(KeyStoreError, match="wrong passphrase") as caught:
        load_signer(tmp_path, key_ref, cert, b"not-the-passphrase")
    assert "not-the-passphrase" not in str(caught.value)


def test_a_missing_key_file_says_to_restore_the_data_directory(tmp_path: Path) -> None:
    _, cert, key_ref = create_key(tmp_path, "IQ", PASSPHRASE, now=NOW)
    (keys_dir(tmp_path) / f"{key_ref}.key.pem").unlink()
    with pytest.raises(ConfigError, match="restore it from the backup"):
        load_signer(tmp_path, key_ref, cert, PASSPHRASE)
    with pytest.raises(ConfigError, match="missing"):
        load_signer(tmp_path, "../elsewhere", cert, PASSPHRASE)
