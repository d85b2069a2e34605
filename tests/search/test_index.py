"""Index rows follow the resource: written in the same transaction, replaced on update, dropped on delete."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from hub.search.tables import INDEX_TABLES, reference_t, token_t
from hub.store.repository import Change
from tests.search.conftest import SearchDB


def _rows(db: SearchDB) -> int:
    with db.db.read() as conn:
        return sum(int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in INDEX_TABLES)


def _obs(code: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


def test_update_and_delete(empty_db: SearchDB) -> None:
    db = empty_db
    with db.db.write() as conn:
        db.repo.write(conn, Change("Observation", "o1", _obs("1-1", "a"), "PUT"))
    assert db.ids("Observation", "code=1-1") == {"o1"}
    n = _rows(db)
    with db.db.write() as conn:
        db.repo.write(conn, Change("Observation", "o1", _obs("2-2", "b"), "PUT"))
    assert db.ids("Observation", "code=1-1") == set()
    assert db.ids("Observation", "code=2-2&subject=Patient/b") == {"o1"}
    assert _rows(db) == n  # replaced, not added
    with db.db.write() as conn:
        db.repo.write(conn, Change("Observation", "o1", None, "DELETE"))
    assert db.ids("Observation", "code=2-2") == set()
    assert db.ids("Observation", "_id=o1") == set()
    assert _rows(db) == 0
    with db.db.write() as conn:  # re-created after delete
        db.repo.write(conn, Change("Observation", "o1", _obs("3-3", "c"), "PUT"))
    assert db.ids("Observation", "code=3-3") == {"o1"}


def test_rollback_leaves_no_rows(empty_db: SearchDB) -> None:
    db = empty_db
    with pytest.raises(RuntimeError), db.db.write() as conn:
        db.repo.write(conn, Change("Observation", "o1", _obs("1-1", "a"), "PUT"))
        raise RuntimeError("abort")
    assert _rows(db) == 0 and db.ids("Observation", "code=1-1") == set()


def test_rows_for_a_resource(engine: Any) -> None:
    rows = engine.indexer.extract(
        {
            "resourceType": "Observation",
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}],
                "text": "SBP",
            },
            "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:mrn", "value": "7"}},
            "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        }
    )
    refs = rows[reference_t]
    assert {(r["target_type"], r["target_id"]) for r in refs} == {("Patient", "p1")}
    assert all(
        set(r) == {"hash_identity", "grp", "target_type", "target_id"} for r in refs
    )  # no resource_pk yet
    codes = {(r["system"], r["code"]) for r in rows[token_t]}
    assert (
        ("http://loinc.org", "8480-6") in codes and ("urn:mrn", "7") in codes and (None, "final") not in codes
    )
