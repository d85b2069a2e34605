"""Enhanced acknowledgment mode: an application ACK whose sender has gone, on SQLite and PostgreSQL.

A real MLLP client sends, reads the accept ACK (CA), and closes before the application ACK. The message
is applied all the same; its row says ``ack_delivery = undelivered`` (admin API, ``fhirhub messages``),
and when the same sender connects again and sends its next message, the stored application ACK goes out
on the new connection first (then ``redelivered``). It is sent once: a further connection gets nothing
more. A message stored but processed only after a restart owes its application ACK the same way.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
import sqlalchemy as sa

from hub.app import Hub
from hub.hl7 import store
from hub.hl7.tables import message_t
from tests.hl7.support import Client, adt, eventually, listener, msa, running, search, uid
from tests.hl7.test_admin_api import app_for
from tests.hl7.test_cli import await_in_thread

pytestmark = pytest.mark.asyncio(loop_scope="function")
SYSTEM = "urn:fhirhub:id:CLINIC"


def row(hub: Hub, control_id: str) -> sa.Row:
    with hub.ctx.db.read() as conn:
        return conn.execute(sa.select(message_t).where(message_t.c.control_id == control_id)).one()


async def acks(client: Client, n: int) -> list[tuple[str, str, str]]:
    """The next ``n`` frames as (MSA-1, MSA-2, the whole ACK)."""
    out = []
    for _ in range(n):
        text = await client.ack()
        out.append((*msa(text), text))
    return out


async def test_an_application_ack_the_sender_left_before_is_recorded_and_sent_on_its_next_connection(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    lost, nxt, later, mrn = uid(), uid(), uid(), uid()
    async with running(hub, [listener(ack_mode="enhanced")]) as rt:
        svc = rt.listeners["test-in"]
        release = threading.Event()
        for _ in range(svc._parallel):  # hold the commit until the sender has gone (every committer thread)
            svc.committer.submit(release.wait, 30)
        try:
            client = await Client.connect(svc.port)
            assert msa(await client.call(adt(lost, mrn)))[:2] == ("CA", lost)
            await client.close()
            await eventually(lambda: not svc.connections)  # the listener saw the close
        finally:
            release.set()
        await eventually(lambda: row(hub, lost).ack_delivery == "undelivered")
        r = row(hub, lost)
        assert (r.status, r.ack_code) == ("applied", "AA")  # applied all the same
        assert len(search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")) == 1
        stored_ack = bytes(r.ack).decode()

        # visible: the admin API and the CLI
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_for(hub)), base_url="http://t") as http:
            got = (await http.get("/admin/messages", params={"ack_delivery": "undelivered"})).json()
            assert [(m["controlId"], m["ack"], m["ackDelivery"]) for m in got["messages"]] == [(lost, "AA", "undelivered")]
            assert (await http.get("/admin/messages", params={"ack_delivery": "sent"})).status_code == 400
        monkeypatch.setenv("FHIRHUB_DATABASE_URL", hub.settings.database_url)
        code, out = await_in_thread("messages", "list", "--ack-delivery", "undelivered", "--json")
        assert code == 0, out
        assert [json.loads(x)["controlId"] for x in out.splitlines() if x.startswith("{")] == [lost]
        code, out = await_in_thread("messages", "show", str(r.pk))
        assert code == 0 and "ackDelivery: undelivered" in out

        # the same sender connects again: its next message brings the owed application ACK along
        client = await Client.connect(svc.port)
        await client.send(adt(nxt, mrn, event="A08", phone="5550002"))
        frames = await acks(client, 3)
        assert sorted(f[:2] for f in frames) == sorted([("CA", nxt), ("AA", lost), ("AA", nxt)])
        app_acks = [f for f in frames if f[0] == "AA"]
        assert [f[1] for f in app_acks] == [lost, nxt]  # the owed one first
        assert app_acks[0][2] == stored_ack  # the very ACK stored with the message
        await eventually(lambda: row(hub, lost).ack_delivery == "redelivered")
        assert row(hub, nxt).ack_delivery is None
        await client.close()

        # once only: a later connection gets only its own ACKs
        client = await Client.connect(svc.port)
        await client.send(adt(later, mrn, event="A08", phone="5550003"))
        assert sorted(f[:2] for f in await acks(client, 2)) == [("AA", later), ("CA", later)]
        with pytest.raises(TimeoutError):
            await client.ack(timeout=0.5)
        await client.close()
    [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
    assert patient["meta"]["versionId"] == "3"


async def test_an_owed_ack_goes_only_to_the_same_sender(hub: Hub) -> None:
    """A message processed only after a restart owes its application ACK; another system (other MSH-3/MSH-4)
    on the listener gets nothing of it; its own sender gets it when it connects again."""
    cid, mrn = uid(), uid()
    raw = adt(cid, mrn).encode()
    with hub.ctx.db.write() as conn:  # what a stop in enhanced mode leaves: stored, CA sent, not processed
        [receipt] = store.receive(conn, [store.Incoming("test-in", "PMS/CLINIC", "FHIRHUB/CLINIC", cid, "ADT^A04", raw,
                                                        peer="127.0.0.1:40000")])
    assert receipt.kind == "new"
    async with running(hub, [listener(ack_mode="enhanced")]) as rt:
        svc = rt.listeners["test-in"]
        r = row(hub, cid)  # processed at start; its application ACK is owed to PMS/CLINIC
        assert (r.status, r.ack_code, r.ack_delivery) == ("applied", "AA", "undelivered")
        other = uid()
        client = await Client.connect(svc.port)
        await client.send(adt(other, uid(), facility="ELSEWHERE"))
        assert sorted(f[:2] for f in await acks(client, 2)) == [("AA", other), ("CA", other)]
        with pytest.raises(TimeoutError):
            await client.ack(timeout=0.5)
        await client.close()
        assert row(hub, cid).ack_delivery == "undelivered"

        client = await Client.connect(svc.port)
        await client.send(raw)  # its own sender resends it (it never saw the application ACK)
        # the owed ACK (sent at once), then the resend's CA and its answer (the same outcome: not applied again)
        frames = await acks(client, 3)
        assert sorted(f[:2] for f in frames) == [("AA", cid), ("AA", cid), ("CA", cid)]
        assert bytes(row(hub, cid).ack).decode() in [f[2] for f in frames]
        with pytest.raises(TimeoutError):
            await client.ack(timeout=0.5)
        await eventually(lambda: row(hub, cid).ack_delivery == "redelivered")
        await client.close()
    [patient] = search(hub, "Patient", identifier=f"{SYSTEM}|{mrn}")
    assert patient["meta"]["versionId"] == "1"
