"""Each parameter type, modifier and prefix against the oracle (fhirpathpy over the loaded JSON)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.search import oracle as o
from tests.search.conftest import SearchDB

Pred = Callable[[list[Any]], bool]

# (type, query, parameter whose expression the oracle evaluates, predicate over its values)
CASES: list[tuple[str, str, str, Pred]] = [
    # ---------------------------------------------------------------- string
    ("Patient", "name=peter", "name", o.starts("peter")),
    ("Patient", "name=PETER", "name", o.starts("peter")),
    ("Patient", "name=mul", "name", o.starts("mul")),  # Müller, by accent folding
    ("Patient", "name=müller", "name", o.starts("muller")),
    ("Patient", "name=MUELLER", "name", o.starts("mueller")),
    ("Patient", "family=o'b", "family", o.starts("o'b")),
    ("Patient", "given=sean", "given", o.starts("sean")),
    ("Patient", "name:exact=Müller", "name", o.exact("Müller")),
    ("Patient", "name:exact=müller", "name", o.exact("müller")),
    ("Patient", "name:contains=ll", "name", o.contains("ll")),
    ("Patient", "name:contains=%25_s", "name", o.contains("%_s")),
    ("Patient", "name:contains=_", "name", o.contains("_")),
    ("Patient", "address-city=zur", "address-city", o.starts("zur")),
    ("Patient", "address=bahnhof", "address", o.starts("bahnhof")),
    ("Organization", "name=aero", "name", o.starts("aero")),
    ("Organization", "name=ærø", "name", o.starts("ærø")),
    ("Practitioner", "name=dok,adam", "name", lambda v: o.starts("dok")(v) or o.starts("adam")(v)),
    # ---------------------------------------------------------------- token
    ("Patient", "gender=male", "gender", o.token(None, "male")),
    (
        "Patient",
        "gender=male,female",
        "gender",
        lambda v: o.token(None, "male")(v) or o.token(None, "female")(v),
    ),
    ("Patient", "identifier=urn:sys:mrn|M-1", "identifier", o.token("urn:sys:mrn", "M-1")),
    ("Patient", "identifier=M-2", "identifier", o.token(None, "M-2")),
    ("Patient", "identifier=urn:sys:mrn|", "identifier", o.token("urn:sys:mrn", None)),
    (
        "Patient",
        "identifier=urn:oid:1.2.36.146.595.217.0.1|12345",
        "identifier",
        o.token("urn:oid:1.2.36.146.595.217.0.1", "12345"),
    ),
    ("Patient", r"identifier=urn:sys:odd|a\,b\|c\$d\\e", "identifier", o.token("urn:sys:odd", "a,b|c$d\\e")),
    ("Patient", "active=true", "active", o.token(None, "true")),
    ("Patient", "email=j.mueller@example.org", "email", o.token(None, "j.mueller@example.org")),
    ("Patient", "deceased=true", "deceased", lambda v: v == [True]),
    ("Patient", "deceased=false", "deceased", lambda v: v == [False]),
    ("Patient", "gender:not=male", "gender", lambda v: not o.token(None, "male")(v)),
    ("Observation", "code=http://loinc.org|8480-6", "code", o.token("http://loinc.org", "8480-6")),
    (
        "Observation",
        "code=8480-6,72166-2",
        "code",
        lambda v: o.token(None, "8480-6")(v) or o.token(None, "72166-2")(v),
    ),
    ("Observation", "code=|8480-6", "code", o.token("", "8480-6")),
    (
        "Observation",
        "value-concept=http://snomed.info/sct|266919005",
        "value-concept",
        o.token("http://snomed.info/sct", "266919005"),
    ),
    ("Observation", "status:not=final", "status", lambda v: not o.token(None, "final")(v)),
    (
        "Encounter",
        "class=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB",
        "class",
        o.token("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
    ),
    ("Patient", "_tag=urn:tags|vip", "_tag", o.token("urn:tags", "vip")),
    ("Patient", "_security=R", "_security", o.token(None, "R")),
    # ---------------------------------------------------------------- reference
    ("Observation", "subject=Patient/h-muller", "subject", o.ref_to("Patient/h-muller")),
    ("Observation", "patient=h-mueller", "patient", o.ref_to("Patient/h-mueller")),
    ("Observation", "subject:Patient=h-obrien", "subject", o.ref_to("Patient/h-obrien")),
    (
        "Observation",
        "subject=http://other.example/fhir/Patient/ext1",
        "subject",
        lambda v: "http://other.example/fhir/Patient/ext1" in [r for x in v for r in o.refs(x)],
    ),
    ("Observation", "subject=http://hub.test/fhir/Patient/h-muller", "subject", o.ref_to("Patient/h-muller")),
    ("Observation", "subject=Patient/h-obrien/_history/1", "subject", o.ref_to("Patient/h-obrien")),
    (
        "Encounter",
        "subject=Patient/example,Patient/h-muller",
        "subject",
        lambda v: o.ref_to("Patient/example")(v) or o.ref_to("Patient/h-muller")(v),
    ),
    ("Appointment", "actor=Practitioner/h-doc", "actor", o.ref_to("Practitioner/h-doc")),
    ("Patient", "organization=Organization/h-org", "organization", o.ref_to("Organization/h-org")),
    (
        "QuestionnaireResponse",
        "questionnaire=http://example.org/fhir/Questionnaire/q1|2.0",
        "questionnaire",
        lambda v: "http://example.org/fhir/Questionnaire/q1|2.0" in v,
    ),
    # ---------------------------------------------------------------- date
    ("Patient", "birthdate=1980-05", "birthdate", o.date_pred("eq", "1980-05")),
    ("Patient", "birthdate=1980", "birthdate", o.date_pred("eq", "1980")),
    ("Patient", "birthdate=1980-05-17", "birthdate", o.date_pred("eq", "1980-05-17")),
    ("Patient", "birthdate=ne1980-05", "birthdate", o.date_pred("ne", "1980-05")),
    ("Patient", "birthdate=gt1980-05-17", "birthdate", o.date_pred("gt", "1980-05-17")),
    ("Patient", "birthdate=ge1980-05-17", "birthdate", o.date_pred("ge", "1980-05-17")),
    ("Patient", "birthdate=lt1980-05-17", "birthdate", o.date_pred("lt", "1980-05-17")),
    ("Patient", "birthdate=le1980-05-17", "birthdate", o.date_pred("le", "1980-05-17")),
    ("Patient", "birthdate=sa1980-05-16", "birthdate", o.date_pred("sa", "1980-05-16")),
    ("Patient", "birthdate=eb1980-05-17", "birthdate", o.date_pred("eb", "1980-05-17")),
    ("Encounter", "date=2021-03-01", "date", o.date_pred("eq", "2021-03-01")),
    ("Encounter", "date=ge2021-03-02", "date", o.date_pred("ge", "2021-03-02")),
    ("Encounter", "date=gt2030", "date", o.date_pred("gt", "2030")),
    ("Encounter", "date=sa2021-03-01", "date", o.date_pred("sa", "2021-03-01")),
    ("Observation", "date=2021-03-01", "date", o.date_pred("eq", "2021-03-01")),
    ("Observation", "date=2021-03-01T05:00:00Z", "date", o.date_pred("eq", "2021-03-01T05:00:00Z")),
    (
        "Observation",
        "date=ge2021-03-01T08:30:00Z&date=lt2021-03-02",
        "date",
        lambda v: o.date_pred("ge", "2021-03-01T08:30:00Z")(v) and o.date_pred("lt", "2021-03-02")(v),
    ),
    ("Observation", "date=le2021-03-05", "date", o.date_pred("le", "2021-03-05")),
    ("Appointment", "date=2021-03-11", "date", o.date_pred("eq", "2021-03-11")),
    ("Appointment", "date=ge2021-03-11T13:00:00Z", "date", o.date_pred("ge", "2021-03-11T13:00:00Z")),
    # ---------------------------------------------------------------- number
    ("RiskAssessment", "probability=0.25", "probability", o.number_pred("eq", "0.25")),
    ("RiskAssessment", "probability=gt0.2", "probability", o.number_pred("gt", "0.2")),
    ("RiskAssessment", "probability=lt0.2", "probability", o.number_pred("lt", "0.2")),
    ("RiskAssessment", "probability=ge0.3", "probability", o.number_pred("ge", "0.3")),
    ("RiskAssessment", "probability=le0.1", "probability", o.number_pred("le", "0.1")),
    ("RiskAssessment", "probability=sa0.2", "probability", o.number_pred("sa", "0.2")),
    ("RiskAssessment", "probability=eb0.3", "probability", o.number_pred("eb", "0.3")),
    ("RiskAssessment", "probability=ne0.25", "probability", o.number_pred("ne", "0.25")),
    ("RiskAssessment", "probability=0.3", "probability", o.number_pred("eq", "0.3")),
    ("ChargeItem", "factor-override=0.8", "factor-override", o.number_pred("eq", "0.8")),
    # ---------------------------------------------------------------- quantity
    ("Observation", "value-quantity=120", "value-quantity", o.number_pred("eq", "120")),
    ("Observation", "value-quantity=gt120", "value-quantity", o.number_pred("gt", "120")),
    (
        "Observation",
        "value-quantity=ge120|http://unitsofmeasure.org|mm[Hg]",
        "value-quantity",
        o.number_pred("ge", "120", "http://unitsofmeasure.org", "mm[Hg]"),
    ),
    ("Observation", "value-quantity=le100||mmHg", "value-quantity", o.number_pred("le", "100", None, "mmHg")),
    ("Observation", "value-quantity=140.5", "value-quantity", o.number_pred("eq", "140.5")),
    ("Observation", "value-quantity=140", "value-quantity", o.number_pred("eq", "140")),
    ("Observation", "value-quantity=5e-1", "value-quantity", o.number_pred("eq", "5e-1")),
    ("Observation", "value-quantity=ne120", "value-quantity", o.number_pred("ne", "120")),
    (
        "Encounter",
        "length=60|http://unitsofmeasure.org|min",
        "length",
        o.number_pred("eq", "60", "http://unitsofmeasure.org", "min"),
    ),
    ("Condition", "onset-age=35", "onset-age", o.number_pred("eq", "35")),
    ("Condition", "onset-age=ge39", "onset-age", o.number_pred("ge", "39")),
    ("Condition", "onset-age=lt31", "onset-age", o.number_pred("lt", "31")),
    # ---------------------------------------------------------------- uri
    (
        "Questionnaire",
        "url=http://example.org/fhir/Questionnaire/q1",
        "url",
        lambda v: "http://example.org/fhir/Questionnaire/q1" in v,
    ),
    (
        "Questionnaire",
        "url:below=http://example.org/fhir",
        "url",
        lambda v: any(u.startswith("http://example.org/fhir") for u in v),
    ),
    (
        "Questionnaire",
        "url:above=http://example.org/fhir/Questionnaire/q1/sub/deeper",
        "url",
        lambda v: any("http://example.org/fhir/Questionnaire/q1/sub/deeper".startswith(u) for u in v),
    ),
    (
        "Patient",
        "_profile=http://example.org/StructureDefinition/p1",
        "_profile",
        lambda v: "http://example.org/StructureDefinition/p1" in v,
    ),
    ("Patient", "_source=urn:src:ehr1#abc", "_source", lambda v: "urn:src:ehr1#abc" in v),
]


@pytest.mark.parametrize(("res_type", "query", "code", "pred"), CASES, ids=[f"{c[0]}?{c[1]}" for c in CASES])
def test_against_oracle(
    corpus_db: SearchDB, corpus: list[dict[str, Any]], res_type: str, query: str, code: str, pred: Pred
) -> None:
    want = o.expected(corpus, res_type, code, pred)
    got = corpus_db.ids(res_type, query)
    assert got == want


def test_oracle_cases_are_not_trivial(corpus: list[dict[str, Any]]) -> None:
    """Most cases must select something and not everything, or they prove little."""
    informative = 0
    for res_type, _, code, pred in CASES:
        n_all = sum(1 for r in corpus if r["resourceType"] == res_type)
        n = len(o.expected(corpus, res_type, code, pred))
        informative += 0 < n < n_all
    assert informative >= len(CASES) * 0.8


# ------------------------------------------------------------------ hand-computed cases
@pytest.mark.parametrize(
    ("res_type", "query", "want"),
    [
        # precision ranges and zones, worked out by hand
        (
            "Patient",
            "birthdate=1980-05",
            {"h-muller", "h-mueller"},
        ),  # a month contains its days; h-ghost is deleted
        ("Patient", "birthdate=1980-05-17", {"h-mueller"}),  # a day does not contain "1980-05" (the month)
        # ge/gt: the range above the day overlaps the month 1980-05 (it runs to May 31)
        ("Patient", "birthdate=ge1980-05-17", {"h-muller", "h-mueller", "animal"}),
        ("Patient", "birthdate=gt1980-05-17", {"h-muller", "animal"}),
        # lt: the month starts before the day; pat1 has no birth date
        ("Patient", "birthdate=lt1980-05-17", {"h-muller", "h-obrien", "example", "f001", "f201", "glossy"}),
        # 2021-03-01T10:00+05:00 is 05:00Z, the same UTC day
        ("Observation", "date=2021-03-01", {"h-obs1", "h-obs4", "h-obs6"}),
        ("Observation", "date=2021-03-01T05:00:00Z", {"h-obs4"}),
        ("Observation", "date=2021-03-01T05:00Z", {"h-obs4"}),  # minute precision contains the second
        ("Observation", "date=2021-03-01T10:00:00%2B05:00", {"h-obs4"}),
        ("Observation", "date=2021-03-01T10:00:00+05:00", {"h-obs4"}),  # '+' left unencoded: a space
        # the instant 23:59:59.999Z sits in the last millisecond of the day
        ("Observation", "date=sa2021-03-01T23:59:59Z", {"h-obs2"}),  # only the period from 03-05 starts after
        ("Observation", "date=eb2021-03-02", {"h-obs1", "h-obs4", "h-obs6"}),
        # "2021" (a year) is not inside a day, but overlaps it: ge/le see it via the range above/below
        ("Observation", "date=2021", {"h-obs1", "h-obs2", "h-obs3", "h-obs4", "h-obs6"}),
        # an open period (no end) is after any date past its start
        ("Encounter", "date=gt2100-01-01&_id=h-enc2,h-enc1", {"h-enc2"}),
        ("Encounter", "date=lt2021-03-01T08:00:01Z&_id=h-enc2,h-enc1", {"h-enc1"}),
        # string normalisation by hand
        ("Patient", "name=JURG", {"h-muller"}),
        ("Patient", "name=mü", {"h-muller", "h-mueller"}),
        ("Patient", "name=muel", {"h-mueller"}),
        ("Patient", "family:exact=Muller", set()),
        ("Patient", "family:exact=Müller", {"h-muller"}),
        ("Patient", "name:contains=%", {"h-obrien"}),
        ("Patient", "name:contains=0%25_", {"h-obrien"}),
        ("Patient", "name:contains=ller", {"h-muller", "h-mueller"}),
        ("Organization", "name=AERO", {"h-org2"}),
        # numbers: precision of the search value
        ("Observation", "value-quantity=140", set()),  # 140 means [139.5, 140.5)
        ("Observation", "value-quantity=140.5", {"h-obs3"}),
        ("Observation", "value-quantity=1.3e2", set()),  # the BP panel's 130 is in a component
        ("Observation", "component-value-quantity=1.3e2", {"h-obs2"}),
        ("Observation", "value-quantity=0.50", {"h-obs6"}),
    ],
)
def test_by_hand(corpus_db: SearchDB, res_type: str, query: str, want: set[str]) -> None:
    assert corpus_db.ids(res_type, query) == want


# ------------------------------------------------------------------ modifiers beyond the oracle
def test_token_text(corpus_db: SearchDB) -> None:
    assert corpus_db.ids("Observation", "code:text=systolic") == {"h-obs1"}
    assert corpus_db.ids("Observation", "code:text=bp pan") == {"h-obs2"}  # CodeableConcept.text
    assert corpus_db.ids("Observation", "value-concept:text=NEVER") == {"h-obs4"}
    assert corpus_db.ids("Patient", "identifier:text=medical rec") == {"h-muller"}


def test_token_of_type(corpus_db: SearchDB) -> None:
    q = "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|M-1"
    assert corpus_db.ids("Patient", q) == {"h-muller"}
    assert (
        corpus_db.ids("Patient", "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|M-2")
        == set()
    )


def test_reference_identifier(corpus_db: SearchDB) -> None:
    assert corpus_db.ids("Observation", "subject:identifier=urn:sys:mrn|M-1") == {"h-obs7"}
    assert corpus_db.ids("Observation", "subject:identifier=M-1") == {"h-obs7"}


def test_missing(corpus_db: SearchDB, corpus: list[dict[str, Any]]) -> None:
    for res_type, code in [
        ("Patient", "birthdate"),
        ("Patient", "name"),
        ("Observation", "value-quantity"),
        ("Observation", "subject"),
    ]:
        has = o.expected(corpus, res_type, code, lambda v: bool(v))
        all_ = {r["id"] for r in corpus if r["resourceType"] == res_type}
        assert corpus_db.ids(res_type, f"{code}:missing=false") == has
        assert corpus_db.ids(res_type, f"{code}:missing=true") == all_ - has


def test_composite(corpus_db: SearchDB) -> None:
    db = corpus_db
    assert db.ids("Observation", "code-value-quantity=http://loinc.org|8480-6$gt125") == {"h-obs3"}
    assert db.ids("Observation", "code-value-quantity=8480-6$120") == {"h-obs1"}
    # components pair up within one component, never across: 8462-4 has 85, not 130
    assert db.ids("Observation", "component-code-value-quantity=8480-6$130") == {"h-obs2"}
    assert db.ids("Observation", "component-code-value-quantity=8462-4$130") == set()
    assert db.ids("Observation", "component-code-value-quantity=8462-4$lt90") == {"h-obs2"}
    assert db.ids("Observation", "combo-code-value-quantity=8480-6$ge130") == {"h-obs2", "h-obs3"}
    assert db.ids("Observation", "code-value-concept=72166-2$http://snomed.info/sct|266919005") == {"h-obs4"}
    assert db.ids("Observation", "code-value-quantity=8480-6$gt125,72166-2$1") == {"h-obs3"}
    assert (
        db.ids("Observation", "code-value-date=8480-6$2021") == set()
    )  # value[x] as a date; effective[x] is not it
    assert db.ids("Observation", "code-value-string=8480-6$HIGH") == {"h-obs5"}


def test_and_or(corpus_db: SearchDB) -> None:
    db = corpus_db
    assert db.ids("Patient", "family=müller,mueller&gender=female") == {"h-mueller"}
    assert db.ids("Patient", "name=m&name=ller") == set()  # AND of starts-with on one value each
    assert db.ids("Patient", "name=m&name=j") == {"h-muller"}  # Müller, Jürgen


def test_common_parameters(corpus_db: SearchDB) -> None:
    db = corpus_db
    assert db.ids("Patient", "_id=h-muller,example") == {"h-muller", "example"}
    assert db.ids("Patient", "_id=h-ghost") == set()  # deleted
    assert db.ids("Patient", "_lastUpdated=gt2000-01-01&_id=h-muller") == {"h-muller"}
    assert db.ids("Patient", "_lastUpdated=lt2000-01-01") == set()
    assert db.ids(None, "_id=h-muller") == {"h-muller"}
    assert db.ids(None, "_type=Patient,Organization&_tag=urn:tags|vip") == {"h-muller"}


def test_system_search_over_types(corpus_db: SearchDB, corpus: list[dict[str, Any]]) -> None:
    want = o.expected(corpus, "Organization", "name", o.starts("a")) | o.expected(
        corpus, "Practitioner", "name", o.starts("a")
    )
    assert corpus_db.ids(None, "_type=Organization,Practitioner&name=a") == want
    assert {"h-org", "h-org2"} <= want


def test_deleted_never_match(corpus_db: SearchDB) -> None:
    db = corpus_db
    for q in [
        "name=ghost",
        "_id=h-ghost",
        "organization=Organization/h-org&gender=male",
        "birthdate=1980-05-01",
    ]:
        assert "h-ghost" not in db.ids("Patient", q)
    assert "h-ghost" not in db.ids("Patient", "_has:Observation:patient:code=8480-6")
