"""Synthea bundles loaded in order with conditional create and conditional references resolved by
``engine.find`` in the writing transaction; then searches over them, checked against the oracle.

The loader here is a minimal stand-in for the transaction processor (it only needs what Synthea
uses: POST with ``ifNoneExist``, ``urn:uuid`` and ``Type?identifier=`` references).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.search.engine import SearchEngine
from hub.store.repository import Change
from tests.conftest import DIALECTS, fresh_database
from tests.search import oracle as o
from tests.search.conftest import SearchDB, open_db

SYNTHEA = Path(__file__).resolve().parents[2] / "tests" / "data" / "synthea"
FILES = [
    "0-hospitalInformation1625911868739.json",
    "0-practitionerInformation1625911868739.json",
    "8a4c9c04-1524-9f1c-d65b-9b17e4520fef.json",
    "6c8f3e83-c351-ed33-c38d-6be101c275d2.json",
]


def _rewrite(node: Any, fn: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (fn(v) if k == "reference" and isinstance(v, str) else _rewrite(v, fn))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(x, fn) for x in node]
    return node


def load_bundle(db: SearchDB, bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Returns the resources as written."""
    written: list[dict[str, Any]] = []
    with db.db.write() as conn:
        full_urls = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
        }

        def resolve(ref: str) -> str:
            if ref in full_urls:
                return full_urls[ref]
            if "?" in ref:
                res_type = ref.split("?", 1)[0]
                found = db.engine.find(conn, res_type, ref)
                assert len(found) == 1, (ref, found)
                return f"{res_type}/{found[0][1]}"
            return ref

        changes = []
        for e in bundle["entry"]:
            res = e["resource"]
            cond = e["request"].get("ifNoneExist")
            if cond and db.engine.find(conn, res["resourceType"], cond):
                continue
            res = _rewrite(res, resolve)
            changes.append(Change(res["resourceType"], res["id"], res, "POST", create_only=True))
            written.append(res)
        db.repo.write_many(conn, changes)
    return written


@pytest.fixture(scope="module", params=DIALECTS)
def synthea_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, engine: SearchEngine
) -> Iterator[tuple[SearchDB, list[dict[str, Any]]]]:
    from hub.store.repository import Repository

    with fresh_database(request.param, tmp_path_factory.mktemp(f"synthea-{request.param}")) as url:
        db = open_db(url)
        try:
            sdb = SearchDB(db, engine, Repository(indexer=engine.indexer), request.param)
            resources: list[dict[str, Any]] = []
            for name in FILES:
                resources.extend(load_bundle(sdb, json.loads((SYNTHEA / name).read_bytes())))
            # loading the hospital bundle again creates nothing: every ifNoneExist matches
            assert load_bundle(sdb, json.loads((SYNTHEA / FILES[0]).read_bytes())) == []
            yield sdb, resources
        finally:
            db.dispose()


def test_counts(synthea_db: tuple[SearchDB, list[dict[str, Any]]]) -> None:
    db, resources = synthea_db
    by_type: dict[str, int] = {}
    for r in resources:
        by_type[r["resourceType"]] = by_type.get(r["resourceType"], 0) + 1
    for res_type, n in by_type.items():
        assert db.search(res_type, "_summary=count").total == n, res_type
    assert by_type["Organization"] == 194 and by_type["Practitioner"] == 195


@pytest.mark.parametrize(
    ("res_type", "query", "code", "pred"),
    [
        ("Observation", "code=http://loinc.org|8302-2", "code", o.token("http://loinc.org", "8302-2")),
        ("Observation", "value-quantity=gt100", "value-quantity", o.number_pred("gt", "100")),
        ("Observation", "date=ge2015", "date", o.date_pred("ge", "2015")),
        ("Observation", "category=laboratory", "category", o.token(None, "laboratory")),
        ("Encounter", "date=lt2000", "date", o.date_pred("lt", "2000")),
        ("Immunization", "date=ge2010-01-01", "date", o.date_pred("ge", "2010-01-01")),
        ("Organization", "name=saint", "name", o.starts("saint")),
        ("Organization", "address-city=bos", "address-city", o.starts("bos")),
        ("Practitioner", "name=ma", "name", o.starts("ma")),
        (
            "Practitioner",
            "identifier=http://hl7.org/fhir/sid/us-npi|9999982469",
            "identifier",
            o.token("http://hl7.org/fhir/sid/us-npi", "9999982469"),
        ),
        ("Claim", "use=claim", "use", o.token(None, "claim")),
    ],
)
def test_searches_against_oracle(
    synthea_db: tuple[SearchDB, list[dict[str, Any]]], res_type: str, query: str, code: str, pred: Any
) -> None:
    db, resources = synthea_db
    want = o.expected(resources, res_type, code, pred)
    r = db.search(res_type, query + "&_count=1000")
    assert {e.res_id for e in r.entries} == want
    assert r.total == len(want)


def test_references_were_resolved(synthea_db: tuple[SearchDB, list[dict[str, Any]]]) -> None:
    db, resources = synthea_db
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) == 2
    for p in patients:
        obs = o.expected(resources, "Observation", "subject", o.ref_to(f"Patient/{p['id']}"))
        assert obs and db.ids("Observation", f"patient={p['id']}&_count=1000") == obs
        # encounters point at practitioners found by conditional reference: the chain works across bundles
        enc = db.ids(
            "Encounter",
            f"subject={p['id']}&practitioner.identifier=http://hl7.org/fhir/sid/us-npi|&_count=1000",
        )
        assert enc == o.expected(resources, "Encounter", "subject", o.ref_to(f"Patient/{p['id']}"))
