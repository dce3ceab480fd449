"""Archive stores and the configuration history, without a database.

No S3-compatible server installs from PyPI here, so the S3 store is checked against an
in-memory bucket that follows the S3 API's contract for the calls the store makes
(Content-MD5 checked on PUT, HEAD, paginated listing); a deployment should run one archive pass
against its real bucket before relying on it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from audit.archive_format import trust_material
from audit.verifier import verify_path
from config.errors import ConfigError
from security_server.archiver import (
    ArchiverError,
    ConfHistory,
    DirectoryStore,
    S3Store,
    s3_store,
)
from tests.audit.archives import write_test_archive
from tests.audit.evidence import Federation, NodeLog
from tests.pki_factory import NOW

START = NOW.replace(minute=0)


class MemoryBucket:
    """The S3 calls the store uses, with S3's checks, over a dict."""

    def __init__(self, page_size: int = 2) -> None:
        self.objects: dict[str, bytes] = {}
        self.page_size = page_size
        self.corrupt_next_put = False

    def put_object(self, **kwargs: Any) -> Mapping[str, Any]:
        body = kwargs["Body"].read()
        if self.corrupt_next_put:
            self.corrupt_next_put = False
            body = body[:-1]
        if base64.b64decode(kwargs["ContentMD5"]) != hashlib.md5(body).digest():  # noqa: S324
            raise RuntimeError("BadDigest: the Content-MD5 you specified did not match")
        self.objects[kwargs["Key"]] = body
        return {"ETag": '"' + hashlib.md5(body).hexdigest() + '"'}  # noqa: S324

    def head_object(self, **kwargs: Any) -> Mapping[str, Any]:
        return {"ContentLength": len(self.objects[kwargs["Key"]])}

    def get_object(self, **kwargs: Any) -> Mapping[str, Any]:
        return {"Body": io.BytesIO(self.objects[kwargs["Key"]])}

    def list_objects_v2(self, **kwargs: Any) -> Mapping[str, Any]:
        keys = sorted(k for k in self.objects if k.startswith(kwargs["Prefix"]))
        start = int(kwargs.get("ContinuationToken", "0"))
        page = keys[start : start + self.page_size]
        more = start + self.page_size < len(keys)
        result: dict[str, Any] = {"Contents": [{"Key": k} for k in page], "IsTruncated": more}
        if more:
            result["NextContinuationToken"] = str(start + self.page_size)
        return result


def _archive_file(tmp_path: Path, sequence: int = 1) -> tuple[Path, bytes]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    federation = Federation()
    log = NodeLog(federation)
    log.log_exchanges(log.exchanges(1, START), START)
    log.timestamp_pending(START + dt.timedelta(minutes=1))
    path, linking = write_test_archive(
        tmp_path, federation, log.records, sequence=sequence, period_start=START
    )
    return path, linking.to_bytes()


def test_s3_store_uploads_archive_and_finds_the_newest(tmp_path: Path) -> None:
    bucket = MemoryBucket()
    store = S3Store(bucket, "archives", "node-1", staging=tmp_path)
    assert store.latest() is None
    for sequence in (1, 2, 3):
        path, linking = _archive_file(tmp_path / str(sequence), sequence)
        expected = path.read_bytes()
        location = store.put(path.name, path, linking)
        assert location == f"s3://archives/node-1/{path.name}"
        assert bucket.objects[f"node-1/{path.name}"] == expected
        assert not path.exists()
    latest = store.latest()
    assert latest is not None
    assert latest.linking.sequence == 3
    assert latest.name.startswith("archive-00000003-")


def test_s3_store_refuses_an_upload_the_bucket_did_not_store_intact(tmp_path: Path) -> None:
    bucket = MemoryBucket()
    bucket.corrupt_next_put = True
    store = S3Store(bucket, "archives", staging=tmp_path)
    path, linking = _archive_file(tmp_path)
    with pytest.raises(ArchiverError, match="BadDigest"):
        store.put(path.name, path, linking)
    assert path.exists()  # kept for the next attempt
    assert store.latest() is None


def test_s3_store_url_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not an s3://bucket/prefix URL"):
        s3_store("https://example.invalid/bucket", staging=tmp_path)


def test_directory_store_never_overwrites_an_archive(tmp_path: Path) -> None:
    path, linking = _archive_file(tmp_path / "made")
    store = DirectoryStore(tmp_path / "store")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / path.name).write_bytes(b"older")
    with pytest.raises(ArchiverError, match="never overwritten"):
        store.put(path.name, path, linking)


def test_directory_store_latest_reads_the_newest_linking_file(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    assert store.latest() is None
    for sequence in (1, 2):
        path, _ = _archive_file(tmp_path / f"made{sequence}", sequence)
        os.replace(path, tmp_path / path.name)
    latest = store.latest()
    assert latest is not None
    assert latest.linking.sequence == 2


def test_conf_history_keeps_only_versions_whose_trust_changed(tmp_path: Path) -> None:
    federation = Federation()
    history = ConfHistory(tmp_path, anchor=federation.anchor_bytes())
    assert history.remember(*federation.versions[0])
    assert not history.remember(*federation.publish(2, START))
    # A new TSA certificate changes what an auditor trusts: that version is kept.
    federation.tsa_issued = federation.pki.tsa()
    assert history.remember(*federation.publish(3, START + dt.timedelta(minutes=1)))
    assert history.versions() == [1, 3]
    chosen = history.versions_for({2, 3, 7})
    assert [len(pair) for pair in chosen] == [2, 2]
    trust = trust_material(history.anchor(), chosen)
    assert sorted(trust) == [
        "trust/anchor.json",
        "trust/ca-certificates.pem",
        "trust/globalconf-00000001.json",
        "trust/globalconf-00000001.json.p7s",
        "trust/globalconf-00000003.json",
        "trust/globalconf-00000003.json.p7s",
        "trust/ocsp-responders.pem",
        "trust/tsa-certificates.pem",
    ]


def test_archive_of_a_test_log_verifies_from_the_store(tmp_path: Path) -> None:
    path, _ = _archive_file(tmp_path)
    assert verify_path(path).ok
