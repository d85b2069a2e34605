"""Two PostgreSQL transactions conditionally creating the same resource at once create it once.

Under read committed neither transaction sees the other's uncommitted row: without a lock both
look-ups find nothing and both create, and every later look-up by that identifier answers 412.
The test holds both transactions right after their first look-up (both found nothing), then lets
them go on: the conditional look-up's lock makes the second wait for the first's commit and find
its row. (SQLite has one writer, so the race cannot happen there; this test is PostgreSQL's.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from hub.app import Content, Hub, build_hub
from hub.interactions import conditional
from hub.interactions.request import FhirRequest
from hub.settings import Settings
from hub.store.schema import upgrade
from tests.conftest import fresh_postgres_schema

BASE = "http://hub.test/fhir"
SYSTEM = "urn:oid:1.2.3.4"


@pytest.fixture
def pg_hub(content: Content) -> Iterator[Hub]:
    with fresh_postgres_schema() as url:
        hub = build_hub(Settings(database_url=url), content=content)
        upgrade(hub.ctx.db)
        yield hub
        hub.close()


def _held_after_first_lookup(monkeypatch: pytest.MonkeyPatch) -> threading.Barrier:
    barrier = threading.Barrier(2, timeout=20)
    first = threading.local()
    original = conditional._lookup

    def lookup(*args: Any) -> list[str]:
        ids = original(*args)
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait()  # both transactions have looked and found nothing
        return ids

    monkeypatch.setattr(conditional, "_lookup", lookup)
    return barrier


def test_two_conditional_creates_at_once_create_one_resource(pg_hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    _held_after_first_lookup(monkeypatch)
    body = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": "MRN-race"}], "active": True}
    headers = {"if-none-exist": f"identifier={SYSTEM}|MRN-race"}

    def create() -> int:
        return pg_hub.router.dispatch(FhirRequest("POST", "Patient", [], headers, dict(body), BASE)).status

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(lambda _: create(), range(2)))
    assert statuses == [200, 201]  # one created, the other found it
    found = pg_hub.router.dispatch(FhirRequest("GET", "Patient", [("identifier", f"{SYSTEM}|MRN-race")], {}, None, BASE))
    assert orjson.loads(found.body or b"")["total"] == 1


def test_two_transactions_naming_the_same_new_practitioner_create_it_once(
        pg_hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    _held_after_first_lookup(monkeypatch)

    def bundle(n: int) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:8f0c1d2e-0000-4000-8000-00000000000a", "resource": {
                "resourceType": "Practitioner", "identifier": [{"system": SYSTEM, "value": "NPI-race"}]},
             "request": {"method": "PUT", "url": f"Practitioner?identifier={SYSTEM}|NPI-race"}},
            {"resource": {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": f"P{n}"}],
                          "generalPractitioner": [{"reference": "urn:uuid:8f0c1d2e-0000-4000-8000-00000000000a"}]},
             "request": {"method": "POST", "url": "Patient"}},
        ]}

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda n: pg_hub.router.dispatch(FhirRequest("POST", "", [], {}, bundle(n), BASE)),
                                  range(2)))
    assert [r.status for r in responses] == [200, 200]
    found = pg_hub.router.dispatch(FhirRequest("GET", "Practitioner", [("identifier", f"{SYSTEM}|NPI-race")], {}, None, BASE))
    assert orjson.loads(found.body or b"")["total"] == 1
