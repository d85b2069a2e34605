"""Chains, reverse chains (_has), _include/_revinclude (with :iterate and *), compartments."""

from __future__ import annotations

from typing import Any

import pytest

from hub.errors import FhirError
from tests.search import oracle as o
from tests.search.conftest import SearchDB


def _by_id(corpus: list[dict[str, Any]], res_type: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in corpus if r["resourceType"] == res_type}


def test_chain_one_level(corpus_db: SearchDB, corpus: list[dict[str, Any]]) -> None:
    patients = o.expected(corpus, "Patient", "name", o.starts("peter"))
    want = o.expected(
        corpus, "Encounter", "subject", lambda v: any(o.ref_to(f"Patient/{p}")(v) for p in patients)
    )
    assert want
    assert corpus_db.ids("Encounter", "subject:Patient.name=peter") == want
    assert corpus_db.ids("Encounter", "subject.name=peter") == want  # target type inferred
    assert corpus_db.ids("Encounter", "patient.name=peter") == want


def test_chain_two_levels(corpus_db: SearchDB, corpus: list[dict[str, Any]]) -> None:
    orgs = o.expected(corpus, "Organization", "name", o.starts("acme"))
    pats = o.expected(
        corpus, "Patient", "organization", lambda v: any(o.ref_to(f"Organization/{x}")(v) for x in orgs)
    )
    want = o.expected(
        corpus, "Observation", "subject", lambda v: any(o.ref_to(f"Patient/{p}")(v) for p in pats)
    )
    assert want == {"h-obs1", "h-obs2"}
    assert corpus_db.ids("Observation", "subject:Patient.organization.name=acme") == want
    assert corpus_db.ids("Observation", "subject:Patient.organization:Organization.name=acme") == want


def test_chain_three_levels_and_token(corpus_db: SearchDB) -> None:
    # Observation -> Patient -> Organization (h-org2) -> partOf Organization (h-org, identifier ACME)
    q = "subject:Patient.organization.partof.identifier=urn:sys:org|ACME"
    assert corpus_db.ids("Observation", q) == {"h-obs3", "h-obs4"}


def test_chain_with_id_and_and(corpus_db: SearchDB) -> None:
    assert corpus_db.ids("Observation", "subject:Patient._id=h-mueller") == {"h-obs3", "h-obs4"}
    assert corpus_db.ids("Observation", "subject:Patient.gender=male&code=8480-6") == {"h-obs1"}


def test_chain_ignores_deleted_target(corpus_db: SearchDB) -> None:
    assert corpus_db.ids("Organization", "_has:Patient:organization:name=ghost") == set()


def test_has(corpus_db: SearchDB, corpus: list[dict[str, Any]]) -> None:
    obs = o.expected(corpus, "Observation", "code", o.token("http://loinc.org", "8480-6"))
    refs = {
        r for x in _by_id(corpus, "Observation").values() if x["id"] in obs for r in o.refs(x.get("subject"))
    }
    want = {r.split("/")[1] for r in refs if r.startswith("Patient/")}
    assert want == {"h-muller", "h-mueller", "h-obrien"}
    assert corpus_db.ids("Patient", "_has:Observation:subject:code=http://loinc.org|8480-6") == want
    assert corpus_db.ids("Patient", "_has:Observation:patient:code=8480-6&gender=female") == {"h-mueller"}


def test_has_nested(corpus_db: SearchDB) -> None:
    # patients with an Encounter that has an Observation with code 8480-6
    q = "_has:Encounter:patient:_has:Observation:encounter:code=8480-6"
    assert corpus_db.ids("Patient", q) == {"h-muller"}


def test_has_with_chain_inside(corpus_db: SearchDB) -> None:
    assert corpus_db.ids("Practitioner", "_has:Encounter:practitioner:subject:Patient.name=jurgen") == {
        "h-doc"
    }


def test_include(corpus_db: SearchDB) -> None:
    r = corpus_db.search("Observation", "code=8480-6&_include=Observation:patient")
    matches = {e.res_id for e in r.entries if e.mode == "match"}
    includes = {(e.res_type, e.res_id) for e in r.entries if e.mode == "include"}
    assert matches == {"h-obs1", "h-obs3", "h-obs5", "h-obs6", "h-obs7"}
    assert includes == {("Patient", "h-muller"), ("Patient", "h-mueller"), ("Patient", "h-obrien")}
    assert r.total == 5


def test_include_target_and_star(corpus_db: SearchDB) -> None:
    r = corpus_db.search("Encounter", "_id=h-enc1&_include=Encounter:participant:Practitioner")
    assert {(e.res_type, e.res_id) for e in r.entries if e.mode == "include"} == {("Practitioner", "h-doc")}
    r = corpus_db.search("Encounter", "_id=h-enc1&_include=*")
    assert {(e.res_type, e.res_id) for e in r.entries if e.mode == "include"} == {
        ("Patient", "h-muller"),
        ("Practitioner", "h-doc"),
        ("Organization", "h-org"),
    }
    r = corpus_db.search("Encounter", "_id=h-enc1&_include=Encounter:*")
    assert len([e for e in r.entries if e.mode == "include"]) == 3


