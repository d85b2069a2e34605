"""Scopes × resource types × interactions: each cell answers 403, or succeeds with results filtered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from hub.app import Content, Hub, build_hub
from hub.interactions.request import FhirRequest, FhirResponse
from hub.security.scopes import Permissions, Principal
from hub.settings import Settings
from hub.store.schema import upgrade

BASE = "http://hub.test/fhir"
TYPES = ["Patient", "Appointment", "Claim"]
SCOPES = {
    "all-v2": "system/*.cruds",
    "patient-read-search": "system/Patient.rs",
    "appointment-create-update": "system/Appointment.cu",
    "v1-read": "system/*.read",
    "v1-write": "system/*.write",
    "claim-delete": "system/Claim.d",
    "nothing": "fhirhub/audit",
}
INTERACTIONS = {  # interaction -> (SMART letter it needs, how to call it)
    "create": "c", "read": "r", "vread": "r", "history-instance": "r",
    "update": "u", "patch": "u", "search-type": "s", "history-type": "s", "delete": "d",
}
SEED: dict[str, dict[str, Any]] = {
    "Patient": {"resourceType": "Patient", "id": "p1", "active": True},
    "Appointment": {"resourceType": "Appointment", "id": "a1", "status": "booked",
                    "start": "2026-12-08T09:00:00Z", "end": "2026-12-08T09:20:00Z",
                    "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}]},
    "Claim": {"resourceType": "Claim", "id": "c1", "status": "active", "use": "claim", "created": "2026-01-01",
              "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
              "patient": {"reference": "Patient/p1"}, "provider": {"display": "Clinic"},
              "priority": {"coding": [{"code": "normal"}]},
              "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Plan"}}]},
}


@pytest.fixture
def hub(db_url: str, content: Content) -> Iterator[Hub]:
    h = build_hub(Settings(database_url=db_url), content=content)
    upgrade(h.ctx.db)
    for res in SEED.values():
        assert call(h, Principal.system(), "PUT", f"{res['resourceType']}/{res['id']}", res).status == 201
    yield h
    h.close()


def call(hub: Hub, principal: Principal, method: str, path: str, body: Any = None, params: list[tuple[str, str]] | None = None) -> FhirResponse:
    headers = {"content-type": "application/json-patch+json"} if method == "PATCH" else {}
    return hub.router.dispatch(FhirRequest(method, path, params or [], headers, body, BASE, principal=principal))


def run(hub: Hub, principal: Principal, interaction: str, res_type: str) -> FhirResponse:
    seed = SEED[res_type]
    rid = seed["id"]
    if interaction == "create":
        return call(hub, principal, "POST", res_type, {k: v for k, v in seed.items() if k != "id"})
    if interaction == "read":
        return call(hub, principal, "GET", f"{res_type}/{rid}")
    if interaction == "vread":
        return call(hub, principal, "GET", f"{res_type}/{rid}/_history/1")
    if interaction == "history-instance":
        return call(hub, principal, "GET", f"{res_type}/{rid}/_history")
    if interaction == "history-type":
        return call(hub, principal, "GET", f"{res_type}/_history")
    if interaction == "update":
        return call(hub, principal, "PUT", f"{res_type}/{rid}", {**seed, "meta": {"tag": [{"code": "touched"}]}})
    if interaction == "patch":
        return call(hub, principal, "PATCH", f"{res_type}/{rid}", [{"op": "add", "path": "/language", "value": "en"}])
    if interaction == "search-type":
        return call(hub, principal, "GET", res_type, params=[("_id", rid)])
    if interaction == "delete":
        return call(hub, principal, "DELETE", f"{res_type}/{rid}")
    raise AssertionError(interaction)


@pytest.mark.parametrize("scope_name", sorted(SCOPES))
def test_scope_matrix(hub: Hub, scope_name: str) -> None:
    perms = Permissions.from_scopes(SCOPES[scope_name])
    principal = Principal(f"client-{scope_name}", perms)
    cells = 0
    for res_type in TYPES:
        for interaction, letter in INTERACTIONS.items():
            response = run(hub, principal, interaction, res_type)
            allowed = perms.allows(res_type, letter)
            if allowed:
                assert response.status < 400, (scope_name, res_type, interaction, response.status, response.body)
            else:
                assert response.status == 403, (scope_name, res_type, interaction, response.status)
                assert b"FHIRHUB-AUTH-SCOPE" in (response.body or b"")
            cells += 1
            if interaction == "delete" and allowed:  # put it back for the next cells
                call(hub, Principal.system(), "PUT", f"{res_type}/{SEED[res_type]['id']}", SEED[res_type])
    assert cells == len(TYPES) * len(INTERACTIONS)


def _types_in(response: FhirResponse) -> list[tuple[str, str]]:
    bundle = orjson.loads(response.body or b"{}")
    return [(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle.get("entry", [])]


def test_include_and_revinclude_are_filtered(hub: Hub) -> None:
    only_appointments = Principal("a", Permissions.from_scopes("system/Appointment.rs"))
    both = Principal("b", Permissions.from_scopes("system/Appointment.rs system/Patient.r"))
    params = [("_include", "Appointment:patient")]
    assert _types_in(call(hub, only_appointments, "GET", "Appointment", params=params)) == [("Appointment", "match")]
    assert sorted(_types_in(call(hub, both, "GET", "Appointment", params=params))) == [("Appointment", "match"), ("Patient", "include")]
    patients = Principal("p", Permissions.from_scopes("system/Patient.rs"))
    rev = call(hub, patients, "GET", "Patient", params=[("_id", "p1"), ("_revinclude", "Appointment:patient"), ("_revinclude", "Claim:patient")])
    assert _types_in(rev) == [("Patient", "match")]


def test_system_search_and_history_are_filtered(hub: Hub) -> None:
    patients = Principal("p", Permissions.from_scopes("system/Patient.rs"))
    history = orjson.loads(call(hub, patients, "GET", "_history").body or b"{}")
    assert {e["resource"]["resourceType"] for e in history["entry"]} == {"Patient"}
    found = call(hub, patients, "GET", "", params=[("_type", "Patient,Claim")])
    assert {t for t, _ in _types_in(found)} == {"Patient"}


def test_transaction_entries_are_checked_and_nothing_is_written(hub: Hub) -> None:
    principal = Principal("t", Permissions.from_scopes("system/Patient.cruds"))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "active": False}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {k: v for k, v in SEED["Claim"].items() if k != "id"}, "request": {"method": "POST", "url": "Claim"}},
    ]}
    before = orjson.loads(call(hub, Principal.system(), "GET", "_history").body or b"{}")
    r = call(hub, principal, "POST", "", bundle)
    assert r.status == 403 and b"Bundle.entry[1]" in (r.body or b"")
    after = orjson.loads(call(hub, Principal.system(), "GET", "_history").body or b"{}")
    assert len(after["entry"]) == len(before["entry"])
    batch = {**bundle, "type": "batch"}
    out = orjson.loads(call(hub, principal, "POST", "", batch).body or b"{}")
    assert [e["response"]["status"][:3] for e in out["entry"]] == ["201", "403"]


def test_subscriptions_only_for_readable_types(hub: Hub) -> None:
    principal = Principal("s", Permissions.from_scopes("system/Subscription.cruds system/Appointment.rs"))
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "sync", "criteria": "Patient?active=true",
           "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"}}
    denied = call(hub, principal, "POST", "Subscription", sub)
    assert denied.status == 403 and b"Patient" in (denied.body or b"")
    allowed = call(hub, principal, "POST", "Subscription", {**sub, "criteria": "Appointment?status=booked"})
    assert allowed.status == 201
    sid = orjson.loads(allowed.body or b"")["id"]
    # and it cannot be widened afterwards by an update or a patch
    assert call(hub, principal, "PUT", f"Subscription/{sid}", {**sub, "id": sid}).status == 403
    assert call(hub, principal, "PATCH", f"Subscription/{sid}",
                [{"op": "replace", "path": "/criteria", "value": "Claim?status=active"}]).status == 403
