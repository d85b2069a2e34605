"""The audit trail: an AuditEvent, shaped after IHE Basic Audit Log Patterns, for every interaction.

* Writes: the event is inserted in the same database transaction as the change.
* Reads and failures: events are queued and written in batches by one background
  thread (``AuditTrail.flush`` every 50 ms or 500 events), which keeps the cost of
  auditing reads small. A read's event is queued before its response is returned;
  the queue is flushed at shutdown.
* Append-only: the ``audit_event`` table has no update or delete anywhere in the
  hub, and the REST API refuses create/update/patch/delete on AuditEvent (405).
  A client with the ``fhirhub/audit`` scope searches it at ``/fhir/AuditEvent``.

No patient data goes into an event beyond resource references and, for a search,
the query string (base64 in ``entity.query``, as the FHIR spec and BALP prescribe).
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import uuid
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


@dataclass
class AuditRecord:
    subtype: str  # the restful-interaction code, or hl7v2 / sync / authorize
    outcome: int  # 0 success, 4 minor failure (4xx), 8 serious failure (5xx), 12 major
    client_id: str | None
    address: str | None = None
    entities: Sequence[str] = ()  # references: Patient/1, Patient/1/_history/2
    query: str | None = None
    detail: str | None = None  # an error code, never patient data
    recorded: int = 0

    def row(self) -> dict[str, Any]:
        event_id = str(uuid.uuid4())
        recorded = self.recorded or now_micros()
        action = ACTIONS.get(self.subtype, "E")
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": event_id,
            "meta": {"versionId": "1", "lastUpdated": instant(recorded)},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest" if self.subtype not in ("hl7v2", "sync", "authorize") else "110100",
                "display": "RESTful Operation" if self.subtype not in ("hl7v2", "sync", "authorize") else "Application Activity",
            },
            "subtype": [{"system": RESTFUL if self.subtype in ACTIONS else "https://fhirhub.dev/CodeSystem/audit-subtype", "code": self.subtype}],
            "action": action,
            "recorded": instant(recorded),
            "outcome": str(self.outcome),
            "agent": [
                {
                    "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
                    "who": {"identifier": {"system": "https://fhirhub.dev/client", "value": self.client_id or "anonymous"}},
                    "requestor": True,
                    **({"network": {"address": self.address, "type": "2"}} if self.address else {}),
                }
            ],
            "source": {
                "observer": {"display": "fhirhub"},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
            },
        }
        if self.detail:
            event["outcomeDesc"] = self.detail
        entities: list[dict[str, Any]] = [{"what": {"reference": ref}} for ref in self.entities]
        if self.query is not None:
            entities.append(
                {
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                    "query": base64.b64encode(self.query.encode()).decode(),
                }
            )
        if entities:
            event["entity"] = entities
        return {
            "event_id": event_id,
            "recorded": recorded,
            "client_id": self.client_id,
            "action": action,
            "subtype": self.subtype,
            "outcome": self.outcome,
            "entity": " ".join(self.entities) or None,
            "data": orjson.dumps(event),
        }


def outcome_code(status: int) -> int:
    return 0 if status < 400 else 4 if status < 500 else 8


class AuditTrail:
    def __init__(self, db: Database, *, batch: int = 500, interval: float = 0.05) -> None:
        self.db = db
        self.batch = batch
        self.interval = interval
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- in the caller's transaction (writes)
    def write(self, conn: Connection, records: Iterable[AuditRecord]) -> None:
        rows = [r.row() for r in records]
        sql.insert_many(conn, audit_t, AUDIT_COLS, [tuple(row[c] for c in AUDIT_COLS) for row in rows])

    # -- batched (reads, failures)
    def enqueue(self, record: AuditRecord) -> None:
        self._queue.put(record)
        if self._thread is None:
            self.start()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                first = self._queue.get(timeout=self.interval)
            except queue.Empty:
                continue
            if first is None:
                break
            items = [first]
            while len(items) < self.batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._stopped.set()
                    break
                items.append(nxt)
            self._flush(items)

    def _flush(self, items: list[AuditRecord]) -> None:
        try:
            with self.db.write() as conn:
                self.write(conn, items)
        except Exception as exc:  # noqa: BLE001 - keep the writer alive; the events go back on the queue
            log.error("audit batch of %d events not written (%s); retrying", len(items), type(exc).__name__)
            for item in items:
                self._queue.put(item)
            self._stopped.wait(1.0)

    def flush_now(self) -> None:
        """Write everything queued so far (tests, shutdown)."""
        items: list[AuditRecord] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                items.append(item)
        if items:
            self._flush(items)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None
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
