from __future__ import annotations

import pytest
from lxml import etree

from gateway.faults import FaultError
from gateway.identifiers import (
    ID_NS,
    XROAD_NS,
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
)
from gateway.identifiers_xml import (
    client_from_xml,
    client_to_xml,
    identifier_from_xml,
    server_from_xml,
    server_to_xml,
    service_from_xml,
    service_to_xml,
)
from gateway.xml_safety import parse_xml

NS = f'xmlns:xrd="{XROAD_NS}" xmlns:id="{ID_NS}"'


def element(xml: str) -> etree._Element:
    return parse_xml(xml.encode(), max_bytes=65536)


def test_reads_subsystem_client_in_pr_mess_layout() -> None:
    client = client_from_xml(
        element(
            f"""<xrd:client {NS} id:objectType="SUBSYSTEM">
                <id:xRoadInstance>IQ</id:xRoadInstance>
                <id:memberClass>GOV</id:memberClass>
                <id:memberCode>HJC</id:memberCode>
                <id:subsystemCode>inheritance</id:subsystemCode>
            </xrd:client>"""
        )
    )
    assert client == SubsystemId("IQ", "GOV", "HJC", "inheritance")


def test_reads_member_client() -> None:
    xml = (
        f'<xrd:client {NS} id:objectType="MEMBER"><id:xRoadInstance>IQ</id:xRoadInstance>'
        "<id:memberClass>GOV</id:memberClass><id:memberCode>NPA</id:memberCode></xrd:client>"
    )
    assert client_from_xml(element(xml)) == MemberId("IQ", "GOV", "NPA")


@pytest.mark.parametrize(
    "identifier",
    [
        ServiceId("IQ", "GOV", "NDC", "population", "getCitizen", "v1"),
        ServiceId("IQ", "GOV", "NDC", "population", "getCitizen"),
        ServiceId("IQ", "GOV", "NDC", None, "listMembers"),
    ],
)
def test_service_round_trips(identifier: ServiceId) -> None:
    built = service_to_xml(identifier)
    assert built.get(f"{{{ID_NS}}}objectType") == "SERVICE"
    again = element(etree.tostring(built).decode())
    assert service_from_xml(again) == identifier
    assert identifier_from_xml(again) == identifier


def test_writes_parts_in_schema_order() -> None:
    built = service_to_xml(ServiceId("IQ", "GOV", "NDC", "population", "getCitizen", "v1"))
    assert [etree.QName(c).localname for c in built] == [
        "xRoadInstance",
        "memberClass",
        "memberCode",
        "subsystemCode",
        "serviceCode",
        "serviceVersion",
    ]


def test_client_and_server_round_trip() -> None:
    sub = SubsystemId("IQ", "GOV", "MOH", "forensic")
    assert client_from_xml(element(etree.tostring(client_to_xml(sub)).decode())) == sub
    server = SecurityServerId("IQ", "GOV", "NDC", "ss1")
    built = server_to_xml(server)
    assert built.tag == f"{{{XROAD_NS}}}securityServer"
    assert server_from_xml(element(etree.tostring(built).decode())) == server
    assert identifier_from_xml(element(etree.tostring(built).decode())) == server


def test_refuses_identifier_without_object_type() -> None:
    xml = (
        f"<xrd:client {NS}><id:xRoadInstance>IQ</id:xRoadInstance>"
        "<id:memberClass>GOV</id:memberClass><id:memberCode>NPA</id:memberCode></xrd:client>"
    )
    with pytest.raises(FaultError, match="no id:objectType") as info:
        client_from_xml(element(xml))
    assert info.value.fault_code == "Client.InvalidXml"


def test_refuses_object_type_that_does_not_fit_the_position() -> None:
    built = etree.tostring(service_to_xml(ServiceId("IQ", "GOV", "NDC", "p", "s")))
    with pytest.raises(FaultError, match="must be SUBSYSTEM or MEMBER") as info:
        client_from_xml(element(built.decode()))
    assert info.value.fault_code == "Client.InvalidXml"


def test_refuses_central_service() -> None:
    xml = (
        f'<xrd:service {NS} id:objectType="CENTRALSERVICE">'
        "<id:xRoadInstance>IQ</id:xRoadInstance><id:serviceCode>x</id:serviceCode></xrd:service>"
    )
    with pytest.raises(FaultError, match="central services") as info:
        service_from_xml(element(xml))
    assert info.value.fault_code == "Client.InvalidXml"


def test_refuses_missing_repeated_or_unknown_parts() -> None:
    missing = (
        f'<xrd:client {NS} id:objectType="MEMBER">'
        "<id:xRoadInstance>IQ</id:xRoadInstance></xrd:client>"
    )
    with pytest.raises(FaultError, match="lacks id:memberClass, id:memberCode"):
        client_from_xml(element(missing))
    repeated = (
        f'<xrd:client {NS} id:objectType="MEMBER"><id:xRoadInstance>IQ</id:xRoadInstance>'
        "<id:xRoadInstance>IQ</id:xRoadInstance></xrd:client>"
    )
    with pytest.raises(FaultError, match="repeats id:xRoadInstance"):
        client_from_xml(element(repeated))
    unknown = (
        f'<xrd:client {NS} id:objectType="MEMBER"><id:xRoadInstance>IQ</id:xRoadInstance>'
        "<id:serverCode>x</id:serverCode></xrd:client>"
    )
    with pytest.raises(FaultError, match="unexpected element") as info:
        client_from_xml(element(unknown))
    assert info.value.fault_code == "Client.InvalidXml"


def test_refuses_illegal_characters_as_invalid_client_identifier() -> None:
    xml = (
        f'<xrd:client {NS} id:objectType="SUBSYSTEM"><id:xRoadInstance>IQ</id:xRoadInstance>'
        "<id:memberClass>GOV</id:memberClass><id:memberCode>ND C</id:memberCode>"
        "<id:subsystemCode>pop</id:subsystemCode></xrd:client>"
    )
    with pytest.raises(FaultError, match="' '") as info:
        client_from_xml(element(xml))
    assert info.value.fault_code == "Client.InvalidClientIdentifier"
