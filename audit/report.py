"""Verdicts: what was checked, where, and exactly what failed.

Rules:

- A report is a list of *items* (an archive, an exchange's message, a chain of archives), each
  with the checks run on it in order. An item is good only when every check on it passed.
- ``where`` locates the item for a person: archive file, entry inside it, and the message's
  role, e.g. ``archive-00000003.zip:containers/000000000017.asice:request``.
- A check that could not run because an earlier one failed is not listed as passed: it is left
  out, and the failure that stopped it is the one reported.
- Notes are facts the auditor should know that are not failures (a chain that starts after
  sequence 1 because older archives were not given, a trust anchor taken from the archive).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One check on one item: its name, whether it held, and the evidence or the failure."""

    name: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclasses.dataclass(slots=True)
class ItemVerdict:
    """The checks run on one item."""

    where: str
    label: str = ""
    checks: list[Check] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def passed(self, name: str, detail: str = "") -> None:
        self.checks.append(Check(name, True, detail))

    def failed(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, False, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "label": self.label,
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
        }


@dataclasses.dataclass(slots=True)
class Report:
    """Everything one verification found."""

    items: list[ItemVerdict] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.items) and all(i.ok for i in self.items)

    @property
    def failed_items(self) -> list[ItemVerdict]:
        return [i for i in self.items if not i.ok]

    def item(self, where: str, label: str = "") -> ItemVerdict:
        verdict = ItemVerdict(where, label)
        self.items.append(verdict)
        return verdict

    def find(self, where: str) -> ItemVerdict | None:
        return next((i for i in self.items if i.where == where), None)

    def failures(self) -> list[tuple[str, Check]]:
        """Every failed check with the item it belongs to, in report order."""
        return [(i.where, c) for i in self.items for c in i.checks if not c.ok]

    def summary(self) -> str:
        total = len(self.items)
        bad = len(self.failed_items)
        checks = sum(len(i.checks) for i in self.items)
        failed_checks = sum(len(i.failures) for i in self.items)
        if not total:
            return "nothing was verified: no archive, container or message was found"
        if not bad:
            return f"all {total} items verified ({checks} checks passed)"
        return (
            f"{bad} of {total} items FAILED ({failed_checks} of {checks} checks failed); "
            "the evidence is not intact"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "notes": list(self.notes),
            "items": [i.to_json() for i in self.items],
        }