def test_include_iterate(corpus_db: SearchDB) -> None:
    q = "_id=h-obs3&_include=Observation:subject&_include:iterate=Patient:organization&_include:iterate=Organization:partof"
    r = corpus_db.search("Observation", q)
    assert [(e.res_type, e.res_id, e.mode) for e in r.entries] == [
        ("Observation", "h-obs3", "match"),
        ("Patient", "h-mueller", "include"),
        ("Organization", "h-org2", "include"),
        ("Organization", "h-org", "include"),
    ]
    # without :iterate, an include must start from the searched type
    with pytest.raises(FhirError) as err:
        corpus_db.search(
            "Observation", "_id=h-obs3&_include=Observation:subject&_include=Patient:organization"
        )
    assert err.value.http_status == 400


def test_revinclude(corpus_db: SearchDB) -> None:
    r = corpus_db.search(
        "Patient", "_id=h-muller&_revinclude=Provenance:target&_revinclude=Observation:subject"
    )
    inc = {(e.res_type, e.res_id) for e in r.entries if e.mode == "include"}
    assert inc == {("Provenance", "h-prov"), ("Observation", "h-obs1"), ("Observation", "h-obs2")}
    r = corpus_db.search("Patient", "_id=h-muller&_revinclude=*")
    inc = {(e.res_type, e.res_id) for e in r.entries if e.mode == "include"}
    assert {
        ("Provenance", "h-prov"),
        ("Encounter", "h-enc1"),
        ("Patient", "h-zed"),
        ("Appointment", "h-appt1"),
    } <= inc
    assert ("Patient", "h-ghost") not in inc  # deleted resources are never included


def test_revinclude_iterate(corpus_db: SearchDB) -> None:
    q = "_id=h-org&_revinclude=Patient:organization&_revinclude:iterate=Observation:subject"
    r = corpus_db.search("Organization", q)
    inc = {(e.res_type, e.res_id) for e in r.entries if e.mode == "include"}
    assert inc == {("Patient", "h-muller"), ("Observation", "h-obs1"), ("Observation", "h-obs2")}


def test_compartment(corpus_db: SearchDB) -> None:
    assert corpus_db.ids("Observation", "", compartment=("Patient", "h-muller")) == {"h-obs1", "h-obs2"}
    assert corpus_db.ids("Observation", "code=8480-6", compartment=("Patient", "h-muller")) == {"h-obs1"}
    assert corpus_db.ids("Encounter", "", compartment=("Patient", "h-mueller")) == {"h-enc2"}
    assert corpus_db.ids("Patient", "", compartment=("Patient", "h-muller")) == {
        "h-muller",
        "h-zed",
    }  # itself, and link
    assert corpus_db.ids("Appointment", "", compartment=("Patient", "h-muller")) == {"h-appt1"}
    with pytest.raises(FhirError) as err:
        corpus_db.search("Organization", "", compartment=("Patient", "h-muller"))
    assert err.value.http_status == 400
    r = corpus_db.search("Observation", "_count=1", compartment=("Patient", "h-muller"))
    assert r.links["next"].startswith("http://hub.test/fhir/Patient/h-muller/Observation?")


def test_everything(corpus_db: SearchDB) -> None:
    with corpus_db.db.read() as conn:
        r = corpus_db.engine.everything(conn, "h-muller", [], "http://hub.test/fhir")
    matches = {(e.res_type, e.res_id) for e in r.entries if e.mode == "match"}
    assert {
        ("Patient", "h-muller"),
        ("Observation", "h-obs1"),
        ("Observation", "h-obs2"),
        ("Encounter", "h-enc1"),
        ("Appointment", "h-appt1"),
        ("Condition", "h-cond1"),
        ("Provenance", "h-prov"),
        ("QuestionnaireResponse", "h-qr1"),
        ("RiskAssessment", "h-risk1"),
        ("Patient", "h-zed"),
    } == matches
    includes = {(e.res_type, e.res_id) for e in r.entries if e.mode == "include"}
    assert includes == {("Organization", "h-org"), ("Practitioner", "h-doc")}
    assert r.total == len(matches)


def test_everything_paging_and_filters(corpus_db: SearchDB) -> None:
    base = "http://hub.test/fhir"
    seen: list[str] = []
    with corpus_db.db.read() as conn:
        params = [("_type", "Observation,Encounter,Patient"), ("_count", "2")]
        r = corpus_db.engine.everything(conn, "h-muller", params, base)
        while True:
            seen.extend(f"{e.res_type}/{e.res_id}" for e in r.entries if e.mode == "match")
            nxt = r.links.get("next")
            if not nxt:
                break
            assert "/Patient/h-muller/$everything?" in nxt
            cursor = nxt.split("_cursor=")[1]
            r = corpus_db.engine.everything(conn, "h-muller", [*params, ("_cursor", cursor)], base)
        assert sorted(seen) == sorted(
            [
                "Patient/h-muller",
                "Patient/h-zed",
                "Observation/h-obs1",
                "Observation/h-obs2",
                "Encounter/h-enc1",
            ]
        )
        assert len(seen) == len(set(seen))
        r = corpus_db.engine.everything(conn, "h-muller", [("_since", "2999-01-01")], base)
        assert r.entries == []
        r = corpus_db.engine.everything(conn, "h-muller", [("_type", "Observation"), ("_count", "1")], base)
        assert len([e for e in r.entries if e.mode == "match"]) == 1 and "next" in r.links
        with pytest.raises(FhirError) as err:
            corpus_db.engine.everything(conn, "nobody", [], base)
        assert err.value.http_status == 404
