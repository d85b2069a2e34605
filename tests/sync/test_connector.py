"""The fhir-rest connector against a fake EHR behind respx, with the real local hub on each database.

Covers the token flow (signed assertion, expiry and refresh, a rejected client), paging and the
watermark, 429 with Retry-After, 5xx and timeouts, 412 under each conflict policy, dead letters and
replay, matching by identifier, and no echo.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import orjson
import pytest

from hub.sync import store
from tests.sync.conftest import Env
from tests.sync.fake_ehr import TOKEN_URL, FakeEhr, outcome, status, timeout

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


def patient(mrn: str, family: str = "Sampleton", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}], "name": [{"family": family}], **extra}


def appointment(patient_ref: str, start: str = "2026-12-08T10:00:00Z", status_: str = "booked") -> dict[str, Any]:
    return {"resourceType": "Appointment", "status": status_, "start": start, "end": start.replace(":00:00Z", ":30:00Z"),
            "participant": [{"actor": {"reference": patient_ref}, "status": "accepted"}]}


def dead(env: Env) -> list[store.DeadLetter]:
    with env.hub.ctx.db.read() as conn:
        return store.dead_letters(conn, "ehr")


def link(env: Env, res_type: str, local_id: str) -> store.Link | None:
    with env.hub.ctx.db.read() as conn:
        return store.links_by_local(conn, "ehr", res_type, [local_id]).get(local_id)


# ================================================================================ tokens
@pytest.mark.parametrize("alg", ["ES384", "RS384"])
async def test_token_is_a_signed_assertion_cached_until_shortly_before_expiry(make_env: Any, ehr: FakeEhr, alg: str) -> None:
    env: Env = make_env(alg)
    ehr.put(patient("1"))
    await env.connector.pull("Patient")
    await env.connector.pull("Appointment")
    assert len(ehr.token_forms) == 1, "one token for several calls"
    form = ehr.token_forms[0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert form["scope"] == "system/Patient.cruds system/Appointment.cruds"
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header["alg"] == alg and header["kid"] == "k1"
    claims = jwt.decode(form["client_assertion"], env.key.public_key(), algorithms=[alg], audience=TOKEN_URL,
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == claims["sub"] == "clinic-hub"
    assert 0 < claims["exp"] - claims["iat"] <= 300 and claims["jti"]
    # still valid 30 s (the leeway) before expiry: cached; past that: a new assertion, a new token
    env.clock.now += ehr.token_ttl - 31
    await env.connector.pull("Patient")
    assert len(ehr.token_forms) == 1
    env.clock.now += 2
    await env.connector.pull("Patient")
    assert len(ehr.token_forms) == 2
    assert ehr.token_forms[1]["client_assertion"] != form["client_assertion"]
    assert ehr.calls("GET", "Patient")[-1].headers["authorization"] == "Bearer t2"


async def test_a_rejected_client_is_reported_not_hammered(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    ehr.token_error = (401, {"error": "invalid_client", "error_description": "unknown or revoked client"})
    result = await env.connector.pull("Patient")
    assert result.error == "FHIRHUB-SYNC-AUTH"
    assert len(ehr.token_forms) == 1, "a refused client is not retried"
    assert not ehr.calls("GET", "Patient")
    with env.hub.ctx.db.read() as conn:
        state = store.get_state(conn, "ehr", "Patient", "pull")
    assert state.errors == 1 and "invalid_client" in (state.last_error or "")
    assert "BEGIN" not in (state.last_error or "") and "PRIVATE" not in (state.last_error or "")


async def test_a_401_from_the_fhir_server_fetches_a_new_token_once(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    ehr.put(patient("1"))
    ehr.fail("GET", "/fhir/Patient", status(401))
    result = await env.connector.pull("Patient")
    assert result.error is None and result.written == 1
    assert len(ehr.token_forms) == 2


# ================================================================================ paging, watermark
async def test_paging_follows_next_links_and_resumes_from_the_watermark(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    for i in range(12):
        ehr.put(patient(f"m{i}"))
    for i in range(12, 25):  # 13 resources with ONE lastUpdated, across a page boundary
        ehr.put(patient(f"m{i}"), same_instant=True)
    ehr.fail("GET", "/fhir/Patient", ehr.serve)  # page 1 as usual …
    ehr.fail("GET", "/fhir/Patient", status(400))  # … then page 2 is refused: the pull stops there
    first = await env.connector.pull("Patient")
    assert first.error == "FHIRHUB-SYNC-REMOTE-REFUSED" and first.pages == 1
    assert len(env.search("Patient")) == 10
    with env.hub.ctx.db.read() as conn:
        mark = store.get_state(conn, "ehr", "Patient", "pull").watermark
    # saved after page 1: the newest instant below the page's last one (which may go on in page 2)
    assert mark == ehr.all("Patient")[8]["meta"]["lastUpdated"]
    before = len(ehr.requests)
    second = await env.connector.pull("Patient")
    assert second.error is None
    assert ehr.requests[before].url.params["_lastUpdated"] == f"gt{mark}"
    got = env.search("Patient")
    assert sorted(p["identifier"][0]["value"] for p in got) == sorted(f"m{i}" for i in range(25)), "no gap, no duplicate"
    assert all(p["meta"]["source"] == "urn:fhirhub:connector:ehr" for p in got)
    # a third pull fetches nothing new and writes nothing
    third = await env.connector.pull("Patient")
    assert third.written == 0


async def test_history_mode_resumes_from_the_saved_next_link(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env(pull={"types": ["Patient"], "mode": "history"})
    for i in range(25):
        ehr.put(patient(f"h{i}"))
    ehr.fail("GET", "/fhir/Patient/_history", ehr.serve)
    ehr.fail("GET", "/fhir/Patient/_history", status(400))
    first = await env.connector.pull("Patient")
    assert first.pages == 1 and first.error is not None
    with env.hub.ctx.db.read() as conn:
        state = store.get_state(conn, "ehr", "Patient", "pull")
    assert state.next_url is not None and "_page=10" in state.next_url and state.watermark is None
    second = await env.connector.pull("Patient")
    assert second.error is None and second.fetched == 15
    assert ehr.requests[-2].url.params["_page"] == "10", "resumed from the saved next link"
    assert sorted(p["identifier"][0]["value"] for p in env.search("Patient")) == sorted(f"h{i}" for i in range(25))
    with env.hub.ctx.db.read() as conn:
        state = store.get_state(conn, "ehr", "Patient", "pull")
    newest = max(p["meta"]["lastUpdated"] for p in ehr.all("Patient"))
    assert state.next_url is None and state.watermark == newest
    ehr.put(patient("h-new"))
    third = await env.connector.pull("Patient")
    assert ehr.requests[-1].url.params["_since"] == newest and third.written == 1


async def test_a_pulled_appointment_refers_to_the_local_patient(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    p = ehr.put(patient("7"))
    ehr.put({**appointment(f"Patient/{p['id']}"), "participant": [
        {"actor": {"reference": f"Patient/{p['id']}"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/doc-1"}, "status": "accepted"}]})
    result = await env.connector.pull("Appointment")
    assert result.written == 2, "the Appointment, and its Patient fetched on demand"
    (appt,) = env.search("Appointment")
    local_patient = env.search("Patient", "identifier=urn:mrn|7")
    assert len(local_patient) == 1
    refs = [x["actor"]["reference"] for x in appt["participant"]]
    assert refs == [f"Patient/{local_patient[0]['id']}", "https://ehr.test/fhir/Practitioner/doc-1"]


# ================================================================================ retries
async def test_429_waits_what_retry_after_says(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    ehr.put(patient("1"))
    ehr.fail("GET", "/fhir/Patient", status(429, {"Retry-After": "7"}), status(429, {"Retry-After": "2"}))
    result = await env.connector.pull("Patient")
    assert result.error is None and result.written == 1
    assert env.sleeps == [7.0, 2.0]


async def test_retry_after_is_capped(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    ehr.fail("GET", "/fhir/Patient", status(503, {"Retry-After": "3600"}))
    await env.connector.pull("Patient")
    assert env.sleeps == [30.0]


async def test_5xx_and_timeouts_are_retried_with_backoff(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    ehr.put(patient("1"))
    ehr.fail("GET", "/fhir/Patient", status(503), timeout(), status(502))
    result = await env.connector.pull("Patient")
    assert result.error is None and result.written == 1
    assert len(env.sleeps) == 3 and all(0 < s <= 30 for s in env.sleeps)


async def test_a_remote_that_stays_down_makes_pushes_wait_then_deliver(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    p = ehr.put(patient("1"))
    await env.connector.pull("Patient")
    (local_patient,) = env.search("Patient")
    env.write("POST", "Appointment", appointment(f"Patient/{local_patient['id']}"))
    for _ in range(4):
        ehr.fail("POST", "/fhir/Appointment", status(503))
    down = await env.connector.push()
    assert down.blocked == "FHIRHUB-SYNC-REMOTE-UNAVAILABLE" and down.pushed == 0
    assert not dead(env) and not ehr.all("Appointment")
    up = await env.connector.push()
    assert up.pushed == 1
    (remote,) = ehr.all("Appointment")
    assert remote["participant"][0]["actor"]["reference"] == f"Patient/{p['id']}"
    again = await env.connector.push()
    assert again.pushed == 0 and len(ehr.all("Appointment")) == 1


# ================================================================================ conflicts
async def _linked_patient(env: Env, ehr: FakeEhr) -> tuple[dict[str, Any], dict[str, Any]]:
    remote = ehr.put(patient("42", "Original"))
    await env.connector.pull("Patient")
    (local,) = env.search("Patient", "identifier=urn:mrn|42")
    return remote, local


@pytest.mark.parametrize("policy", ["remote-wins", "local-wins", "manual"])
async def test_412_follows_the_conflict_policy(make_env: Any, ehr: FakeEhr, policy: str) -> None:
    env: Env = make_env(conflict=policy)
    remote, local = await _linked_patient(env, ehr)
    ehr.put({**remote, "name": [{"family": "ChangedThere"}]})  # the EHR changes it …
    env.write("PUT", f"Patient/{local['id']}", {**local, "name": [{"family": "ChangedHere"}]})  # … and so does the hub
    result = await env.connector.push()
    assert result.conflicts == 1
    assert any(r.headers.get("if-match") == 'W/"1"' for r in ehr.calls("PUT", "Patient"))
    here = env.read("Patient", local["id"])
    there = ehr.get("Patient", remote["id"])
    assert here is not None and there is not None
    if policy == "remote-wins":
        assert here["name"][0]["family"] == "ChangedThere" and there["name"][0]["family"] == "ChangedThere"
        assert not dead(env)
    elif policy == "local-wins":
        assert here["name"][0]["family"] == "ChangedHere" and there["name"][0]["family"] == "ChangedHere"
        assert not dead(env)
    else:
        assert here["name"][0]["family"] == "ChangedHere" and there["name"][0]["family"] == "ChangedThere"
        (letter,) = dead(env)
        assert letter.code == "FHIRHUB-SYNC-CONFLICT" and letter.http_status == 412
        assert letter.outcome == outcome("conflict", 'version conflict: W/"1" is not the current version')
        # an operator decides: replay it with local-wins
        with env.hub.ctx.db.write() as conn:
            assert store.request_replay(conn, "ehr", [letter.pk or 0], "local-wins") == 1
        replay = await env.connector.push()
        assert replay.pushed == 1
        assert ehr.get("Patient", remote["id"])["name"][0]["family"] == "ChangedHere"  # type: ignore[index]
        assert not dead(env)
    # and it stays quiet afterwards: nothing more to push or pull
    assert (await env.connector.push()).pushed == 0
    assert (await env.connector.pull("Patient")).written == 0


async def test_a_change_on_both_sides_seen_by_the_pull_under_manual_is_dead_lettered(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env(conflict="manual", push={"types": ["Appointment"]})
    remote, local = await _linked_patient(env, ehr)
    ehr.put({**remote, "name": [{"family": "ChangedThere"}]})
    env.write("PUT", f"Patient/{local['id']}", {**local, "name": [{"family": "ChangedHere"}]})
    result = await env.connector.pull("Patient")
    assert result.conflicts == 1 and result.written == 0
    (letter,) = dead(env)
    assert letter.direction == "pull" and letter.code == "FHIRHUB-SYNC-CONFLICT"
    assert env.read("Patient", local["id"])["name"][0]["family"] == "ChangedHere"  # type: ignore[index]


# ================================================================================ dead letters, replay
async def test_a_refused_push_is_dead_lettered_and_replayable(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    remote, local = await _linked_patient(env, ehr)
    env.write("POST", "Appointment", appointment(f"Patient/{local['id']}"))
    ehr.fail("POST", "/fhir/Appointment", lambda r: httpx.Response(422, json=outcome("invariant", "app-3 failed")))
    result = await env.connector.push()
    assert result.dead == 1
    (letter,) = dead(env)
    assert letter.http_status == 422 and letter.outcome == outcome("invariant", "app-3 failed")
    assert (await env.connector.push()).pushed == 0, "a dead letter is not retried by itself"
    with env.hub.ctx.db.write() as conn:
        store.request_replay(conn, "ehr", None)
    replayed = await env.connector.push()
    assert replayed.pushed == 1 and not dead(env)
    (appt,) = ehr.all("Appointment")
    assert appt["participant"][0]["actor"]["reference"] == f"Patient/{remote['id']}"


async def test_a_reference_the_remote_cannot_resolve_is_dead_lettered(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env(push={"types": ["Appointment"]})
    env.write("PUT", "Patient/here-only", patient("9"))
    env.write("POST", "Appointment", appointment("Patient/here-only"))
    result = await env.connector.push()
    assert result.dead == 1 and not ehr.all("Appointment")
    assert dead(env)[0].code == "FHIRHUB-SYNC-UNRESOLVED-REFERENCE"
    assert "here-only" not in dead(env)[0].reason


# ================================================================================ matching, echo
async def test_a_patient_the_hub_already_has_is_matched_by_identifier(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    env.write("PUT", "Patient/front-desk-1", patient("1001", "Local"))
    remote = ehr.put(patient("1001", "FromEhr"))
    result = await env.connector.pull("Patient")
    assert result.written == 1
    found = env.search("Patient", "identifier=urn:mrn|1001")
    assert [p["id"] for p in found] == ["front-desk-1"]
    assert found[0]["name"][0]["family"] == "FromEhr"
    assert link(env, "Patient", "front-desk-1") == store.Link("Patient", "front-desk-1", remote["id"], "1", 2)


async def test_two_local_matches_are_dead_lettered_not_guessed(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    env.write("PUT", "Patient/a", patient("5"))
    env.write("PUT", "Patient/b", patient("5"))
    ehr.put(patient("5"))
    result = await env.connector.pull("Patient")
    assert result.dead == 1 and result.written == 0
    assert dead(env)[0].code == "FHIRHUB-SYNC-AMBIGUOUS-MATCH"


async def test_no_echo_and_no_ping_pong(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    p = ehr.put(patient("1"))
    await env.connector.pull("Patient")
    (local_patient,) = env.search("Patient")
    created = env.write("POST", "Appointment", appointment(f"Patient/{local_patient['id']}"))
    appt_id = orjson.loads(created.body or b"{}")["id"]
    first = await env.connector.push()
    assert first.pushed == 1, "the pulled Patient (origin sync:ehr) is not pushed back"
    assert not ehr.calls("PUT", "Patient") and not ehr.calls("POST", "Patient")
    (remote_appt,) = ehr.all("Appointment")
    assert remote_appt["identifier"] == [{"system": "urn:fhirhub:connector:ehr", "value": appt_id}]
    for _ in range(5):
        await env.connector.pull("Patient")
        await env.connector.pull("Appointment")
        await env.connector.push()
    assert env.read("Appointment", appt_id)["meta"]["versionId"] == "1"  # type: ignore[index]
    assert env.read("Patient", local_patient["id"])["meta"]["versionId"] == "1"  # type: ignore[index]
    assert ehr.get("Appointment", remote_appt["id"])["meta"]["versionId"] == "1"  # type: ignore[index]
    assert ehr.get("Patient", p["id"])["meta"]["versionId"] == "1"  # type: ignore[index]
    assert len(env.search("Appointment")) == 1 and len(ehr.all("Appointment")) == 1
    # a push create that landed but whose answer was lost is matched by the link identifier, not duplicated
    env.write("PUT", f"Appointment/{appt_id}", {**env.read("Appointment", appt_id), "status": "arrived"})  # type: ignore[dict-item]
    assert (await env.connector.push()).pushed == 1
    assert ehr.get("Appointment", remote_appt["id"])["status"] == "arrived"  # type: ignore[index]


async def test_a_push_create_retried_after_a_lost_answer_is_not_duplicated(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env(push={"types": ["Patient"]}, pull={"types": ["Patient"]})
    env.write("PUT", "Patient/new-here", patient("77"))
    def lost(request: httpx.Request) -> httpx.Response:
        ehr.serve(request)  # the EHR creates it …
        raise httpx.ReadTimeout("answer lost", request=request)  # … but the answer never arrives

    ehr.fail("POST", "/fhir/Patient", lost)
    result = await env.connector.push()
    assert result.pushed == 1
    assert len(ehr.all("Patient")) == 1
    assert ehr.calls("POST", "Patient")[-1].headers["if-none-exist"] == "identifier=urn%3Amrn%7C77"


# ================================================================================ audit
async def test_every_outbound_call_is_audited(make_env: Any, ehr: FakeEhr) -> None:
    env: Env = make_env()
    ehr.put(patient("1"))
    await env.connector.pull("Patient")
    audit = env.hub.ctx.audit
    assert audit is not None
    audit.flush_now()

    from hub.security.audit import stored_events
    from hub.security.tables import audit_t

    with env.hub.ctx.db.read() as conn:
        rows = stored_events(conn, audit_t.c.subtype == "sync")
    assert len(rows) == len(ehr.requests)
    assert {r.client_id for r in rows} == {"sync:ehr"}
    assert all(b"PRIVATE KEY" not in r.resource() and b"client_assertion" not in r.resource() for r in rows)
