"""The audit trail's batched writer: every queued event is written, in few transactions, with the time it happened."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from hub.fhir.instant import parse_instant_micros
from hub.security.audit import AuditRecord, AuditTrail, StoredEvent, stored_events
from hub.security.tables import audit_t
from hub.store.db import Database
from hub.store.repository import instant
from hub.store.schema import upgrade


class CountingDatabase:
    """A Database whose write transactions are counted (and can be made to fail)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writes = 0
        self.fail = 0
        self.threads: set[int] = set()

    @contextlib.contextmanager
    def write(self) -> Iterator[Any]:
        self.writes += 1
        self.threads.add(threading.get_ident())
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the database is unavailable")
        with self.db.write() as conn:
            yield conn

    @property
    def is_sqlite(self) -> bool:
        return self.db.is_sqlite

    async def submit_async(self, work: Any) -> Any:
        self.writes += 1
        self.threads.add(threading.get_ident())
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the database is unavailable")
        return await self.db.submit_async(work)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()


def _rows(db: Database) -> list[StoredEvent]:
    """Every stored event, oldest row first."""
    with db.read() as conn:
        return stored_events(conn)


def test_a_steady_stream_of_events_is_written_in_few_transactions(db: Database) -> None:
    counting = CountingDatabase(db)
    interval = 0.1
    trail = AuditTrail(counting, interval=interval)  # type: ignore[arg-type]
    started = time.monotonic()
    for k in range(300):  # reads arriving one by one, as a server sees them
        trail.enqueue(AuditRecord("read", 0, "client-a", "127.0.0.1", [f"Patient/{k}"]))
        if k % 10 == 9:
            time.sleep(0.005)
    elapsed = time.monotonic() - started
    trail.close()
    rows = _rows(db)
    assert len(rows) == 300 and len({r.event_id for r in rows}) == 300
    # one transaction per interval (plus the last flush), not one per event or per handful of events
    assert counting.writes <= elapsed / interval + 3, (counting.writes, elapsed)


def test_a_full_batch_is_written_without_waiting_for_the_interval(db: Database) -> None:
    counting = CountingDatabase(db)
    trail = AuditTrail(counting, batch=50, interval=30)  # type: ignore[arg-type]
    for k in range(120):
        trail.enqueue(AuditRecord("read", 0, "client-a", None, [f"Patient/{k}"]))
    deadline = time.monotonic() + 10
    while len(_rows(db)) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_rows(db)) >= 100, "full batches are written at once"
    trail.close()
    assert len(_rows(db)) == 120


