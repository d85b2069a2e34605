"""Two real hub processes: one plays the EHR (its own database, auth ON), the other is the clinic's hub
with a fhir-rest connector to it (SMART Backend Services, ES384 assertion).

In order, on SQLite and on PostgreSQL:

* a patient created on the EHR appears in the hub after one pull; one the hub already had (same
  identifier) is matched, not duplicated;
* an appointment booked in the hub appears on the EHR, referring to the EHR's patient;
* 10 sync cycles later nothing has ping-ponged: same versions, same counts, on both sides;
* a rest-hook notification makes the hub fetch the named resource at once;
* the hub SIGKILLed mid-pull resumes without duplicates or gaps;
* with the EHR down, pushes wait, then deliver once it is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.security import assertion as smart
from tests.conftest import DIALECTS, fresh_database
from tests.server import ROOT, HubProcess, free_port, running_hub

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
MRN = "urn:mrn"
LINK = "urn:fhirhub:connector:ehr"
HOOK_TOKEN = "hook-token-for-tests"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@dataclass
class Pair:
    workdir: Path
    ehr_db: str
    hub_db: str
    ehr_port: int
    stack: contextlib.ExitStack
    ehr: HubProcess | None = None
    hub: HubProcess | None = None
    ehr_headers: dict[str, str] = field(default_factory=dict)

    # -------------------------------------------------------------- processes
    def start_ehr(self) -> None:
        empty = self.workdir / "no-connectors"
        empty.mkdir(exist_ok=True)
        env = {"FHIRHUB_AUTH": "on", "FHIRHUB_RATE_LIMIT": "0", "FHIRHUB_CONNECTORS_DIR": str(empty),
               "FHIRHUB_SYNC_CONNECTORS_DIR": str(empty), "FHIRHUB_SUBSCRIPTIONS": "off"}
        self.ehr = self.stack.enter_context(running_hub(self.ehr_db, self.workdir, env, port=self.ehr_port))

    def start_hub(self) -> None:
        empty = self.workdir / "no-connectors"
        env = {"FHIRHUB_AUTH": "off", "FHIRHUB_CONNECTORS_DIR": str(empty),
               "FHIRHUB_SYNC_CONNECTORS_DIR": str(self.workdir / "connectors"), "FHIRHUB_SUBSCRIPTIONS": "off",
               "TEST_EHR_HOOK_TOKEN": HOOK_TOKEN}
        self.hub = self.stack.enter_context(running_hub(self.hub_db, self.workdir, env))

    @property
    def root(self) -> str:
        assert self.hub is not None
        return self.hub.base.rsplit("/fhir", 1)[0]

    # -------------------------------------------------------------- the EHR, as its users
    def ehr_token(self) -> None:
        key = smart.generate_key("ES384")
        (self.workdir / "ehr-admin.jwks.json").write_text(json.dumps(smart.public_jwks(key, "k1", "ES384")))
        register(self.ehr_db, self.workdir / "ehr-admin.jwks.json", "ehr-staff", "system/*.cruds")
        assert self.ehr is not None
        url = self.ehr.base.rsplit("/fhir", 1)[0] + "/auth/token"
        r = httpx.post(url, data=smart.token_request("ehr-staff", url, key, "ES384", "k1", "system/*.cruds"))
        assert r.status_code == 200, r.text
        self.ehr_headers = {"Authorization": f"Bearer {r.json()['access_token']}", "Content-Type": "application/fhir+json"}

    def on_ehr(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        assert self.ehr is not None
        r = httpx.request(method, f"{self.ehr.base}/{path}", headers=self.ehr_headers, json=body, params=params, timeout=60)
        assert r.status_code < 300, r.text
        return r.json()

    def on_hub(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        assert self.hub is not None
        r = httpx.request(method, f"{self.hub.base}/{path}", json=body, params=params, timeout=60,
                          headers={"Content-Type": "application/fhir+json"})
        assert r.status_code < 300, r.text
        return r.json()

    def admin(self, method: str, path: str, **params: str) -> Any:
        r = httpx.request(method, f"{self.root}/admin/connectors/ehr{path}", params=params, timeout=300)
        assert r.status_code < 300, r.text
        return r.json()

    def pull(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self.admin("POST", "/pull")["pull"]
        assert all(r["error"] is None for r in results), results
        return results


def register(db_url: str, jwks: Path, client_id: str, scopes: str) -> None:
    subprocess.run([sys.executable, "-m", "hub", "clients", "add", "--name", client_id, "--jwks", str(jwks),
                    "--scopes", scopes, "--client-id", client_id], cwd=ROOT,
                   env={**os.environ, "FHIRHUB_DATABASE_URL": db_url}, capture_output=True, text=True, check=True)


def write_connector(pair: Pair, key_path: Path) -> None:
    folder = pair.workdir / "connectors"
    folder.mkdir(exist_ok=True)
    (folder / "fhir-ehr.yaml").write_text(f"""\
