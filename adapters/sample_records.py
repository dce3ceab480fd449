"""The demo's sample records: citizens (NDC), diplomas (MOHESR), death records (MOH).

Rules:

- The records live in ``adapters/sample_data/*.json``; they are fictional.
- Each record is flat: field name → string, integer or null. The field order below is the
  order of the elements in the SOAP responses and in the WSDL schemas.
- Loading checks that the three registers agree: every deceased citizen has exactly one
  death record with the same name and date of death, every death record belongs to a
  deceased citizen, every diploma belongs to a citizen of the same name. A contradiction is a
  :class:`~adapters.errors.SampleDataError` naming the record.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Final

from adapters.errors import SampleDataError

Value = str | int | None
Record = Mapping[str, Value]

NATIONAL_ID_RE: Final = re.compile(r"[0-9]{12}")
DOCUMENT_NUMBER_RE: Final = re.compile(r"[A-Z]{3}-[0-9]{4}-[0-9]{6}")

CITIZEN_FIELDS: Final = (
    "nationalId",
    "fullNameAr",
    "fullNameLatin",
    "motherNameAr",
    "motherNameLatin",
    "sex",
    "birthDate",
    "birthGovernorate",
    "residenceGovernorate",
    "familyBookNumber",
    "familyBookPage",
    "civilStatusOfficeAr",
    "civilStatusOffice",
    "maritalStatus",
    "lifeStatus",
    "dateOfDeath",
)
DIPLOMA_FIELDS: Final = (
    "documentNumber",
    "nationalId",
    "holderNameAr",
    "holderNameLatin",
    "universityAr",
    "university",
    "collegeAr",
    "college",
    "degreeAr",
    "degree",
    "specializationAr",
    "specialization",
    "graduationYear",
    "issueDate",
)
DEATH_RECORD_FIELDS: Final = (
    "nationalId",
    "deceasedNameAr",
    "deceasedNameLatin",
    "dateOfDeath",
    "placeOfDeathAr",
    "placeOfDeath",
    "governorate",
    "causeCategory",
    "causeCategoryAr",
    "forensicReportNumber",
    "issuingAuthorityAr",
    "issuingAuthority",
    "registeringCourtAr",
    "registeringCourt",
    "registrationDate",
    "deathCertificateNumber",
)
_OPTIONAL: Final = frozenset({"dateOfDeath"})


@dataclasses.dataclass(frozen=True, slots=True)
class SampleRecords:
    """The three registers, keyed by national id (citizens, deaths) or document number."""

    citizens: Mapping[str, Record]
    diplomas: Mapping[str, Record]
    death_records: Mapping[str, Record]


def _read(directory: Path | None, filename: str, key: str) -> list[dict[str, Value]]:
    if directory is None:
        text = resources.files("adapters.sample_data").joinpath(filename).read_text("utf-8")
        where = f"adapters/sample_data/{filename}"
    else:
        text = (directory / filename).read_text("utf-8")
        where = str(directory / filename)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SampleDataError(f"{where} is not valid JSON: {exc}") from exc
    records = document.get(key) if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise SampleDataError(f"{where} must be an object with a list under {key!r}")
    return records


def _checked(
    raw: list[dict[str, Value]],
    fields: tuple[str, ...],
    key: str,
    pattern: re.Pattern[str],
    what: str,
) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for record in raw:
        if not isinstance(record, dict) or set(record) != set(fields):
            found = sorted(record) if isinstance(record, dict) else record
            raise SampleDataError(
                f"a {what} record has fields {found}; expected exactly {sorted(fields)}"
            )
        for name in fields:
            value = record[name]
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
                raise SampleDataError(
                    f"{what} {record.get(key)!r}: field {name} is empty or not text"
                )
        ident = record[key]
        if not isinstance(ident, str) or not pattern.fullmatch(ident):
            raise SampleDataError(f"{what} {ident!r}: {key} does not match {pattern.pattern}")
        if ident in out:
            raise SampleDataError(f"{what} {ident} appears twice")
        out[ident] = {name: record[name] for name in fields}
    return out


def _check_consistency(records: SampleRecords) -> None:
    for national_id, citizen in records.citizens.items():
        death = records.death_records.get(national_id)
        if citizen["lifeStatus"] == "deceased":
            if death is None:
                raise SampleDataError(f"citizen {national_id} is deceased but has no death record")
            if death["dateOfDeath"] != citizen["dateOfDeath"]:
                raise SampleDataError(f"citizen {national_id}: date of death differs from MOH")
            if death["deceasedNameAr"] != citizen["fullNameAr"]:
                raise SampleDataError(f"citizen {national_id}: name differs from the death record")
        elif citizen["lifeStatus"] == "alive":
            if death is not None or citizen["dateOfDeath"] is not None:
                raise SampleDataError(f"citizen {national_id} is alive but has a date of death")
        else:
            raise SampleDataError(f"citizen {national_id}: lifeStatus must be alive or deceased")
    for national_id in records.death_records:
        if national_id not in records.citizens:
            raise SampleDataError(f"death record {national_id} names no citizen")
    for number, diploma in records.diplomas.items():
        holder = records.citizens.get(str(diploma["nationalId"]))
        if holder is None:
            raise SampleDataError(f"diploma {number} names no citizen")
        if holder["fullNameAr"] != diploma["holderNameAr"]:
            raise SampleDataError(f"diploma {number}: holder name differs from the civil record")


def load_sample_records(directory: Path | None = None) -> SampleRecords:
    """Load and cross-check the registers (the packaged ones unless ``directory`` is given)."""
    records = SampleRecords(
        citizens=_checked(
            _read(directory, "citizens.json", "citizens"),
            CITIZEN_FIELDS,
            "nationalId",
            NATIONAL_ID_RE,
            "citizen",
        ),
        diplomas=_checked(
            _read(directory, "diplomas.json", "diplomas"),
            DIPLOMA_FIELDS,
            "documentNumber",
            DOCUMENT_NUMBER_RE,
            "diploma",
        ),
        death_records=_checked(
            _read(directory, "death_records.json", "deathRecords"),
            DEATH_RECORD_FIELDS,
            "nationalId",
            NATIONAL_ID_RE,
            "death record",
        ),
    )
    _check_consistency(records)
    return records


@functools.cache
def packaged_records() -> SampleRecords:
    """The packaged registers, loaded once per process."""
    return load_sample_records()
