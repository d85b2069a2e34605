"""find() for conditional operations, matches() for subscriptions (same AST), capability()."""

from __future__ import annotations

import copy
import urllib.parse
from typing import Any

import pytest

from hub.errors import FhirError
from hub.store.repository import Change
from tests.search.conftest import BASE, SearchDB
from tests.search.test_param_types import CASES


def test_find(corpus_db: SearchDB) -> None:
    with corpus_db.db.read() as conn:
        found = corpus_db.engine.find(conn, "Patient", "identifier=urn:sys:mrn|M-1")
        assert [rid for _, rid in found] == ["h-muller"]
        assert isinstance(found[0][0], int)
        assert corpus_db.engine.find(conn, "Patient", "Patient?identifier=urn:sys:mrn|M-2") == [
            (pk, "h-mueller") for pk, rid in corpus_db.engine.find(conn, "Patient", "_id=h-mueller")
        ]
        assert [r for _, r in corpus_db.engine.find(conn, "Patient", "family=mu")] == [
            "h-muller",
            "h-mueller",
        ]
        assert corpus_db.engine.find(conn, "Patient", "identifier=urn:sys:mrn|nobody") == []
        assert corpus_db.engine.find(conn, "Patient", "name=ghost") == []  # deleted
        for bad in ["foo=bar", "", "_count=5", "birthdate=tomorrow", "identifier=a|b|c"]:
            with pytest.raises(FhirError) as err:
                corpus_db.engine.find(conn, "Patient", bad)
            assert err.value.http_status == 400, bad


def test_find_sees_its_own_transaction(empty_db: SearchDB) -> None:
    """Conditional references in a transaction resolve against what the same transaction wrote."""
    with empty_db.db.write() as conn:
        empty_db.repo.write(
            conn,
            Change(
                "Patient",
                "t1",
                {"resourceType": "Patient", "identifier": [{"system": "s", "value": "v"}]},
                "PUT",
            ),
        )
        assert [r for _, r in empty_db.engine.find(conn, "Patient", "identifier=s|v")] == ["t1"]
    with empty_db.db.write() as conn:
        empty_db.repo.write(
            conn,
            Change(
                "Patient",
                "t1",
                {"resourceType": "Patient", "identifier": [{"system": "s", "value": "w"}]},
                "PUT",
            ),
        )
        assert empty_db.engine.find(conn, "Patient", "identifier=s|v") == []  # the index follows updates
        empty_db.repo.write(conn, Change("Patient", "t1", None, "DELETE"))
        assert empty_db.engine.find(conn, "Patient", "identifier=s|w") == []


@pytest.mark.parametrize(("res_type", "query", "code", "pred"), CASES, ids=[f"{c[0]}?{c[1]}" for c in CASES])
def test_matches_agrees_with_the_database(
    corpus_db: SearchDB, corpus: list[dict[str, Any]], res_type: str, query: str, code: str, pred: Any
) -> None:
    db_ids = corpus_db.ids(res_type, query)
    with corpus_db.db.read() as conn:
        stored = {
            rid: corpus_db.repo.read(conn, res_type, rid)
            for rid in [r["id"] for r in corpus if r["resourceType"] == res_type]
        }
    q = urllib.parse.urlencode(urllib.parse.parse_qsl(query))
    mem_ids = {
        rid
        for rid, s in stored.items()
        if s is not None and corpus_db.engine.matches(s.resource(), res_type, q, BASE)
    }
    assert mem_ids == db_ids


def test_matches_more(engine: Any, corpus: list[dict[str, Any]]) -> None:
    obs2 = copy.deepcopy(next(r for r in corpus if r["id"] == "h-obs2"))
    assert engine.matches(obs2, "Observation", "component-code-value-quantity=8480-6$130")
    assert not engine.matches(obs2, "Observation", "component-code-value-quantity=8462-4$130")
    assert engine.matches(obs2, "Observation", "code:text=bp")
    assert engine.matches(obs2, "Observation", "_id=h-obs2&status=final")
    assert not engine.matches(obs2, "Patient", "_id=h-obs2")  # wrong type
    assert engine.matches(obs2, "Observation", "value-quantity:missing=true")
    obs2["meta"] = {"lastUpdated": "2021-03-05T10:00:00.000Z"}
    assert engine.matches(obs2, "Observation", "_lastUpdated=ge2021-03-05")
    assert not engine.matches(obs2, "Observation", "_lastUpdated=lt2021-03-05")
    for unsupported in ["subject:Patient.name=x", "_has:Provenance:target:agent=x"]:
        with pytest.raises(FhirError) as err:
            engine.matches(obs2, "Observation", unsupported)
        assert err.value.http_status == 400
    with pytest.raises(FhirError):
        engine.check_criteria("Observation", "subject.name=x")
    engine.check_criteria("Observation", "code=8480-6&value-quantity=gt100")


def test_capability(engine: Any) -> None:
    caps = {c["name"]: c for c in engine.capability("Patient")}
    assert {
        "name",
        "birthdate",
        "identifier",
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
    } <= set(caps)
    assert "_text" not in caps and "_content" not in caps
    assert caps["name"]["type"] == "string" and ":exact" in caps["name"]["documentation"]
    assert caps["name"]["definition"] == "http://hl7.org/fhir/SearchParameter/individual-given".replace(
        "given", "family"
    ).replace("individual-family", "Patient-name")
    assert "ge" in caps["birthdate"]["documentation"]
    obs = {c["name"]: c for c in engine.capability("Observation")}
    assert obs["code-value-quantity"]["type"] == "composite"
    assert ":Patient" not in obs["subject"]["documentation"] and ":[type]" in obs["subject"]["documentation"]
    for t in ["Appointment", "Encounter", "Organization"]:
        assert engine.capability(t)
