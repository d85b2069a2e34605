"""The per-client rate limit over HTTP, against the real server: 429, an OperationOutcome, Retry-After, audited."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import DIALECTS, fresh_database
from tests.security.conftest import SecuredHub
from tests.server import running_hub

RATE, BURST = 2, 5  # requests per second per client, and the burst above it


@pytest.fixture(scope="module", params=DIALECTS)
def limited_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredHub]:
    workdir = tmp_path_factory.mktemp(f"rate-limited-{request.param}")
    env = {"FHIRHUB_AUTH": "on", "FHIRHUB_RATE_LIMIT": str(RATE), "FHIRHUB_RATE_BURST": str(BURST)}
    with fresh_database(request.param, workdir) as url, running_hub(url, workdir, env) as hub:
        secured = SecuredHub(hub, url, workdir)
        yield secured
        secured.close()


def test_a_client_over_its_rate_gets_429_and_others_do_not(limited_hub: SecuredHub) -> None:
    greedy_id, greedy_key = limited_hub.register("system/Patient.rs")
    greedy = httpx.Client(base_url=limited_hub.hub.base, headers={
        "Authorization": f"Bearer {limited_hub.token(greedy_id, greedy_key, 'system/Patient.rs')}"})
    limited_hub.clients.append(greedy)
    other = limited_hub.client("system/Patient.rs")
    auditor = limited_hub.client("fhirhub/audit")

    statuses = []
    throttled: httpx.Response | None = None
    for _ in range(BURST + 20):  # the burst, then at most a few more refilled at RATE per second
        r = greedy.get("/Patient", params={"_count": "1"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            throttled = r
            break
    assert throttled is not None, f"no 429 after {len(statuses)} requests: {statuses}"
    assert all(s == 200 for s in statuses[:-1]) and len(statuses) > BURST, statuses

    outcome = throttled.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "throttled"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "FHIRHUB-RATE-LIMIT"
    retry_after = throttled.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and 1 <= int(retry_after) <= 60, retry_after
    assert throttled.headers["content-type"].startswith("application/fhir+json")

    # the limit is per client: another client's requests still pass while the first is throttled
    assert greedy.get("/Patient", params={"_count": "1"}).status_code == 429
    assert other.get("/Patient", params={"_count": "1"}).status_code == 200

    # after Retry-After the throttled client is served again
    time.sleep(int(retry_after))
    assert greedy.get("/Patient", params={"_count": "1"}).status_code == 200

    # the refusal is in the audit trail, under the client that was throttled
    deadline = time.monotonic() + 10
    events: list[dict] = []
    while time.monotonic() < deadline:
        page = auditor.get("/AuditEvent", params={"outcome": "4", "subtype": "authorize", "agent": greedy_id})
        if page.status_code == 200:
            events = [e["resource"] for e in page.json().get("entry", [])]
            if any(e.get("outcomeDesc") == "FHIRHUB-RATE-LIMIT" for e in events):
                break
        time.sleep(0.6)  # the auditor is rate-limited too
    assert any(e.get("outcomeDesc") == "FHIRHUB-RATE-LIMIT" for e in events), events
