from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from adapters.errors import SampleDataError
from adapters.sample_records import load_sample_records, packaged_records


def test_packaged_registers_are_consistent_across_ministries() -> None:
    records = packaged_records()
    deceased = {n for n, c in records.citizens.items() if c["lifeStatus"] == "deceased"}
    assert len(records.citizens) >= 8
    assert len(records.diplomas) >= 5
    assert deceased == set(records.death_records)
    assert len(deceased) == 3
    for diploma in records.diplomas.values():
        assert diploma["nationalId"] in records.citizens


def test_sample_data_covers_the_governorates_and_universities_of_the_demo() -> None:
    records = packaged_records()
    governorates = {c["birthGovernorate"] for c in records.citizens.values()}
    assert {"Baghdad", "Basra", "Najaf", "Erbil", "Nineveh"} <= governorates
    universities = {d["university"] for d in records.diplomas.values()}
    assert {"University of Baghdad", "University of Basra", "Al-Mustansiriya University"} <= (
        universities
    )


def _copy_data(tmp_path: Path) -> Path:
    source = resources.files("adapters.sample_data")
    for name in ("citizens.json", "diplomas.json", "death_records.json"):
        with resources.as_file(source.joinpath(name)) as path:
            shutil.copy(path, tmp_path / name)
    return tmp_path


def test_refuses_deceased_citizen_without_death_record(tmp_path: Path) -> None:
    directory = _copy_data(tmp_path)
    path = directory / "death_records.json"
    document = json.loads(path.read_text("utf-8"))
    document["deathRecords"] = document["deathRecords"][1:]
    path.write_text(json.dumps(document), "utf-8")
    with pytest.raises(SampleDataError, match="deceased but has no death record"):
        load_sample_records(directory)


def test_refuses_malformed_national_id(tmp_path: Path) -> None:
    directory = _copy_data(tmp_path)
    path = directory / "citizens.json"
    document = json.loads(path.read_text("utf-8"))
    document["citizens"][0]["nationalId"] = "12345"
    path.write_text(json.dumps(document), "utf-8")
    with pytest.raises(SampleDataError, match="nationalId does not match"):
        load_sample_records(directory)


def test_refuses_diploma_of_unknown_holder(tmp_path: Path) -> None:
    directory = _copy_data(tmp_path)
    path = directory / "diplomas.json"
    document = json.loads(path.read_text("utf-8"))
    document["diplomas"][0]["nationalId"] = "111111111111"
    path.write_text(json.dumps(document), "utf-8")
    with pytest.raises(SampleDataError, match="names no citizen"):
        load_sample_records(directory)
