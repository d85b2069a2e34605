"""bench/datagen.py: deterministic Synthea-shaped bundles for the search benchmark."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYNTHEA = ROOT / "tests" / "data" / "synthea"
DATAGEN = ROOT / "bench" / "datagen.py"
N = 11  # more than the 8 templates, so some are used twice
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CONDITIONAL = re.compile(r"(Organization|Location|Practitioner)\?identifier=([^|]+)\|(.+)")


@functools.cache
def datagen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("datagen", DATAGEN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["datagen"] = module  # dataclasses look the module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("datagen")
    datagen().generate(SYNTHEA, out, N, seed=1)
    return out


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_bytes())


def patient_files(out: Path) -> list[Path]:
    return sorted(out.glob("02-patient-*.json"))


def template_files() -> list[Path]:
    return sorted(p for p in SYNTHEA.glob("*.json") if "Information" not in p.name)


def references(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                found.append(v)
            else:
                found.extend(references(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(references(v))
    return found


def test_file_names_sort_in_load_order(out_dir: Path) -> None:
    names = sorted(p.name for p in out_dir.glob("*.json"))
    assert names[:2] == ["00-hospitalInformation.json", "01-practitionerInformation.json"]
    assert names[2:] == [f"02-patient-{n:05d}.json" for n in range(N)]
    hospital = next(SYNTHEA.glob("*hospitalInformation*.json"))
    practitioner = next(SYNTHEA.glob("*practitionerInformation*.json"))
    assert (out_dir / names[0]).read_bytes() == hospital.read_bytes()
    assert (out_dir / names[1]).read_bytes() == practitioner.read_bytes()


def test_same_seed_same_bytes_other_seed_other_data(out_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    other = tmp_path / "other"
    datagen().generate(SYNTHEA, again, N, seed=1)
    datagen().generate(SYNTHEA, other, N, seed=2)
    for path in out_dir.glob("*.json"):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    first = out_dir / "02-patient-00000.json"
    assert (other / first.name).read_bytes() != first.read_bytes()


def test_rerun_with_fewer_patients_removes_stale_files(tmp_path: Path) -> None:
    datagen().generate(SYNTHEA, tmp_path, 3)
    datagen().generate(SYNTHEA, tmp_path, 2)
    assert len(patient_files(tmp_path)) == 2


def test_resource_counts_follow_the_templates(out_dir: Path) -> None:
    templates = template_files()
    for n, path in enumerate(patient_files(out_dir)):
        bundle = load(path)
        template = load(templates[n % len(templates)])
        assert bundle["type"] == "transaction"
        encounters = sum(1 for e in template["entry"] if e["resource"]["resourceType"] == "Encounter")
        assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
            e["resource"]["resourceType"] for e in template["entry"]
        ] + ["Appointment"] * encounters
        assert [e["request"] for e in bundle["entry"]] == [e["request"] for e in template["entry"]] + [
            {"method": "POST", "url": "Appointment"}
        ] * encounters


def test_one_appointment_per_encounter(out_dir: Path) -> None:
    """Synthea has no Appointments: each Encounter gets the fulfilled booking that led to it."""
    for path in patient_files(out_dir):
        entries = load(path)["entry"]
        patient_url = entries[0]["fullUrl"]
        encounters = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Encounter"]
        appointments = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Appointment"]
        assert len(appointments) == len(encounters) > 0
        for enc, app in zip(encounters, appointments, strict=True):
            assert app["status"] == "fulfilled"
            assert (app["start"], app["end"]) == (enc["period"]["start"], enc["period"]["end"])
            actors = [p["actor"]["reference"] for p in app["participant"]]
            assert actors[0] == patient_url
            assert enc["participant"][0]["individual"]["reference"] in actors
            assert enc["location"][0]["location"]["reference"] in actors
            assert app["serviceType"] == enc["type"][:1]


def test_without_appointments_the_bundles_keep_the_template_shape(tmp_path: Path) -> None:
    datagen().generate(SYNTHEA, tmp_path, 2, appointments=False)
    templates = template_files()
    for n, path in enumerate(patient_files(tmp_path)):
        types = [e["resource"]["resourceType"] for e in load(path)["entry"]]
        assert types == [e["resource"]["resourceType"] for e in load(templates[n])["entry"]]


def test_ids_are_new_and_unique_across_patients(out_dir: Path) -> None:
    template_ids = {e["resource"]["id"] for p in template_files() for e in load(p)["entry"]}
    seen: Counter[str] = Counter()
    for path in patient_files(out_dir):
        for entry in load(path)["entry"]:
            res = entry["resource"]
            assert entry["fullUrl"] == f"urn:uuid:{res['id']}"
            assert res["id"] not in template_ids
            seen[res["id"]] += 1
    assert seen and max(seen.values()) == 1


def test_references_stay_inside_the_bundle_or_are_conditional(out_dir: Path) -> None:
    """urn:uuid → an entry of the same bundle; conditional → a hospital/practitioner identifier; # → contained."""
    known: set[tuple[str, str, str]] = set()
    for name in ("00-hospitalInformation.json", "01-practitionerInformation.json"):
        for entry in load(out_dir / name)["entry"]:
            res = entry["resource"]
            for ident in res.get("identifier", []):
                known.add((res["resourceType"], ident["system"], ident["value"]))
    problems: list[str] = []
    conditional = 0
    for path in patient_files(out_dir):
        entries = load(path)["entry"]
        full_urls = {e["fullUrl"] for e in entries}
        for entry in entries:
            res = entry["resource"]
            contained = {f"#{c['id']}" for c in res.get("contained", [])}
            for ref in references(res):
                if ref.startswith("urn:uuid:"):
                    ok = ref in full_urls
                elif ref.startswith("#"):
                    ok = ref in contained
                else:
                    m = CONDITIONAL.fullmatch(ref)
                    ok = bool(m) and (m.group(1), m.group(2), m.group(3)) in known
                    conditional += 1
                if not ok:
                    problems.append(f"{path.name} {res['resourceType']}/{res['id']} -> {ref}")
    assert problems == []
    assert conditional > 100


