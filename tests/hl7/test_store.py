"""The message store on SQLite and PostgreSQL: durable receipt with resend detection, outcomes,
search, purge, the outbound queue, and the group-commit writer."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from hub.app import Hub
from hub.hl7 import store
from hub.hl7.store import Incoming, Outcome, Query, StoreWriter
from tests.hl7.support import uid


def incoming(cid: str | None, raw: bytes = b"MSH|x", sender: str = "PMS/CLINIC", connector: str = "st") -> Incoming:
    return Incoming(connector, sender, "HUB/CLINIC", cid, "ADT^A04", raw, "10.0.0.1:5000")


def receive(hub: Hub, items: list[Incoming]) -> list[store.Receipt]:
    with hub.ctx.db.write() as conn:
        return store.receive(conn, items)


def finish(hub: Hub, *outcomes: Outcome) -> None:
    with hub.ctx.db.write() as conn:
        store.finish(conn, list(outcomes))


def test_new_duplicate_pending_and_retry(hub: Hub) -> None:
    a, b = uid(), uid()
    first = receive(hub, [incoming(a), incoming(b, b"MSH|b"), incoming(a, b"MSH|other"), incoming(None), incoming(None)])
    assert [r.kind for r in first] == ["new", "new", "pending", "new", "new"]
    assert first[2].pk == first[0].pk and not first[2].same_content
    assert len({r.pk for r in first}) == 4  # two messages without MSH-10 never collide
    # still being processed: a resend waits for its outcome
    assert receive(hub, [incoming(a)])[0].kind == "pending"
    finish(hub, Outcome(first[0].pk, "applied", "AA", b"ACK", "ADT^A04", resources=["Patient/1/_history/1"]),
           Outcome(first[1].pk, "error", "AE", b"NAK", error_code="HL7-MAP-REQUIRED", error_location="IN1^1^4",
                   detail="Coverage.payor cannot be filled (HL7 101)"))
    dup, retry = receive(hub, [incoming(a), incoming(b, b"MSH|b2")])
    assert (dup.kind, dup.pk, dup.status, dup.ack_code, dup.same_content) == ("duplicate", first[0].pk, "applied", "AA", True)
    assert (retry.kind, retry.pk) == ("retry", first[1].pk)  # a resend of a failed message is processed again
    with hub.ctx.db.read() as conn:
        row_a, row_b = store.get(conn, first[0].pk), store.get(conn, first[1].pk)
    assert row_a is not None and row_b is not None
    assert (row_a.status, row_a.duplicates, row_a.attempts, row_a.resources) == ("applied", 3, 1, "Patient/1/_history/1")
    assert (row_b.status, bytes(row_b.raw), row_b.error_code) == ("received", b"MSH|b2", "HL7-MAP-REQUIRED")
    # the same MSH-10 from another sender, or on another connector, is another message
    others = receive(hub, [incoming(a, sender="OTHER/X"), incoming(a, connector="st2")])
    assert [r.kind for r in others] == ["new", "new"]


def test_search_summaries_and_purge(hub: Hub) -> None:
    cid = uid()
    [r] = receive(hub, [incoming(cid, sender="SEARCHME/FAC")])
    finish(hub, Outcome(r.pk, "rejected", "AR", b"NAK", "ORU^R01", "HL7-UNSUPPORTED-MESSAGE", "MSH^1^9"))
    with hub.ctx.db.read() as conn:
        assert [x.pk for x in store.search(conn, Query(control_id=cid))] == [r.pk]
        assert [x.pk for x in store.search(conn, Query(sender="SEARCHME", message_type="ORU"))] == [r.pk]
        assert [x.pk for x in store.search(conn, Query(sender="SEARCHME", message_type="ORU^R01", status=["rejected"]))] == [r.pk]
        assert not store.search(conn, Query(sender="SEARCHME", message_type="ADT"))
        assert not store.search(conn, Query(sender="SEARCHME", status=["applied"]))
        assert store.keys(conn, Query(error_code="HL7-UNSUPPORTED-MESSAGE", sender="SEARCHME")) == [r.pk]
        page = store.search(conn, Query(limit=1, before_pk=r.pk + 1))
        assert page and page[0].pk <= r.pk
    with hub.ctx.db.write() as conn:
        assert store.purge(conn, 2**62, statuses=["rejected"], connector="nope") == 0
        assert store.purge(conn, 2**62, statuses=["rejected"], connector="st") >= 1
        assert store.get(conn, r.pk) is None


def test_outbound_queue(hub: Hub) -> None:
    with hub.ctx.db.write() as conn:
        pk = store.enqueue(conn, "q", b"MSH|out", control_id=uid(), message_type="SIU^S12", source="Appointment/1/_history/1")
        head = store.next_queued(conn, "q")
        assert head is not None and head.pk == pk
        store.mark_failed(conn, pk, dead=False, next_attempt=123, error_code="HL7-ACK-TIMEOUT", detail="no ACK")
        store.mark_failed(conn, pk, dead=True, next_attempt=0, error_code="HL7-NACK-AE", detail="nope")
        assert store.next_queued(conn, "q") is None
        assert store.requeue(conn, pk) and not store.requeue(conn, pk)
        store.mark_sent(conn, pk, b"ACK", "AA")
        row = store.get(conn, pk)
        assert row is not None and (row.status, row.ack_code, row.error_code, row.attempts) == ("sent", "AA", None, 1)
        assert store.counts(conn, "q") == {"out:sent": 1}


def test_the_writer_groups_and_isolates_failures(hub: Hub) -> None:
    writer = StoreWriter(hub.ctx.db)
    writer.start()
    try:
        futures = [writer.receive(incoming(uid())) for _ in range(50)]
        receipts = [f.result(30) for f in futures]
        assert writer.batches < writer.jobs  # receipts were committed together
        # one failing job does not fail the others of its batch
        before = [writer.receive(incoming(uid())) for _ in range(5)]
        bad: concurrent.futures.Future[None] = writer.call(lambda conn: 1 / 0)  # type: ignore[arg-type, return-value]
        after = [writer.receive(incoming(uid())) for _ in range(5)]
        receipts += [f.result(30) for f in before + after]
        assert all(r.kind == "new" for r in receipts) and len({r.pk for r in receipts}) == 60
        with pytest.raises(ZeroDivisionError):
            bad.result(30)

        async def from_a_loop() -> store.Receipt:
            return await writer.areceive(incoming(uid()))

        assert asyncio.run(from_a_loop()).kind == "new"
    finally:
        writer.stop()
