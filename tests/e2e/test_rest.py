"""End to end: the real server process, driven by a real FHIR client (fhirpy), on SQLite and PostgreSQL."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from tests.server import HubProcess


@pytest.fixture
def client(hub_server: HubProcess) -> SyncFHIRClient:
    return SyncFHIRClient(hub_server.base)


def follow(client: SyncFHIRClient, base: str, url: str) -> dict:
    parts = urlsplit(url)
    path = parts.path[len(urlsplit(base).path) :].lstrip("/")
    return client.execute(path, method="get", params=dict(parse_qsl(parts.query)))


def test_crud_vread_and_history_paging(client: SyncFHIRClient, hub_server: HubProcess) -> None:
    patient = client.resource("Patient", name=[{"family": "Testperson", "given": ["Ada"]}], gender="female")
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"

    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Testperson"

    for n in range(2, 6):
        patient["birthDate"] = f"19{70 + n}-01-01"
        patient.save()
        assert patient["meta"]["versionId"] == str(n)

    v2 = client.execute(f"Patient/{patient.id}/_history/2", method="get")
    assert v2["birthDate"] == "1972-01-01" and v2["meta"]["versionId"] == "2"

    page = client.execute(f"Patient/{patient.id}/_history", method="get", params={"_count": 2})
    versions = []
    pages = 0
    while True:
        pages += 1
        assert page["type"] == "history"
        versions += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
        nxt = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        if not nxt:
            break
        page = follow(client, hub_server.base, nxt[0])
    assert versions == ["5", "4", "3", "2", "1"]
    assert pages == 3

    type_history = client.execute("Patient/_history", method="get", params={"_count": 100})
    assert sum(1 for e in type_history["entry"] if e["resource"]["id"] == patient.id) == 5


def test_json_patch(client: SyncFHIRClient) -> None:
    patient = client.resource("Patient", name=[{"family": "Patchme"}], active=True)
    patient.save()
    patched = client.execute(
        f"Patient/{patient.id}",
        method="patch",
        data=[{"op": "replace", "path": "/active", "value": False}, {"op": "add", "path": "/gender", "value": "other"}],
    )
    assert patched["active"] is False and patched["gender"] == "other"
    assert patched["meta"]["versionId"] == "2"
    # a patch that cannot apply changes nothing
    with pytest.raises(OperationOutcome):
        client.execute(f"Patient/{patient.id}", method="patch", data=[{"op": "remove", "path": "/nothing/here"}])
    assert client.reference("Patient", patient.id).to_resource()["meta"]["versionId"] == "2"
    # fhirpy's own patch() sends a JSON Merge Patch object
    client.patch("Patient", patient.id, active=True)
    assert client.reference("Patient", patient.id).to_resource()["active"] is True


def test_if_match_conflict_changes_nothing(client: SyncFHIRClient, hub_server: HubProcess) -> None:
    patient = client.resource("Patient", name=[{"family": "Versioned"}])
    patient.save()
    patient["gender"] = "male"
    patient.save()  # now version 2
    stale = SyncFHIRClient(hub_server.base, extra_headers={"If-Match": 'W/"1"'})
    copy = stale.resource("Patient", id=patient.id, name=[{"family": "Stale"}])
    with pytest.raises(MultipleResourcesFound):  # fhirpy's exception for 412
        copy.save()
    current = client.reference("Patient", patient.id).to_resource()
    assert current["meta"]["versionId"] == "2" and current["name"][0]["family"] == "Versioned"
    raw = httpx.put(
        f"{hub_server.base}/Patient/{patient.id}",
        json={"resourceType": "Patient", "id": patient.id},
        headers={"If-Match": 'W/"1"', "Content-Type": "application/fhir+json"},
    )
    assert raw.status_code == 412 and raw.json()["resourceType"] == "OperationOutcome"


def test_delete_then_gone(client: SyncFHIRClient, hub_server: HubProcess) -> None:
    patient = client.resource("Patient", name=[{"family": "Shortlived"}])
    patient.save()
    patient.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", patient.id).to_resource()
    raw = httpx.get(f"{hub_server.base}/Patient/{patient.id}")
    assert raw.status_code == 410
    assert raw.json()["issue"][0]["code"] == "deleted"
    # the tombstone is a version; earlier versions stay readable
    assert httpx.get(f"{hub_server.base}/Patient/{patient.id}/_history/1").status_code == 200
    assert httpx.get(f"{hub_server.base}/Patient/{patient.id}/_history/2").status_code == 410
    assert httpx.get(f"{hub_server.base}/Patient/does-not-exist").status_code == 404


def test_transaction_resolves_urn_uuid_references(client: SyncFHIRClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": {"resourceType": "Patient", "name": [{"family": "Bundled"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
                "resource": {
                    "resourceType": "Appointment",
                    "status": "booked",
                    "start": "2026-12-08T09:00:00Z",
                    "end": "2026-12-08T09:20:00Z",
                    "participant": [
                        {"actor": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}, "status": "accepted"}
                    ],
                },
                "request": {"method": "POST", "url": "Appointment"},
            },
        ],
    }
    response = client.execute("", method="post", data=bundle)
    assert response["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    patient_loc, appt_loc = (e["response"]["location"] for e in response["entry"])
    patient_id = patient_loc.split("/")[1]
    appointment = client.execute("/".join(appt_loc.split("/")[:2]), method="get")
    assert appointment["participant"][0]["actor"]["reference"] == f"Patient/{patient_id}"


def test_transaction_is_all_or_nothing(client: SyncFHIRClient, hub_server: HubProcess) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "Neverstored"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    raw = httpx.post(hub_server.base, json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert raw.status_code == 422
    outcome = raw.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("Bundle.entry[1]" in e for i in outcome["issue"] for e in i.get("expression", []))
    found = httpx.get(f"{hub_server.base}/Patient", params={"family": "Neverstored", "_summary": "count"}).json()
    assert found["total"] == 0  # the valid first entry was not kept either


def test_batch_with_one_failing_entry(client: SyncFHIRClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "Batched"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/no-such-patient"}},
            {"resource": {"resourceType": "Patient", "name": [{"family": "Batched2"}]}, "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    response = client.execute("", method="post", data=bundle)
    assert response["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("404") and statuses[2].startswith("201")
    assert response["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    created = response["entry"][2]["response"]["location"].split("/")[1]
    assert client.reference("Patient", created).to_resource()["name"][0]["family"] == "Batched2"


def test_malformed_json_and_invalid_resource(client: SyncFHIRClient, hub_server: HubProcess) -> None:
    raw = httpx.post(f"{hub_server.base}/Patient", content=b'{"resourceType": "Patient", ', headers={"Content-Type": "application/fhir+json"})
    assert raw.status_code == 400
    assert raw.json()["resourceType"] == "OperationOutcome"

    with pytest.raises(OperationOutcome) as info:
        client.resource("Patient", gender="robot", birthDate="yesterday").save()
    issues = info.value.resource["issue"]
    expressions = {e for i in issues for e in i.get("expression", [])}
    assert "Patient.gender" in expressions and "Patient.birthDate" in expressions

    raw = httpx.post(f"{hub_server.base}/Patient", json={"resourceType": "Patient", "unknownThing": 1}, headers={"Content-Type": "application/fhir+json"})
    assert raw.status_code == 422


def test_formats_and_errors(hub_server: HubProcess) -> None:
    base = hub_server.base
    assert httpx.get(f"{base}/metadata", headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert httpx.get(f"{base}/metadata", params={"_format": "xml"}).status_code == 406
    r = httpx.post(f"{base}/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"
    assert httpx.get(f"{base}/NotAType/1").status_code == 404
    assert httpx.delete(f"{base}/metadata").status_code == 405
    pretty = httpx.get(f"{base}/metadata", params={"_pretty": "true"})
    assert pretty.status_code == 200 and b'\n  "resourceType"' in pretty.content
    assert pretty.headers["content-type"].startswith("application/fhir+json")
    cap = httpx.get(f"{base}/metadata").json()
    assert cap["fhirVersion"] == "4.0.1"
    assert {"Patient", "Appointment", "Claim", "QuestionnaireResponse"} <= {r["type"] for r in cap["rest"][0]["resource"]}


def test_prefer_return_and_summary_on_read(hub_server: HubProcess) -> None:
    base = hub_server.base
    r = httpx.post(
        f"{base}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Minimal"}], "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}},
        headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"},
    )
    assert r.status_code == 201 and r.content == b""
    assert r.headers["ETag"] == 'W/"1"' and "/_history/1" in r.headers["Location"]
    assert "Last-Modified" in r.headers
    location = r.headers["Location"].split("/_history")[0]
    oo = httpx.put(
        location,
        json={"resourceType": "Patient", "id": location.rsplit("/", 1)[1], "active": True},
        headers={"Content-Type": "application/fhir+json", "Prefer": "return=OperationOutcome"},
    )
    assert oo.status_code == 200 and oo.json()["resourceType"] == "OperationOutcome"
    data = httpx.get(location, params={"_summary": "data"}).json()
    assert "text" not in data and any(t["code"] == "SUBSETTED" for t in data["meta"]["tag"])
    elements = httpx.get(location, params={"_elements": "active"}).json()
    assert elements["active"] is True and "name" not in elements
