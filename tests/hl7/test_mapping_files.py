"""Mapping files: checked at load, errors name file and line; reload on change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hub.hl7.errors import MappingFileError
from hub.hl7.mapping import MappingSet, fingerprint

ROOT = Path(__file__).resolve().parents[2] / "mappings"


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns("tests"))
    return dst


def test_repository_mappings_load(ms: MappingSet) -> None:
    assert set(ms.messages) == {
        "ADT^A01",
        "ADT^A03",
        "ADT^A04",
        "ADT^A08",
        "ADT^A11",
        "ADT^A28",
        "ADT^A31",
        "ADT^A40",
        "SIU^S12",
        "SIU^S13",
        "SIU^S14",
        "SIU^S15",
        "SIU^S17",
        "SIU^S26",
        "DFT^P03",
    }
    assert {"PID-Patient", "PV1-Encounter", "IN1-Coverage", "SCH-Appointment", "MRG-Patient"} <= set(
        ms.templates
    )
    assert {
        "XPN-HumanName",
        "CX-Identifier",
        "XTN-ContactPoint",
        "XAD-Address",
        "CWE-CodeableConcept",
    } <= set(ms.datatypes)
    assert {
        "AdministrativeSex",
        "MaritalStatus",
        "PatientClass-EncounterClass",
        "FillerStatus-Appointment",
    } <= set(ms.codemaps)
    assert set(ms.outbound) == {"Appointment-SIU", "Patient-ADT"}


def _replace(path: Path, old: str, new: str) -> int:
    text = path.read_text()
    assert old in text
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1))
    return line


def test_broken_yaml_names_file_and_line(copy: Path) -> None:
    f = copy / "segments" / "PID-Patient.yaml"
    line = _replace(f, "  - {target: birthDate, field: PID-7", "  - {target: birthDate, field: [PID-7")
    with pytest.raises(MappingFileError) as info:
        MappingSet.load(copy)
    assert info.value.path == "segments/PID-Patient.yaml"
    assert info.value.line == line
    assert f"segments/PID-Patient.yaml:{line}" in str(info.value)


def test_schema_error_names_file_and_line(copy: Path) -> None:
    f = copy / "segments/PV1-Encounter.yaml"
    line = _replace(f, "  - {target: period.start, field: PV1-44", "  - {target: period.start, feild: PV1-44")
    with pytest.raises(MappingFileError) as info:
        MappingSet.load(copy)
    assert info.value.path == "segments/PV1-Encounter.yaml" and info.value.line == line
    assert "schema" in str(info.value)


def test_bad_field_reference_is_a_schema_error(copy: Path) -> None:
    f = copy / "segments/DG1-Condition.yaml"
    line = _replace(f, "field: DG1-5, fn: dtm_datetime", "field: DG1_5, fn: dtm_datetime")
    with pytest.raises(MappingFileError) as info:
        MappingSet.load(copy)
    assert (info.value.path, info.value.line) == ("segments/DG1-Condition.yaml", line)


@pytest.mark.parametrize(
    ("file", "old", "new", "needle"),
    [
        ("segments/PID-Patient.yaml", "fn: dtm_date,", "fn: eval_python,", "unknown function 'eval_python'"),
        ("segments/PID-Patient.yaml", "map: AdministrativeSex,", "map: Sex,", "unknown code map 'Sex'"),
        (
            "segments/PID-Patient.yaml",
            "datatype: XPN-HumanName,",
            "datatype: XPN-Nope,",
            "unknown datatype template",
        ),
        (
            "messages/ADT_A01.yaml",
            "template: PV1-Encounter",
            "template: PV1-Visit",
            "unknown template 'PV1-Visit'",
        ),
        (
            "messages/ADT_A01.yaml",
            "into: patient, each: NK1",
            "into: nobody, each: NK1",
            "`into` names no earlier step",
        ),
        ("messages/ADT_A04.yaml", 'events: ["ADT^A04"]', 'events: ["ADT^A01"]', "already mapped"),
    ],
)
def test_semantic_errors_name_file_and_line(copy: Path, file: str, old: str, new: str, needle: str) -> None:
    line = _replace(copy / file, old, new)
    with pytest.raises(MappingFileError) as info:
        MappingSet.load(copy)
    assert info.value.path == file
    assert info.value.line == line
    assert needle in str(info.value)


def test_missing_directory() -> None:
    with pytest.raises(MappingFileError):
        MappingSet.load("/nonexistent/mappings")


def test_fingerprint_and_reload(copy: Path) -> None:
    ms = MappingSet.load(copy)
    assert not ms.changed() and ms.fingerprint() == fingerprint(copy)
    assert ms.reload_if_changed() is ms
    f = copy / "codemaps" / "AdministrativeSex.yaml"
    f.write_text(
        f.read_text().replace(
            '"U": {code: "unknown", display: "Unknown"}', '"U": {code: "other", display: "Other"}'
        )
    )
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert ms.changed()
    fresh = ms.reload_if_changed()
    assert fresh is not ms and fresh.codemaps["AdministrativeSex"].lookup("U") == {
        "code": "other",
        "display": "Other",
        "system": "http://hl7.org/fhir/administrative-gender",
    }
    (copy / "codemaps" / "Extra.yaml").write_text("kind: codemap\nname: Extra\nmap: {A: b}\n")
    assert fresh.changed()
