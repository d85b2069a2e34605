"""The fast path gives the same values as fhirpathpy, and the registry covers every R4 parameter."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hub.search.params import Registry
from hub.search.paths import Evaluator, compile_fast, resolve_type, split_union
from tests.search.conftest import corpus_resources

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = REPO / "tests" / "data" / "fhir-examples" / "r4-official"
SYNTHEA = REPO / "tests" / "data" / "synthea"


def _resources() -> list[dict[str, Any]]:
    out = corpus_resources()
    for f in sorted(OFFICIAL.glob("*.json")):
        r = json.loads(f.read_bytes())
        if "resourceType" in r:
            out.append(r)
            if r["resourceType"] == "Bundle":
                out.extend(e["resource"] for e in r.get("entry", []) if "resource" in e)
    for name in ["8a4c9c04-1524-9f1c-d65b-9b17e4520fef.json", "0-hospitalInformation1625911868739.json"]:
        bundle = json.loads((SYNTHEA / name).read_bytes())
        out.extend(e["resource"] for e in bundle["entry"])
    return out


def _canon(values: list[Any]) -> set[str]:
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return float(o)
        raise TypeError(o)

    return {json.dumps(v, sort_keys=True, default=default) for v in values}


def test_fast_path_equals_fhirpathpy(registry: Registry) -> None:
    resources = _resources()
    assert len(resources) > 650
    compared = differing = with_values = 0
    failures: list[str] = []
    for res in resources:
        for bp in registry.params(res["resourceType"]):
            ev = bp.evaluator
            if ev is None or not ev.fast:
                continue
            fast = ev(res)
            try:
                slow = [v for v in ev.compiled()(res) if v is not None]
            except ValueError as exc:
                # FHIRPath's "as" wants a singleton; fhirpathpy raises, the fast path filters (documented)
                assert "singleton" in str(exc)
                continue
            compared += 1
            with_values += bool(slow)
            if _canon(fast) != _canon(slow):
                differing += 1
                failures.append(f"{res['resourceType']}/{res.get('id')} {bp.code}: {fast!r} != {slow!r}")
    assert not failures, failures[:10]
    assert compared > 12_000 and with_values > 4_000, (compared, with_values)


def test_nearly_every_expression_is_fast(registry: Registry) -> None:
    total = slow = 0
    for t in sorted(registry.resource_types):
        for bp in registry.params(t):
            if bp.evaluator is not None:
                total += 1
                slow += not bp.evaluator.fast
    assert total > 2200 and slow <= 5


def test_registry_loads_every_parameter(registry: Registry) -> None:
    bundle = json.loads((REPO / "profiles" / "search-parameters.json").read_bytes())
    urls = {e["resource"]["url"] for e in bundle["entry"]}
    assert len(urls) == 1378 and urls <= set(registry.by_url)
    assert registry.problems == []
    # a multi-base parameter is split per type
    assert (
        registry.get("Observation", "patient").expression == "Observation.subject.where(resolve() is Patient)"
    )
    assert registry.get("AllergyIntolerance", "patient").expression == "AllergyIntolerance.patient"
    assert registry.get("Observation", "code-value-quantity").component_types == ("token", "quantity")
    assert registry.get("Patient", "_tag").type == "token"
    assert registry.get("Patient", "_text") is not None and not registry.get("Patient", "_text").indexed
    assert registry.compartment_params("Observation") == ("subject", "performer")


def test_custom_search_parameter(tmp_path: Path) -> None:
    src = REPO / "profiles"
    for name in ["search-parameters.json", "compartmentdefinition-patient.json"]:
        (tmp_path / name).write_bytes((src / name).read_bytes())
    custom = {
        "resourceType": "SearchParameter",
        "url": "http://example.org/SearchParameter/patient-race",
        "code": "race",
        "base": ["Patient"],
        "type": "token",
        "expression": "Patient.extension.where(url='http://hl7.org/fhir/us/core/StructureDefinition/us-core-race').extension.value",
    }
    (tmp_path / "SearchParameter-patient-race.json").write_text(json.dumps(custom))
    reg = Registry.load(tmp_path)
    bp = reg.get("Patient", "race")
    assert bp is not None and bp.indexed
    patient = {
        "resourceType": "Patient",
        "extension": [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"},
                    }
                ],
            }
        ],
    }
    assert bp.evaluator is not None
    assert bp.evaluator(patient) == [{"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}]


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ({"reference": "Patient/1"}, "Patient"),
        ({"reference": "Patient/1/_history/2"}, "Patient"),
        ({"reference": "http://x.org/fhir/Practitioner/a-b.c"}, "Practitioner"),
        ({"reference": "#contained"}, None),
        ({"reference": "urn:uuid:1234"}, None),
        ({"reference": "Nonsense/1"}, None),
        ({"type": "Organization", "identifier": {"value": "x"}}, "Organization"),
        ({"display": "only text"}, None),
    ],
)
def test_resolve_type(ref: dict[str, Any], want: str | None) -> None:
    assert resolve_type(ref) == want


def test_fast_subset_shapes() -> None:
    assert split_union("(A.b as C) | A.d.where(x='|')") == ["(A.b as C)", "A.d.where(x='|')"]
    obs = {"resourceType": "Observation", "valueQuantity": {"value": 1}, "effectivePeriod": {"start": "2020"}}
    assert Evaluator("(Observation.value as Quantity)", "Observation")(obs) == [{"value": 1}]
    assert Evaluator("Observation.value.as(CodeableConcept)", "Observation")(obs) == []
    assert Evaluator("Observation.effective", "Observation")(obs) == [{"start": "2020"}]
    assert len(compile_fast("Observation.effective", "Observation")) == 4  # dateTime, Period, Timing, instant
    assert not Evaluator("Observation.value.where(foo())", "Observation").fast
    assert Evaluator("Patient.deceased.exists() and Patient.deceased != false", "Patient").fast
