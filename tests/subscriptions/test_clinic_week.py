"""A week at a clinic on a fake clock, through the four shipped practice workflows.

Patients are booked, one moves, one cancels, one does not show up, one new patient completes the
intake form; a complete and an incomplete claim are submitted and a payer partly denies one. The
test checks every Communication and Task that results, with the channel and the time it was sent.
Real parts: the shipped ``workflows/*.yaml``, an SMTP server on loopback (aiosmtpd) and a local
HTTP SMS provider; the database is SQLite or PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from hub.subscriptions.clock import parse_instant, to_instant
from hub.subscriptions.service import SubscriptionService
from tests.subscriptions.helpers import FakeClock, Mailbox, Receiver, call, make_hub, ok

TZ = "-05:00"
SUNDAY = datetime.fromisoformat("2026-12-06T08:00:00" + TZ)
KEY = "https://fhirhub.dev/workflow-key"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """Day 0 is Sunday 6 December 2026 (local time, UTC-5)."""
    return SUNDAY.replace(hour=0) + timedelta(days=day, hours=hour, minutes=minute)


def iso(dt: datetime) -> str:
    return dt.isoformat()


def patient(pid: str, family: str, given: str, telecom: list[dict[str, Any]], lang: str = "en") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}], "gender": "unknown",
            "telecom": telecom, "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": lang}]},
                                                  "preferred": True}]}


def sms(number: str) -> list[dict[str, Any]]:
    return [{"system": "phone", "value": number, "use": "mobile", "rank": 1}, {"system": "sms", "value": number, "use": "mobile", "rank": 1}]


def email(address: str) -> list[dict[str, Any]]:
    return [{"system": "email", "value": address, "use": "home"}]


def appointment(aid: str, pid: str, start: datetime, status: str = "booked") -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": aid, "status": status, "start": iso(start),
            "end": iso(start + timedelta(minutes=30)), "patientInstruction": "Please bring your insurance card.",
            "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/dr-q"}, "status": "accepted"}]}


def claim(cid: str, pid: str, diagnosis: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Claim", "id": cid, "status": "active", "use": "claim", "created": "2026-12-08",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "patient": {"reference": f"Patient/{pid}"}, "provider": {"reference": "Organization/clinic"},
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/cov-{pid}"}}],
        "item": [{"sequence": 1, "productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
                  "unitPrice": {"value": 120, "currency": "USD"}}],
    }
    if diagnosis:
        body["diagnosis"] = [{"sequence": 1, "diagnosisCodeableConcept": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]}}]
        body["item"][0]["diagnosisSequence"] = [1]
    return body


def intake_response(pid: str) -> dict[str, Any]:
    def item(link: str, **value: Any) -> dict[str, Any]:
        return {"linkId": link, "answer": [value]}

    return {"resourceType": "QuestionnaireResponse", "id": "qr-nora", "status": "completed",
            "questionnaire": "https://fhirhub.dev/Questionnaire/new-patient-intake", "subject": {"reference": f"Patient/{pid}"},
            "authored": "2026-12-09T18:00:00-05:00",
            "item": [
                {"linkId": "demographics", "item": [
                    item("given-name", valueString="Nora"), item("family-name", valueString="Neuling"),
                    item("birth-date", valueDate="1990-04-02"),
                    item("gender", valueCoding={"system": "http://hl7.org/fhir/administrative-gender", "code": "female"}),
                    item("preferred-language", valueCoding={"system": "urn:ietf:bcp:47", "code": "en"}),
                    {"linkId": "address", "item": [item("address-line", valueString="1 Test Road"),
                                                   item("address-city", valueString="Maplebrook"),
                                                   item("address-state", valueString="VT"),
                                                   item("address-postal-code", valueString="05999")]}]},
                {"linkId": "contact", "item": [
                    item("phone", valueString="+18025550188"), item("sms-ok", valueBoolean=True),
                    item("email", valueString="nora@example.org"),
                    item("preferred-contact", valueCoding={"system": "http://hl7.org/fhir/contact-point-system", "code": "sms"})]},
                {"linkId": "insurance", "item": [
                    item("has-insurance", valueBoolean=True),
                    item("payer-name", valueCoding={"display": "Bluebird Sample Health Plan"}),
                    item("member-id", valueString="BB-555"), item("group-number", valueString="GRP-1"),
                    item("subscriber-relationship", valueCoding={"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"})]},
            ]}


@pytest.mark.asyncio
@pytest.mark.timeout(600)
async def test_a_week_at_the_clinic(db_url: str, mailbox: Mailbox, http_receiver: Receiver) -> None:
    hub = make_hub(db_url, smtp_host="127.0.0.1", smtp_port=mailbox.port, sms_url=f"{http_receiver.url}/sms",
                   sms_token="t0ken", subscription_poll=3600.0)
    clock = FakeClock(parse_instant(iso(SUNDAY)) or 0)
    service = SubscriptionService(hub, clock, timers=False)
    assert {w.name for w in service.workflows} == {"appointment-reminders", "new-patient-intake", "intake-received",
                                                    "no-show-follow-up", "claim-check", "claim-denial"}
    await service.start()
    try:
        async def put(body: dict[str, Any]) -> None:
            await asyncio.to_thread(lambda: ok(call(hub, "PUT", f"{body['resourceType']}/{body['id']}", body)))

        async def until(when: datetime) -> None:
            """Walk the clock hour by hour (and to ``when``), letting the hub work at each step."""
            target = parse_instant(iso(when)) or 0
            while clock.now < target:
                clock.now = min(target, (clock.now // 3_600_000_000 + 1) * 3_600_000_000)
                await service.drain()

        async def change(body: dict[str, Any], **fields: Any) -> None:
            await put({**body, **fields})
            await service.drain()

        # --- Sunday 08:00: the practice, its patients (all but Nora seen before) and the week's bookings
        await put({"resourceType": "Organization", "id": "clinic", "name": "Maplebrook Family Practice"})
        await put({"resourceType": "Practitioner", "id": "dr-q", "name": [{"family": "Placeholder"}]})
        people = {
            "avery": patient("avery", "Sampleton", "Avery", sms("+18025550121") + email("avery@example.com")),
            "bruno": patient("bruno", "Testori", "Bruno", email("bruno@example.net")),
            "carmen": patient("carmen", "Ficticia", "Carmen", sms("+18025550123"), "es"),
            "dana": patient("dana", "Muster", "Dana", email("dana@example.org")),
            "eli": patient("eli", "Probe", "Eli", sms("+18025550125")),
        }
        for p in people.values():
            await put(p)
            await put({"resourceType": "Coverage", "id": f"cov-{p['id']}", "status": "active",
                       "beneficiary": {"reference": f"Patient/{p['id']}"}, "payor": [{"reference": "Organization/clinic"}]})
            await put(appointment(f"past-{p['id']}", p["id"], at(-20, 9), "fulfilled"))
        appts = {
            "avery": appointment("a-avery", "avery", at(2, 9)),  # Tue 09:00
            "bruno": appointment("a-bruno", "bruno", at(3, 10)),  # Wed 10:00
            "carmen": appointment("a-carmen", "carmen", at(3, 14)),  # Wed 14:00, moved on Monday
            "dana": appointment("a-dana", "dana", at(4, 9)),  # Thu 09:00, cancelled on Wednesday
            "eli": appointment("a-eli", "eli", at(1, 15)),  # Mon 15:00, no-show
        }
        for a in appts.values():
            await put(a)
        await service.drain()

        await until(at(1, 9))  # Monday 09:00: Carmen moves to Thursday 11:00
        await change(appts["carmen"], start=iso(at(4, 11)), end=iso(at(4, 11, 30)))
        await until(at(1, 10, 5))  # Monday 10:05: a new patient books her first visit (Friday 10:00)
        await put(patient("nora", "Neuling", "Nora", email("nora@example.org")))
        nora_appt = appointment("a-nora", "nora", at(5, 10))
        await change(nora_appt)
        await until(at(1, 16))  # Monday 16:00: Eli did not come
        await change(appts["eli"], status="noshow")
        await until(at(2, 12))  # Tuesday 12:00: two claims go out, one without a diagnosis
        await change(claim("claim-avery", "avery", diagnosis=True))
        await change(claim("claim-carmen", "carmen", diagnosis=False))
        await until(at(3, 10))  # Wednesday 10:00: Dana cancels
        await change(appts["dana"], status="cancelled")
        await until(at(3, 18))  # Wednesday 18:00: Nora sends the intake form
        await change(intake_response("nora"))
        await until(at(4, 12))  # Thursday 12:00: the payer partly denies Avery's claim
        await change({
            "resourceType": "ClaimResponse", "id": "cr-avery", "status": "active", "use": "claim", "outcome": "partial",
            "created": "2026-12-10", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
            "patient": {"reference": "Patient/avery"}, "insurer": {"reference": "Organization/clinic"},
            "request": {"reference": "Claim/claim-avery"}, "disposition": "Line 1 not covered",
            "item": [{"itemSequence": 1, "adjudication": [{
                "category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "benefit"}]},
                "reason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication-reason", "code": "ar001", "display": "Not covered"}]},
                "amount": {"value": 0, "currency": "USD"}}]}],
        })
        await until(at(6, 8))  # Saturday 08:00: the week is over

        # --- Communications: who, why, how and when
        comms = [e["resource"] for e in ok(await asyncio.to_thread(call, hub, "GET", "Communication?_count=100")).get("entry", [])]
        seen = sorted(
            (c["subject"]["reference"].split("/")[1], c["category"][0]["coding"][0]["code"], c["status"],
             c["medium"][0]["coding"][0]["code"], to_local(c["sent"]), c["about"][0]["reference"])
            for c in comms
        )
        runs_dbg = ok(await asyncio.to_thread(call, hub, "GET", "$workflow-runs?status=failed"))
        assert not runs_dbg.get("entry"), [_p(e["resource"], "error") for e in runs_dbg["entry"]]
        assert seen == sorted([
            ("avery", "reminder", "completed", "SMSWRIT", "Sun 09:00", "Appointment/a-avery"),  # 48 h before Tue 09:00
            ("eli", "reminder", "completed", "SMSWRIT", "Mon 13:00", "Appointment/a-eli"),  # 2 h (the 48 h point had passed)
            ("bruno", "reminder", "completed", "EMAILWRIT", "Mon 10:00", "Appointment/a-bruno"),
            ("nora", "instruction", "completed", "EMAILWRIT", "Mon 10:05", "Appointment/a-nora"),  # intake link at booking
            ("eli", "notification", "completed", "SMSWRIT", "Mon 16:00", "Appointment/a-eli"),  # no-show: reschedule
            ("avery", "reminder", "completed", "SMSWRIT", "Tue 07:00", "Appointment/a-avery"),
            ("dana", "reminder", "completed", "EMAILWRIT", "Tue 09:00", "Appointment/a-dana"),  # then she cancels: no 2 h one
            ("carmen", "reminder", "completed", "SMSWRIT", "Tue 11:00", "Appointment/a-carmen"),  # moved: new times only
            ("bruno", "reminder", "completed", "EMAILWRIT", "Wed 08:00", "Appointment/a-bruno"),
            ("nora", "reminder", "completed", "EMAILWRIT", "Wed 10:00", "Appointment/a-nora"),
            ("carmen", "reminder", "completed", "SMSWRIT", "Thu 09:00", "Appointment/a-carmen"),
            ("nora", "reminder", "completed", "SMSWRIT", "Fri 08:00", "Appointment/a-nora"),  # she now prefers SMS
        ])
        carmen = [c for c in comms if c["subject"]["reference"] == "Patient/carmen"]
        assert all(c["language"] == "es" and "tiene una cita" in c["payload"][0]["contentString"] for c in carmen[:1])
        assert "Thursday 10 December 2026 at 11:00" in carmen[0]["payload"][0]["contentString"]

        # the same messages reached the real channels, each once, keyed by its step
        mails = mailbox.messages
        assert sorted(m["to"] for m in mails) == sorted(["bruno@example.net"] * 2 + ["dana@example.org"] + ["nora@example.org"] * 2)
        assert len({m["message_id"] for m in mails}) == len(mails)
        assert any("new-patient form: https://portal.example.org/intake?patient=nora" in m["text"] for m in mails)
        texts = [r.json() for r in http_receiver.requests if r.path == "/sms"]
        assert sorted(t["to"] for t in texts) == sorted(["+18025550121"] * 2 + ["+18025550123"] * 2 + ["+18025550125"] * 2 + ["+18025550188"])
        assert all(r.headers["authorization"] == "Bearer t0ken" and r.headers["idempotency-key"] for r in http_receiver.requests)

        # --- Tasks
        tasks = {t["code"]["text"]: t for t in (e["resource"] for e in
                 ok(await asyncio.to_thread(call, hub, "GET", "Task?_count=100")).get("entry", []))}
        assert sorted(tasks) == ["Complete claim", "New-patient intake", "Reschedule missed appointment", "Work claim denial"]
        assert tasks["Reschedule missed appointment"]["focus"]["reference"] == "Appointment/a-eli"
        assert tasks["Reschedule missed appointment"]["for"]["reference"] == "Patient/eli"
        assert tasks["New-patient intake"]["status"] == "completed"
        assert tasks["New-patient intake"]["output"][0]["valueReference"]["reference"] == "QuestionnaireResponse/qr-nora"
        assert tasks["Complete claim"]["focus"]["reference"] == "Claim/claim-carmen"
        assert tasks["Complete claim"]["description"] == "Claim is missing: diagnosis: the claim lists no diagnosis"
        assert tasks["Work claim denial"]["focus"]["reference"] == "ClaimResponse/cr-avery"
        assert "Not covered" in tasks["Work claim denial"]["description"]
        assert all(t["identifier"][0]["system"] == KEY for t in tasks.values())

        # --- the intake updated Nora's record and created her Coverage
        nora = ok(await asyncio.to_thread(call, hub, "GET", "Patient/nora"))
        assert nora["birthDate"] == "1990-04-02" and nora["gender"] == "female"
        assert {(t["system"], t.get("rank")) for t in nora["telecom"]} == {("phone", 2), ("sms", 1), ("email", 2)}
        assert nora["address"][0]["city"] == "Maplebrook"
        covs = ok(await asyncio.to_thread(call, hub, "GET", "Coverage?beneficiary=Patient/nora"))["entry"]
        assert len(covs) == 1 and covs[0]["resource"]["subscriberId"] == "BB-555"

        # --- every run is recorded; the moved and cancelled reminders say why they stopped
        runs = ok(await asyncio.to_thread(call, hub, "GET", "$workflow-runs?_count=200"))["entry"]
        by = [(_p(r, "workflow"), _p(r, "trigger"), _p(r, "status"), _p(r, "reason")) for r in (e["resource"] for e in runs)]
        assert ("appointment-reminders", "Appointment/a-carmen/_history/1", "cancelled", "superseded by a later change") in by
        assert ("appointment-reminders", "Appointment/a-dana/_history/1", "cancelled",
                "the trigger no longer holds for the resource as it is now") in by
        assert ("new-patient-intake", "Appointment/a-avery/_history/1", "skipped", "the workflow's 'when' is false") in by
        assert not [b for b in by if b[2] in ("failed", "pending", "running")], [(b, _p(r, "error")) for b, r in zip(by, (e["resource"] for e in runs), strict=True)]
        waiting = [b for b in by if b[2] == "waiting"]
        assert waiting == [], waiting
    finally:
        await service.stop()
        hub.close()


def _p(params: dict[str, Any], name: str) -> Any:
    for p in params["parameter"]:
        if p["name"] == name:
            value = next(v for k, v in p.items() if k.startswith("value"))
            return value["reference"] if isinstance(value, dict) else value
    return None


def to_local(instant: str) -> str:
    dt = datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(SUNDAY.tzinfo)
    return f"{dt:%a %H:%M}"


__all__ = ["to_instant"]
