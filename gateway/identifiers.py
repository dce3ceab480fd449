"""X-Road identifiers: members, subsystems, services and security servers.

String form (PR-REST, logs, the CLI)::

    member     INSTANCE/CLASS/CODE                   IQ/GOV/NDC
    subsystem  INSTANCE/CLASS/CODE/SUBSYSTEM         IQ/GOV/NDC/population
    service    SUBSYSTEM-OR-MEMBER/SERVICE[/VERSION] IQ/GOV/NDC/population/getCitizen/v1
    server     INSTANCE/CLASS/CODE/SERVERCODE        IQ/GOV/NDC/ss1

A service's string form is ambiguous between "member service with version" and "subsystem
service without version"; :func:`parse_service` takes the subsystem reading, which is how
X-Road's REST protocol resolves it, and ``ServiceId.for_member`` builds the other explicitly.

XML form (PR-MESS, ``identifiers.xsd``): elements in the ``id`` namespace under an element that
carries ``id:objectType`` (MEMBER, SUBSYSTEM, SERVICE, SERVER).

Each part is 1..255 characters from ``A-Z a-z 0-9 ' ( ) + , - . = ?``, the set X-Road's
central server enforces; anything else is refused with :class:`IdentifierError`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from config.errors import IdentifierError

XROAD_NS = "http://x-road.eu/xsd/xroad.xsd"
ID_NS = "http://x-road.eu/xsd/identifiers"

#: Characters X-Road's central server accepts in identifier parts (PR-MESS annex).
_PART_RE = re.compile(r"[A-Za-z0-9'()+,\-.=?]{1,255}")
#: Parts already found valid: a node sees the same few hundred instance, member, subsystem and
#: service codes on every request, so each is matched once (bounded; emptied when full).
_VALID_PARTS: set[str] = set()
_VALID_PARTS_MAX = 4096


def check_part(value: str, what: str) -> str:
    """Return ``value`` if it is a valid identifier part, else raise :class:`IdentifierError`."""
    if type(value) is str and value in _VALID_PARTS:
        return value
    if not isinstance(value, str) or not value:
        raise IdentifierError(
            f"{what} is empty; every identifier part needs at least one character"
        )
    if len(value) > 255:
        raise IdentifierError(f"{what} is {len(value)} characters long; at most 255 are allowed")
    if not _PART_RE.fullmatch(value):
        bad = sorted({c for c in value if not _PART_RE.fullmatch(c)})
        shown = ", ".join(repr(c) for c in bad)
        raise IdentifierError(
            f"{what} {value!r} contains character(s) {shown} that X-Road identifiers do not "
            "allow; use only A-Z, a-z, 0-9 and ' ( ) + , - . = ?"
        )
    if type(value) is str:  # a subclass could compare equal yet behave differently
        if len(_VALID_PARTS) >= _VALID_PARTS_MAX:
            _VALID_PARTS.clear()
        _VALID_PARTS.add(value)
    return value


def _split(text: str, counts: tuple[int, ...], kind: str, example: str) -> list[str]:
    if not isinstance(text, str):
        raise IdentifierError(f"{kind} identifier must be a string, got {type(text).__name__}")
    parts = text.split("/")
    if len(parts) not in counts:
        raise IdentifierError(
            f"{kind} identifier {text!r} has {len(parts)} part(s); expected the form {example}"
        )
    return parts


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class MemberId:
    """A member: ``INSTANCE/CLASS/CODE``."""

    instance: str
    member_class: str
    member_code: str

    object_type: ClassVar[str] = "MEMBER"

    def __post_init__(self) -> None:
        check_part(self.instance, "instance")
        check_part(self.member_class, "member class")
        check_part(self.member_code, "member code")

    def __str__(self) -> str:
        return f"{self.instance}/{self.member_class}/{self.member_code}"

    @property
    def member(self) -> MemberId:
        return self

    @classmethod
    def parse(cls, text: str) -> MemberId:
        p = _split(text, (3,), "member", "INSTANCE/CLASS/CODE")
        return cls(p[0], p[1], p[2])


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class SubsystemId:
    """A subsystem of a member: ``INSTANCE/CLASS/CODE/SUBSYSTEM``."""

    instance: str
    member_class: str
    member_code: str
    subsystem_code: str

    object_type: ClassVar[str] = "SUBSYSTEM"

    def __post_init__(self) -> None:
        check_part(self.instance, "instance")
        check_part(self.member_class, "member class")
        check_part(self.member_code, "member code")
        check_part(self.subsystem_code, "subsystem code")

    def __str__(self) -> str:
        return f"{self.instance}/{self.member_class}/{self.member_code}/{self.subsystem_code}"

    @property
    def member(self) -> MemberId:
        return MemberId(self.instance, self.member_class, self.member_code)

    @classmethod
    def parse(cls, text: str) -> SubsystemId:
        p = _split(text, (4,), "subsystem", "INSTANCE/CLASS/CODE/SUBSYSTEM")
        return cls(p[0], p[1], p[2], p[3])


ClientId = MemberId | SubsystemId


def parse_client(text: str) -> ClientId:
    """Parse a client identifier: a member (3 parts) or a subsystem (4 parts)."""
    p = _split(text, (3, 4), "client", "INSTANCE/CLASS/CODE[/SUBSYSTEM]")
    if len(p) == 3:
        return MemberId(p[0], p[1], p[2])
    return SubsystemId(p[0], p[1], p[2], p[3])


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class ServiceId:
    """A service offered by a member or subsystem, with an optional version."""

    instance: str
    member_class: str
    member_code: str
    subsystem_code: str | None
    service_code: str
    service_version: str | None = None

    object_type: ClassVar[str] = "SERVICE"

    def __post_init__(self) -> None:
        check_part(self.instance, "instance")
        check_part(self.member_class, "member class")
        check_part(self.member_code, "member code")
        if self.subsystem_code is not None:
            check_part(self.subsystem_code, "subsystem code")
        check_part(self.service_code, "service code")
        if self.service_version is not None:
            check_part(self.service_version, "service version")

    @classmethod
    def for_client(cls, client: ClientId, code: str, version: str | None = None) -> ServiceId:
        sub = client.subsystem_code if isinstance(client, SubsystemId) else None
        return cls(client.instance, client.member_class, client.member_code, sub, code, version)

    @property
    def provider(self) -> ClientId:
        """The member or subsystem that offers the service."""
        if self.subsystem_code is None:
            return MemberId(self.instance, self.member_class, self.member_code)
        return SubsystemId(self.instance, self.member_class, self.member_code, self.subsystem_code)

    @property
    def member(self) -> MemberId:
        return MemberId(self.instance, self.member_class, self.member_code)

    def __str__(self) -> str:
        text = f"{self.instance}/{self.member_class}/{self.member_code}/"
        if self.subsystem_code is not None:
            text += f"{self.subsystem_code}/"
        text += self.service_code
        if self.service_version is not None:
            text += f"/{self.service_version}"
        return text

    @classmethod
    def parse(cls, text: str) -> ServiceId:
        """Parse ``INST/CLASS/CODE/SUB/SERVICE[/VERSION]`` (a subsystem's service)."""
        p = _split(text, (5, 6), "service", "INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE[/VERSION]")
        return cls(p[0], p[1], p[2], p[3], p[4], p[5] if len(p) == 6 else None)


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class SecurityServerId:
    """A security server (node): its owner member plus a server code."""

    instance: str
    member_class: str
    member_code: str
    server_code: str

    object_type: ClassVar[str] = "SERVER"

    def __post_init__(self) -> None:
        check_part(self.instance, "instance")
        check_part(self.member_class, "member class")
        check_part(self.member_code, "member code")
        check_part(self.server_code, "server code")

    @property
    def owner(self) -> MemberId:
        return MemberId(self.instance, self.member_class, self.member_code)

    def __str__(self) -> str:
        return f"{self.instance}/{self.member_class}/{self.member_code}/{self.server_code}"

    @classmethod
    def parse(cls, text: str) -> SecurityServerId:
        p = _split(text, (4,), "security server", "INSTANCE/CLASS/CODE/SERVERCODE")
        return cls(p[0], p[1], p[2], p[3])
