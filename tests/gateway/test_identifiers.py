from __future__ import annotations

import pytest

from config.errors import IdentifierError
from gateway.identifiers import (
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
    parse_client,
)


def test_parses_and_prints_each_kind() -> None:
    assert str(MemberId.parse("IQ/GOV/NDC")) == "IQ/GOV/NDC"
    sub = SubsystemId.parse("IQ/GOV/NDC/population")
    assert sub.member == MemberId("IQ", "GOV", "NDC")
    svc = ServiceId.parse("IQ/GOV/NDC/population/getCitizen/v1")
    assert svc.provider == sub
    assert svc.service_version == "v1"
    assert str(svc) == "IQ/GOV/NDC/population/getCitizen/v1"
    assert str(ServiceId.parse("IQ/GOV/NDC/population/getCitizen")) == (
        "IQ/GOV/NDC/population/getCitizen"
    )
    assert SecurityServerId.parse("IQ/GOV/NDC/ss1").owner == MemberId("IQ", "GOV", "NDC")


def test_client_is_member_or_subsystem() -> None:
    assert isinstance(parse_client("IQ/GOV/NDC"), MemberId)
    assert isinstance(parse_client("IQ/GOV/NDC/population"), SubsystemId)


@pytest.mark.parametrize("text", ["IQ/GOV/N DC", "IQ/GOV/ND<C", "IQ/GOV/NDC/pop:x", "IQ//NDC"])
def test_refuses_illegal_characters_naming_them(text: str) -> None:
    with pytest.raises(IdentifierError) as info:
        parse_client(text)
    assert info.value.fault_code == "Client.InvalidClientIdentifier"


def test_refuses_wrong_number_of_parts() -> None:
    with pytest.raises(IdentifierError, match="expected the form"):
        MemberId.parse("IQ/GOV")
    with pytest.raises(IdentifierError, match="expected the form"):
        parse_client("IQ/GOV/NDC/a/b")


def test_refuses_overlong_part() -> None:
    with pytest.raises(IdentifierError, match="at most 255"):
        MemberId("IQ", "GOV", "x" * 256)


def test_message_names_the_bad_character() -> None:
    with pytest.raises(IdentifierError, match="' '"):
        SubsystemId.parse("IQ/GOV/NDC/my system")
