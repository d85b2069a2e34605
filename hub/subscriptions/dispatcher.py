"""The dispatcher: reads the outbox once, matches each change against every subscription and workflow.

One outbox consumer (``subscriptions``). For each batch of changes after its cursor it fetches the
versions it needs (the new one, and the previous one where a trigger looks at ``%previous``),
matches them in memory (search matcher + FHIRPath), and in ONE write transaction:

* inserts a ``sub_delivery`` row per (subscription, change) match, numbering topic events;
* inserts a ``wf_run`` row per (workflow, change) match, cancelling older waiting runs of the
  same workflow and resource (a newer change supersedes them);
* records Subscription changes (their parsed spec and decided status) in ``sub_state``;
* advances the cursor, compare-and-set, so two processes never both apply a batch.

Only after the commit are the new rows handed to the delivery engine and the workflow runner,
so nothing is sent that is not recorded, and a crash replays from the last committed cursor.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, insert, update

from hub.store import outbox, sql
from hub.store.outbox import OutboxRow
from hub.subscriptions import spec as specs
from hub.subscriptions.delivery import Item
from hub.subscriptions.notify import Event
from hub.subscriptions.tables import delivery_t, run_t, sub_state_t

if TYPE_CHECKING:
    from hub.subscriptions.service import SubscriptionService, SubState

log = logging.getLogger("hub.subscriptions.dispatcher")
CONSUMER = "subscriptions"
BATCH = 500
RUN_NS = uuid.UUID("0c8f7a52-1d7e-4f0e-9a55-2c3f3b1e7d10")


CURSOR_EVERY = 5.0  # seconds between cursor writes while nothing matches


class CursorMoved(Exception):
    """Another process advanced the cursor: reload and go on from there."""


@dataclass
class Batch:
    cursor: int
    items: list[Item] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)  # wf_run pks
    states: dict[str, SubState] = field(default_factory=dict)  # changed subscriptions
    cancelled_subs: list[str] = field(default_factory=list)
    rows: int = 0


class Dispatcher:
    def __init__(self, service: SubscriptionService) -> None:
        self.service = service
        self.cursor = 0  # the last outbox key handled, in memory
        self.persisted = 0  # the last outbox key recorded in outbox_consumer
        self.persisted_at = 0.0

    def load_cursor(self) -> None:
        with self.service.db.write() as conn:
            self.cursor = outbox.cursor(conn, CONSUMER, start_at_head=self.service.settings.subscription_start == "head")
        self.persisted = self.cursor

    # ------------------------------------------------------------------ one batch (in a worker thread)
    def step(self) -> Batch | None:
        svc = self.service
        interest = {"Subscription"} | {wf.trigger.res_type for wf in svc.workflows}
        for st in svc.states.values():
            if st.spec is not None and st.status not in ("off", "deleted"):
                interest |= st.spec.types
        # Two statements, no snapshot needed (a committed version never changes): no BEGIN and ROLLBACK.
        with svc.db.read_once() as conn:
            rows = outbox.read_after(conn, self.cursor, BATCH)
            if not rows:
                return None
            if any(r.res_type == "Subscription" for r in rows):
                interest = {r.res_type for r in rows}  # a new subscription may want any type that follows it
            data = self._fetch(conn, [r for r in rows if r.res_type in interest])
        batch = Batch(rows[-1].pk, rows=len(rows))
        states = dict(svc.states)  # working copy: Subscription changes apply in outbox order
        events = {sid: st.events for sid, st in states.items()}
        deliveries: list[dict[str, Any]] = []
        runs: list[dict[str, Any]] = []
        now = svc.clock()
        for row in rows:
            if row.res_type not in interest:
                continue
            current = data.get((row.resource_pk, row.version))
            previous = data.get((row.resource_pk, row.version - 1)) if row.version > 1 else None
            change = specs.Change(row.res_type, row.interaction, _obj(current), _obj(previous), svc.matcher)
            for st in states.values():
                sp = st.spec
                if sp is None or st.status in ("off", "deleted") or row.res_type not in sp.types:
                    continue
                if not any(change.matches(t) for t in sp.triggers):
                    continue
                number = None
                if sp.kind == "topic":
                    events[st.sub_id] = events.get(st.sub_id, 0) + 1
                    number = events[st.sub_id]
                deliveries.append({
                    "sub_id": st.sub_id, "endpoint_key": sp.endpoint_key, "outbox_pk": row.pk, "event_number": number,
                    "res_type": row.res_type, "res_id": row.res_id, "version": row.version,
                    "interaction": row.interaction, "status": "pending", "attempts": 0, "next_at": now,
                    "created_at": row.at, "_data": current,
                })
            for wf in svc.workflows:
                if row.origin == f"workflow:{wf.name}" or not change.matches(wf.trigger):
                    continue
                runs.append({
                    "run_id": str(uuid.uuid5(RUN_NS, f"{wf.name}:{row.pk}")), "workflow": wf.name, "outbox_pk": row.pk,
                    "res_type": row.res_type, "res_id": row.res_id, "version": row.version,
                    "interaction": row.interaction, "status": "pending", "step": 0, "attempts": 0,
                    "created_at": now, "updated_at": now, "_supersede": wf.supersede,
                })
            if row.res_type == "Subscription":
                st = svc.decide(states.get(row.res_id), row, _obj(current), now)
                states[row.res_id] = st
                batch.states[row.res_id] = st
                if st.status == "deleted":
                    batch.cancelled_subs.append(row.res_id)
        for sid, st in batch.states.items():
            st.events = events.get(sid, st.events)
        idle = not (deliveries or runs or batch.states or batch.cancelled_subs)
        if idle and time.monotonic() - self.persisted_at < CURSOR_EVERY:
            # Nothing matched: re-reading these rows after a crash yields nothing either, so the cursor
            # is recorded lazily, sparing a write transaction per change on the single SQLite writer.
            return batch
        with svc.db.write() as conn:
            self._commit(conn, batch, deliveries, runs, events, now)
        self.persisted, self.persisted_at = batch.cursor, time.monotonic()
        return batch

    def _commit(self, conn: Connection, batch: Batch, deliveries: list[dict[str, Any]], runs: list[dict[str, Any]],
                events: dict[str, int], now: int) -> None:
        # PostgreSQL: BEGIN, the cursor's compare-and-set and the reserved keys go in one round trip, and the
        # delivery rows in a second (pipeline mode); then COMMIT. (One statement per round
        # trip was eight a batch, each costing the services process ~0.2-0.4 ms of CPU beside its event loop.)
        with sql.pipeline(conn):
            cas = sql.cursor(conn, CURSOR_CAS_SQL, (batch.cursor, CONSUMER, self.persisted))
            keys = sql.next_pks(conn, delivery_t, len(deliveries)) if deliveries else []
        moved = cas.rowcount
        cas.close()
        if moved != 1:
            raise CursorMoved()
        s = sub_state_t.c
        for sid, st in batch.states.items():
            values = {"version": st.version, "kind": st.kind, "status": st.status, "error": st.error,
                      "spec": st.spec.to_json() if st.spec else None,
                      "endpoint_key": st.spec.endpoint_key if st.spec else st.endpoint_key,
                      "events": st.events, "failures": st.failures, "updated_at": now}
            if conn.execute(update(sub_state_t).where(s.sub_id == sid).values(**values)).rowcount == 0:
                conn.execute(insert(sub_state_t).values(sub_id=sid, created_at=now, **values))
        for sid in batch.cancelled_subs:
            dc = delivery_t.c
            conn.execute(update(delivery_t).where(dc.sub_id == sid, dc.status == "pending")
                         .values(status="cancelled", done_at=now, last_error="subscription deleted"))
        counted = {d["sub_id"] for d in deliveries if d["event_number"] is not None} - set(batch.states)
        for sid in counted:
            conn.execute(update(sub_state_t).where(s.sub_id == sid).values(events=events[sid]))
        if deliveries:
            # Keys reserved first, rows written by the store's bulk insert (pipelined INSERT … SELECT FROM
            # unnest(arrays)): an INSERT … VALUES … RETURNING of hundreds of rows is a new statement text each
            # time, which psycopg parses in Python (it was three quarters of this thread at 2,000 deliveries/s).
            with sql.pipeline(conn):
                sql.insert_many(conn, delivery_t, DELIVERY_COLS,
                                [(pk, *(d.get(c) for c in DELIVERY_COLS[1:])) for pk, d in zip(keys, deliveries, strict=True)])
            for d, pk in zip(deliveries, keys, strict=True):
                ev = Event(pk, d["sub_id"], d["outbox_pk"], d["event_number"], d["res_type"], d["res_id"], d["version"],
                           d["interaction"], d["created_at"], d["_data"])
                batch.items.append(Item(ev, d["endpoint_key"], 0, d["next_at"], None))
        if runs:
            r = run_t.c
            for run in runs:
                if run["_supersede"]:
                    conn.execute(update(run_t).where(
                        r.workflow == run["workflow"], r.res_type == run["res_type"], r.res_id == run["res_id"],
                        r.status.in_(("pending", "waiting")), r.version < run["version"],
                    ).values(status="cancelled", reason="superseded by a later change", ended_at=now, updated_at=now))
            payload = [{k: v for k, v in x.items() if not k.startswith("_")} for x in runs]
            pks = conn.execute(insert(run_t).returning(run_t.c.pk, sort_by_parameter_order=True), payload).all()
            batch.runs = [pk for (pk,) in pks]

    @staticmethod
    def _fetch(conn: Connection, rows: list[OutboxRow]) -> dict[tuple[int, int], bytes | None]:
        """The stored bytes of each changed version and of the version before it."""
        wanted: set[tuple[int, int]] = set()
        for r in rows:
            wanted.add((r.resource_pk, r.version))
            if r.version > 1:
                wanted.add((r.resource_pk, r.version - 1))
        out: dict[tuple[int, int], bytes | None] = {}
        pairs = sorted(wanted)
        if conn.dialect.name == "postgresql":
            # One statement text whatever the count (prepared once): the pairs as two arrays, each looked up
            # through the unique (resource_pk, version) index by the LATERAL probe.
            arrays = ([pk for pk, _ in pairs], [ver for _, ver in pairs])
            for pk, ver, data in sql.fetch_all(conn, VERSIONS_PG_SQL, arrays):
                out[(pk, ver)] = None if data is None else bytes(data)
            return out
        for i in range(0, len(pairs), 200):
            chunk = pairs[i : i + 200]
            params = tuple(x for pair in chunk for x in pair)
            for pk, ver, data in sql.fetch_all(conn, _versions_sql(len(chunk), conn.dialect.name), params):
                out[(pk, ver)] = None if data is None else bytes(data)
        return out


@functools.cache
def _versions_sql(n: int, dialect: str) -> str:
    """SQLite: driver SQL for the stored bytes of ``n`` (resource_pk, version) pairs, a row-value IN list (one
    index probe per pair). PostgreSQL uses :data:`VERSIONS_PG_SQL`."""
    values = ", ".join("({p}, {p})" for _ in range(n))
    return f"SELECT resource_pk, version, data FROM resource_version WHERE (resource_pk, version) IN (VALUES {values})"


# A join of the arrays with the version table could be planned as a scan of the whole table (a never-analyzed
# table looks small); the LATERAL subquery can only be answered by a probe per pair.
VERSIONS_PG_SQL = (
    "SELECT v.resource_pk, v.version, v.data FROM unnest({p}::bigint[], {p}::int[]) AS w(pk, ver)"
    " CROSS JOIN LATERAL (SELECT resource_pk, version, data FROM resource_version"
    " WHERE resource_pk = w.pk AND version = w.ver) AS v"
)
DELIVERY_COLS = ("pk", *sql.insert_columns(delivery_t))
CURSOR_CAS_SQL = f"UPDATE {outbox.consumer_t.name} SET last_pk = {{p}} WHERE name = {{p}} AND last_pk = {{p}}"


def _obj(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    parsed: dict[str, Any] = orjson.loads(data)
    return parsed


