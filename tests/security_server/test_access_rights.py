from __future__ import annotations

import pytest

from config.errors import IdentifierError, ValidationError
from gateway.identifiers import ClientId, ServiceId, SubsystemId
from security_server.access_rights import AccessRight, AccessRights, path_matches

NDC = SubsystemId.parse("IQ/GOV/NDC/population")
HJC = SubsystemId.parse("IQ/GOV/HJC/inheritance")
NPA = SubsystemId.parse("IQ/GOV/NPA/pensions")
GET_CITIZEN = ServiceId.for_client(NDC, "getCitizen")
VERIFY = ServiceId.for_client(NDC, "verifyDocument")


def groups(client: ClientId, code: str) -> bool:
    return code == "all-government" and client in {HJC, NPA}


def rights(*grants: AccessRight) -> AccessRights:
    return AccessRights((NDC, g) for g in grants)


def test_refuses_by_default() -> None:
    assert not rights().allows(HJC, GET_CITIZEN, is_in_group=groups)


def test_allows_the_named_client_only() -> None:
    r = rights(AccessRight("getCitizen", str(HJC)))
    assert r.allows(HJC, GET_CITIZEN, is_in_group=groups)
    assert not r.allows(NPA, GET_CITIZEN, is_in_group=groups)
    assert not r.allows(HJC, VERIFY, is_in_group=groups)


def test_allows_members_of_a_global_group() -> None:
    r = rights(AccessRight("verifyDocument", "group:all-government"))
    assert r.allows(NPA, VERIFY, is_in_group=groups)
    assert not r.allows(SubsystemId.parse("IQ/COM/X/y"), VERIFY, is_in_group=groups)


def test_endpoint_rights_match_method_and_path() -> None:
    r = rights(AccessRight("getCitizen", str(HJC), "GET", "/citizens/*"))
    ok = r.allows(HJC, GET_CITIZEN, is_in_group=groups, method="GET", path="/citizens/1")
    assert ok
    assert not r.allows(HJC, GET_CITIZEN, is_in_group=groups, method="POST", path="/citizens/1")
    assert not r.allows(HJC, GET_CITIZEN, is_in_group=groups, method="GET", path="/citizens/1/x")
    assert not r.allows(HJC, GET_CITIZEN, is_in_group=groups)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/a/**", "/a", True),
        ("/a/**", "/a/b/c", True),
        ("/a/*", "/a", False),
        ("/a/*/c", "/a/b/c", True),
        ("/a.b", "/axb", False),
        ("/", "/", True),
    ],
)
def test_path_patterns(pattern: str, path: str, expected: bool) -> None:
    assert path_matches(pattern, path) is expected


def test_allowed_services_lists_what_a_client_may_call() -> None:
    r = rights(
        AccessRight("getCitizen", str(HJC)),
        AccessRight("verifyDocument", "group:all-government"),
    )
    assert r.allowed_services(HJC, NDC, is_in_group=groups) == ["getCitizen", "verifyDocument"]
    assert r.allowed_services(NPA, NDC, is_in_group=groups) == ["verifyDocument"]


def test_refuses_malformed_rights() -> None:
    with pytest.raises(IdentifierError):
        AccessRight("getCitizen", "IQ/GOV/bad id")
    with pytest.raises(ValidationError, match="both a method and a path"):
        AccessRight("getCitizen", str(HJC), "GET", None)
    with pytest.raises(ValidationError, match="unknown HTTP method"):
        AccessRight("getCitizen", str(HJC), "FETCH", "/x")
    with pytest.raises(ValidationError, match="must start with"):
        AccessRight("getCitizen", str(HJC), "GET", "x")
