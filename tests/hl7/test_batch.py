"""Messages committed together (``Pipeline.apply_many``): a bad message inside a batch, on SQLite and
PostgreSQL.

The listener commits the messages that are ready at the same moment (each the head of its ordering
line) in one database transaction, one savepoint per message. These tests make that happen for
certain: the committer thread is held busy by the first message while the others arrive on their
own connections (independent lines) and line up; then they are released and go as ONE batch (checked
by recording what ``apply_many`` was given). A message the mapping refuses (AE, ERR 101) and one the
FHIR validator refuses (the per-1 invariant: AE) sit between good ones: each good message's resources
exist exactly once (version 1), the bad messages changed nothing, each stored row holds the status and
the exact ACK its sender received.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from hub.app import Hub
from hub.hl7.pipeline import Prepared, Result
from hub.hl7.tables import message_t
from hub.store.tables import outbox_t
from tests.hl7.support import Client, adt, err, eventually, listener, msa, running, search, uid

pytestmark = pytest.mark.asyncio(loop_scope="function")
SYSTEM = "urn:fhirhub:id:CLINIC"


def row(hub: Hub, control_id: str) -> sa.Row:
    with hub.ctx.db.read() as conn:
        return conn.execute(sa.select(message_t).where(message_t.c.control_id == control_id)).one()


def outbox_head(hub: Hub) -> int:
    with hub.ctx.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(outbox_t.c.pk), 0))).scalar_one())


def outbox_since(hub: Hub, after: int) -> list[str]:
    """``Type/id/_history/v`` of every change recorded after outbox row ``after``."""
    o = outbox_t.c
    with hub.ctx.db.read() as conn:
        rows = conn.execute(sa.select(o.res_type, o.res_id, o.version).where(o.pk > after)).all()
    return [f"{t}/{i}/_history/{v}" for t, i, v in rows]


def discharged_before_admitted(cid: str, mrn: str, room: str) -> str:
    """ADT^A03 whose discharge (PV1-45) precedes the admission (PV1-44): the mapping accepts it, the FHIR
    validator refuses the Encounter (invariant per-1: period.start <= period.end)."""
    msg = adt(cid, mrn).replace("ADT^A04", "ADT^A03").replace("EVN|A04", "EVN|A03")
    old = next(s for s in msg.split("\r") if s.startswith("PV1"))
    pv1 = f"PV1|1|O|{room}^^^CLINIC||||||||||||||||V{mrn}|||||||||||||||||||||||||20260105093000|20260104093000"
    return msg.replace(old, pv1)


async def test_a_bad_message_inside_a_batch_is_rolled_back_alone(hub: Hub) -> None:
    good = [(uid(), uid()) for _ in range(3)]  # (control id, MRN)
    map_cid, map_mrn = uid(), uid()
    fhir_cid, fhir_mrn, fhir_room = uid(), uid(), f"R{uid()}"
    messages = {
        good[0][0]: adt(good[0][0], good[0][1]),
        map_cid: adt(map_cid, map_mrn, extra="IN1|1|PLAN1"),  # Coverage without payor: AE from the mapping
        good[1][0]: adt(good[1][0], good[1][1]),
        fhir_cid: discharged_before_admitted(fhir_cid, fhir_mrn, fhir_room),  # AE from the FHIR validator
        good[2][0]: adt(good[2][0], good[2][1]),
    }
    async with running(hub, [listener()]) as rt:
        svc = rt.listeners["test-in"]
        batches: list[list[int]] = []
        apply_many = svc.pipeline.apply_many

        outcomes: dict[int, Result] = {}

        def recording(batch: list[Prepared]) -> list[Result]:
            batches.append([p.pk for p in batch])
            results = apply_many(batch)
            outcomes.update({p.pk: r for p, r in zip(batch, results, strict=True)})
            return results

        svc.pipeline.apply_many = recording  # type: ignore[method-assign]
        release = threading.Event()
        for _ in range(svc._parallel):  # every committer thread is busy ...
            svc.committer.submit(release.wait, 30)
        svc._parallel = 1  # ... and one batch at a time (as shipped): the five line up behind the lead
        lead = await Client.connect(svc.port)
        lead_cid = uid()
        await lead.send(adt(lead_cid, uid()))
        await eventually(lambda: svc._committing == 1)  # the lead message waits for the committer
        clients: dict[str, Client] = {}
        for cid, message in messages.items():  # one connection each: independent ordering lines
            clients[cid] = await Client.connect(svc.port)
            await clients[cid].send(message)
        await eventually(lambda: len(svc._ready) == len(messages))  # all mapped, lined up behind the lead
        outbox_before = outbox_head(hub)
        release.set()
        msa_lead = msa(await lead.ack())
        acks = dict(zip(messages, await asyncio.gather(*(c.ack() for c in clients.values())), strict=True))
        for c in [lead, *clients.values()]:
            await c.close()
    assert msa_lead[0] == "AA"
    # the five went to the database together
    pks = {row(hub, cid).pk for cid in messages}
    assert any(set(b) == pks for b in batches), batches
    # ... and each got its outcome from the batch's own transaction (not from a one-by-one fallback):
    # the refused FHIR transaction was rolled back to its savepoint while the others committed
    assert {cid: (outcomes[row(hub, cid).pk].ack_code, outcomes[row(hub, cid).pk].stored) for cid in messages} == {
        good[0][0]: ("AA", True), map_cid: ("AE", False), good[1][0]: ("AA", True), fhir_cid: ("AE", True),
        good[2][0]: ("AA", True)}

    for cid, mrn in good:
        assert msa(acks[cid]) == ("AA", cid) and err(acks[cid]) is None
        [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
        [encounter] = search(hub, "Encounter", identifier=f"{SYSTEM}|V{mrn}")
        assert patient["meta"]["versionId"] == "1" and encounter["meta"]["versionId"] == "1"
        r = row(hub, cid)
        assert (r.status, r.ack_code, r.error_code, r.attempts) == ("applied", "AA", None, 1)
        assert bytes(r.ack).decode() == acks[cid]  # the ACK stored is the ACK sent
        written = r.resources.split()
        assert f"Patient/{patient['id']}/_history/1" in written and f"Encounter/{encounter['id']}/_history/1" in written

    # the mapping refused this one: AE with ERR (location, table 0357 code), nothing written
    assert msa(acks[map_cid]) == ("AE", map_cid)
    e = err(acks[map_cid])
    assert e is not None and "IN1^1^4" in e and "101" in e
    r = row(hub, map_cid)
    assert (r.status, r.ack_code, r.error_code, r.error_location) == ("error", "AE", "HL7-MAP-REQUIRED", "IN1^1^4")
    assert bytes(r.ack).decode() == acks[map_cid] and r.resources is None
    assert not search(hub, "Patient", identifier=f"{SYSTEM}|{map_mrn}")

    # the validator refused its Encounter: the whole Bundle (Patient, Location, Encounter) rolled back
    assert msa(acks[fhir_cid]) == ("AE", fhir_cid)
    e = err(acks[fhir_cid])
    assert e is not None and "PV1" in e and "207" in e
    assert fhir_mrn not in acks[fhir_cid]
    r = row(hub, fhir_cid)
    assert (r.status, r.ack_code, r.resources) == ("error", "AE", None)
    assert r.error_code is not None and r.error_code.startswith("FHIRHUB-") and r.error_location.startswith("PV1")
    assert bytes(r.ack).decode() == acks[fhir_cid]
    assert not search(hub, "Patient", identifier=f"{SYSTEM}|{fhir_mrn}")
    assert not search(hub, "Encounter", identifier=f"{SYSTEM}|V{fhir_mrn}")
    assert not search(hub, "Location", name=fhir_room)

    # every change in the outbox since then is one the lead or a good message wrote, each once
    changes = outbox_since(hub, outbox_before)
    written = {ref for cid in [lead_cid, *(c for c, _ in good)] for ref in row(hub, cid).resources.split()}
    assert len(changes) == len(set(changes)) and set(changes) <= written
    assert sum(ref.startswith(("Patient/", "Encounter/")) for ref in changes) == 2 * (len(good) + 1)


async def test_apply_many_directly_isolates_failures(hub: Hub) -> None:
    """``Pipeline.apply_many`` fed directly with a mixed batch (no listener timing involved): the good
    results are stored in the batch's transaction, the mapping failure is left for the caller to store."""
    from hub.hl7 import store
    from hub.hl7.known import Known
    from hub.hl7.pipeline import MappingCache, Pipeline

    connector = listener()
    pipeline = Pipeline(hub.router, connector, MappingCache(), "http://hub.test/fhir", known=Known(hub.ctx.db))
    good = [(uid(), uid()) for _ in range(2)]
    bad_cid, bad_mrn, room = uid(), uid(), f"R{uid()}"
    map_cid = uid()
    raws = [adt(good[0][0], good[0][1]), discharged_before_admitted(bad_cid, bad_mrn, room),
            adt(map_cid, uid(), extra="IN1|1|PLAN1"), adt(good[1][0], good[1][1])]
    with hub.ctx.db.write() as conn:
        receipts = store.receive(conn, [
            store.Incoming(connector.name, "PMS/CLINIC", "FHIRHUB/CLINIC", raw.split("|")[9], "ADT", raw.encode())
            for raw in raws
        ])
    prepared = [pipeline.prepare(rc.pk, raw.encode()) for rc, raw in zip(receipts, raws, strict=True)]
    results: list[Any] = pipeline.apply_many(prepared)
    assert [r.ack_code for r in results] == ["AA", "AE", "AE", "AA"]
    assert [r.stored for r in results] == [True, True, False, True]
    with hub.ctx.db.write() as conn:
        store.finish(conn, [r.outcome for r in results if not r.stored])
    assert [row(hub, raw.split("|")[9]).status for raw in raws] == ["applied", "error", "error", "applied"]
    for _, mrn in good:
        [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
        assert patient["meta"]["versionId"] == "1"
    assert not search(hub, "Patient", identifier=f"{SYSTEM}|{bad_mrn}")
    assert not search(hub, "Location", name=room)
