"""The audit trail: an AuditEvent, shaped after IHE Basic Audit Log Patterns, for every interaction.

* Writes: the event is inserted in the same database transaction as the change.
* Reads and failures: events are queued and written in batches (every 50 ms, or as
  soon as 500 events wait), which keeps the cost of auditing reads small: queuing is
  an append, with no lock and no thread wake-up, and a busy second costs about
  twenty write transactions, not one per event. In a serving process on SQLite the
  batches are written by a task on its event loop (see :meth:`AuditTrail.run_on`);
  otherwise by one background thread. A read's event is queued (with its time)
  before its response is returned; the queue is flushed at shutdown.
* Append-only: the ``audit_event`` table has no update or delete anywhere in the
  hub, and the REST API refuses create/update/patch/delete on AuditEvent (405).
  A client with the ``fhirhub/audit`` scope searches it at ``/fhir/AuditEvent``.

No patient data goes into an event beyond resource references and, for a search,
the query string (base64 in ``entity.query``, as the FHIR spec and BALP prescribe).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import Connection, select

from hub.errors import invalid
from hub.fhir.bundle import Entry, assemble
from hub.fhir.instant import parse_instant_micros
from hub.security.tables import audit_t
from hub.store import sql
from hub.store.db import Database
from hub.store.repository import instant, now_micros

log = logging.getLogger("hub.audit")

ACTIONS = {
    "create": "C", "read": "R", "vread": "R", "update": "U", "patch": "U", "delete": "D",
    "history-instance": "R", "history-type": "R", "history-system": "R", "search-type": "E",
    "search-system": "E", "search-compartment": "E", "transaction": "E", "batch": "E", "operation": "E",
    "capabilities": "R", "hl7v2": "C", "sync": "E", "authorize": "E",
}
RESTFUL = "http://hl7.org/fhir/restful-interaction"
AUDIT_COLS = ("event_id", "recorded", "client_id", "action", "subtype", "outcome", "entity", "data")


# The constant parts of every event, built once (orjson serializes shared objects as often as they appear).
_TYPE_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}
_TYPE_APP = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "110100", "display": "Application Activity"}
_NOT_REST = ("hl7v2", "sync", "authorize")
_AGENT_TYPE = {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]}
_SOURCE = {
    "observer": {"display": "fhirhub"},
    "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
}
_QUERY_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}
_META_VERSION = "1"


@functools.cache
def _subtype(code: str) -> list[dict[str, str]]:
    return [{"system": RESTFUL if code in ACTIONS else "https://fhirhub.dev/CodeSystem/audit-subtype", "code": code}]


def _event_id(recorded: int) -> str:
    """A time-ordered UUID (the layout of RFC 9562 version 7: 48 bits of milliseconds, then 74 random bits).

    Random (version 4) ids land all over the unique index on ``event_id``, so every batch dirtied pages
    across the whole index; ids that grow with time are appended at its right edge, like the other
    indexes of the table. That halves the cost of writing an event on SQLite once the trail is large.
    """
    b = bytearray((recorded // 1000).to_bytes(6, "big") + os.urandom(10))
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class AuditRecord:
    subtype: str  # the restful-interaction code, or hl7v2 / sync / authorize
    outcome: int  # 0 success, 4 minor failure (4xx), 8 serious failure (5xx), 12 major
    client_id: str | None
    address: str | None = None
    entities: Sequence[str] = ()  # references: Patient/1, Patient/1/_history/2
    query: str | None = None
    detail: str | None = None  # an error code, never patient data
    recorded: int = 0  # microseconds; 0: when the row is built

    def row(self) -> dict[str, Any]:
        return dict(zip(AUDIT_COLS, self.values(), strict=True))

    def values(self) -> tuple[Any, ...]:
        """The ``audit_event`` row, in ``AUDIT_COLS`` order."""
        recorded = self.recorded or now_micros()
        event_id = _event_id(recorded)
        when = instant(recorded)
        subtype = self.subtype
        action = ACTIONS.get(subtype, "E")
        agent: dict[str, Any] = {
            "type": _AGENT_TYPE,
            "who": {"identifier": {"system": "https://fhirhub.dev/client", "value": self.client_id or "anonymous"}},
            "requestor": True,
        }
        if self.address:
            agent["network"] = {"address": self.address, "type": "2"}
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": event_id,
            "meta": {"versionId": _META_VERSION, "lastUpdated": when},
            "type": _TYPE_APP if subtype in _NOT_REST else _TYPE_REST,
            "subtype": _subtype(subtype),
            "action": action,
            "recorded": when,
            "outcome": str(self.outcome),
            "agent": [agent],
            "source": _SOURCE,
        }
        if self.detail:
            event["outcomeDesc"] = self.detail
        entities: list[dict[str, Any]] = [{"what": {"reference": ref}} for ref in self.entities]
        if self.query is not None:
            entities.append({"type": _QUERY_TYPE, "query": base64.b64encode(self.query.encode()).decode()})
        if entities:
            event["entity"] = entities
        return (event_id, recorded, self.client_id, action, subtype, self.outcome, " ".join(self.entities) or None,
                orjson.dumps(event))


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def outcome_code(status: int) -> int:
    return 0 if status < 400 else 4 if status < 500 else 8


class AuditTrail:
    """Writes AuditEvents: in the caller's transaction (:meth:`write`), or batched (:meth:`enqueue`).

    Batching: ``enqueue`` stamps the record's time and appends it to a deque (no lock, no thread
    wake-up); a writer wakes every ``interval`` seconds — or as soon as ``batch`` records wait —
    builds the rows and inserts them in one transaction. So a burst of reads costs one write
    transaction per interval, not one per event. The writer is a task on the event loop given to
    :meth:`run_on` (a serving process on SQLite), else a thread of its own.
    """

    def __init__(self, db: Database, *, batch: int = 500, interval: float = 0.05) -> None:
        self.db = db
        self.batch = batch
        self.interval = interval
        self._pending: collections.deque[AuditRecord] = collections.deque()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one batch at a time (writer thread, flush_now)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop_wake: asyncio.Event | None = None
        self._in_flight = 0  # batches the loop writer has taken and not yet written
        self._idle = threading.Condition()

    # -- in the caller's transaction (writes)
    def write(self, conn: Connection, records: Iterable[AuditRecord]) -> None:
        sql.insert_many(conn, audit_t, AUDIT_COLS, [r.values() for r in records])

    # -- batched (reads, failures)
    def enqueue(self, record: AuditRecord) -> None:
        if not record.recorded:
            record.recorded = now_micros()  # when it happened, not when the batch is written
        self._pending.append(record)
        if self._loop is not None:
            if len(self._pending) >= self.batch:
                self._wake_loop()
        elif self._thread is None:
            self.start()
        elif len(self._pending) >= self.batch:
            self._wake.set()

    # -- the writer as a task on an event loop (serving processes on SQLite)
    def run_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write the batches from a task on ``loop`` (call it from that loop, at start-up).

        In a process that serves requests the loop's thread holds the GIL most of the time. A writer
        thread beside it pays for every batch twice: each row's insert gives the GIL up inside the
        driver and waits to get it back from the loop, and the loop is made to hand it over (measured on
        SQLite, reads by id at 16 clients: 52 µs of writer-thread CPU per event, against 13 µs for the
        same insert in a quiet process, and the loop itself ~50 µs slower per request). A task on the
        loop commits through :meth:`Database.submit_async`, as the REST writes do: on the loop thread
        itself, grouped with the writes queued meanwhile (only waiting for the write lock that another
        process holds goes to a thread). Events queued before this call are written by the first batch.

        SQLite only: on PostgreSQL the thread stays. There a batch is one statement whose driver waits on
        the network without the GIL, so the thread costs little; and ``submit_async`` would put the batch
        in the writer thread's group commit, after the group's creates had taken the lock that orders
        commits, and hold it for more round trips.
        """
        if not self.db.is_sqlite:
            return
        self._loop_wake = asyncio.Event()
        self._loop = loop
        with self._start_lock:  # a writer thread started by an earlier event: the task takes over from it
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stopped.set()
            self._wake.set()
            thread.join(5)
            self._stopped.clear()
        self._task = loop.create_task(self._run_async(), name="audit-writer")

    async def stop_loop(self) -> None:
        """Stop the loop's writer once its batch in hand is written, then write what is still queued
        (the API process's shutdown; what fails here is left to :meth:`close`)."""
        task, self._task = self._task, None
        self._loop = None
        if task is None:
            return
        if self._loop_wake is not None:
            self._loop_wake.set()
        await task
        await self._write_async()

    def _wake_loop(self) -> None:
        loop, wake = self._loop, self._loop_wake
        if loop is None or wake is None:
            return
        if _running_on(loop):
            wake.set()
        else:  # a read served in a worker thread
            with contextlib.suppress(RuntimeError):  # the loop is closing: its last batch takes the record
                loop.call_soon_threadsafe(wake.set)

    async def _run_async(self) -> None:
        wake = self._loop_wake
        assert wake is not None
        while self._loop is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)
            wake.clear()
            if not await self._write_async() and self._loop is not None:
                await asyncio.sleep(1.0)

    async def _write_async(self) -> bool:
        """Write what is pending now, ``batch`` records per transaction; False if a batch failed (it is queued again)."""
        todo = len(self._pending)
        while todo > 0:
            with self._idle:
                self._in_flight += 1  # counted before the records leave the queue: flush_now() waits for them
            try:
                items = self._take(min(todo, self.batch))
                if not items:
                    return True
                todo -= len(items)
                try:
                    await self.db.submit_async(functools.partial(self.write, records=items))
                except Exception as exc:  # noqa: BLE001 - keep the writer alive
                    self._put_back(items, exc)
                    return False
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()
        return True

    def _take(self, n: int) -> list[AuditRecord]:
        """Up to ``n`` records from the head of the queue (another writer may be taking from it too)."""
        items: list[AuditRecord] = []
        popleft = self._pending.popleft
        with contextlib.suppress(IndexError):
            for _ in range(n):
                items.append(popleft())
        return items

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._stopped.clear()
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        """Write what is pending now, ``batch`` records per transaction (what arrives meanwhile waits for the next turn)."""
        with self._flush_lock:
            todo = len(self._pending)
            while todo > 0:
                items = self._take(min(todo, self.batch))
                if not items:
                    return
                todo -= len(items)
                if not self._flush(items):
                    return

    def _flush(self, items: list[AuditRecord]) -> bool:
        try:
            with self.db.write() as conn:
                self.write(conn, items)
            return True
        except Exception as exc:  # noqa: BLE001 - keep the writer alive
            self._put_back(items, exc)
            self._stopped.wait(1.0)
            return False

    def _put_back(self, items: list[AuditRecord], exc: Exception) -> None:
        """A batch that could not be written goes back to the head of the queue, in order, for the next turn."""
        log.error("audit batch of %d events not written (%s); retrying", len(items), type(exc).__name__)
        self._pending.extendleft(reversed(items))

    def flush_now(self) -> None:
        """Write everything queued so far (tests, shutdown), and wait for the loop writer's batch in hand
        (unless called on that loop, which could not go on while waiting)."""
        self._drain()
        loop = self._loop
        if loop is not None and not _running_on(loop):
            with self._idle:
                self._idle.wait_for(lambda: self._in_flight == 0, timeout=10)

    def close(self) -> None:
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stopped.set()
            self._wake.set()
            thread.join(5)
        self.flush_now()


