"""Every interaction of an end-to-end scenario leaves an AuditEvent; none can be changed or deleted."""

from __future__ import annotations

import base64
import time

import httpx

from tests.security.conftest import SecuredHub


def test_every_interaction_is_audited_and_the_trail_is_append_only(secured_hub: SecuredHub) -> None:
    app = secured_hub.client("system/*.cruds")
    auditor = secured_hub.client("fhirhub/audit")
    base = secured_hub.hub.base

    created = app.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Audited"}]})
    assert created.status_code == 201
    pid = created.json()["id"]
    steps = {
        "read": app.get(f"/Patient/{pid}"),
        "vread": app.get(f"/Patient/{pid}/_history/1"),
        "update": app.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True}),
        "patch": app.patch(f"/Patient/{pid}", json=[{"op": "replace", "path": "/active", "value": False}],
                           headers={"Content-Type": "application/json-patch+json"}),
        "history-instance": app.get(f"/Patient/{pid}/_history"),
        "history-type": app.get("/Patient/_history"),
        "search-type": app.get("/Patient", params={"_id": pid}),
        "transaction": app.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "active": True}, "request": {"method": "POST", "url": "Patient"}}]}),
        "delete": app.delete(f"/Patient/{pid}"),
    }
    for name, response in steps.items():
        assert response.status_code < 300, (name, response.status_code, response.text)
    failed_read = app.get("/Patient/not-there")
    assert failed_read.status_code == 404
    no_token = httpx.get(f"{base}/Patient/{pid}")
    assert no_token.status_code == 401

    wanted = set(steps) | {"create", "read", "authorize"}
    deadline = time.monotonic() + 10
    seen: dict[str, list[dict]] = {}
    while time.monotonic() < deadline:
        page = auditor.get("/AuditEvent", params={"_count": "500"})
        assert page.status_code == 200, page.text
        seen = {}
        for entry in page.json().get("entry", []):
            event = entry["resource"]
            seen.setdefault(event["subtype"][0]["code"], []).append(event)
        if wanted <= set(seen):
            break
        time.sleep(0.2)  # reads are audited in batches
    assert wanted <= set(seen), f"missing audit events for {wanted - set(seen)}"

    # who, what, when, where from, outcome
    read_event = next(e for e in seen["read"] if e["outcome"] == "0")
    assert read_event["agent"][0]["who"]["identifier"]["value"]
    assert read_event["agent"][0]["network"]["address"] == "127.0.0.1"
    assert read_event["entity"][0]["what"]["reference"] == f"Patient/{pid}"
    assert read_event["recorded"]
    assert any(e["outcome"] == "4" for e in seen["read"]), "the failed read is recorded"
    # the auditor's own searches of the trail are search-type events too (the newest come first)
    queries = [base64.b64decode(e["entity"][-1]["query"]).decode() for e in seen["search-type"]]
    assert f"Patient?_id={pid}" in queries, queries
    assert any(e["outcome"] == "4" for e in seen["authorize"]), "the request without a token is recorded"
    update_event = seen["update"][0]
    assert update_event["entity"][0]["what"]["reference"] == f"Patient/{pid}/_history/2"

    # append-only: nobody can change or delete the trail over the API, not even the auditor or an all-powerful client
    event_id = read_event["id"]
    for client in (app, auditor):
        assert client.delete(f"/AuditEvent/{event_id}").status_code in (403, 405)
        assert client.put(f"/AuditEvent/{event_id}", json={**read_event, "outcome": "0"}).status_code in (403, 405)
        assert client.post("/AuditEvent", json=read_event).status_code in (403, 405)
        assert client.patch(f"/AuditEvent/{event_id}", json=[{"op": "remove", "path": "/entity"}],
                            headers={"Content-Type": "application/json-patch+json"}).status_code in (403, 405)
    assert auditor.get(f"/AuditEvent/{event_id}").json()["entity"] == read_event["entity"]
    # the audit scope is needed to read the trail
    assert app.get("/AuditEvent").status_code == 403
