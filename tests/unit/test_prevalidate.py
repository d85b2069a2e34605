"""Transaction entries validated before the write transaction (``transaction.prevalidate``) answer exactly as
planning would: the invalid entry located, nothing written; a conditional create that matches is still answered
without validating its body; an unauthorized client learns nothing from validation."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from hub.app import Hub
from hub.interactions.request import FhirRequest, FhirResponse
from hub.security.scopes import Permissions, Principal
from hub.store.tables import resource_t

BASE = "http://hub.test/fhir"


def post(hub: Hub, bundle: dict[str, Any], principal: Principal | None = None) -> FhirResponse:
    req = FhirRequest("POST", "", [], {}, bundle, BASE)
    if principal is not None:
        req.principal = principal
    return hub.router.dispatch(req)


def count(hub: Hub) -> int:
    with hub.ctx.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(resource_t)).scalar_one())


def tx(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_an_invalid_entry_is_located_and_nothing_is_written(hub: Hub) -> None:
    r = post(hub, tx(
        {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "p2", "gender": "robot"}, "request": {"method": "PUT", "url": "Patient/p2"}},
    ))
    assert r.status == 422, r.body
    outcome = orjson.loads(r.body or b"{}")
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("Bundle.entry[1].resource.gender" in x for i in outcome["issue"] for x in i.get("expression", [])), outcome
    assert count(hub) == 0


def test_a_matching_conditional_create_is_not_validated(hub: Hub) -> None:
    ok = post(hub, tx({"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "1"}]},
                       "request": {"method": "POST", "url": "Patient"}}))
    assert ok.status == 200
    again = post(hub, tx({"resource": {"resourceType": "Patient", "gender": "robot"},
                          "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:s|1"}}))
    assert again.status == 200, again.body  # matched: answered with the existing Patient, as the spec says
    assert orjson.loads(again.body or b"{}")["entry"][0]["response"]["status"].startswith("200")
    assert count(hub) == 1


def test_no_validation_answer_without_the_right_to_write(hub: Hub) -> None:
    reader = Principal("reader", Permissions.from_scopes("system/Patient.rs"), None)
    r = post(hub, tx({"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}}),
             reader)
    assert r.status == 403, r.body
    assert count(hub) == 0
