"""The mllp-sender: FHIR changes from the outbox become SIU / ADT messages delivered to a real MLLP
receiver, through a durable queue with retry, backoff and a dead-letter state."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from hub.app import Hub
from hub.hl7 import store
from hub.hl7.admin import Admin
from hub.hl7.tables import message_t
from hub.interactions.request import FhirRequest
from tests.hl7.receiver import Receiver
from tests.hl7.support import eventually, running, sender, uid

pytestmark = pytest.mark.asyncio(loop_scope="function")


def post(hub: Hub, res_type: str, body: dict[str, Any], origin: str | None = None) -> dict[str, Any]:
    import orjson

    resp = hub.router.dispatch(FhirRequest("POST", res_type, body=body, origin=origin))
    assert resp.status == 201, resp.body
    return dict(orjson.loads(resp.body or b"{}"))


def put(hub: Hub, resource: dict[str, Any]) -> dict[str, Any]:
    import orjson

    resp = hub.router.dispatch(FhirRequest("PUT", f"{resource['resourceType']}/{resource['id']}", body=resource))
    assert resp.status == 200, resp.body
    return dict(orjson.loads(resp.body or b"{}"))


def book(hub: Hub, mrn: str, origin: str | None = None) -> dict[str, Any]:
    patient = post(hub, "Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:fhirhub:id:CLINIC", "value": mrn}],
                                    "name": [{"family": "Outbound", "given": ["Olga"]}], "gender": "female"})
    doc = post(hub, "Practitioner", {"resourceType": "Practitioner", "identifier": [{"system": "urn:fhirhub:id:CLINIC", "value": "D7"}],
                                     "name": [{"family": "Doc", "given": ["Alex"]}]})
    room = post(hub, "Location", {"resourceType": "Location", "name": "Exam 1"})
    return post(hub, "Appointment", {
        "resourceType": "Appointment", "status": "booked",
        "identifier": [{"system": "urn:fhirhub:id:PMS", "value": uid(),
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}]}}],
        "start": "2026-03-02T10:00:00Z", "end": "2026-03-02T10:30:00Z",
        "participant": [
            {"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{doc['id']}"}, "status": "accepted"},
            {"actor": {"reference": f"Location/{room['id']}"}, "status": "accepted"},
        ],
    }, origin=origin)


def outbound(hub: Hub, connector: str = "test-out") -> list[sa.Row]:
    with hub.ctx.db.read() as conn:
        return list(conn.execute(sa.select(message_t).where(message_t.c.direction == "out", message_t.c.connector == connector)
                                 .order_by(message_t.c.pk)))


async def test_booking_rescheduling_and_cancelling_send_siu(hub: Hub) -> None:
    receiver = await Receiver().start()
    try:
        async with running(hub, senders=[sender(receiver.port)]):
            appt = book(hub, uid())
            await eventually(lambda: any("SIU^S12" in t for t in receiver.types()))
            moved = put(hub, {**appt, "start": "2026-03-03T09:00:00Z", "end": "2026-03-03T09:30:00Z"})
            await eventually(lambda: any("SIU^S13" in t for t in receiver.types()))
            put(hub, {**moved, "status": "cancelled"})
            await eventually(lambda: any("SIU^S15" in t for t in receiver.types()))
    finally:
        await receiver.stop()
    siu = [m for m in receiver.messages if "|SIU^" in m]
    s12 = next(m for m in siu if "SIU^S12" in m)
    segments = {line.split("|")[0] for line in s12.split("\r") if line}
    assert {"MSH", "SCH", "PID", "RGS", "AIL", "AIP"} <= segments
    assert "Outbound^Olga" in s12 and "20260302100000" in s12
    assert "20260303090000" in next(m for m in siu if "SIU^S13" in m)
    rows = [r for r in outbound(hub) if r.message_type.startswith("SIU")]
    assert [r.message_type for r in rows][-3:] == ["SIU^S12", "SIU^S13", "SIU^S15"]
    assert all(r.status == "sent" and r.ack_code == "AA" and r.source.startswith("Appointment/") for r in rows[-3:])
    assert receiver.connections == 1  # one persistent connection


async def test_patient_changes_send_adt_a08_but_not_what_came_from_the_same_system(hub: Hub) -> None:
    receiver = await Receiver().start()
    try:
        conf = sender(receiver.port, name="no-echo", skip_origins=("mllp:pms-in",))
        async with running(hub, senders=[conf]):
            echo_mrn, mrn = uid(), uid()
            post(hub, "Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": echo_mrn}]},
                 origin="mllp:pms-in")
            post(hub, "Patient", {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": mrn}]})
            await eventually(lambda: any(mrn in m for m in receiver.messages))
            await asyncio.sleep(0.3)
    finally:
        await receiver.stop()
    assert any("ADT^A08" in m and mrn in m for m in receiver.messages)
    assert not any(echo_mrn in m for m in receiver.messages)


async def test_retry_with_backoff_until_the_receiver_is_up(hub: Hub) -> None:
    probe = await Receiver().start()
    port = probe.port
    await probe.stop()  # nobody listens there now: connection refused
    conf = sender(port, name="retrying", resources={}, retry_initial=0.1, retry_max=0.3, retry_attempts=50)
    async with running(hub, senders=[conf]) as rt:
        cid = uid()
        pk = rt.send_v2("retrying", f"MSH|^~\\&|FHIRHUB|CLINIC|PMS|CLINIC|20260101||ADT^A08^ADT_A01|{cid}|P|2.5.1\rPID|1||X^^^C\r")
        await eventually(lambda: any(r.pk == pk and r.attempts >= 2 for r in outbound(hub, "retrying")))
        receiver = await Receiver().start(port)
        try:
            await eventually(lambda: any(r.pk == pk and r.status == "sent" for r in outbound(hub, "retrying")))
        finally:
            await receiver.stop()
    row = next(r for r in outbound(hub, "retrying") if r.pk == pk)
    assert row.attempts >= 3 and row.ack_code == "AA" and receiver.messages[0].split("\r")[0].split("|")[9] == cid


async def test_application_errors_go_to_the_dead_letter_state_and_can_be_requeued(hub: Hub) -> None:
    receiver = await Receiver("AE").start()
    try:
        conf = sender(receiver.port, name="dead", resources={})
        async with running(hub, senders=[conf]) as rt:
            msg = "MSH|^~\\&|FHIRHUB|CLINIC|PMS|CLINIC|20260101||ADT^A08^ADT_A01|{}|P|2.5.1\rPID|1||X^^^C\r"
            cid = uid()
            first = rt.send_v2("dead", msg.format(cid))
            assert rt.send_v2("dead", msg.format(cid)) == first  # the same MSH-10 again: queued once
            second = rt.send_v2("dead", msg.format(uid()))
            await eventually(lambda: {r.pk: r.status for r in outbound(hub, "dead")} == {first: "dead", second: "dead"})
            row = next(r for r in outbound(hub, "dead") if r.pk == first)
            assert (row.attempts, row.error_code, row.ack_code) == (1, "HL7-NACK-AE", "AE")
            receiver.mode = "AA"
            admin = Admin(hub.ctx.db, hub=hub, runtime=rt)
            assert admin.requeue(first)
            assert not admin.requeue(first)  # only a dead message is requeued
            await eventually(lambda: {r.pk: r.status for r in outbound(hub, "dead")}[first] == "sent")
    finally:
        await receiver.stop()


async def test_no_ack_in_time_is_retried_then_dead(hub: Hub) -> None:
    receiver = await Receiver("silent").start()
    try:
        conf = sender(receiver.port, name="silent", resources={}, ack_timeout=0.3, retry_attempts=2)
        async with running(hub, senders=[conf]) as rt:
            pk = rt.send_v2("silent", f"MSH|^~\\&|FHIRHUB|CLINIC|PMS|CLINIC|20260101||ADT^A08|{uid()}|P|2.5.1\rPID|1\r")
            await eventually(lambda: any(r.pk == pk and r.status == "dead" for r in outbound(hub, "silent")))
    finally:
        await receiver.stop()
    row = next(r for r in outbound(hub, "silent") if r.pk == pk)
    assert (row.attempts, row.error_code) == (2, "HL7-ACK-TIMEOUT")
    assert len(receiver.messages) == 2  # sent twice, the same MSH-10 both times


async def test_send_v2_refuses_broken_messages_and_unknown_connectors(hub: Hub) -> None:
    async with running(hub, senders=[sender(1, name="x", resources={})]) as rt:
        with pytest.raises(KeyError):
            rt.send_v2("nope", "MSH|^~\\&|A|B|C|D|2026||ADT^A08|1|P|2.5.1\r")
        with pytest.raises(ValueError):
            rt.send_v2("x", "MSH|^~\\&|A|B|C|D|2026||ADT^A08||P|2.5.1\r")  # no MSH-10
    with hub.ctx.db.read() as conn:
        assert store.counts(conn, "x") == {}
