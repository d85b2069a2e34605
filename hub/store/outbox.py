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

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Connection, String, Table, insert, select, update

from hub.store import sql
from hub.store.tables import PK, metadata, outbox_t

log = logging.getLogger("hub.outbox")
IDLE_EXIT = 2.0  # seconds without a commit before the wake-up thread ends

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


READ_AFTER_SQL = (
    "SELECT pk, resource_pk, res_type, res_id, version, interaction, origin, at FROM outbox"
    " WHERE pk > {p} ORDER BY pk LIMIT {p}"
)


def read_after(conn: Connection, cursor: int, limit: int = 500, types: frozenset[str] | None = None) -> list[OutboxRow]:
    """Up to ``limit`` changes after ``cursor``, in key order (every consumer calls this on each wake-up:
    the common case runs as cached driver SQL)."""
    if types is None:
        return [OutboxRow(*row) for row in sql.fetch_all(conn, READ_AFTER_SQL, (cursor, limit))]
    o = outbox_t.c
    stmt = select(o.pk, o.resource_pk, o.res_type, o.res_id, o.version, o.interaction, o.origin, o.at).where(o.pk > cursor)
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
    """Wakes in-process consumers right after a write commits.

    Under load commits come hundreds of times a second, and every consumer (the subscription dispatcher,
    each sync push, each HL7 sender) answers a wake-up with a read of the outbox. Wake-ups are therefore
    coalesced: the first commit after a quiet spell wakes the listeners at once, further commits within
    ``min_interval`` seconds are delivered together at its end. Consumers read everything up to the head
    of the outbox on each wake-up, so nothing is missed; the added latency is at most ``min_interval``.
    :meth:`wait` (generation-based) is not coalesced.
    """

    def __init__(self, min_interval: float = 0.005) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._listeners: list[object] = []
        self.min_interval = min_interval
        self._kick = threading.Event()
        self._pending = False
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            if not self._listeners or self._pending:
                return
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver, name="change-signal", daemon=True)
                self._thread.start()
        self._kick.set()

    def _deliver(self) -> None:
        while True:
            if not self._kick.wait(IDLE_EXIT):
                with self._cond:
                    if not self._pending:  # idle: end; the next notify starts a new thread
                        self._thread = None
                        return
                continue
            self._kick.clear()
            with self._cond:
                self._pending = False
            for listener in list(self._listeners):
                callback = getattr(listener, "wake", None)
                if callback is not None:
                    try:
                        callback()
                    except Exception:  # noqa: BLE001 - one listener must not silence the others
                        log.exception("change listener %s failed", type(listener).__name__)
            time.sleep(self.min_interval)

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
