"""The global configuration model: document form, validation and lookups."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from gateway.globalconf import (
    ApprovedCa,
    ApprovedTsa,
    GlobalConf,
    GlobalConfPointer,
    GlobalGroup,
    GlobalSettings,
    MalformedGlobalConf,
    Member,
    MemberClass,
    OcspResponder,
    SecurityServer,
    SigningKey,
    build_globalconf,
    canonical_json,
    digest_of,
    key_id_of,
)
from gateway.identifiers import MemberId, SecurityServerId, SubsystemId
from tests.pki_factory import FixturePki, Issued, _builder, _name, new_key

GENERATED = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)

NDC = MemberId("IQ", "GOV", "NDC")
HJC = MemberId("IQ", "GOV", "HJC")
POPULATION = SubsystemId("IQ", "GOV", "NDC", "population")
INHERITANCE = SubsystemId("IQ", "GOV", "HJC", "inheritance")
SS1 = SecurityServerId("IQ", "GOV", "NDC", "ss1")
SS2 = SecurityServerId("IQ", "GOV", "HJC", "ss1")


def self_signed(cn: str = "Jisr configuration signing key") -> Issued:
    """A configuration signing key: self-signed, as the registry makes them."""
    key = new_key()
    name = _name(cn, org="Jisr Test")
    cert = _builder(name, name, key.public_key(), GENERATED, 3650).sign(key, hashes.SHA256())
    return Issued(cert, key)


class Sample:
    """A small but complete configuration, with the PKI objects behind it."""

    def __init__(self) -> None:
        self.pki = FixturePki.create()
        self.ocsp = self.pki.ocsp_responder()
        self.tsa = self.pki.tsa()
        self.auth1 = self.pki.authentication("IQ/GOV/NDC/ss1")
        self.auth2 = self.pki.authentication("IQ/GOV/HJC/ss1")
        self.conf_key = self_signed()

    def build(
        self,
        version: int = 1,
        *,
        generated_at: dt.datetime = GENERATED,
        previous_digest: str | None = None,
        signing_keys: tuple[SigningKey, ...] | None = None,
        instance: str = "IQ",
    ) -> GlobalConf:
        return build_globalconf(
            instance,
            version,
            generated_at,
            None,
            previous_digest,
            GlobalSettings(),
            [MemberClass("GOV", "Government bodies")],
            [
                Member(NDC, "National Data Centre", (POPULATION,)),
                Member(HJC, "مجلس القضاء الأعلى", (INHERITANCE,)),
            ],
            [
                SecurityServer(SS1, "127.0.0.1:5500", (self.auth1.cert,), (POPULATION,)),
                SecurityServer(SS2, "127.0.0.1:5501", (self.auth2.cert,), (INHERITANCE, HJC)),
            ],
            [
                ApprovedCa(
                    "Jisr Test CA",
                    self.pki.root.cert,
                    (),
                    (OcspResponder("http://127.0.0.1:4401/", self.ocsp.cert),),
                )
            ],
            [ApprovedTsa("Jisr Test TSA", "http://127.0.0.1:4402/", self.tsa.cert)],
            [GlobalGroup("all-government", "Every ministry", (INHERITANCE, POPULATION))],
            signing_keys or (SigningKey(self.conf_key.cert, "active"),),
        )


@pytest.fixture(scope="module")
def sample() -> Sample:
    return Sample()


def edited(document: bytes, change: Any) -> bytes:
    obj = json.loads(document)
    change(obj)
    return canonical_json(obj)


def test_document_round_trips_byte_for_byte(sample: Sample) -> None:
    conf = sample.build()
    document = conf.to_document()
    again = GlobalConf.from_document(document)
    assert again == conf
    assert again.to_document() == document
    assert again.digest == digest_of(document)
    assert "مجلس".encode() in document  # UTF-8, not \\u escapes


def test_document_has_the_published_shape(sample: Sample) -> None:
    obj = json.loads(sample.build(version=17).to_document())
    assert obj["format"] == "jisr-globalconf/1"
    assert obj["version"] == 17
    assert obj["generated_at"] == "2026-11-22T10:00:00Z"
    assert obj["expires_at"] == "2026-11-22T10:10:00Z"
    assert obj["previous_digest"] is None
    assert obj["settings"] == {
        "ocsp_freshness_s": 3600,
        "timestamping_interval_s": 60,
        "conf_expiry_s": 600,
        "conf_refresh_s": 60,
    }
    assert obj["members"][0] == {
        "id": "IQ/GOV/NDC",
        "name": "National Data Centre",
        "subsystems": ["population"],
    }
    assert obj["security_servers"][0]["clients"] == ["IQ/GOV/NDC/population"]
    key = obj["signing_keys"][0]
    assert key["state"] == "active"
    assert key["key_id"] == key_id_of(sample.conf_key.cert)


def test_builder_truncates_generation_time_to_seconds(sample: Sample) -> None:
    conf = sample.build(generated_at=GENERATED.replace(microsecond=900))
    assert conf.generated_at == GENERATED
    assert conf.expires_at == GENERATED + dt.timedelta(seconds=600)


def test_lookups_answer_what_nodes_ask(sample: Sample) -> None:
    conf = sample.build()
    assert [s.id for s in conf.servers_for_client(POPULATION)] == [SS1]
    assert [s.id for s in conf.servers_for_client(HJC)] == [SS2]
    assert conf.servers_for_client(SubsystemId("IQ", "GOV", "NDC", "other")) == []
    server = conf.server(SS1)
    assert server is not None
    assert (server.host, server.port) == ("127.0.0.1", 5500)
    assert conf.server(SecurityServerId("IQ", "GOV", "NDC", "ss9")) is None
    assert conf.is_member(NDC)
    assert not conf.is_member(MemberId("IQ", "GOV", "XYZ"))
    assert conf.has_subsystem(POPULATION)
    assert not conf.has_subsystem(SubsystemId("IQ", "GOV", "HJC", "population"))
    assert conf.clients() == (NDC, POPULATION, HJC, INHERITANCE)
    assert conf.group_members("all-government") == frozenset({INHERITANCE, POPULATION})
    assert conf.group_members("nobody") == frozenset()
    assert conf.is_in_group(INHERITANCE, "all-government")
    assert not conf.is_in_group(HJC, "all-government")
    assert conf.auth_cert_registered(SS1, sample.auth1.cert)
    assert not conf.auth_cert_registered(SS1, sample.auth2.cert)
    found = conf.server_by_auth_cert(sample.auth2.cert)
    assert found is not None
    assert found.id == SS2
    assert [o.url for o in conf.ocsp_responders] == ["http://127.0.0.1:4401/"]
    assert conf.tsas[0].name == "Jisr Test TSA"
    assert conf.tsa_for(sample.tsa.cert) is conf.tsas[0]
    assert conf.signing_key_for(sample.conf_key.cert) is not None


def test_finds_the_approved_ca_that_issued_a_certificate(sample: Sample) -> None:
    conf = sample.build()
    ca = conf.approved_ca_for(sample.pki.signing("IQ/GOV/NDC").cert)
    assert ca is not None
    assert ca.name == "Jisr Test CA"


def test_does_not_mistake_a_look_alike_ca_for_an_approved_one(sample: Sample) -> None:
    conf = sample.build()
    impostor = FixturePki.create()  # same subject name, different key
    assert impostor.root.cert.subject == sample.pki.root.cert.subject
    assert conf.approved_ca_for(impostor.signing("IQ/GOV/NDC").cert) is None


def test_refuses_malformed_json(sample: Sample) -> None:
    document = sample.build().to_document()
    with pytest.raises(MalformedGlobalConf, match="not valid JSON") as info:
        GlobalConf.from_document(document[:-1])
    assert info.value.fault_code == "Server.ClientProxy.InvalidMessage"


def test_refuses_duplicate_keys() -> None:
    with pytest.raises(MalformedGlobalConf, match="appears twice"):
        GlobalConf.from_document(b'{"format":"jisr-globalconf/1","format":"x"}')


def test_refuses_unknown_format(sample: Sample) -> None:
    document = edited(sample.build().to_document(), lambda o: o.update(format="jisr-globalconf/2"))
    with pytest.raises(MalformedGlobalConf, match="not a format this node understands"):
        GlobalConf.from_document(document)


def test_refuses_missing_and_unknown_fields(sample: Sample) -> None:
    document = sample.build().to_document()
    with pytest.raises(MalformedGlobalConf, match=r"missing field.*signing_keys"):
        GlobalConf.from_document(edited(document, lambda o: o.pop("signing_keys")))
    with pytest.raises(MalformedGlobalConf, match=r"members\[0\] has unknown field.*extra"):
        GlobalConf.from_document(edited(document, lambda o: o["members"][0].update(extra=1)))


def test_refuses_bad_identifier_inside(sample: Sample) -> None:
    document = edited(
        sample.build().to_document(),
        lambda o: o["security_servers"][0]["clients"].__setitem__(0, "IQ/GOV/NDC/pop ulation"),
    )
    with pytest.raises(MalformedGlobalConf, match=r"security_servers\[0\]\.clients\[0\].*' '"):
        GlobalConf.from_document(document)


def test_refuses_reference_to_unregistered_client(sample: Sample) -> None:
    document = edited(
        sample.build().to_document(),
        lambda o: o["global_groups"][0]["members"].append("IQ/GOV/NDC/unknown"),
    )
    with pytest.raises(MalformedGlobalConf, match="IQ/GOV/NDC/unknown is not registered"):
        GlobalConf.from_document(document)


def test_refuses_member_of_another_instance(sample: Sample) -> None:
    def change(o: dict[str, Any]) -> None:
        o["members"].append({"id": "EE/GOV/X", "name": "Elsewhere", "subsystems": []})

    with pytest.raises(MalformedGlobalConf, match="belongs to instance EE"):
        GlobalConf.from_document(edited(sample.build().to_document(), change))


def test_refuses_key_id_that_is_not_the_certificate_digest(sample: Sample) -> None:
    document = edited(
        sample.build().to_document(),
        lambda o: o["signing_keys"][0].update(key_id="0" * 64),
    )
    with pytest.raises(MalformedGlobalConf, match="is not the SHA-256"):
        GlobalConf.from_document(document)


def test_refuses_certificate_that_does_not_parse(sample: Sample) -> None:
    document = edited(
        sample.build().to_document(),
        lambda o: o["approved_tsas"][0].update(certificate=base64.b64encode(b"junk").decode()),
    )
    with pytest.raises(MalformedGlobalConf, match=r"approved_tsas\[0\]\.certificate"):
        GlobalConf.from_document(document)


def test_refuses_non_canonical_document(sample: Sample) -> None:
    pretty = json.dumps(json.loads(sample.build().to_document()), indent=1).encode()
    with pytest.raises(MalformedGlobalConf, match="not in canonical JSON form"):
        GlobalConf.from_document(pretty)


def test_refuses_wrong_json_types(sample: Sample) -> None:
    document = sample.build().to_document()
    with pytest.raises(MalformedGlobalConf, match="version must be an integer"):
        GlobalConf.from_document(edited(document, lambda o: o.update(version="17")))
    with pytest.raises(MalformedGlobalConf, match="version must be an integer"):
        GlobalConf.from_document(edited(document, lambda o: o.update(version=True)))
    with pytest.raises(MalformedGlobalConf, match=r"expires_at.*RFC 3339"):
        GlobalConf.from_document(
            edited(document, lambda o: o.update(expires_at="2026-11-22 10:10:00"))
        )


def test_builder_refuses_configuration_without_an_active_signing_key(sample: Sample) -> None:
    with pytest.raises(MalformedGlobalConf, match="at least one key in state 'active'"):
        sample.build(signing_keys=(SigningKey(sample.conf_key.cert, "announced"),))


def test_builder_refuses_a_server_whose_owner_is_not_a_member(sample: Sample) -> None:
    conf = sample.build()
    stranger = SecurityServer(SecurityServerId("IQ", "GOV", "MOH", "ss1"), "127.0.0.1:5502")
    with pytest.raises(MalformedGlobalConf, match="owner IQ/GOV/MOH"):
        build_globalconf(
            conf.instance,
            2,
            GENERATED,
            None,
            conf.digest,
            conf.settings,
            conf.member_classes,
            conf.members,
            (*conf.security_servers, stranger),
            conf.approved_cas,
            conf.approved_tsas,
            conf.global_groups,
            conf.signing_keys,
        )


def test_builder_refuses_bad_address(sample: Sample) -> None:
    with pytest.raises(MalformedGlobalConf, match="HOST:PORT"):
        build_globalconf(
            "IQ",
            1,
            GENERATED,
            None,
            None,
            GlobalSettings(),
            [MemberClass("GOV", "")],
            [Member(NDC, "NDC")],
            [SecurityServer(SS1, "127.0.0.1")],
            [],
            [],
            [],
            [SigningKey(sample.conf_key.cert)],
        )


def test_pointer_names_the_immutable_files_of_a_version() -> None:
    pointer = GlobalConfPointer.for_version(17)
    data = pointer.to_bytes()
    assert json.loads(data) == {
        "version": 17,
        "document": "v/17/conf.json",
        "signature": "v/17/conf.json.p7s",
    }
    assert GlobalConfPointer.from_bytes(data) == pointer
    assert pointer.urls("http://127.0.0.1:4400/globalconf/current") == (
        "http://127.0.0.1:4400/globalconf/v/17/conf.json",
        "http://127.0.0.1:4400/globalconf/v/17/conf.json.p7s",
    )


@pytest.mark.parametrize(
    "data",
    [
        b'{"version":1,"document":"../secret","signature":"v/1/conf.json.p7s"}',
        b'{"version":1,"document":"http://evil.test/x","signature":"v/1/conf.json.p7s"}',
        b'{"version":1,"document":"/etc/passwd","signature":"v/1/conf.json.p7s"}',
        b'{"version":0,"document":"v/0/conf.json","signature":"v/0/conf.json.p7s"}',
        b'{"version":"1","document":"v/1/conf.json","signature":"v/1/conf.json.p7s"}',
        b'{"version":1,"document":"v/1/conf.json"}',
        b"[]",
    ],
)
def test_refuses_pointer_that_leads_elsewhere_or_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedGlobalConf, match="pointer"):
        GlobalConfPointer.from_bytes(data)


def test_refuses_lone_surrogate_in_text(sample: Sample) -> None:
    document = (
        sample.build()
        .to_document()
        .replace(b'"National Data Centre"', b'"National \\ud800 Centre"')
    )
    with pytest.raises(MalformedGlobalConf, match=r"members\[0\]\.name contains a lone"):
        GlobalConf.from_document(document)


def test_refuses_non_ascii_url(sample: Sample) -> None:
    document = edited(
        sample.build().to_document(),
        lambda o: o["approved_tsas"][0].update(url="http://تسا.test/"),
    )
    with pytest.raises(MalformedGlobalConf, match="printable ASCII"):
        GlobalConf.from_document(document)
