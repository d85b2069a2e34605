"""No PHI in logs at INFO and above; limits answer with a clear OperationOutcome; the rate limit answers 429."""

from __future__ import annotations

import time

import httpx

from hub.api.auth import RateLimiter
from tests.security.conftest import SecuredHub

NAME_GIVEN, NAME_FAMILY, BIRTH, PHONE = "Quenelda", "Wobblethorpe", "1931-07-23", "555-0199-4242"


def test_no_phi_in_logs(secured_hub: SecuredHub) -> None:
    app = secured_hub.client("system/*.cruds")
    patient = {"resourceType": "Patient", "name": [{"family": NAME_FAMILY, "given": [NAME_GIVEN]}], "birthDate": BIRTH,
               "telecom": [{"system": "phone", "value": PHONE}]}
    created = app.post("/Patient", json=patient)
    assert created.status_code == 201
    pid = created.json()["id"]
    # failures of every kind, each carrying the same PHI
    assert app.post("/Patient", json={**patient, "birthDate": f"{BIRTH}x"}).status_code == 422
    assert app.post("/Patient", content=f'{{"resourceType":"Patient","name":[{{"family":"{NAME_FAMILY}"'.encode()).status_code == 400
    assert app.put(f"/Patient/{pid}", json={**patient, "id": "other"}).status_code == 400
    assert app.get("/Patient", params={"name": NAME_FAMILY}).status_code == 200
    assert app.get("/Patient", params={"birthdate": f"ge{BIRTH}x"}).status_code == 400
    assert app.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**patient, "gender": NAME_GIVEN}, "request": {"method": "POST", "url": "Patient"}}]}).status_code == 422
    assert httpx.get(f"{secured_hub.hub.base}/Patient", params={"name": NAME_FAMILY},
                     headers={"Authorization": f"Bearer {NAME_FAMILY}"}).status_code == 401
    time.sleep(0.5)
    log = secured_hub.hub.log()
    assert "serving FHIR R4" in log  # the log is really being captured
    for secret in (NAME_GIVEN, NAME_FAMILY, BIRTH, PHONE):
        assert secret not in log, f"PHI '{secret}' leaked into the server log"


def test_body_and_bundle_limits(secured_hub: SecuredHub) -> None:
    app = secured_hub.client("system/*.cruds")
    huge = app.post("/Patient", content=b'{"resourceType":"Patient","text":"' + b"x" * (17 * 1024 * 1024) + b'"}')
    assert huge.status_code == 413 and huge.json()["resourceType"] == "OperationOutcome"
    many = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "metadata"}}] * 10_001}
    r = app.post("", json=many)
    assert r.status_code == 413 and "10000" in r.json()["issue"][0]["diagnostics"]


def test_rate_limiter_buckets() -> None:
    limiter = RateLimiter(rate=5, burst=3)
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.check("a")
    assert 0 < wait <= 0.2 + 1e-9
    assert limiter.check("b") == 0.0  # clients are isolated
    time.sleep(wait + 0.01)
    assert limiter.check("a") == 0.0
    assert RateLimiter(rate=0, burst=1).check("a") == 0.0