kind: fhir-rest
name: ehr
description: the EHR of the integration test (a second hub, auth on)
base_url: http://127.0.0.1:{pair.ehr_port}/fhir
auth:
  method: smart-backend
  client_id: clinic-hub
  private_key: {{file: {key_path}}}
  alg: ES384
  kid: k1
  scopes: system/Patient.cruds system/Appointment.cruds
pull:
  types: [Patient, Appointment]
  page_size: 10
  schedule: {{every: 1h}}
push:
  types: [Appointment]
  poll: 0.5
conflict: remote-wins
match:
  Patient: [{MRN}]
http:
  attempts: 3
  max_wait: 2
  timeout: 20
notifications:
  token: {{env: TEST_EHR_HOOK_TOKEN}}
""")


@pytest.fixture(scope="module", params=DIALECTS)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir = tmp_path_factory.mktemp(f"two-hubs-{request.param}")
    with contextlib.ExitStack() as stack:
        ehr_db = stack.enter_context(fresh_database(request.param, workdir / "ehr"))
        (workdir / "ehr").mkdir(exist_ok=True)
        hub_dir = workdir / "hub"
        hub_dir.mkdir()
        hub_db = stack.enter_context(fresh_database(request.param, hub_dir))
        p = Pair(workdir, ehr_db, hub_db, free_port(), stack)
        p.start_ehr()
        p.ehr_token()
        key = smart.generate_key("ES384")
        key_path = workdir / "clinic-hub.pem"
        key_path.write_bytes(smart.private_pem(key))
        (workdir / "clinic-hub.jwks.json").write_text(json.dumps(smart.public_jwks(key, "k1", "ES384")))
        register(ehr_db, workdir / "clinic-hub.jwks.json", "clinic-hub", "system/Patient.cruds system/Appointment.cruds")
        write_connector(p, key_path)
        p.start_hub()
        yield p


def patient(mrn: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}], "name": [{"family": family, "given": ["Avery"]}],
            "birthDate": "1984-03-02"}


def local_patients(pair: Pair, mrn: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in pair.on_hub("GET", "Patient", identifier=f"{MRN}|{mrn}").get("entry") or []]


def test_a_patient_created_on_the_ehr_appears_after_one_pull(pair: Pair) -> None:
    created = pair.on_ehr("POST", "Patient", patient("A1", "Sampleton"))
    pair.pull()
    (found,) = local_patients(pair, "A1")
    assert found["name"][0]["family"] == "Sampleton"
    assert found["meta"]["source"] == "urn:fhirhub:connector:ehr"
    assert found["id"] != created["id"]


def test_a_patient_the_hub_already_had_is_matched_not_duplicated(pair: Pair) -> None:
    mine = pair.on_hub("POST", "Patient", patient("A2", "Testori"))
    pair.on_ehr("POST", "Patient", patient("A2", "Testori-Ehr"))
    pair.pull()
    (found,) = local_patients(pair, "A2")
    assert found["id"] == mine["id"]
    assert found["name"][0]["family"] == "Testori-Ehr"


def test_an_appointment_booked_in_the_hub_appears_on_the_ehr(pair: Pair) -> None:
    (local_patient,) = local_patients(pair, "A1")
    (ehr_patient,) = [e["resource"] for e in pair.on_ehr("GET", "Patient", identifier=f"{MRN}|A1")["entry"]]
    booked = pair.on_hub("POST", "Appointment", {
        "resourceType": "Appointment", "status": "booked", "start": "2026-12-08T10:00:00Z", "end": "2026-12-08T10:30:00Z",
        "participant": [{"actor": {"reference": f"Patient/{local_patient['id']}"}, "status": "accepted"}]})
    found = wait_for("the appointment on the EHR", lambda: pair.on_ehr("GET", "Appointment", identifier=f"{LINK}|{booked['id']}").get("entry"))
    (remote,) = [e["resource"] for e in found]
    assert remote["participant"][0]["actor"]["reference"] == f"Patient/{ehr_patient['id']}"
    assert remote["start"] == "2026-12-08T10:00:00Z"


def _versions(pair: Pair, side: Callable[..., Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for res_type in ("Patient", "Appointment"):
        bundle = side("GET", res_type, _count="1000")
        out[res_type] = sorted((e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in bundle.get("entry") or [])
    return out


def test_ten_sync_cycles_later_nothing_has_ping_ponged(pair: Pair) -> None:
    wait_for("push idle", lambda: pair.admin("GET", "")["pushPending"] == 0)
    before_hub, before_ehr = _versions(pair, pair.on_hub), _versions(pair, pair.on_ehr)
    for _ in range(10):
        pair.pull()
        assert pair.admin("POST", "/push")["push"]["pushed"] == 0
    assert _versions(pair, pair.on_hub) == before_hub
    assert _versions(pair, pair.on_ehr) == before_ehr
    status = pair.admin("GET", "")
    assert status["deadLetters"]["dead"] == 0 and status["pushPending"] == 0


def test_a_rest_hook_notification_fetches_the_resource_at_once(pair: Pair) -> None:
    created = pair.on_ehr("POST", "Patient", patient("N1", "Hooked"))
    r = httpx.post(f"{pair.root}/sync/ehr/notify", json={"resourceType": "Patient", "id": created["id"]})
    assert r.status_code == 401
    r = httpx.post(f"{pair.root}/sync/ehr/notify", headers={"Authorization": f"Bearer {HOOK_TOKEN}"},
                   json={"resourceType": "Patient", "id": created["id"]})
    assert r.status_code == 202, r.text
    wait_for("the notified patient", lambda: local_patients(pair, "N1"), timeout=30)


def test_the_hub_killed_mid_pull_resumes_without_duplicates_or_gaps(pair: Pair) -> None:
    total = 400
    for k in range(0, total, 100):  # transactions: 100 patients share one lastUpdated on the EHR
        pair.on_ehr("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(f"K{i:04d}", "Kill"), "request": {"method": "POST", "url": "Patient"}} for i in range(k, k + 100)]})
    count_before = pair.on_hub("GET", "Patient", _summary="count")["total"]

    def pull() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{pair.root}/admin/connectors/ehr/pull", params={"type": "Patient"}, timeout=300)

    puller = threading.Thread(target=pull, daemon=True)
    puller.start()
    seen = wait_for("a pull under way", lambda: (lambda n: n if count_before + 15 <= n < count_before + total else 0)(
        pair.on_hub("GET", "Patient", _summary="count")["total"]), timeout=60, every=0.02)
    assert pair.hub is not None
    pair.hub.kill()
    puller.join(30)
    pair.start_hub()  # same database: the scheduled pull at start resumes from the saved watermark
    pair.pull()
    counts = Counter(
        i["value"] for e in pair.on_hub("GET", "Patient", _count="1000", family="Kill").get("entry") or []
        for i in e["resource"]["identifier"] if i["system"] == MRN)
    assert len(counts) == total, f"gap: {total - len(counts)} missing (killed at {seen - count_before})"
    assert set(counts.values()) == {1}, "duplicates"


def test_with_the_ehr_down_pushes_wait_and_then_deliver(pair: Pair) -> None:
    assert pair.ehr is not None
    pair.ehr.kill()
    (local_patient,) = local_patients(pair, "A1")
    booked = pair.on_hub("POST", "Appointment", {
        "resourceType": "Appointment", "status": "booked", "start": "2026-12-09T09:00:00Z", "end": "2026-12-09T09:30:00Z",
        "participant": [{"actor": {"reference": f"Patient/{local_patient['id']}"}, "status": "accepted"}]})
    waiting = wait_for("the push to fail", lambda: (lambda s: s if s["push"][0]["lastError"] else None)(pair.admin("GET", "")))
    assert waiting["pushPending"] >= 1 and waiting["deadLetters"]["dead"] == 0
    pair.start_ehr()  # same port, same database
    found = wait_for("the delivery once the EHR is back",
                     lambda: pair.on_ehr("GET", "Appointment", identifier=f"{LINK}|{booked['id']}").get("entry"), timeout=90)
    assert len(found) == 1
    wait_for("push idle", lambda: pair.admin("GET", "")["pushPending"] == 0)
    assert pair.admin("GET", "")["deadLetters"]["dead"] == 0