# ------------------------------------------------------------------ reading the trail
AUDIT_PARAMS = {"date", "agent", "entity", "subtype", "outcome", "action", "_count", "_page", "_id"}


def search(conn: Connection, params: list[tuple[str, str]], base_url: str, page_size: int, max_size: int,
           strict: bool) -> bytes:
    """``GET /fhir/AuditEvent``: date (ge/gt/le/lt/eq prefixes), agent (client id), entity, subtype, outcome, action."""
    a = audit_t.c
    stmt = select(a.pk, a.event_id, a.data)
    unknown = sorted({k for k, _ in params if k not in AUDIT_PARAMS})
    if unknown and strict:
        raise invalid("FHIRHUB-PARAM-UNKNOWN", f"Unsupported AuditEvent parameter(s): {', '.join(unknown)}")
    count = page_size
    for name, value in params:
        if name == "date":
            prefix, raw = (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", value)
            moment = parse_instant_micros(raw, "date")
            column = a.recorded
            stmt = stmt.where(
                {"ge": column >= moment, "gt": column > moment, "le": column <= moment, "lt": column < moment, "eq": column == moment}[prefix]
            )
        elif name == "agent":
            stmt = stmt.where(a.client_id.in_(value.split(",")))
        elif name == "entity":
            stmt = stmt.where(a.entity.contains(value, autoescape=True))
        elif name == "subtype":
            stmt = stmt.where(a.subtype.in_([v.split("|")[-1] for v in value.split(",")]))
        elif name == "outcome":
            stmt = stmt.where(a.outcome.in_([int(v) for v in value.split(",") if v.isdigit()]))
        elif name == "action":
            stmt = stmt.where(a.action.in_(value.split(",")))
        elif name == "_id":
            stmt = stmt.where(a.event_id.in_(value.split(",")))
        elif name == "_count":
            if not value.isdigit():
                raise invalid("FHIRHUB-PARAM-COUNT", "_count must be a non-negative integer")
            count = min(int(value), max_size)
        elif name == "_page":
            if not value.isdigit():
                raise invalid("FHIRHUB-PARAM-PAGE", "_page is not a page this server gave out")
            stmt = stmt.where(a.pk < int(value))
    rows = list(conn.execute(stmt.order_by(a.pk.desc()).limit(count + 1)))
    more = len(rows) > count
    rows = rows[:count]
    keep = [(k, v) for k, v in params if k != "_page"]
    links = {"self": f"{base_url}/AuditEvent?{urlencode(params)}"}
    if more and rows:
        links["next"] = f"{base_url}/AuditEvent?{urlencode([*keep, ('_page', str(rows[-1].pk))])}"
    entries = [Entry(f"{base_url}/AuditEvent/{r.event_id}", r.data, {"search": {"mode": "match"}}) for r in rows]
    return assemble("searchset", entries, links=links)


def read(conn: Connection, event_id: str) -> bytes | None:
    row = conn.execute(select(audit_t.c.data).where(audit_t.c.event_id == event_id)).first()
    return None if row is None else bytes(row.data)
