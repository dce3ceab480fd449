"""The configuration anchor file a node is installed with."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pytest

from gateway.anchor import Anchor, AnchorError, make_anchor
from gateway.canonical import canonical_json
from tests.gateway.test_globalconf import GENERATED, self_signed
from tests.pki_factory import Issued

SOURCE = "http://127.0.0.1:4400/globalconf/current"


@pytest.fixture(scope="module")
def keys() -> tuple[Issued, Issued]:
    return self_signed("key 1"), self_signed("key 2")


@pytest.fixture
def anchor(keys: tuple[Issued, Issued]) -> Anchor:
    return make_anchor(
        "IQ",
        [SOURCE],
        [k.cert for k in keys],
        generated_at=GENERATED + dt.timedelta(microseconds=5),
    )


def edited(anchor: Anchor, change: Any) -> bytes:
    obj = anchor.to_obj()
    change(obj)
    return canonical_json(obj)


def test_anchor_round_trips(anchor: Anchor) -> None:
    data = anchor.to_bytes()
    again = Anchor.from_bytes(data)
    assert again == anchor
    assert again.to_bytes() == data
    assert again.generated_at == GENERATED


def test_anchor_file_has_the_published_shape(anchor: Anchor, keys: tuple[Issued, Issued]) -> None:
    obj = json.loads(anchor.to_bytes())
    assert sorted(obj) == ["format", "generated_at", "instance", "sources", "verification_certs"]
    assert obj["format"] == "jisr-anchor/1"
    assert obj["generated_at"] == "2026-11-22T10:00:00Z"
    assert obj["sources"] == [{"url": SOURCE}]
    assert len(obj["verification_certs"]) == 2


def test_digest_is_sha256_of_the_canonical_file(anchor: Anchor) -> None:
    data = anchor.to_bytes()
    assert anchor.digest == "sha256:" + hashlib.sha256(data).hexdigest()


def test_reindented_file_keeps_its_digest_but_a_changed_value_does_not(anchor: Anchor) -> None:
    pretty = json.dumps(anchor.to_obj(), indent=2).encode()
    assert Anchor.from_bytes(pretty).digest == anchor.digest
    changed = edited(anchor, lambda o: o.update(sources=[{"url": "http://evil.test/current"}]))
    assert Anchor.from_bytes(changed).digest != anchor.digest


def test_trusts_only_its_verification_certificates(
    anchor: Anchor, keys: tuple[Issued, Issued]
) -> None:
    assert anchor.trusts(keys[0].cert)
    assert anchor.trusts(keys[1].cert)
    assert not anchor.trusts(self_signed("other").cert)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.update(format="jisr-anchor/9"), "field format is 'jisr-anchor/9'"),
        (lambda o: o.pop("sources"), r"missing field\(s\) sources"),
        (lambda o: o.update(extra=1), r"unknown field\(s\) extra"),
        (lambda o: o.update(instance="I Q"), "field instance is invalid"),
        (lambda o: o.update(sources=[]), "at least one place"),
        (lambda o: o.update(sources=[{"url": "ftp://x/current"}]), "not an http"),
        (lambda o: o.update(sources=[{"url": "http://x\u2028/current"}]), "not a usable URL"),
        (lambda o: o.update(sources=[{"url": SOURCE, "x": 1}]), "exactly the field"),
        (lambda o: o.update(verification_certs=[]), "at least one configuration signing"),
        (lambda o: o.update(verification_certs=["AAAA"]), "not a base64 DER"),
        (lambda o: o.update(verification_certs=["%%%"]), "not a base64 DER"),
        (lambda o: o.update(generated_at="yesterday"), "not an RFC 3339"),
        (
            lambda o: o.update(verification_certs=o["verification_certs"] * 2),
            "same certificate more than once",
        ),
    ],
)
def test_refuses_invalid_anchor(anchor: Anchor, change: Any, message: str) -> None:
    with pytest.raises(AnchorError, match=message) as info:
        Anchor.from_bytes(edited(anchor, change))
    assert info.value.fault_code == "Server.InternalError"


def test_refuses_anchor_that_is_not_json() -> None:
    with pytest.raises(AnchorError, match="not valid UTF-8 JSON"):
        Anchor.from_bytes(b"\xff\xfe")
    with pytest.raises(AnchorError, match="must be a JSON object"):
        Anchor.from_bytes(b"[]")


def test_refuses_duplicate_keys() -> None:
    with pytest.raises(AnchorError, match="appears twice"):
        Anchor.from_bytes(b'{"format":"jisr-anchor/1","format":"jisr-anchor/1"}')


def test_refuses_oversized_anchor() -> None:
    with pytest.raises(AnchorError, match="at most"):
        Anchor.from_bytes(b" " * (1024 * 1024 + 1))


def test_make_anchor_refuses_naive_time(keys: tuple[Issued, Issued]) -> None:
    with pytest.raises(AnchorError, match="timezone-aware"):
        make_anchor("IQ", [SOURCE], [keys[0].cert], generated_at=dt.datetime(2026, 1, 1))
