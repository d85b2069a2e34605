"""Odd and hostile input: always a 400 or a correct (usually empty) result, never SQL text."""

from __future__ import annotations

import pytest

from hub.errors import FhirError
from hub.search.query import MAX_VALUES
from tests.search.conftest import SearchDB

EMPTY_OR_EXACT = [
    ("Patient", "name=' OR 1=1 --"),
    ("Patient", "name='; DROP TABLE resource; --"),
    ("Patient", 'name=" OR ""="'),
    ("Patient", "name:exact=%"),
    ("Patient", "name:exact=_"),
    ("Patient", "family:contains=%25%25"),
    ("Patient", "identifier=' OR '1'='1|x"),
    ("Patient", "_id=' OR 1=1 --"),
    ("Patient", "_id=%,_"),
    ("Observation", "subject=Patient/' OR 1=1 --"),
    ("Observation", "subject=\\"),
    ("Patient", "name=" + "a" * 5000),
    ("Patient", "name:contains=" + "%" * 300),
    ("Questionnaire", "url:below=%"),
    ("Questionnaire", "url:above=_"),
    ("Patient", "gender=male)"),
    ("Patient", "name=\U0010ffff"),
    ("Patient", "name=\ud7ff"),
]


@pytest.mark.parametrize(("res_type", "query"), EMPTY_OR_EXACT)
def test_hostile_values_match_nothing(corpus_db: SearchDB, res_type: str, query: str) -> None:
    name, _, value = query.partition("=")
    assert corpus_db.ids(res_type, [(name, value)]) == set()


def test_wildcards_are_literal(corpus_db: SearchDB) -> None:
    # '%' and '_' are matched as themselves, not as LIKE wildcards
    assert corpus_db.ids("Patient", [("name:contains", "%_")]) == {"h-obrien"}
    assert corpus_db.ids("Patient", [("name:contains", "_")]) == {"h-obrien"}
    assert corpus_db.ids("Patient", [("name", "100%")]) == {"h-obrien"}
    assert corpus_db.ids("Patient", [("name", "1_0")]) == set()
    assert corpus_db.ids("Patient", [("family", "o'")]) == {"h-obrien"}


BAD_REQUESTS = [
    ("Patient", "birthdate", "not-a-date"),
    ("Patient", "birthdate", "2020-13-01"),
    ("Patient", "birthdate", "2020-02-30"),
    ("Patient", "birthdate", "2020-01-01T25:00:00Z"),
    ("Patient", "birthdate", "2020-01-01T10:00:00+99:00"),
    ("Patient", "birthdate", "xx2020"),
    ("Patient", "birthdate", "ge"),
    ("Patient", "birthdate", "20200101"),
    ("Patient", "_lastUpdated", "yesterday"),
    ("Observation", "value-quantity", "abc"),
    ("Observation", "value-quantity", "1e999"),
    ("Observation", "value-quantity", "NaN"),
    ("Observation", "value-quantity", "1|2|3|4"),
    ("RiskAssessment", "probability", "gt"),
    ("Patient", "gender:foo", "male"),
    ("Patient", "name:below", "x"),
    ("Patient", "birthdate:exact", "2020"),
    ("Patient", "name:missing", "maybe"),
    ("Patient", "identifier", "|"),
    ("Patient", "identifier", "a|b|c"),
    ("Patient", "identifier:of-type", "a|b"),
    ("Observation", "subject", "Nonsense/1"),
    ("Observation", "subject:Nonsense", "1"),
    ("Observation", "code-value-quantity", "8480-6"),
    ("Observation", "subject:Patient.name.x", "y"),
    ("Patient", "_count", "-1"),
    ("Patient", "_count", "many"),
    ("Patient", "_summary", "maybe"),
    ("Patient", "_total", "some"),
    ("Patient", "_elements", "name;drop"),
    ("Patient", "_include", "Patient"),
    ("Patient", "_include", "Nonsense:x"),
    ("Patient", "_include:foo", "Patient:organization"),
    ("Patient", "_cursor", "'; DROP TABLE resource; --"),
    ("Patient", "_has:Observation", "x"),
    ("Patient", "_has:Nonsense:subject:code", "x"),
    ("Patient", "na me", "x"),
    ("Patient", "_sort", ",".join(["_id"] * 6)),
    ("Patient", "name", "\x00"),
    ("Patient", "name", "a\ud800b"),
]


@pytest.mark.parametrize(("res_type", "name", "value"), BAD_REQUESTS)
def test_bad_requests_are_400(corpus_db: SearchDB, res_type: str, name: str, value: str) -> None:
    with pytest.raises(FhirError) as err:
        corpus_db.search(res_type, [(name, value)], strict=False)
    assert err.value.http_status == 400


def test_huge_or_lists(corpus_db: SearchDB) -> None:
    ids = ",".join(f"id{i}" for i in range(MAX_VALUES - 1)) + ",h-muller"
    assert corpus_db.ids("Patient", [("_id", ids)]) == {"h-muller"}
    codes = ",".join(f"sys{i}|code{i}" for i in range(MAX_VALUES - 1)) + ",urn:sys:mrn|M-1"
    assert corpus_db.ids("Patient", [("identifier", codes)]) == {"h-muller"}
    with pytest.raises(FhirError) as err:
        corpus_db.search("Patient", [("_id", ",".join(str(i) for i in range(MAX_VALUES + 1)))])
    assert err.value.http_status == 400
    with pytest.raises(FhirError):
        corpus_db.search("Patient", [("gender", "male")] * 500)


def test_unknown_parameters_strict_and_lenient(corpus_db: SearchDB) -> None:
    with pytest.raises(FhirError) as err:
        corpus_db.search("Patient", [("foo", "bar"), ("gender", "male")], strict=True)
    assert err.value.http_status == 400
    r = corpus_db.search("Patient", [("foo", "bar"), ("gender", "male")], strict=False)
    assert {e.res_id for e in r.entries} == corpus_db.ids("Patient", "gender=male")
    assert len(r.issues) == 1 and "foo" in r.issues[0].diagnostics and r.issues[0].code == "not-supported"
    assert "foo" not in r.links["self"] and "gender=male" in r.links["self"]
    for name in [
        "_text",
        "_content",
        "_list",
        "subject:Patient.nonsense",
        "_has:Observation:subject:nonsense",
        "_sort",
    ]:
        value = "nonsense" if name == "_sort" else "x"
        r = corpus_db.search(
            "Observation" if "subject" in name and "_has" not in name else "Patient",
            [(name, value)],
            strict=False,
        )
        assert r.issues, name
        with pytest.raises(FhirError):
            corpus_db.search(
                "Observation" if "subject" in name and "_has" not in name else "Patient",
                [(name, value)],
                strict=True,
            )


def test_empty_values_are_ignored(corpus_db: SearchDB) -> None:
    assert corpus_db.ids("Patient", [("name", ""), ("_id", "h-muller")]) == {"h-muller"}
    assert corpus_db.ids("Patient", [("name", ","), ("_id", "h-muller")]) == {"h-muller"}
