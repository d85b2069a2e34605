"""The sync tables' reads and writes (synchronous; the connector calls them in a worker thread).

Each function takes the caller's connection, so a page's links, its watermark and its
dead letters — or a push's link and the outbox cursor — commit in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from hub.store import outbox
from hub.store.repository import now_micros
from hub.store.tables import outbox_t
from hub.sync.tables import connector_t, dead_letter_t, link_t, state_t

CHUNK = 500


@dataclass(frozen=True)
class Link:
    res_type: str
    local_id: str
    remote_id: str
    remote_version: str | None
    local_version: int | None


def _link(row: Any) -> Link:
    return Link(row.res_type, row.local_id, row.remote_id, row.remote_version, row.local_version)


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def links_by_remote(conn: Connection, connector: str, res_type: str, remote_ids: Iterable[str]) -> dict[str, Link]:
    ids = sorted(set(remote_ids))
    out: dict[str, Link] = {}
    c = link_t.c
    for chunk in _chunks(ids):
        for row in conn.execute(select(link_t).where(c.connector == connector, c.res_type == res_type, c.remote_id.in_(chunk))):
            out[row.remote_id] = _link(row)
    return out


def links_by_local(conn: Connection, connector: str, res_type: str, local_ids: Iterable[str]) -> dict[str, Link]:
    ids = sorted(set(local_ids))
    out: dict[str, Link] = {}
    c = link_t.c
    for chunk in _chunks(ids):
        for row in conn.execute(select(link_t).where(c.connector == connector, c.res_type == res_type, c.local_id.in_(chunk))):
            out[row.local_id] = _link(row)
    return out


def upsert_links(conn: Connection, connector: str, links: Sequence[Link]) -> None:
    """Record links; a link replaces any older one of the same local or remote resource."""
    if not links:
        return
    c = link_t.c
    by_type: dict[str, list[Link]] = {}
    for link in links:
        by_type.setdefault(link.res_type, []).append(link)
    for res_type, items in by_type.items():
        locals_ = [x.local_id for x in items]
        remotes = [x.remote_id for x in items]
        for lc, rc in zip(_chunks(locals_), _chunks(remotes), strict=True):
            conn.execute(delete(link_t).where(c.connector == connector, c.res_type == res_type,
                                              or_(c.local_id.in_(lc), c.remote_id.in_(rc))))
    now = now_micros()
    conn.execute(insert(link_t), [
        {"connector": connector, "res_type": x.res_type, "local_id": x.local_id, "remote_id": x.remote_id,
         "remote_version": x.remote_version, "local_version": x.local_version, "updated": now}
        for x in {(x.res_type, x.local_id): x for x in links}.values()
    ])


def count_links(conn: Connection, connector: str) -> dict[str, int]:
    c = link_t.c
    rows = conn.execute(select(c.res_type, func.count()).where(c.connector == connector).group_by(c.res_type))
    return {r[0]: int(r[1]) for r in rows}


# ------------------------------------------------------------------------------ state
@dataclass
class State:
    res_type: str
    direction: str
    watermark: str | None = None
    next_url: str | None = None
    run_max: str | None = None
    last_success: int | None = None
    last_attempt: int | None = None
    last_error: str | None = None
    count: int = 0
    errors: int = 0


def get_state(conn: Connection, connector: str, res_type: str, direction: str) -> State:
    c = state_t.c
    row = conn.execute(select(state_t).where(c.connector == connector, c.res_type == res_type, c.direction == direction)).first()
    if row is None:
        return State(res_type, direction)
    return _state(row)


def _ensure_state(conn: Connection, connector: str, res_type: str, direction: str) -> None:
    c = state_t.c
    exists = conn.execute(select(c.pk).where(c.connector == connector, c.res_type == res_type, c.direction == direction)).first()
    if exists is None:
        conn.execute(insert(state_t).values(connector=connector, res_type=res_type, direction=direction, count=0, errors=0))


def save_state(conn: Connection, connector: str, res_type: str, direction: str, *, add_count: int = 0,
               success: bool = False, error: str | None = None, **values: Any) -> None:
    """Update one state row: ``values`` (watermark, next_url, run_max), counts, and the outcome."""
    _ensure_state(conn, connector, res_type, direction)
    c = state_t.c
    now = now_micros()
    changes: dict[str, Any] = dict(values)
    changes["last_attempt"] = now
    if add_count:
        changes["count"] = c.count + add_count
    if success:
        changes["last_success"] = now
        changes["last_error"] = None
    if error is not None:
        changes["last_error"] = error[:2000]
        changes["errors"] = c.errors + 1
    conn.execute(update(state_t).where(c.connector == connector, c.res_type == res_type, c.direction == direction).values(**changes))


def states(conn: Connection, connector: str) -> list[State]:
    c = state_t.c
    rows = conn.execute(select(state_t).where(c.connector == connector).order_by(c.direction, c.res_type))
    return [_state(r) for r in rows]


def _state(row: Any) -> State:
    m = row._mapping  # ``row.count`` would be the tuple method
    return State(m["res_type"], m["direction"], m["watermark"], m["next_url"], m["run_max"], m["last_success"],
                 m["last_attempt"], m["last_error"], int(m["count"]), int(m["errors"]))


# ------------------------------------------------------------------------------ dead letters
@dataclass
class DeadLetter:
    direction: str
    res_type: str
    code: str
    reason: str
    local_id: str | None = None
    remote_id: str | None = None
    version: str | None = None
    http_status: int | None = None
    outcome: dict[str, Any] | None = None
    pk: int | None = None
    status: str = "dead"
    resolve: str | None = None
    attempts: int = 1
    created: int = 0
    updated: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.pk, "direction": self.direction, "type": self.res_type, "localId": self.local_id,
            "remoteId": self.remote_id, "version": self.version, "status": self.status, "resolve": self.resolve,
            "httpStatus": self.http_status, "code": self.code, "reason": self.reason, "outcome": self.outcome,
            "attempts": self.attempts, "created": self.created, "updated": self.updated,
        }


def _dead_letter(row: Any) -> DeadLetter:
    return DeadLetter(row.direction, row.res_type, row.code, row.reason, row.local_id, row.remote_id, row.version,
                      row.http_status, orjson.loads(row.outcome) if row.outcome else None, int(row.pk), row.status,
                      row.resolve, int(row.attempts), int(row.created), int(row.updated))


def add_dead_letter(conn: Connection, connector: str, dl: DeadLetter) -> None:
    """Record a dead letter; an open one for the same resource and direction is updated instead."""
    now = now_micros()
    c = dead_letter_t.c
    key = c.local_id == dl.local_id if dl.local_id is not None else c.remote_id == dl.remote_id
    existing = conn.execute(select(c.pk, c.attempts).where(
        c.connector == connector, c.direction == dl.direction, c.res_type == dl.res_type, key,
        c.status.in_(("dead", "replay")))).first()
    values = {"version": dl.version, "http_status": dl.http_status, "code": dl.code, "reason": dl.reason[:4000],
              "outcome": orjson.dumps(dl.outcome) if dl.outcome is not None else None, "updated": now,
              "remote_id": dl.remote_id, "local_id": dl.local_id}
    if existing is not None:
        conn.execute(update(dead_letter_t).where(c.pk == existing.pk).values(
            status="dead", resolve=None, attempts=int(existing.attempts) + 1, **values))
        return
    conn.execute(insert(dead_letter_t).values(connector=connector, direction=dl.direction, res_type=dl.res_type,
                                              status="dead", attempts=1, created=now, **values))


def dead_letters(conn: Connection, connector: str, statuses: Sequence[str] = ("dead", "replay"), limit: int = 200) -> list[DeadLetter]:
    c = dead_letter_t.c
    rows = conn.execute(select(dead_letter_t).where(c.connector == connector, c.status.in_(statuses)).order_by(c.pk).limit(limit))
    return [_dead_letter(r) for r in rows]


def dead_letter(conn: Connection, connector: str, pk: int) -> DeadLetter | None:
    c = dead_letter_t.c
    row = conn.execute(select(dead_letter_t).where(c.connector == connector, c.pk == pk)).first()
    return None if row is None else _dead_letter(row)


def request_replay(conn: Connection, connector: str, pks: Sequence[int] | None, resolve: str | None = None) -> int:
    """Mark dead letters (all of the connector's when ``pks`` is None) to be replayed by the running connector."""
    c = dead_letter_t.c
    stmt = update(dead_letter_t).where(c.connector == connector, c.status == "dead")
    if pks is not None:
        stmt = stmt.where(c.pk.in_(list(pks)))
    return int(conn.execute(stmt.values(status="replay", resolve=resolve, updated=now_micros())).rowcount or 0)


def resolve_dead_letter(conn: Connection, pk: int) -> None:
    c = dead_letter_t.c
    conn.execute(update(dead_letter_t).where(c.pk == pk).values(status="resolved", updated=now_micros()))


def backlog(conn: Connection, connector: str) -> dict[str, int]:
    c = dead_letter_t.c
    rows = conn.execute(select(c.status, func.count()).where(c.connector == connector).group_by(c.status))
    return {r[0]: int(r[1]) for r in rows}


# ------------------------------------------------------------------------------ discovery
def save_discovery(conn: Connection, connector: str, report: dict[str, Any]) -> None:
    c = connector_t.c
    data = orjson.dumps(report)
    now = now_micros()
    if conn.execute(select(c.pk).where(c.name == connector)).first() is None:
        conn.execute(insert(connector_t).values(name=connector, discovered=now, discovery=data))
    else:
        conn.execute(update(connector_t).where(c.name == connector).values(discovered=now, discovery=data))


def load_discovery(conn: Connection, connector: str) -> dict[str, Any] | None:
    row = conn.execute(select(connector_t.c.discovery).where(connector_t.c.name == connector)).first()
    if row is None or row.discovery is None:
        return None
    loaded: dict[str, Any] = orjson.loads(row.discovery)
    return loaded


# ------------------------------------------------------------------------------ push backlog
def push_pending(conn: Connection, consumer: str, types: Sequence[str]) -> tuple[int, int | None]:
    """Outbox rows of ``types`` after the push cursor, and the time (µs) of the oldest, if any."""
    if not types:
        return 0, None
    c = outbox.consumer_t.c
    row = conn.execute(select(c.last_pk).where(c.name == consumer)).first()
    cursor = int(row.last_pk) if row is not None else 0
    o = outbox_t.c
    found = conn.execute(select(func.count(), func.min(o.at)).where(and_(
        o.pk > cursor, o.res_type.in_(sorted(types)), or_(o.origin.is_(None), o.origin != consumer)))).first()
    assert found is not None
    return int(found[0]), (int(found[1]) if found[1] is not None else None)
