"""The audit trail's batched writer: every queued event is written, in few transactions, with the time it happened."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from hub.fhir.instant import parse_instant_micros
from hub.security.audit import AuditRecord, AuditTrail
from hub.security.tables import audit_t
from hub.store.db import Database
from hub.store.schema import upgrade


class CountingDatabase:
    """A Database whose write transactions are counted (and can be made to fail)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writes = 0
        self.fail = 0

    @contextlib.contextmanager
    def write(self) -> Iterator[Any]:
        self.writes += 1
        if self.fail:
            self.fail -= 1
            raise RuntimeError("the database is unavailable")
        with self.db.write() as conn:
            yield conn


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()


def _rows(db: Database) -> list[Any]:
    with db.read() as conn:
        return list(conn.execute(select(audit_t.c.event_id, audit_t.c.recorded, audit_t.c.data).order_by(audit_t.c.pk)))


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
    event = orjson.loads(row.data)
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
    assert [orjson.loads(r.data)["entity"][0]["what"]["reference"] for r in rows] == [f"Patient/{k}" for k in range(10)]
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(audit_t)).scalar() == 10


def test_event_ids_are_unique_and_grow_with_time(db: Database) -> None:
    import uuid

    trail = AuditTrail(db)
    base = 1_700_000_000_000_000
    records = [AuditRecord("read", 0, "client-a", None, ["Patient/1"], recorded=base + k * 1000) for k in range(200)]
    ids = [r.values()[0] for r in records]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids follow the time of the event (appended at the right edge of the unique index)"
    assert all(uuid.UUID(i).version == 7 for i in ids)
    trail.close()
