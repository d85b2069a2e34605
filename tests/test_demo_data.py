"""The demo clinic in ``examples/demo-clinic/``: valid FHIR R4, self-contained, idempotent to load.

Every resource is checked against the official R4 (4.0.1) JSON Schema (a copy in
``tests/data/fhir-r4-schema/``, see its SOURCES.md) and, because that schema does not enforce required
primitive elements or reference target types, also parsed with the ``fhir.resources.R4B`` models
(R4B differs from R4 only in resources the demo does not use).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.reference import Reference
from jsonschema import Draft6Validator

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "examples" / "demo-clinic"
SCHEMA_PATH = ROOT / "tests" / "data" / "fhir-r4-schema" / "fhir.schema.json"
BUILDER = ROOT / "examples" / "build_demo_clinic.py"
DEMO_FILES = sorted(DEMO_DIR.glob("*.json"))
TODAY = dt.date(2026, 12, 7)  # the demo clinic's "today" (see examples/README.md)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def bundles() -> dict[str, dict[str, Any]]:
    return {p.name: load(p) for p in DEMO_FILES}


def all_resources() -> list[dict[str, Any]]:
    return [e["resource"] for b in bundles().values() for e in b["entry"]]


def of_type(rtype: str) -> list[dict[str, Any]]:
    return [r for r in all_resources() if r["resourceType"] == rtype]


# ------------------------------------------------------------------------------ schema helpers


@functools.cache
def _definitions() -> dict[str, Any]:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    defs = dict(schema["definitions"])
    # ResourceList is a oneOf over all ~145 resource types. Validating every nested resource against its
    # own definition instead (see schema_errors) gives the same verdict, much faster.
    defs["ResourceList"] = {"type": "object", "required": ["resourceType"]}
    return defs


@functools.cache
def _validator(rtype: str) -> Draft6Validator:
    return Draft6Validator({"$ref": f"#/definitions/{rtype}", "definitions": _definitions()})


def _nested_resources(value: Any) -> list[dict[str, Any]]:
    """Resources inside a resource (contained, Bundle.entry.resource, ...): dicts with a resourceType."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        for v in value.values():
            if isinstance(v, dict) and "resourceType" in v:
                found.append(v)
            else:
                found.extend(_nested_resources(v))
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict) and "resourceType" in v:
                found.append(v)
            else:
                found.extend(_nested_resources(v))
    return found


def schema_errors(resource: dict[str, Any]) -> list[str]:
    rtype = resource.get("resourceType")
    defs = _definitions()
    if rtype not in defs or "resourceType" not in defs[rtype].get("properties", {}):
        return [f"unknown resourceType {rtype!r}"]
    errors = [
        f"{rtype}/{resource.get('id')} at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator(rtype).iter_errors(resource)
    ]
    for nested in _nested_resources(resource):
        errors.extend(schema_errors(nested))
    return errors


def reference_type_errors(model: Any, where: str) -> list[str]:
    """Check every Reference.reference 'Type/id' against the element's allowed target types."""
    errors: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name, None)
        values = value if isinstance(value, list) else [value]
        allowed = (field.json_schema_extra or {}).get("enum_reference_types")  # type: ignore[union-attr]
        for v in values:
            if isinstance(v, Reference) and allowed and v.reference and "Resource" not in allowed:
                target = target_type(v.reference)
                if target not in allowed:
                    errors.append(f"{where}.{name}: {v.reference} ({target}) is not one of {allowed}")
            if hasattr(type(v), "model_fields"):
                errors.extend(reference_type_errors(v, f"{where}.{name}"))
    return errors


@functools.cache
def _type_by_full_url() -> dict[str, str]:
    return {e["fullUrl"]: e["resource"]["resourceType"] for b in bundles().values() for e in b["entry"]}


def target_type(reference: str) -> str:
    if reference.startswith("urn:uuid:"):
        return _type_by_full_url().get(reference, "?")
    return reference.split("/")[0]


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


# ---------------------------------------------------------------------------------- the tests


def test_demo_files_present() -> None:
    names = [p.name for p in DEMO_FILES]
    assert names == [
        "01-clinic.json",
        "02-patients.json",
        "03-appointments.json",
        "04-intake.json",
        "05-claims.json",
    ]


