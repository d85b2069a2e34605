"""The audit trail: an AuditEvent, shaped after IHE Basic Audit Log Patterns, for every interaction.

* Writes: the event is inserted in the same database transaction as the change.
* Reads and failures: events are queued and written in batches (every 50 ms, or as
  soon as 500 events wait), which keeps the cost of auditing reads small: queuing is
  an append, with no lock and no thread wake-up, and a busy second costs about
  twenty write transactions, not one per event. In a serving process on SQLite the
  batches are written by a task on its event loop (see :meth:`AuditTrail.run_on`);
  otherwise by one background thread. A read's event is queued (with its time)
  before its response is returned; the queue is flushed at shutdown.
* Compact rows: a batch is stored as one ``audit_event`` row per (client, interaction, outcome) holding
  its events (``count``, ``events``: each event's time, references, address, query and detail, as JSON),
  so a burst of reads by one client is one row per batch, not one insert (with four index entries) per
  read. The columns that searches filter on stay columns (client, action, subtype, outcome, the first and
  last time, every reference); the AuditEvent resources are built when they are read. An event's id is
  ``{row}.{position}``; events written before revision 0010 were a row (with its JSON) each, and keep
  their ids.
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
import operator
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import Connection, and_, func, or_, select

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
AUDIT_COLS = ("recorded", "recorded_last", "client_id", "action", "subtype", "outcome", "entity", "count", "events")


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


def rows(records: Iterable[AuditRecord]) -> list[tuple[Any, ...]]:
    """``audit_event`` rows (``AUDIT_COLS`` order) for ``records``: one per (client, subtype, outcome), in the
    order of each group's first record, each holding its events in the order given."""
    groups: dict[tuple[str | None, str, int], list[AuditRecord]] = {}
    for r in records:
        if not r.recorded:
            r.recorded = now_micros()
        key = (r.client_id, r.subtype, r.outcome)
        group = groups.get(key)
        if group is None:
            groups[key] = [r]
        else:
            group.append(r)
    out = []
    for (client_id, subtype, outcome), group in groups.items():
        times = [r.recorded for r in group]
        refs = " ".join(ref for r in group for ref in r.entities)
        events = orjson.dumps([(r.recorded, r.entities, r.address, r.query, r.detail) for r in group])
        out.append((min(times), max(times), client_id, ACTIONS.get(subtype, "E"), subtype, outcome, refs or None,
                    len(group), events))
    return out


@dataclass(frozen=True)
class StoredEvent:
    """One event of an ``audit_event`` row."""

    event_id: str
    recorded: int
    client_id: str | None
    action: str
    subtype: str
    outcome: int
    entities: tuple[str, ...]
    address: str | None
    query: str | None
    detail: str | None
    legacy: bytes | None = None  # the JSON kept by rows written before revision 0010

    def resource(self) -> bytes:
        """The AuditEvent, as JSON."""
        if self.legacy is not None:
            return self.legacy
        when = instant(self.recorded)
        agent: dict[str, Any] = {
            "type": _AGENT_TYPE,
            "who": {"identifier": {"system": "https://fhirhub.dev/client", "value": self.client_id or "anonymous"}},
            "requestor": True,
        }
        if self.address:
            agent["network"] = {"address": self.address, "type": "2"}
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": self.event_id,
            "meta": {"versionId": _META_VERSION, "lastUpdated": when},
            "type": _TYPE_APP if self.subtype in _NOT_REST else _TYPE_REST,
            "subtype": _subtype(self.subtype),
            "action": self.action,
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
        return orjson.dumps(event)


def expand(row: Any) -> list[StoredEvent]:
    """The events of an ``audit_event`` row, in the order they were recorded."""
    if row.events is None:  # written before revision 0010: one event, its JSON kept
        return [StoredEvent(row.event_id, row.recorded, row.client_id, row.action, row.subtype, row.outcome,
                            tuple((row.entity or "").split()), None, None, None, bytes(row.data))]
    return [
        StoredEvent(f"{row.pk}.{i}", recorded, row.client_id, row.action, row.subtype, row.outcome, tuple(entities),
                    address, query, detail)
        for i, (recorded, entities, address, query, detail) in enumerate(orjson.loads(row.events))
    ]


def stored_events(conn: Connection, *where: Any) -> list[StoredEvent]:
    """Every stored event of the rows matching ``where`` (SQLAlchemy conditions on ``audit_t``), oldest first."""
    return [e for row in conn.execute(select(audit_t).where(*where).order_by(audit_t.c.pk)) for e in expand(row)]


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
        sql.insert_many(conn, audit_t, AUDIT_COLS, rows(records))

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
ROWS_PER_READ = 64  # rows fetched at a time while a page of events is filled
_DATE_TESTS: dict[str, Callable[[int, int], bool]] = {
    "ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt, "eq": operator.eq,
}
_NEW_ID = re.compile(r"^(\d{1,18})\.(\d{1,9})$")  # {row}.{position}; older ids are UUIDs