def test_patients_get_new_names_identifiers_and_dates(out_dir: Path) -> None:
    templates = template_files()
    reference_uuids = set(UUID.findall((out_dir / "00-hospitalInformation.json").read_text("utf-8")))
    identifiers: Counter[str] = Counter()
    names: set[str] = set()
    for n, path in enumerate(patient_files(out_dir)):
        text = path.read_text("utf-8")
        bundle = json.loads(text)
        template = load(templates[n % len(templates)])
        patient, old = bundle["entry"][0]["resource"], template["entry"][0]["resource"]
        assert patient["resourceType"] == old["resourceType"] == "Patient"
        assert patient["gender"] == old["gender"]
        for token in [*old["name"][0]["given"], old["name"][0]["family"]]:
            assert token not in text
        for ident in old["identifier"]:
            assert ident["value"] not in text
        identifiers.update(f"{i['system']}|{i['value']}" for i in patient["identifier"])
        names.add(" ".join([*patient["name"][0]["given"], patient["name"][0]["family"]]))
        if "birthDate" in old:
            assert patient["birthDate"] != old["birthDate"]
        # every UUID that is not one of the new ids is a hospital/practitioner one
        own = {e["resource"]["id"] for e in bundle["entry"]}
        assert set(UUID.findall(text)) - own <= reference_uuids
    assert len(names) == N
    assert max(identifiers.values()) == 1


def test_dates_shift_consistently(out_dir: Path) -> None:
    """All dates of one patient move by the same number of days, so ages and intervals hold."""
    templates = template_files()
    for n, path in enumerate(patient_files(out_dir)):
        new = re.findall(r"\d{4}-\d{2}-\d{2}", json.dumps(load(path)["entry"][1:20]))
        old = re.findall(r"\d{4}-\d{2}-\d{2}", json.dumps(load(templates[n % len(templates)])["entry"][1:20]))
        assert len(new) == len(old) > 0
        deltas = {
            (dt.date.fromisoformat(a) - dt.date.fromisoformat(b)).days for a, b in zip(new, old, strict=True)
        }
        assert len(deltas) == 1


def test_clinical_notes_follow_the_patient(out_dir: Path) -> None:
    bundle = load(out_dir / "02-patient-00000.json")
    patient = bundle["entry"][0]["resource"]
    given = patient["name"][0]["given"][0]
    notes = [
        base64.b64decode(e["resource"]["content"][0]["attachment"]["data"]).decode("utf-8")
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DocumentReference"
    ]
    assert notes and all(given in note for note in notes)
    dates = {
        e["resource"]["date"][:10]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DocumentReference"
    }
    assert all(any(note.lstrip().startswith(d) for d in dates) for note in notes)


def test_cli_prints_counts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(DATAGEN), "--patients", "3", "--out", str(tmp_path), "--seed", "7"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    total = sum(len(load(p)["entry"]) for p in tmp_path.glob("*.json"))
    assert f"resources: {total}" in result.stdout
    assert "Observation" in result.stdout
    assert len(patient_files(tmp_path)) == 3


def test_synthea_readme_counts_are_current() -> None:
    readme = (SYNTHEA / "README.md").read_text("utf-8")
    block = readme.split("<!-- summary:begin -->\n", 1)[1].split("<!-- summary:end -->", 1)[0]
    assert block == datagen().summarize(SYNTHEA)