def test_events_carry_the_time_they_were_queued(db: Database) -> None:
    trail = AuditTrail(db, interval=0.5)
    before = time.time_ns() // 1000
    trail.enqueue(AuditRecord("search-type", 0, "client-a", "127.0.0.1", (), "Patient?name=x"))
    after = time.time_ns() // 1000
    time.sleep(0.2)
    trail.flush_now()
    (row,) = _rows(db)
    assert before - 1000 <= row.recorded <= after
    event = orjson.loads(row.resource())
    assert event["resourceType"] == "AuditEvent" and event["id"] == row.event_id
    assert parse_instant_micros(event["recorded"], "recorded") == row.recorded
    assert event["meta"]["lastUpdated"] == event["recorded"]
    assert event["subtype"][0] == {"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}
    assert event["agent"][0]["network"] == {"address": "127.0.0.1", "type": "2"}
    trail.close()


def test_a_failed_batch_is_kept_and_written_later(db: Database) -> None:
    counting = CountingDatabase(db)
    counting.fail = 1
    trail = AuditTrail(counting, interval=0.05)  # type: ignore[arg-type]
    for k in range(10):
        trail.enqueue(AuditRecord("read", 0, "client-a", None, [f"Patient/{k}"]))
    deadline = time.monotonic() + 10
    while len(_rows(db)) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    trail.close()
    rows = _rows(db)
    assert [orjson.loads(r.resource())["entity"][0]["what"]["reference"] for r in rows] == [f"Patient/{k}" for k in range(10)]
    with db.read() as conn:
        assert conn.execute(select(func.sum(audit_t.c.count))).scalar() == 10, "the failed batch was not written twice"


def test_a_batch_is_a_row_per_client_interaction_and_outcome_and_every_event_stays_whole(db: Database) -> None:
    """One row per (client, subtype, outcome) of a batch; each event keeps its own time, references, address,
    query and detail, has an id of its own, and is found by read and by search (exact reference, time within
    a row, pages that end inside a row)."""
    from hub.security import audit

    base = 1_700_000_000_000_000
    records = [AuditRecord("read", 0, "client-a", "10.0.0.1", [f"Patient/{k}"], recorded=base + k * 1000) for k in range(12)]
    records += [
        AuditRecord("read", 4, "client-a", "10.0.0.1", ["Patient/missing"], None, "FHIRHUB-READ-NOT-FOUND", base + 500),
        AuditRecord("search-type", 0, "client-a", "10.0.0.2", (), "Patient?name=x", None, base + 600),
        AuditRecord("read", 0, "client-b", None, ["Patient/1"], recorded=base + 700),
        AuditRecord("update", 0, "client-b", None, ["Patient/1/_history/2"], recorded=base + 800),
    ]
    with db.write() as conn:
        AuditTrail(db).write(conn, records)
    with db.read() as conn:
        rows = list(conn.execute(select(audit_t).order_by(audit_t.c.pk)))
        assert [(r.client_id, r.subtype, r.outcome, r.count) for r in rows] == [
            ("client-a", "read", 0, 12), ("client-a", "read", 4, 1), ("client-a", "search-type", 0, 1), ("client-b", "read", 0, 1),
            ("client-b", "update", 0, 1)]
        events = stored_events(conn)
        assert len({e.event_id for e in events}) == 16
        for e in events:
            assert orjson.loads(audit.read(conn, e.event_id) or b"") == orjson.loads(e.resource())
        assert audit.read(conn, f"{rows[0].pk}.12") is None

        def search(*params: tuple[str, str]) -> dict[str, Any]:
            return orjson.loads(audit.search(conn, list(params), "http://hub/fhir", 5, 100, True))

        def refs(page: dict[str, Any]) -> list[str]:
            return [x["what"]["reference"] for e in page.get("entry", []) for x in e["resource"].get("entity", []) if "what" in x]

        # the resource at any version, not Patient/10 or Patient/11
        assert refs(search(("entity", "Patient/1"))) == ["Patient/1/_history/2", "Patient/1", "Patient/1"]
        assert refs(search(("date", f"ge{instant(base + 10_000)}"), ("agent", "client-a"))) == ["Patient/11", "Patient/10"]
        first = search(("agent", "client-a"), ("subtype", "read"), ("outcome", "0"))
        assert refs(first) == ["Patient/11", "Patient/10", "Patient/9", "Patient/8", "Patient/7"]
        following = [link["url"] for link in first["link"] if link["relation"] == "next"]
        second = orjson.loads(audit.search(conn, list(parse_qsl(following[0].split("?", 1)[1])), "http://hub/fhir", 5, 100, True))
        assert refs(second) == ["Patient/6", "Patient/5", "Patient/4", "Patient/3", "Patient/2"]
        failed = search(("outcome", "4"))["entry"][0]["resource"]
        assert failed["outcomeDesc"] == "FHIRHUB-READ-NOT-FOUND" and failed["recorded"] == instant(base + 500)
        query = search(("subtype", "search-type"))["entry"][0]["resource"]
        assert query["agent"][0]["network"]["address"] == "10.0.0.2"
        assert query["entity"][0]["query"] == "UGF0aWVudD9uYW1lPXg="


@pytest.mark.asyncio
async def test_in_a_server_the_batches_are_written_from_its_event_loop(db: Database) -> None:
    """``run_on``: on SQLite the writer is a task on the loop (no thread of its own), committing through
    ``submit_async`` on the loop's thread; on PostgreSQL the writer thread stays. Either way events queued by
    worker threads are written too, a full batch wakes the writer early, and nothing is left at the end."""
    counting = CountingDatabase(db)
    trail = AuditTrail(counting, batch=50, interval=0.05)  # type: ignore[arg-type]
    trail.enqueue(AuditRecord("read", 0, "client-a", None, ["Patient/early"]))  # before the loop writer starts
    trail.run_on(asyncio.get_running_loop())  # stops the thread that the early event started
    counting.threads.clear()
    for k in range(100):
        trail.enqueue(AuditRecord("read", 0, "client-a", None, [f"Patient/{k}"]))
        if k % 10 == 9:
            await asyncio.sleep(0.005)

    def from_a_worker_thread() -> None:
        for k in range(30):
            trail.enqueue(AuditRecord("search-type", 0, "client-b", None, [f"Patient/t{k}"]))

    await asyncio.to_thread(from_a_worker_thread)
    deadline = time.monotonic() + 10
    while len(_rows(db)) < 131 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(_rows(db)) == 131
    if db.is_sqlite:
        assert trail._thread is None, "no writer thread beside the loop"
        assert counting.threads == {threading.get_ident()}, "every batch was handed to submit_async from the loop"
    else:
        assert trail._task is None and trail._thread is not None, "PostgreSQL: the writer thread stays"
        assert threading.get_ident() not in counting.threads
    assert counting.writes <= 20
    counting.fail = 1  # a failed batch goes back on the queue; stop_loop writes it
    trail.enqueue(AuditRecord("read", 0, "client-a", None, ["Patient/last"]))
    await asyncio.sleep(0.2)
    await trail.stop_loop()
    trail.flush_now()
    refs = [orjson.loads(r.resource())["entity"][0]["what"]["reference"] for r in _rows(db)]
    assert len(refs) == 132 and len(set(refs)) == 132 and refs[-1] == "Patient/last"
    trail.close()


def test_flush_now_waits_for_the_batch_the_loop_writer_has_in_hand(db: Database) -> None:
    """A caller off the loop (a test, the shutdown) that flushes sees every event queued before it in the table,
    also those the loop's task has taken and not yet committed."""
    trail = AuditTrail(db, interval=0.01)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    finish = threading.Event()

    async def serve() -> None:
        trail.run_on(asyncio.get_running_loop())
        started.set()
        while not finish.is_set():
            await asyncio.sleep(0.01)
        await trail.stop_loop()

    runner = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    runner.start()
    try:
        assert started.wait(10)
        for round_ in range(20):
            for k in range(25):
                trail.enqueue(AuditRecord("read", 0, "client-a", None, [f"Patient/{round_}-{k}"]))
            trail.flush_now()
            assert len(_rows(db)) == 25 * (round_ + 1)
    finally:
        finish.set()
        runner.join(10)
        loop.close()
        trail.close()


def test_an_event_written_before_revision_0010_is_served_as_it_was_stored(db_url: str) -> None:
    """Events kept as JSON (``data``), a row each, before revision 0010 are read back unchanged after the
    upgrade, beside new events built from their batch rows."""
    from sqlalchemy import insert

    from hub.security import audit

    database = Database(db_url)
    try:
        upgrade(database, "0002")
        legacy = {"resourceType": "AuditEvent", "id": "0190-legacy", "action": "R", "outcome": "0",
                  "recorded": "2024-01-01T00:00:00Z", "entity": [{"what": {"reference": "Patient/old"}}]}
        with database.write() as conn:
            conn.execute(insert(audit_t).values(event_id="0190-legacy", recorded=1_704_067_200_000_000,
                                                client_id="c", action="R", subtype="read", outcome=0,
                                                entity="Patient/old", data=orjson.dumps(legacy)))
        upgrade(database, "0010")  # this revision alone over 0002 (so that it alone comes down below)
        trail = AuditTrail(database)
        trail.enqueue(AuditRecord("search-type", 0, "c", "10.0.0.1", (), "Patient?name=x"))
        trail.close()
        with database.read() as conn:
            assert orjson.loads(audit.read(conn, "0190-legacy") or b"") == legacy
            page = orjson.loads(audit.search(conn, [("agent", "c")], "http://hub/fhir", 10, 100, True))
        new, old = (e["resource"] for e in page["entry"])
        assert old == legacy
        assert new["entity"] == [{"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                           "code": "2", "display": "System Object"},
                                  "query": "UGF0aWVudD9uYW1lPXg="}]  # base64 of Patient?name=x
        assert new["agent"][0]["network"] == {"address": "10.0.0.1", "type": "2"}

        # and back: a downgrade expands the batch rows into a row (with its JSON) per event, ids kept
        from alembic import command
        from alembic.migration import MigrationContext

        from hub.store.schema import alembic_config

        config = alembic_config()
        with database.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0002")
        with database.read() as conn:
            rows = conn.execute(sa.text("SELECT event_id, data FROM audit_event ORDER BY pk")).all()
            assert set(MigrationContext.configure(conn).get_current_heads()) == {"0002"}
        assert [(r.event_id, orjson.loads(r.data)) for r in rows] == [("0190-legacy", legacy), (new["id"], new)]
    finally:
        database.dispose()