def _position(value: str) -> tuple[int, int]:
    m = _NEW_ID.match(value)
    if m is None:
        raise invalid("FHIRHUB-PARAM-PAGE", "_page is not a page this server gave out")
    return int(m.group(1)), int(m.group(2))


def search(conn: Connection, params: list[tuple[str, str]], base_url: str, page_size: int, max_size: int,
           strict: bool) -> bytes:
    """``GET /fhir/AuditEvent``: date (ge/gt/le/lt/eq prefixes), agent (client id), entity, subtype, outcome,
    action, _id; newest first.

    The row columns narrow the rows in SQL (client, subtype, outcome and action are the same for every
    event of a row; a row's first and last times bound its events'; ``entity`` holds every reference of
    the row); the events of those rows are then tested one by one for what a row cannot tell.
    """
    a = audit_t.c
    stmt = select(audit_t)
    unknown = sorted({k for k, _ in params if k not in AUDIT_PARAMS})
    if unknown and strict:
        raise invalid("FHIRHUB-PARAM-UNKNOWN", f"Unsupported AuditEvent parameter(s): {', '.join(unknown)}")
    count = page_size
    tests: list[Callable[[StoredEvent], bool]] = []
    after: tuple[int, int] | None = None
    for name, value in params:
        if name == "date":
            prefix, raw = (value[:2], value[2:]) if value[:2] in _DATE_TESTS else ("eq", value)
            moment = parse_instant_micros(raw, "date")
            first, last = a.recorded, func.coalesce(a.recorded_last, a.recorded)
            stmt = stmt.where({"ge": last >= moment, "gt": last > moment, "le": first <= moment, "lt": first < moment,
                               "eq": and_(first <= moment, last >= moment)}[prefix])
            test = _DATE_TESTS[prefix]
            tests.append(lambda e, test=test, moment=moment: test(e.recorded, moment))  # type: ignore[misc]
        elif name == "agent":
            stmt = stmt.where(a.client_id.in_(value.split(",")))
        elif name == "entity":
            refs = value.split(",")
            stmt = stmt.where(or_(*(a.entity.contains(ref, autoescape=True) for ref in refs)))
            wanted = set(refs)
            # exact, or the same resource at a version (writes record Patient/1/_history/2): as a reference search
            tests.append(lambda e, wanted=wanted: any(  # type: ignore[misc]
                ref in wanted or ref.partition("/_history/")[0] in wanted for ref in e.entities))
        elif name == "subtype":
            stmt = stmt.where(a.subtype.in_([v.split("|")[-1] for v in value.split(",")]))
        elif name == "outcome":
            stmt = stmt.where(a.outcome.in_([int(v) for v in value.split(",") if v.isdigit()]))
        elif name == "action":
            stmt = stmt.where(a.action.in_(value.split(",")))
        elif name == "_id":
            ids = value.split(",")
            new = [m for m in (_NEW_ID.match(i) for i in ids) if m is not None]
            stmt = stmt.where(or_(a.event_id.in_(ids), a.pk.in_([int(m.group(1)) for m in new])))
            wanted_ids = set(ids)
            tests.append(lambda e, wanted_ids=wanted_ids: e.event_id in wanted_ids)  # type: ignore[misc]
        elif name == "_count":
            if not value.isdigit():
                raise invalid("FHIRHUB-PARAM-COUNT", "_count must be a non-negative integer")
            count = min(int(value), max_size)
        elif name == "_page":
            after = _position(value)
            stmt = stmt.where(a.pk <= after[0])
    found: list[tuple[int, int, StoredEvent]] = []
    stmt = stmt.order_by(a.pk.desc())
    offset = 0
    while len(found) <= count:
        batch = conn.execute(stmt.limit(ROWS_PER_READ).offset(offset)).all()
        for row in batch:
            events = expand(row)
            for i in range(len(events) - 1, -1, -1):  # newest first
                if after is not None and (row.pk, i) >= after:
                    continue
                event = events[i]
                if all(test(event) for test in tests):
                    found.append((row.pk, i, event))
            if len(found) > count:
                break
        if len(batch) < ROWS_PER_READ:
            break
        offset += ROWS_PER_READ
    more = len(found) > count
    found = found[:count]
    keep = [(k, v) for k, v in params if k != "_page"]
    links = {"self": f"{base_url}/AuditEvent?{urlencode(params)}"}
    if more and found:
        pk, i, _ = found[-1]
        links["next"] = f"{base_url}/AuditEvent?{urlencode([*keep, ('_page', f'{pk}.{i}')])}"
    entries = [Entry(f"{base_url}/AuditEvent/{e.event_id}", e.resource(), {"search": {"mode": "match"}}) for _, _, e in found]
    return assemble("searchset", entries, links=links)


def read(conn: Connection, event_id: str) -> bytes | None:
    m = _NEW_ID.match(event_id)
    a = audit_t.c
    cond = a.pk == int(m.group(1)) if m is not None else a.event_id == event_id
    row = conn.execute(select(audit_t).where(cond)).first()
    if row is None:
        return None
    return next((e.resource() for e in expand(row) if e.event_id == event_id), None)