def test_schema_copy_is_r4() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["id"] == "http://hl7.org/fhir/json-schema/4.0"
    assert "R4" in (SCHEMA_PATH.parent / "SOURCES.md").read_text(encoding="utf-8")


def test_validator_catches_errors() -> None:
    """The speed-up in _definitions must not make validation toothless."""
    good = {"resourceType": "Patient", "id": "x", "gender": "female", "birthDate": "2000-01-01"}
    assert schema_errors(good) == []
    assert schema_errors({**good, "gender": "f"})
    assert schema_errors({**good, "birthDate": "01/01/2000"})
    assert schema_errors({**good, "nickname": "x"})
    assert schema_errors({**good, "contained": [{"resourceType": "Patient", "id": "c", "gender": "nope"}]})
    assert schema_errors({"resourceType": "Nonsense"})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {**good, "active": "yes"}}],
    }
    assert schema_errors(bundle)
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "participant": [{"status": "accepted", "actor": {"reference": "Claim/1"}}],
    }
    model = get_fhir_model_class("Appointment").model_validate(appointment)
    assert reference_type_errors(model, "Appointment")


@pytest.mark.parametrize("path", DEMO_FILES, ids=lambda p: p.name)
def test_bundle_valid_against_r4_schema(path: Path) -> None:
    bundle = load(path)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    assert schema_errors(bundle) == []


@pytest.mark.parametrize("path", DEMO_FILES, ids=lambda p: p.name)
def test_resources_parse_with_fhir_models(path: Path) -> None:
    errors: list[str] = []
    for entry in load(path)["entry"]:
        res = entry["resource"]
        model = get_fhir_model_class(res["resourceType"]).model_validate(res)
        errors.extend(reference_type_errors(model, f"{res['resourceType']}/{res['id']}"))
    assert errors == []


def test_entries_are_idempotent_puts() -> None:
    full_urls: Counter[str] = Counter()
    ids: Counter[str] = Counter()
    for name, bundle in bundles().items():
        for entry in bundle["entry"]:
            res = entry["resource"]
            key = f"{res['resourceType']}/{res['id']}"
            assert entry["request"] == {"method": "PUT", "url": key}, f"{name}: {key}"
            assert re.fullmatch(
                r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", entry["fullUrl"]
            )
            assert res["id"].startswith("demo-") or res["resourceType"] == "Questionnaire"
            assert {"system": "urn:fhirhub:demo", "code": "demo-clinic"}.items() <= res["meta"]["tag"][
                0
            ].items()
            full_urls[entry["fullUrl"]] += 1
            ids[key] += 1
    assert [u for u, n in full_urls.items() if n > 1] == []
    assert [k for k, n in ids.items() if n > 1] == []


def test_every_reference_resolves() -> None:
    """urn:uuid references resolve inside their own bundle; Type/id ones to a resource loaded no later."""
    loaded: set[str] = set()
    problems: list[str] = []
    for name, bundle in bundles().items():
        here = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
        full_urls = {e["fullUrl"] for e in bundle["entry"]}
        loaded |= here
        for entry in bundle["entry"]:
            res = entry["resource"]
            contained = {f"#{c['id']}" for c in res.get("contained", [])}
            for ref in references(res):
                ok = (
                    ref in full_urls
                    if ref.startswith("urn:uuid:")
                    else ref in contained
                    if ref.startswith("#")
                    else ref in loaded
                )
                if not ok:
                    problems.append(f"{name} {res['resourceType']}/{res['id']} -> {ref}")
    assert problems == []


def test_references_between_entries_of_a_bundle_use_full_urls() -> None:
    for name, bundle in bundles().items():
        here = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
        literal = [ref for e in bundle["entry"] for ref in references(e["resource"]) if ref in here]
        assert literal == [], f"{name} refers to its own entries by id instead of urn:uuid"


def test_clinic_shape() -> None:
    counts = Counter(r["resourceType"] for r in all_resources())
    assert 10 <= counts["Patient"] <= 15
    assert counts["Practitioner"] >= 2
    assert counts["PractitionerRole"] == counts["Practitioner"]
    assert counts["Schedule"] >= 1 and counts["Slot"] >= 100
    assert counts["Coverage"] >= 3
    payers = [o for o in of_type("Organization") if o["type"][0]["coding"][0]["code"] == "pay"]
    assert payers
    assert counts["Questionnaire"] == 1
    assert of_type("Questionnaire")[0]["url"] == "https://fhirhub.dev/Questionnaire/new-patient-intake"


