"""Reading changes from the outbox: the only way subscriptions, workflows and sync learn of changes.

Each consumer (a subscription dispatcher, a sync connector) keeps its own cursor, the
last outbox key it has fully handled, in ``outbox_consumer``; it advances the cursor in
the same transaction as the work it records (delivery rows, sync state), so a crash
replays from the last committed cursor and nothing is skipped. Outbox keys commit in
key order (see ``Repository.write_many``), so reading ``pk > cursor`` never misses a row.

:class:`ChangeSignal` wakes consumers in this process as soon as a write commits; a
slow poll remains for changes made by other processes (``fhirhub load``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Connection, String, Table, insert, select, update

from hub.store.tables import PK, metadata, outbox_t

consumer_t = Table(
    "outbox_consumer",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("last_pk", BigInteger, nullable=False, default=0),
)


@dataclass(frozen=True)
class OutboxRow:
    pk: int
    resource_pk: int
    res_type: str
    res_id: str
    version: int
    interaction: str  # create | update | delete
    origin: str | None
    at: int


def read_after(conn: Connection, cursor: int, limit: int = 500, types: frozenset[str] | None = None) -> list[OutboxRow]:
    o = outbox_t.c
    stmt = select(o.pk, o.resource_pk, o.res_type, o.res_id, o.version, o.interaction, o.origin, o.at).where(o.pk > cursor)
    if types is not None:
        stmt = stmt.where(o.res_type.in_(sorted(types)))
    rows = conn.execute(stmt.order_by(o.pk).limit(limit))
    return [OutboxRow(*row) for row in rows]


def head(conn: Connection) -> int:
    """The newest outbox key (0 when empty)."""
    from sqlalchemy import func

    return int(conn.execute(select(func.coalesce(func.max(outbox_t.c.pk), 0))).scalar_one())


def cursor(conn: Connection, consumer: str, *, start_at_head: bool = False) -> int:
    """The consumer's cursor; a new consumer starts at the beginning, or at the current head if asked."""
    row = conn.execute(select(consumer_t.c.last_pk).where(consumer_t.c.name == consumer)).first()
    if row is not None:
        return int(row.last_pk)
    start = head(conn) if start_at_head else 0
    conn.execute(insert(consumer_t).values(name=consumer, last_pk=start))
    return start


def advance(conn: Connection, consumer: str, last_pk: int) -> None:
    conn.execute(update(consumer_t).where(consumer_t.c.name == consumer, consumer_t.c.last_pk < last_pk).values(last_pk=last_pk))


class ChangeSignal:
    """Wakes in-process consumers right after a write commits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._listeners: list[object] = []

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        for listener in list(self._listeners):
            callback = getattr(listener, "wake", None)
            if callback is not None:
                callback()

    def subscribe(self, listener: object) -> None:
        """``listener.wake()`` is called (from the writer's thread) after every commit."""
        self._listeners.append(listener)

    def wait(self, generation: int, timeout: float) -> int:
        """Block until a commit after ``generation`` or ``timeout``; returns the current generation."""
        with self._cond:
            if self._generation == generation:
                self._cond.wait(timeout)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation
