"""Who is in the demo network: members, subsystems, nodes, services and access rights.

The members come from the seed documents (Iraq's e-governance programme): the National Data
Centre holds citizens' records; the Ministry of Higher Education confirms diplomas (صحة
الصدور); the Ministry of Health's forensic medicine registers deaths; the Higher Judicial
Council needs death records and family data for inheritance determinations (القسام الشرعي);
the National Pension Authority stops pensions of the deceased.
"""

from __future__ import annotations

import dataclasses

from gateway.identifiers import MemberId, SecurityServerId, SubsystemId

INSTANCE = "IQ"
MEMBER_CLASS = "GOV"
ALL_GOVERNMENT = "all-government"


@dataclasses.dataclass(frozen=True, slots=True)
class DemoMember:
    code: str
    name: str
    subsystems: tuple[str, ...]

    @property
    def id(self) -> MemberId:
        return MemberId(INSTANCE, MEMBER_CLASS, self.code)

    def subsystem(self, code: str) -> SubsystemId:
        return SubsystemId(INSTANCE, MEMBER_CLASS, self.code, code)


MEMBERS = (
    DemoMember("NDC", "National Data Centre — مركز البيانات الوطني", ("population",)),
    DemoMember(
        "MOHESR",
        "Ministry of Higher Education and Scientific Research — وزارة التعليم العالي",
        ("certificates",),
    ),
    DemoMember("MOH", "Ministry of Health — وزارة الصحة", ("forensic",)),
    DemoMember("HJC", "Higher Judicial Council — مجلس القضاء الأعلى", ("inheritance",)),
    DemoMember("NPA", "National Pension Authority — هيئة التقاعد الوطنية", ("pensions",)),
)

POPULATION = SubsystemId.parse("IQ/GOV/NDC/population")
CERTIFICATES = SubsystemId.parse("IQ/GOV/MOHESR/certificates")
FORENSIC = SubsystemId.parse("IQ/GOV/MOH/forensic")
INHERITANCE = SubsystemId.parse("IQ/GOV/HJC/inheritance")
PENSIONS = SubsystemId.parse("IQ/GOV/NPA/pensions")


@dataclasses.dataclass(frozen=True, slots=True)
class DemoNode:
    """A security server of the demo: its id, the members whose keys it holds, its clients."""

    name: str
    server_id: SecurityServerId
    clients: tuple[SubsystemId, ...]
    #: Client-side HTTP port (the HJC/NPA node listens on X-Road's default 8080).
    client_http_port: int = 0
    client_https_port: int = 0

    @property
    def members(self) -> tuple[MemberId, ...]:
        seen: dict[MemberId, None] = {self.server_id.owner: None}
        for client in self.clients:
            seen.setdefault(client.member, None)
        return tuple(seen)


NODES = (
    DemoNode("ndc", SecurityServerId.parse("IQ/GOV/NDC/ss1"), (POPULATION, FORENSIC)),
    DemoNode("mohesr", SecurityServerId.parse("IQ/GOV/MOHESR/ss1"), (CERTIFICATES,)),
    DemoNode(
        "hjc",
        SecurityServerId.parse("IQ/GOV/HJC/ss1"),
        (INHERITANCE, PENSIONS),
        client_http_port=8080,
        client_https_port=8443,
    ),
)
