"""Signing the global configuration at the registry and accepting it on a node."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certs.cms import sign_detached
from certs.signer import SoftwareSigner
from config.errors import ConfigError
from gateway.anchor import Anchor, make_anchor
from gateway.globalconf import (
    CLOCK_SKEW,
    GlobalConf,
    MalformedGlobalConf,
    OutdatedGlobalConf,
    RejectedGlobalConf,
    SigningKey,
    UntrustedGlobalConf,
    canonical_json,
    sign_globalconf,
    verify_globalconf,
)
from tests.gateway.test_globalconf import GENERATED, Sample, self_signed
from tests.pki_factory import Issued

NOW = GENERATED + dt.timedelta(seconds=30)


def signer_of(issued: Issued) -> SoftwareSigner:
    return SoftwareSigner(issued.key, issued.cert)


@pytest.fixture(scope="module")
def sample() -> Sample:
    return Sample()


@pytest.fixture(scope="module")
def anchor(sample: Sample) -> Anchor:
    return make_anchor(
        "IQ",
        ["http://127.0.0.1:4400/globalconf/current"],
        [sample.conf_key.cert],
        generated_at=GENERATED,
    )


def publish(
    sample: Sample, conf: GlobalConf, key: Issued | None = None, *, now: dt.datetime = GENERATED
) -> tuple[bytes, bytes]:
    return sign_globalconf(conf, signer_of(key or sample.conf_key), now=now)


def test_accepts_configuration_signed_by_anchor_key(sample: Sample, anchor: Anchor) -> None:
    conf = sample.build()
    document, signature = publish(sample, conf)
    accepted = verify_globalconf(document, signature, anchor=anchor, previous=None, now=NOW)
    assert accepted == conf
    assert accepted.to_document() == document


def test_refuses_expired_configuration(sample: Sample, anchor: Anchor) -> None:
    document, signature = publish(sample, sample.build())
    later = GENERATED + dt.timedelta(seconds=600)
    with pytest.raises(OutdatedGlobalConf, match="expired at 2026-11-22T10:10:00Z") as info:
        verify_globalconf(document, signature, anchor=anchor, previous=None, now=later)
    assert info.value.fault_code == "Server.ClientProxy.OutdatedGlobalConf"


def test_refuses_document_tampered_by_one_byte(sample: Sample, anchor: Anchor) -> None:
    document, signature = publish(sample, sample.build())
    at = document.index(b"127.0.0.1:5500") + len(b"127.0.0.1:550")
    tampered = document[:at] + b"1" + document[at + 1 :]
    with pytest.raises(UntrustedGlobalConf, match="does not verify") as info:
        verify_globalconf(tampered, signature, anchor=anchor, previous=None, now=NOW)
    assert info.value.fault_code == "Server.ClientProxy.InvalidSignatureValue"


def test_refuses_tampered_signature(sample: Sample, anchor: Anchor) -> None:
    document, signature = publish(sample, sample.build())
    # The last bytes are the signature value itself.
    tampered = signature[:-3] + bytes([signature[-3] ^ 0x01]) + signature[-2:]
    with pytest.raises(UntrustedGlobalConf) as info:
        verify_globalconf(document, tampered, anchor=anchor, previous=None, now=NOW)
    assert info.value.fault_code in {
        "Server.ClientProxy.InvalidSignatureValue",
        "Server.ClientProxy.MalformedSignature",
    }


def test_refuses_signature_that_is_not_cms(sample: Sample, anchor: Anchor) -> None:
    document, _ = publish(sample, sample.build())
    with pytest.raises(UntrustedGlobalConf, match="malformed") as info:
        verify_globalconf(document, b"not a signature", anchor=anchor, previous=None, now=NOW)
    assert info.value.fault_code == "Server.ClientProxy.MalformedSignature"


def test_refuses_configuration_signed_by_unknown_key(sample: Sample, anchor: Anchor) -> None:
    stranger = self_signed("Someone else's key")
    conf = sample.build(signing_keys=(SigningKey(stranger.cert, "active"),))
    document, signature = publish(sample, conf, stranger)
    with pytest.raises(
        UntrustedGlobalConf,
        match="neither in the anchor nor announced in the previous configuration",
    ):
        verify_globalconf(document, signature, anchor=anchor, previous=None, now=NOW)


def test_accepts_key_rollover_announced_in_previous_version(sample: Sample, anchor: Anchor) -> None:
    new_key = self_signed("Jisr configuration signing key 2")
    v1 = sample.build(
        signing_keys=(
            SigningKey(sample.conf_key.cert, "active"),
            SigningKey(new_key.cert, "announced"),
        )
    )
    document1, signature1 = publish(sample, v1)
    accepted1 = verify_globalconf(document1, signature1, anchor=anchor, previous=None, now=NOW)

    v2 = sample.build(
        2, previous_digest=accepted1.digest, signing_keys=(SigningKey(new_key.cert, "active"),)
    )
    document2, signature2 = publish(sample, v2, new_key)
    accepted2 = verify_globalconf(document2, signature2, anchor=anchor, previous=accepted1, now=NOW)
    assert accepted2.version == 2

    # Version 3 signed by the key version 2 lists: trusted through version 2, not the anchor.
    v3 = sample.build(
        3, previous_digest=accepted2.digest, signing_keys=(SigningKey(new_key.cert, "active"),)
    )
    document3, signature3 = publish(sample, v3, new_key)
    assert verify_globalconf(document3, signature3, anchor=anchor, previous=accepted2, now=NOW)


def test_refuses_key_never_announced(sample: Sample, anchor: Anchor) -> None:
    v1 = sample.build()
    document1, signature1 = publish(sample, v1)
    accepted1 = verify_globalconf(document1, signature1, anchor=anchor, previous=None, now=NOW)
    unannounced = self_signed("Jisr configuration signing key, never announced")
    v2 = sample.build(
        2, previous_digest=accepted1.digest, signing_keys=(SigningKey(unannounced.cert),)
    )
    document2, signature2 = publish(sample, v2, unannounced)
    with pytest.raises(UntrustedGlobalConf, match="nor announced in the previous"):
        verify_globalconf(document2, signature2, anchor=anchor, previous=accepted1, now=NOW)


def test_refuses_rollback_to_lower_version(sample: Sample, anchor: Anchor) -> None:
    old_document, old_signature = publish(sample, sample.build(12))
    current = sample.build(15)
    with pytest.raises(
        RejectedGlobalConf,
        match="version 12 is older than the version 15 already accepted: rollback refused",
    ) as info:
        verify_globalconf(old_document, old_signature, anchor=anchor, previous=current, now=NOW)
    assert info.value.fault_code == "Server.ClientProxy.InvalidMessage"


def test_accepts_same_version_again_with_identical_bytes(sample: Sample, anchor: Anchor) -> None:
    conf = sample.build(4)
    document, signature = publish(sample, conf)
    assert verify_globalconf(document, signature, anchor=anchor, previous=conf, now=NOW) == conf


def test_refuses_same_version_with_other_content(sample: Sample, anchor: Anchor) -> None:
    conf = sample.build(4)
    other = dataclasses.replace(
        conf, settings=dataclasses.replace(conf.settings, ocsp_freshness_s=1)
    )
    document, signature = publish(sample, other)
    with pytest.raises(RejectedGlobalConf, match="same number"):
        verify_globalconf(document, signature, anchor=anchor, previous=conf, now=NOW)


def test_refuses_wrong_previous_digest(sample: Sample, anchor: Anchor) -> None:
    v1 = sample.build()
    v2 = sample.build(2, previous_digest="sha256:" + "ab" * 32)
    document, signature = publish(sample, v2)
    with pytest.raises(RejectedGlobalConf, match="chain of versions is broken"):
        verify_globalconf(document, signature, anchor=anchor, previous=v1, now=NOW)


def test_accepts_gap_in_versions_without_checking_previous_digest(
    sample: Sample, anchor: Anchor
) -> None:
    v1 = sample.build()
    v5 = sample.build(5, previous_digest="sha256:" + "cd" * 32)
    document, signature = publish(sample, v5)
    assert verify_globalconf(document, signature, anchor=anchor, previous=v1, now=NOW).version == 5


def test_refuses_wrong_instance(sample: Sample) -> None:
    conf = sample.build()
    document, signature = publish(sample, conf)
    other_anchor = make_anchor(
        "EE", ["https://ee.example/globalconf/current"], [sample.conf_key.cert], generated_at=NOW
    )
    with pytest.raises(RejectedGlobalConf, match="for instance IQ, but this node's anchor"):
        verify_globalconf(document, signature, anchor=other_anchor, previous=None, now=NOW)


def test_refuses_configuration_generated_in_the_future(sample: Sample, anchor: Anchor) -> None:
    ahead = NOW + CLOCK_SKEW + dt.timedelta(seconds=5)
    document, signature = publish(sample, sample.build(generated_at=ahead))
    with pytest.raises(RejectedGlobalConf, match="check the clocks"):
        verify_globalconf(document, signature, anchor=anchor, previous=None, now=NOW)


def test_refuses_signed_malformed_json(sample: Sample, anchor: Anchor) -> None:
    document = b'{"format":"jisr-globalconf/1",'
    signature = sign_signed_bytes(sample, document)
    with pytest.raises(MalformedGlobalConf, match="not valid JSON"):
        verify_globalconf(document, signature, anchor=anchor, previous=None, now=NOW)


def test_refuses_signed_document_with_bad_identifier(sample: Sample, anchor: Anchor) -> None:
    obj = json.loads(sample.build().to_document())
    obj["members"][0]["id"] = "IQ/GOV/N*C"
    document = canonical_json(obj)
    signature = sign_signed_bytes(sample, document)
    with pytest.raises(MalformedGlobalConf, match=r"members\[0\]\.id is invalid"):
        verify_globalconf(document, signature, anchor=anchor, previous=None, now=NOW)


def test_registry_refuses_to_sign_with_a_key_the_configuration_does_not_list(
    sample: Sample,
) -> None:
    with pytest.raises(ConfigError, match="not listed as 'active'"):
        publish(sample, sample.build(), self_signed("unlisted"))


def sign_signed_bytes(sample: Sample, document: bytes) -> bytes:
    """A valid signature by the anchor key over arbitrary bytes (a compromised-registry case)."""
    return sign_detached(document, signer_of(sample.conf_key), signing_time=GENERATED)


@pytest.mark.openssl
def test_openssl_verifies_the_published_signature(
    sample: Sample, anchor: Anchor, tmp_path: Path
) -> None:
    """An operator can check a downloaded version with plain openssl and the anchor's cert."""
    document, signature = publish(sample, sample.build())
    (tmp_path / "conf.json").write_bytes(document)
    (tmp_path / "conf.json.p7s").write_bytes(signature)
    (tmp_path / "anchor.pem").write_bytes(
        sample.conf_key.cert.public_bytes(serialization.Encoding.PEM)
    )
    command = [
        "openssl", "cms", "-verify", "-binary", "-inform", "DER",
        "-in", str(tmp_path / "conf.json.p7s"), "-content", str(tmp_path / "conf.json"),
        "-CAfile", str(tmp_path / "anchor.pem"), "-purpose", "any",
        "-attime", str(int(NOW.timestamp())), "-out", str(tmp_path / "out.json"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "out.json").read_bytes() == document