def test_patients_are_reachable_and_fictional() -> None:
    patients = of_type("Patient")
    assert all(any(i["system"] == "urn:fhirhub:demo:mrn" for i in p["identifier"]) for p in patients)
    assert len({i["value"] for p in patients for i in p["identifier"]}) == len(patients)
    assert all(any(c.get("preferred") for c in p["communication"]) for p in patients)
    assert len({p["communication"][0]["language"]["coding"][0]["code"] for p in patients}) >= 5
    with_sms = [p for p in patients if any(t["system"] == "sms" for t in p.get("telecom", []))]
    with_email = [p for p in patients if any(t["system"] == "email" for t in p.get("telecom", []))]
    assert len(with_sms) >= len(patients) // 2
    assert len(with_email) >= len(patients) // 2
    for res in all_resources():
        for contact in re.findall(r'"value": "([^"]*)"', json.dumps(res)):
            if contact.startswith("+1"):  # phone numbers: NANP 555-01xx is reserved for fiction
                assert re.fullmatch(r"\+1\d{3}55501\d\d", contact), contact
            if "@" in contact:
                assert re.search(r"@([a-z]+\.)?example\.(com|org|net)$", contact), contact


def test_appointments_fit_the_schedule() -> None:
    slots = {s["id"]: s for s in of_type("Slot")}
    booked_slots: set[str] = set()
    statuses: Counter[str] = Counter()
    for appt in of_type("Appointment"):
        statuses[appt["status"]] += 1
        start = dt.datetime.fromisoformat(appt["start"])
        end = dt.datetime.fromisoformat(appt["end"])
        assert start.date().year == 2026 and start.date().month == 12
        assert (end - start).total_seconds() / 60 == appt["minutesDuration"]
        if appt["status"] in ("booked", "cancelled"):
            assert TODAY <= start.date() < TODAY + dt.timedelta(days=14), appt["id"]
        else:
            assert start.date() < TODAY, appt["id"]
        if appt["status"] == "cancelled":
            assert "slot" not in appt
            continue
        ids = [r["reference"].removeprefix("Slot/") for r in appt["slot"]]
        assert dt.datetime.fromisoformat(slots[ids[0]]["start"]) == start
        assert dt.datetime.fromisoformat(slots[ids[-1]]["end"]) == end
        booked_slots.update(ids)
    assert statuses["booked"] >= 8 and statuses["fulfilled"] >= 2
    assert {s for s, slot in slots.items() if slot["status"] == "busy"} == booked_slots
    encounters = of_type("Encounter")
    assert len(encounters) == statuses["fulfilled"]


def test_claims_for_the_workflows() -> None:
    claims = of_type("Claim")
    coverages = {f"Coverage/{c['id']}": c for c in of_type("Coverage")}
    patients = {f"Patient/{p['id']}": p for p in of_type("Patient")}
    full_url_to_patient = {
        e["fullUrl"]: f"Patient/{e['resource']['id']}"
        for e in bundles()["02-patients.json"]["entry"]
        if e["resource"]["resourceType"] == "Patient"
    }
    assert len(claims) >= 3
    for claim in claims:
        assert claim["patient"]["reference"] in patients
        coverage = coverages[claim["insurance"][0]["coverage"]["reference"]]
        assert full_url_to_patient[coverage["beneficiary"]["reference"]] == claim["patient"]["reference"]
        assert claim["item"]
    assert len([c for c in claims if not c.get("diagnosis")]) == 1
    responses = of_type("ClaimResponse")
    partial = [r for r in responses if r["outcome"] == "partial"]
    assert len(partial) == 1
    denied = [
        item
        for item in partial[0]["item"]
        for adj in item["adjudication"]
        if adj["category"]["coding"][0]["code"] == "benefit"
        and adj["amount"]["value"] == 0
        and "reason" in adj
    ]
    assert len(denied) == 1


def test_committed_files_match_the_builder() -> None:
    spec = importlib.util.spec_from_file_location("build_demo_clinic", BUILDER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert sorted(built) == [p.name for p in DEMO_FILES]
    stale = [name for name, data in built.items() if (DEMO_DIR / name).read_bytes() != data]
    assert stale == [], "run: python examples/build_demo_clinic.py"
