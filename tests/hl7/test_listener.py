"""The mllp-listener in process, on SQLite and PostgreSQL: ACK codes, commit before AA, resends,
enhanced mode, ordering, the message store and the audit trail."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import sqlalchemy as sa

from hub.app import Hub
from hub.hl7 import store
from hub.hl7.tables import message_t
from hub.interactions.request import FhirRequest
from hub.security.audit import stored_events
from hub.security.tables import audit_t
from tests.hl7.support import (
    Client,
    adt,
    err,
    eventually,
    listener,
    msa,
    read,
    running,
    search,
    siu,
    uid,
)

pytestmark = pytest.mark.asyncio(loop_scope="function")
SYSTEM = "urn:fhirhub:id:CLINIC"


def row(hub: Hub, control_id: str) -> sa.Row:
    with hub.ctx.db.read() as conn:
        return conn.execute(sa.select(message_t).where(message_t.c.control_id == control_id)).one()


async def test_aa_only_after_the_commit(hub: Hub) -> None:
    mrn, cid = uid(), uid()
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        await client.send(adt(cid, mrn))
        ack = await client.ack()
        # the moment AA arrives, the data is committed and searchable
        patients = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
        await client.close()
    assert msa(ack) == ("AA", cid)
    assert len(patients) == 1 and patients[0]["name"][0]["family"] == "Testperson"
    assert search(hub, "Encounter", identifier=f"{SYSTEM}|V{mrn}")
    r = row(hub, cid)
    assert (r.status, r.ack_code, r.direction, r.connector, r.message_type) == ("applied", "AA", "in", "test-in", "ADT^A04")
    assert bytes(r.raw) == adt(cid, mrn).encode() and msa(bytes(r.ack).decode()) == ("AA", cid)
    assert any(ref.startswith(f"Patient/{patients[0]['id']}/_history/") for ref in r.resources.split())
    assert store.unpack_bundle(r.bundle)["type"] == "transaction"  # type: ignore[index]


async def test_every_message_gets_an_audit_event(hub: Hub) -> None:
    mrn, cid = uid(), uid()
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await client.call(adt(cid, mrn)))[0] == "AA"
        assert msa(await client.call(adt(cid, mrn)))[0] == "AA"  # a resend is audited too
        await client.close()
    assert hub.ctx.audit is not None

    def events() -> list[dict]:
        assert hub.ctx.audit is not None
        hub.ctx.audit.flush_now()
        with hub.ctx.db.read() as conn:
            found = [orjson.loads(e.resource()) for e in stored_events(
                conn, audit_t.c.subtype == "hl7v2", audit_t.c.client_id == "mllp:test-in")]
        mine = [e for e in found if e.get("outcomeDesc", "").startswith(cid)]
        return mine if len(mine) == 2 else []

    mine = await eventually(events)
    assert all(e["outcome"] == "0" for e in mine)
    first = next(e for e in mine if e["outcomeDesc"] == cid)
    assert any(x["what"]["reference"].startswith("Patient/") for x in first["entity"])
    assert first["agent"][0]["network"]["address"].startswith("127.0.0.1")


async def test_persistent_connections_many_messages_several_connections(hub: Hub) -> None:
    mrns = [uid() for _ in range(12)]
    async with running(hub, [listener()]) as rt:
        port = rt.listeners["test-in"].port
        clients = [await Client.connect(port) for _ in range(3)]

        async def feed(k: int, client: Client) -> list[tuple[str, str]]:
            out = []
            for j, mrn in enumerate(mrns[k::3]):
                cid = f"{mrn}-{j}"
                out.append((msa(await client.call(adt(cid, mrn))), cid))
            return [(m[0], c) for m, c in out]

        results = await asyncio.gather(*(feed(k, c) for k, c in enumerate(clients)))
        for c in clients:
            await c.close()
    assert all(code == "AA" for r in results for code, _ in r)
    assert sum(len(r) for r in results) == 12
    for mrn in mrns:
        assert len(search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")) == 1


async def test_a_repeated_control_id_is_acknowledged_and_not_applied(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    mrn, cid = uid(), uid()
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await client.call(adt(cid, mrn, family="First"))) == ("AA", cid)
        # the same MSH-10 from the same sender, even with other content: AA, nothing applied
        assert msa(await client.call(adt(cid, mrn, family="Second"))) == ("AA", cid)
        assert msa(await client.call(adt(cid, mrn, family="First"))) == ("AA", cid)
        # the same MSH-10 from another sender is another message
        other = adt(cid, uid(), facility="OTHER")
        assert msa(await client.call(other)) == ("AA", cid)
        await client.close()
    [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
    assert patient["name"][0]["family"] == "First" and patient["meta"]["versionId"] == "1"
    with hub.ctx.db.read() as conn:
        rows = conn.execute(sa.select(message_t.c.sender, message_t.c.duplicates).where(message_t.c.control_id == cid)).all()
    assert sorted((r.sender, r.duplicates) for r in rows) == [("PMS/CLINIC", 2), ("PMS/OTHER", 0)]
    assert "reused for different content" in caplog.text
    assert "Second" not in caplog.text  # no patient values in the log


async def test_content_the_mapping_cannot_accept_is_ae_with_err_and_no_patient_values(hub: Hub) -> None:
    mrn, cid = uid(), uid()
    # IN1 without the insurance company (IN1-3/IN1-4): Coverage.payor cannot be filled
    bad = adt(cid, mrn, family="Secretname", extra="IN1|1|PLAN1|||||||||||||||Secretname^Ada")
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        ack = await client.call(bad)
        await client.close()
    assert msa(ack) == ("AE", cid)
    e = err(ack)
    assert e is not None and "IN1^1^4" in e and "101" in e
    assert "Secretname" not in ack and mrn not in ack
    assert not search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")  # nothing of it was applied
    r = row(hub, cid)
    assert (r.status, r.ack_code, r.error_code, r.error_location) == ("error", "AE", "HL7-MAP-REQUIRED", "IN1^1^4")


async def test_unsupported_and_unaccepted_types_are_ar(hub: Hub) -> None:
    oru = (f"MSH|^~\\&|LAB|CLINIC|FHIRHUB|CLINIC|20260105||ORU^R01|{uid()}|P|2.5.1\r"
           "PID|1||X1^^^CLINIC^MR||Doe^Jo\rOBR|1\rOBX|1|NM|wbc||7.0\r")
    siu_cid = uid()
    async with running(hub, [listener(message_types=("ADT^*",))]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        ack1 = await client.call(oru)
        ack2 = await client.call(siu(siu_cid, uid(), uid()))
        await client.close()
    assert msa(ack1)[0] == "AR" and "200" in (err(ack1) or "")
    assert msa(ack2) == ("AR", siu_cid) and "MSH^1^9" in (err(ack2) or "")
    assert row(hub, siu_cid).status == "rejected"


async def test_a_resend_of_a_failed_message_is_processed_again(hub: Hub) -> None:
    mrn, cid = uid(), uid()
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await client.call(adt(cid, mrn, extra="IN1|1|PLAN1")))[0] == "AE"
        assert msa(await client.call(adt(cid, mrn)))[0] == "AA"  # fixed at the sender, sent again
        await client.close()
    assert len(search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")) == 1
    r = row(hub, cid)
    assert (r.status, r.attempts, r.error_code) == ("applied", 2, None)


async def test_a_refused_fhir_transaction_is_ae_located_at_the_segment(hub: Hub) -> None:
    mrn, cid = uid(), uid()
    # two Patients already carry this identifier: the conditional update cannot choose (412)
    for _ in range(2):
        body = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": mrn}]}
        assert hub.router.dispatch(FhirRequest("POST", "Patient", body=body)).status == 201
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        ack = await client.call(adt(cid, mrn))
        await client.close()
    assert msa(ack) == ("AE", cid)
    assert "PID^1" in (err(ack) or "")
    assert row(hub, cid).error_code == "FHIRHUB-CONDITIONAL-MULTIPLE"


async def test_enhanced_mode_commit_ack_then_application_ack(hub: Hub) -> None:
    cid1, cid2, cid3, mrn = uid(), uid(), uid(), uid()
    async with running(hub, [listener(ack_mode="enhanced")]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        await client.send(adt(cid1, mrn))
        first, second = await client.ack(), await client.ack()
        assert msa(first) == ("CA", cid1) and msa(second) == ("AA", cid1)
        # MSH-15 NE / MSH-16 AL: no accept ACK, only the application ACK
        msg = adt(cid2, mrn).replace("|P|2.5.1", "|P|2.5.1|||NE|AL", 1)
        assert msa(await client.call(msg)) == ("AA", cid2)
        # MSH-15 AL / MSH-16 ER: accept ACK only, since it succeeds
        msg = adt(cid3, mrn).replace("|P|2.5.1", "|P|2.5.1|||AL|ER", 1)
        assert msa(await client.call(msg)) == ("CA", cid3)
        with pytest.raises(TimeoutError):  # and nothing else follows
            await client.ack(timeout=0.5)
        await client.close()
    assert row(hub, cid3).status == "applied"


async def test_ordering_per_patient_keeps_each_patients_messages_in_order(hub: Hub) -> None:
    mrns = [uid() for _ in range(4)]
    async with running(hub, [listener(ordering="patient", workers=4)]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        # pipelined: all messages sent before any ACK is read
        sent = []
        for n in range(5):
            for mrn in mrns:
                cid = f"{mrn}-{n}"
                sent.append(cid)
                await client.send(adt(cid, mrn, event="A08", phone=f"555000{n}"))
        acks = [msa(await client.ack()) for _ in sent]
        await client.close()
    assert acks == [("AA", cid) for cid in sent]  # ACKs in the order the messages came
    for mrn in mrns:
        [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
        assert patient["telecom"][0]["value"].endswith("5550004")  # the last message won
        assert patient["meta"]["versionId"] == "5"


async def test_stored_but_unprocessed_messages_are_processed_at_start(hub: Hub) -> None:
    mrn, cid = uid(), uid()
    raw = adt(cid, mrn).encode()
    with hub.ctx.db.write() as conn:  # what a crash between receipt and commit leaves
        [receipt] = store.receive(conn, [store.Incoming("test-in", "PMS/CLINIC", "FHIRHUB/CLINIC", cid, "ADT^A04", raw)])
    assert receipt.kind == "new"
    async with running(hub, [listener()]) as rt:
        assert rt.listeners["test-in"].port  # serving only after the recovery
        assert row(hub, cid).status == "applied"
        client = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await client.call(raw)) == ("AA", cid)  # the sender's resend: acknowledged, not applied again
        await client.close()
    [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
    assert patient["meta"]["versionId"] == "1"


async def test_siu_stream_book_reschedule_cancel(hub: Hub) -> None:
    appt, mrn = uid(), uid()
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await client.call(siu(uid(), appt, mrn)))[0] == "AA"
        assert msa(await client.call(siu(uid(), appt, mrn, event="S13", start="202602111400", end="202602111430")))[0] == "AA"
        [a] = search(hub, "Appointment", identifier=f"urn:fhirhub:id:PMS|{appt}")
        assert a["start"].startswith("2026-02-11T14:00") and a["status"] == "booked"
        assert msa(await client.call(siu(uid(), appt, mrn, event="S15", status="Cancelled")))[0] == "AA"
        await client.close()
    [a] = search(hub, "Appointment", identifier=f"urn:fhirhub:id:PMS|{appt}")
    assert a["status"] == "cancelled" and a["meta"]["versionId"] == "3"
    patient = read(hub, a["participant"][0]["actor"]["reference"])
    assert patient is not None and patient["resourceType"] == "Patient"



async def test_a_message_committed_but_not_marked_before_a_crash_is_not_applied_twice(hub: Hub) -> None:
    """The crash window: the FHIR transaction committed, the message store not yet told. The next start
    processes the message again; its conditional writes make that a no-op (no new versions)."""
    mrn, first, second = uid(), uid(), uid()
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await client.call(adt(first, mrn)))[0] == "AA"
        await client.close()
        pipeline = rt.listeners["test-in"].pipeline  # warmed up by the first message (known resources)
        raw = adt(second, mrn, event="A08", phone="5559999").encode()
        with hub.ctx.db.write() as conn:
            [receipt] = store.receive(conn, [store.Incoming("test-in", "PMS/CLINIC", "FHIRHUB/CLINIC", second, "ADT^A08", raw)])
        assert pipeline.process(receipt.pk, raw).ack_code == "AA"  # committed; "crash" before store.finish
    [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
    assert patient["meta"]["versionId"] == "2"
    async with running(hub, [listener()]) as rt:  # the restart: recovery applies it again
        assert row(hub, second).status == "applied"
        client = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await client.call(raw)) == ("AA", second)  # the sender's resend
        await client.close()
    [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
    assert patient["meta"]["versionId"] == "2" and patient["telecom"][0]["value"].endswith("5559999")
