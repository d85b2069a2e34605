"""ADT^A40 over MLLP, on SQLite and PostgreSQL: the merged-away Patient's resources follow the survivor.

The old patient has an Encounter (A04), an Appointment (SIU^S12) and a Coverage (A08 with IN1); the
survivor has its own Encounter. After the A40 the survivor's Encounters, Appointments and Coverages
include the old patient's (each a new version, written through the one write path: history, outbox,
audit), the two Patients carry their links, and nothing refers to the old Patient any more except
the survivor's ``replaces`` link. Sending the A40 again (same MSH-10, or a new one) changes nothing.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from hub.app import Hub
from hub.hl7.tables import message_t
from hub.interactions.request import FhirRequest
from hub.security.tables import audit_t
from hub.store.tables import outbox_t
from tests.hl7.support import Client, adt, listener, msa, running, search, siu, uid

pytestmark = pytest.mark.asyncio(loop_scope="function")
SYSTEM = "urn:fhirhub:id:CLINIC"


def a40(cid: str, survivor: str, old: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|PMS|CLINIC|FHIRHUB|CLINIC|20260106093000||ADT^A40^ADT_A39|{cid}|P|2.5.1",
        "EVN|A40|20260106093000",
        f"PID|1||{survivor}^^^CLINIC^MR||Testperson^Ada||19800101|F",
        f"MRG|{old}^^^CLINIC^MR",
    ]) + "\r"


def history(hub: Hub, ref: str) -> list[dict[str, Any]]:
    resp = hub.router.dispatch(FhirRequest("GET", f"{ref}/_history", [], {}, None, "http://hub.test/fhir"))
    assert resp.status == 200
    return [e["resource"] for e in orjson.loads(resp.body or b"{}")["entry"]]


def outbox_head(hub: Hub) -> int:
    with hub.ctx.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(outbox_t.c.pk), 0))).scalar_one())


def everything_referring_to(hub: Hub, patient_id: str) -> list[str]:
    """``Type/id`` of every current resource whose JSON names ``Patient/<patient_id>``."""
    resp = hub.router.dispatch(FhirRequest("GET", f"Patient/{patient_id}/$everything", [("_count", "500")], {}, None,
                                           "http://hub.test/fhir"))
    assert resp.status == 200
    needle = f'"Patient/{patient_id}"'.encode()
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in orjson.loads(resp.body)["entry"]
                  if needle in orjson.dumps(e["resource"]))


async def test_a40_repoints_the_old_patients_resources_to_the_survivor(hub: Hub) -> None:
    old_mrn, surv_mrn, appt_id, merge_cid = uid(), uid(), uid(), uid()
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        for message in [
            adt(uid(), old_mrn),  # Patient (old) + Encounter V<old>
            siu(uid(), appt_id, old_mrn),  # Appointment with the old patient
            adt(uid(), old_mrn, event="A08", extra="IN1|1|PLAN1|INS1^^^CLINIC|Acme Insurance"),  # Coverage
            adt(uid(), surv_mrn),  # the survivor with its own Encounter
        ]:
            assert msa(await client.call(message))[0] == "AA"
        [old] = search(hub, "Patient", identifier=f"{SYSTEM}|{old_mrn}")
        [surv] = search(hub, "Patient", identifier=f"{SYSTEM}|{surv_mrn}")
        [old_enc] = search(hub, "Encounter", subject=f"Patient/{old['id']}")
        [appt] = search(hub, "Appointment", actor=f"Patient/{old['id']}")
        [cov] = search(hub, "Coverage", beneficiary=f"Patient/{old['id']}")
        head = outbox_head(hub)

        assert msa(await client.call(a40(merge_cid, surv_mrn, old_mrn))) == ("AA", merge_cid)

        # the survivor's Encounters, Appointments and Coverages now include the old patient's
        encounters = {e["id"] for e in search(hub, "Encounter", subject=f"Patient/{surv['id']}")}
        assert old_enc["id"] in encounters and len(encounters) == 2
        assert [a["id"] for a in search(hub, "Appointment", actor=f"Patient/{surv['id']}")] == [appt["id"]]
        assert [a["id"] for a in search(hub, "Appointment", patient=f"Patient/{surv['id']}")] == [appt["id"]]
        assert [c["id"] for c in search(hub, "Coverage", beneficiary=f"Patient/{surv['id']}")] == [cov["id"]]
        assert not search(hub, "Encounter", subject=f"Patient/{old['id']}")
        assert not search(hub, "Appointment", actor=f"Patient/{old['id']}")
        # what still names the old Patient: itself, and the survivor's replaces link
        assert everything_referring_to(hub, old["id"]) == [f"Patient/{surv['id']}"]
        [gone] = search(hub, "Patient", identifier=f"{SYSTEM}|{old_mrn}")
        [kept] = search(hub, "Patient", identifier=f"{SYSTEM}|{surv_mrn}")
        assert gone["active"] is False
        assert {"type": "replaced-by", "other": {"reference": f"Patient/{surv['id']}"}} in gone["link"]
        assert {"type": "replaces", "other": {"reference": f"Patient/{old['id']}"}} in kept["link"]

        # history: a new version that only moved the reference
        versions = history(hub, f"Encounter/{old_enc['id']}")
        assert [v["meta"]["versionId"] for v in versions] == ["2", "1"]
        assert versions[0]["subject"]["reference"] == f"Patient/{surv['id']}"
        assert versions[1]["subject"]["reference"] == f"Patient/{old['id']}"
        before = {k: v for k, v in versions[1].items() if k not in ("meta", "subject")}
        assert {k: v for k, v in versions[0].items() if k not in ("meta", "subject")} == before
        appt_versions = history(hub, f"Appointment/{appt['id']}")
        assert appt_versions[0]["meta"]["versionId"] == str(int(appt["meta"]["versionId"]) + 1)
        assert {p["actor"]["reference"] for p in appt_versions[0]["participant"]} >= {f"Patient/{surv['id']}"}
        assert f"Patient/{old['id']}" not in orjson.dumps(appt_versions[0]).decode()

        # every change went through the write path: outbox rows with the listener's origin, audit, message row
        with hub.ctx.db.read() as conn:
            changes = conn.execute(sa.select(outbox_t.c.res_type, outbox_t.c.res_id, outbox_t.c.version, outbox_t.c.origin)
                                   .where(outbox_t.c.pk > head)).all()
            audited = " ".join(str(x) for (x,) in conn.execute(sa.select(audit_t.c.entity).where(audit_t.c.entity.is_not(None))))
            merged = conn.execute(sa.select(message_t).where(message_t.c.control_id == merge_cid)).one()
        moved = {f"Encounter/{old_enc['id']}/_history/2", f"Appointment/{appt['id']}/_history/{appt_versions[0]['meta']['versionId']}",
                 f"Coverage/{cov['id']}/_history/{int(cov['meta']['versionId']) + 1}"}
        assert moved <= {f"{t}/{i}/_history/{v}" for t, i, v, _ in changes}
        assert {o for *_, o in changes} == {"mllp:test-in"}
        assert all(ref in audited for ref in moved)
        assert moved <= set(merged.resources.split())
        assert (merged.status, merged.ack_code) == ("applied", "AA")

        # sent again (the same MSH-10: a duplicate; a new MSH-10: processed, and a no-op): nothing changes
        head = outbox_head(hub)
        assert msa(await client.call(a40(merge_cid, surv_mrn, old_mrn))) == ("AA", merge_cid)
        again = uid()
        assert msa(await client.call(a40(again, surv_mrn, old_mrn))) == ("AA", again)
        await client.close()
    assert outbox_head(hub) == head
    assert [v["meta"]["versionId"] for v in history(hub, f"Encounter/{old_enc['id']}")] == ["2", "1"]
    [gone2] = search(hub, "Patient", identifier=f"{SYSTEM}|{old_mrn}")
    assert gone2["meta"]["versionId"] == gone["meta"]["versionId"]


async def test_a40_of_a_patient_without_resources_only_links(hub: Hub) -> None:
    """Nothing refers to the old patient (the receiver never saw it): the merge links the two, and that is all."""
    old_mrn, surv_mrn, cid = uid(), uid(), uid()
    async with running(hub, [listener()]) as rt:
        client = await Client.connect(rt.listeners["test-in"].port)
        assert msa(await client.call(adt(uid(), surv_mrn)))[0] == "AA"
        assert msa(await client.call(a40(cid, surv_mrn, old_mrn))) == ("AA", cid)
        await client.close()
    [gone] = search(hub, "Patient", identifier=f"{SYSTEM}|{old_mrn}")
    assert gone["active"] is False and gone["meta"]["versionId"] == "1"
    [enc] = search(hub, "Encounter", identifier=f"{SYSTEM}|V{surv_mrn}")
    assert enc["meta"]["versionId"] == "1"
