"""The message store (``hl7_message``): durable receipt, outcomes, browsing, purge, the outbound queue.

All functions take a SQLAlchemy connection inside the caller's transaction. :class:`StoreWriter`
is the group-commit writer the listeners use: one thread takes whatever receipts and outcomes
are waiting, writes them in **one** transaction and commits once, so the cost of a commit is
shared by every message that arrived meanwhile (the MLLP ingest path stores each message
durably before it is acknowledged).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from hub.hl7.tables import message_t
from hub.store.db import Database
from hub.store.repository import now_micros

log = logging.getLogger("hub.hl7.store")
T = TypeVar("T")
M = message_t.c


def digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def pack_bundle(bundle: dict[str, Any] | None) -> bytes | None:
    return None if bundle is None else zlib.compress(orjson.dumps(bundle), 1)


def unpack_bundle(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    out: dict[str, Any] = orjson.loads(zlib.decompress(data))
    return out


# ------------------------------------------------------------------------------------ receipt


@dataclass
class Incoming:
    """A message as received, before anything is known about its content."""

    connector: str
    sender: str
    receiver: str
    control_id: str | None
    message_type: str
    raw: bytes
    peer: str | None = None
    received: int = 0
    raw_hash: bytes = b""

    def __post_init__(self) -> None:
        self.received = self.received or now_micros()
        self.raw_hash = self.raw_hash or digest(self.raw)


@dataclass
class Receipt:
    """What the store made of an incoming message.

    ``kind``: ``new`` (stored, to be processed), ``retry`` (a resend of a message that failed:
    stored again, to be processed), ``duplicate`` (already applied: acknowledge, do not apply),
    ``pending`` (a resend of a message still being processed: answer with its outcome).
    """

    pk: int
    kind: str
    status: str = "received"
    ack_code: str | None = None
    error_code: str | None = None
    error_location: str | None = None
    detail: str | None = None
    same_content: bool = True


class _Driver:
    """The per-message statements of the message store, in the driver's own SQL.

    They run for every message received (several times a millisecond under load); compiling and
    binding them through SQLAlchemy costs more than running them. Column names follow
    :data:`hub.hl7.tables.message_t`.
    """

    def __init__(self, conn: Connection) -> None:
        self.pg = conn.dialect.name != "sqlite"
        self.p = "%s" if self.pg else "?"
        self.cur: Any = conn.connection.cursor()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.cur.execute(sql, params)
        return list(self.cur.fetchall())

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self.cur.executemany(sql, params)

    def insert(self, sql: str, params: list[tuple[Any, ...]]) -> list[int]:
        """Insert rows; their keys in order.

        PostgreSQL: ``executemany ... RETURNING`` (one result set per row). SQLite: the writer
        holds the database's only write transaction, so new rowids follow the largest one in
        insertion order: a plain ``executemany`` and one SELECT.
        """
        if self.pg:
            self.cur.executemany(sql + " RETURNING pk", params, returning=True)
            pks = []
            while True:
                pks.append(int(self.cur.fetchone()[0]))
                if not self.cur.nextset():
                    break
            return pks
        before = self.rows("SELECT coalesce(max(pk), 0) FROM hl7_message")[0][0]
        self.cur.executemany(sql, params)
        pks = [int(r[0]) for r in self.rows("SELECT pk FROM hl7_message WHERE pk > ? ORDER BY pk", (before,))]
        if len(pks) != len(params):  # someone else wrote meanwhile: cannot happen inside BEGIN IMMEDIATE
            raise RuntimeError("hl7_message keys are not contiguous in this transaction")
        return pks


_LOOKUP = ("SELECT pk, control_id, status, ack_code, error_code, error_location, detail, raw_hash FROM hl7_message "
           "WHERE direction = 'in' AND connector = {p} AND sender = {p} AND control_id IN ({ids})")
_INSERT = ("INSERT INTO hl7_message (direction, connector, sender, receiver, control_id, message_type, status, received, "
           "attempts, duplicates, peer, raw, raw_hash) VALUES ('in', {p}, {p}, {p}, {p}, {p}, 'received', {p}, 0, 0, {p}, {p}, {p})")
_RETRY = "UPDATE hl7_message SET raw = {p}, raw_hash = {p}, peer = {p}, status = 'received' WHERE pk = {p}"
_DUPS = "UPDATE hl7_message SET duplicates = duplicates + {p} WHERE pk = {p}"
_FINISH = ("UPDATE hl7_message SET status = {p}, ack_code = {p}, ack = {p}, error_code = {p}, error_location = {p}, "
           "detail = {p}, resources = {p}, bundle = {p}, patient_key = {p}, processed = {p}, "
           "message_type = coalesce({p}, message_type), ack_delivery = coalesce({p}, ack_delivery), "
           "attempts = attempts + 1 WHERE pk = {p}")


_CONFLICT_INSERT = (
    "INSERT INTO hl7_message (direction, connector, sender, receiver, control_id, message_type, status, received, "
    "attempts, duplicates, peer, raw, raw_hash) VALUES {rows} ON CONFLICT ON CONSTRAINT uq_hl7_message_dedup DO NOTHING "
    "RETURNING pk, connector, sender, control_id, raw_hash")
_ROW = "('in', %s, %s, %s, %s, %s, 'received', %s, 0, 0, %s, %s, %s)"


def receive(conn: Connection, items: Sequence[Incoming]) -> list[Receipt]:
    """Store a batch of incoming messages, detecting resends (a repeated MSH-10 of the same sender).

    PostgreSQL: one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the batch; only the resends
    (the rows not inserted) are then looked up. SQLite: one lookup per sender, then the inserts.
    """
    db = _Driver(conn)
    first_of: dict[tuple[str, str, str | None], int] = {}
    unique: list[int] = []  # the first copy of each key in this batch (and every unkeyed message)
    later: list[tuple[int, int]] = []
    for i, it in enumerate(items):
        key = (it.connector, it.sender, it.control_id)
        if it.control_id is not None and key in first_of:
            later.append((i, first_of[key]))
            continue
        if it.control_id is not None:
            first_of[key] = i
        unique.append(i)
    out: list[Receipt | None] = [None] * len(items)
    todo = unique
    if db.pg:
        todo = []
        params = [v for i in unique for v in _values(items[i])]
        db.cur.execute(_CONFLICT_INSERT.format(rows=", ".join([_ROW] * len(unique))), params)
        got: dict[tuple[str, str, Any], list[int]] = {}
        for pk, connector, sender, control_id, raw_hash in db.cur.fetchall():
            got.setdefault((connector, sender, control_id if control_id is not None else bytes(raw_hash)), []).append(int(pk))
        for i in unique:
            it = items[i]
            hit = got.get((it.connector, it.sender, it.control_id if it.control_id is not None else it.raw_hash))
            if hit:
                out[i] = Receipt(hit.pop(0), "new")
            else:
                todo.append(i)  # already stored: a resend
    _resends_and_inserts(db, items, todo, out)
    dup_counts: dict[int, int] = {}
    for r in out:
        if r is not None and r.kind in ("duplicate", "pending"):
            dup_counts[r.pk] = dup_counts.get(r.pk, 0) + 1
    for i, j in later:  # in-batch resends wait for the copy that came first
        first = out[j]
        assert first is not None
        out[i] = Receipt(first.pk, "pending", same_content=items[i].raw_hash == items[j].raw_hash)
        dup_counts[first.pk] = dup_counts.get(first.pk, 0) + 1
    if dup_counts:
        db.many(_DUPS.format(p=db.p), [(n, pk) for pk, n in dup_counts.items()])
    return [r for r in out if r is not None]


def _values(it: Incoming) -> tuple[Any, ...]:
    return (it.connector, it.sender[:200], it.receiver[:200], it.control_id, it.message_type[:32], it.received, it.peer,
            it.raw, it.raw_hash)


def _resends_and_inserts(db: _Driver, items: Sequence[Incoming], todo: list[int], out: list[Receipt | None]) -> None:
    """Look up the stored copies of ``todo``; insert the ones not stored (SQLite); classify resends."""
    if not todo:
        return
    p = db.p
    groups: dict[tuple[str, str], set[str]] = {}
    for i in todo:
        it = items[i]
        if it.control_id is not None:
            groups.setdefault((it.connector, it.sender), set()).add(it.control_id)
    existing: dict[tuple[str, str, str | None], Any] = {}
    for (connector, sender), ids in groups.items():  # one indexed lookup per sender (uq_hl7_message_dedup)
        ordered = sorted(ids)
        sql = _LOOKUP.format(p=p, ids=", ".join([p] * len(ordered)))
        for r in db.rows(sql, (connector, sender, *ordered)):
            existing[(connector, sender, r[1])] = r
    fresh: list[int] = []
    retries: list[tuple[Any, ...]] = []
    for i in todo:
        it = items[i]
        row = existing.get((it.connector, it.sender, it.control_id)) if it.control_id is not None else None
        if row is None:
            fresh.append(i)
            continue
        pk, _, status, ack_code, error_code, error_location, detail, raw_hash = row
        same = bytes(raw_hash or b"") == it.raw_hash
        if status in ("error", "rejected"):
            retries.append((it.raw, it.raw_hash, it.peer, pk))
            out[i] = Receipt(int(pk), "retry", "received", same_content=same)
        else:
            out[i] = Receipt(int(pk), "duplicate" if status == "applied" else "pending", status, ack_code, error_code,
                             error_location, detail, same)
    if fresh:
        for i, pk in zip(fresh, db.insert(_INSERT.format(p=p), [_values(items[i]) for i in fresh]), strict=True):
            out[i] = Receipt(pk, "new")
    if retries:
        db.many(_RETRY.format(p=p), retries)


# ------------------------------------------------------------------------------------ outcome


@dataclass
class Outcome:
    """How an inbound message ended (written after its FHIR transaction committed, or failed)."""

    pk: int
    status: str  # applied | error | rejected
    ack_code: str  # AA | AE | AR
    ack: bytes | None = None
    message_type: str | None = None
    error_code: str | None = None
    error_location: str | None = None
    detail: str | None = None
    resources: list[str] = field(default_factory=list)
    bundle: bytes | None = None  # the Bundle's JSON as converted (compressed when stored)
    patient_key: str | None = None
    processed: int = 0
    # "undelivered": the application ACK is known to have no connection to go to (enhanced mode, a message
    # processed after a restart); None leaves the stored value as it is
    ack_delivery: str | None = None


def finish(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    if not outcomes:
        return
    now = now_micros()
    db = _Driver(conn)
    db.many(_FINISH.format(p=db.p), [
        (o.status, o.ack_code, o.ack, o.error_code, o.error_location[:64] if o.error_location else None, o.detail,
         " ".join(o.resources) or None, zlib.compress(o.bundle, 1) if o.bundle else None,
         o.patient_key[:300] if o.patient_key else None, o.processed or now,
         o.message_type[:32] if o.message_type else None, o.ack_delivery, o.pk)
        for o in outcomes
    ])


def pending(conn: Connection, connector: str, limit: int = 1000, after: int = 0) -> list[Any]:
    """Inbound messages stored but not processed (a crash, or the enhanced-mode backlog), oldest first."""
    return list(
        conn.execute(
            select(M.pk, M.raw, M.peer, M.control_id, M.sender)
            .where(M.direction == "in", M.connector == connector, M.status == "received", M.pk > after)
            .order_by(M.pk).limit(limit)
        )
    )


# ------------------------------------------------------------------------------------ application ACKs not delivered


def mark_undelivered(conn: Connection, pks: Sequence[int]) -> None:
    """Enhanced mode: these messages' application ACKs found their sender's connection gone."""
    if pks:
        conn.execute(update(message_t).where(M.pk.in_(list(pks))).values(ack_delivery="undelivered"))


def mark_redelivered(conn: Connection, pks: Sequence[int]) -> int:
    """These messages' stored application ACKs went out later (a reconnect, or the answer to a resend)."""
    if not pks:
        return 0
    res = conn.execute(update(message_t).where(M.pk.in_(list(pks)), M.ack_delivery == "undelivered")
                       .values(ack_delivery="redelivered"))
    return int(res.rowcount or 0)


def undelivered(conn: Connection, connector: str, sender: str, limit: int = 1000) -> list[Any]:
    """The application ACKs still owed to ``sender`` (MSH-3/MSH-4) on ``connector``, oldest first."""
    return list(conn.execute(
        select(M.pk, M.control_id, M.peer, M.ack)
        .where(M.ack_delivery == "undelivered", M.connector == connector, M.sender == sender, M.direction == "in",
               M.ack.is_not(None))
        .order_by(M.pk).limit(limit)
    ))


def undelivered_senders(conn: Connection, connector: str) -> set[str]:
    """The senders owed application ACKs on ``connector``."""
    return {str(s) for (s,) in conn.execute(
        select(M.sender).where(M.ack_delivery == "undelivered", M.connector == connector).distinct())}


def status_of(conn: Connection, pk: int) -> Any | None:
    return conn.execute(
        select(M.pk, M.status, M.ack_code, M.error_code, M.error_location, M.detail).where(M.pk == pk)
    ).first()


# ------------------------------------------------------------------------------------ browsing

SUMMARY = (M.pk, M.direction, M.connector, M.sender, M.receiver, M.control_id, M.message_type, M.status, M.ack_code,
           M.error_code, M.error_location, M.received, M.processed, M.attempts, M.duplicates, M.peer, M.source,
           M.next_attempt, M.ack_delivery)


@dataclass
class Query:
    message_type: str | None = None  # ADT, ADT^A01 or ADT^* (prefix)
    status: list[str] | None = None
    control_id: str | None = None
    sender: str | None = None  # substring of MSH-3/MSH-4
    connector: str | None = None
    direction: str | None = None
    error_code: str | None = None
    ack_delivery: str | None = None  # undelivered | redelivered
    since: int | None = None  # received >= (µs)
    until: int | None = None  # received < (µs)
    before_pk: int | None = None  # paging: rows older than this
    limit: int = 50


def _where(stmt: Any, q: Query) -> Any:
    if q.message_type:
        t = q.message_type.rstrip("*").rstrip("^")
        stmt = stmt.where(or_(M.message_type == t, M.message_type.startswith(t + "^", autoescape=True)))
    if q.status:
        stmt = stmt.where(M.status.in_(q.status))
    if q.control_id:
        stmt = stmt.where(M.control_id == q.control_id)
    if q.sender:
        stmt = stmt.where(M.sender.contains(q.sender, autoescape=True))
    if q.connector:
        stmt = stmt.where(M.connector == q.connector)
    if q.direction:
        stmt = stmt.where(M.direction == q.direction)
    if q.error_code:
        stmt = stmt.where(M.error_code == q.error_code)
    if q.ack_delivery:
        stmt = stmt.where(M.ack_delivery == q.ack_delivery)
    if q.since is not None:
        stmt = stmt.where(M.received >= q.since)
    if q.until is not None:
        stmt = stmt.where(M.received < q.until)
    return stmt


def search(conn: Connection, q: Query) -> list[Any]:
    """Summaries (no message bodies), newest first; page with ``before_pk`` = the last pk shown."""
    stmt = _where(select(*SUMMARY), q)
    if q.before_pk is not None:
        stmt = stmt.where(M.pk < q.before_pk)
    return list(conn.execute(stmt.order_by(M.pk.desc()).limit(q.limit)))


def keys(conn: Connection, q: Query) -> list[int]:
    """Keys of every message the query matches, oldest first (reprocess, replay)."""
    return [int(pk) for (pk,) in conn.execute(_where(select(M.pk), q).order_by(M.pk))]


def get(conn: Connection, pk: int) -> Any | None:
    return conn.execute(select(message_t).where(M.pk == pk)).first()


def purge(conn: Connection, before: int, statuses: Sequence[str] | None = None, connector: str | None = None) -> int:
    """Delete messages received before ``before`` (µs); never one still waiting (received / queued)."""
    cond = and_(M.received < before, M.status.not_in(("received", "queued")))
    if statuses:
        cond = and_(cond, M.status.in_(list(statuses)))
    if connector:
        cond = and_(cond, M.connector == connector)
    return int(conn.execute(delete(message_t).where(cond)).rowcount or 0)


def counts(conn: Connection, connector: str | None = None) -> dict[str, int]:
    stmt = select(M.direction, M.status, func.count()).group_by(M.direction, M.status)
    if connector:
        stmt = stmt.where(M.connector == connector)
    return {f"{d}:{s}": int(n) for d, s, n in conn.execute(stmt)}


# ------------------------------------------------------------------------------------ outbound queue


def enqueue(conn: Connection, connector: str, message: bytes, *, control_id: str, message_type: str,
            sender: str = "", receiver: str = "", source: str | None = None, patient_key: str | None = None) -> int:
    pk = conn.execute(
        insert(message_t).returning(M.pk),
        {"direction": "out", "connector": connector, "sender": sender[:200], "receiver": receiver[:200],
         "control_id": control_id, "message_type": message_type[:32], "status": "queued", "received": now_micros(),
         "attempts": 0, "duplicates": 0, "next_attempt": 0, "raw": message, "raw_hash": digest(message),
         "source": source, "patient_key": patient_key},
    ).scalar_one()
    return int(pk)


def find_outbound(conn: Connection, connector: str, sender: str, control_id: str) -> int | None:
    pk = conn.execute(select(M.pk).where(M.direction == "out", M.connector == connector, M.sender == sender,
                                         M.control_id == control_id)).scalar()
    return None if pk is None else int(pk)


def next_queued(conn: Connection, connector: str) -> Any | None:
    """The oldest queued outbound message of ``connector`` (the head of its queue)."""
    return conn.execute(
        select(M.pk, M.raw, M.control_id, M.attempts, M.next_attempt)
        .where(M.direction == "out", M.connector == connector, M.status == "queued").order_by(M.pk).limit(1)
    ).first()


def mark_sent(conn: Connection, pk: int, ack: bytes, ack_code: str) -> None:
    conn.execute(update(message_t).where(M.pk == pk).values(
        status="sent", ack=ack, ack_code=ack_code, processed=now_micros(), attempts=M.attempts + 1,
        error_code=None, error_location=None, detail=None))


def mark_failed(conn: Connection, pk: int, *, dead: bool, next_attempt: int, error_code: str, detail: str,
                ack: bytes | None = None, ack_code: str | None = None) -> None:
    conn.execute(update(message_t).where(M.pk == pk).values(
        status="dead" if dead else "queued", next_attempt=next_attempt, attempts=M.attempts + 1,
        error_code=error_code[:64], detail=detail[:500], ack=ack, ack_code=ack_code,
        processed=now_micros() if dead else None))


def requeue(conn: Connection, pk: int) -> bool:
    """A dead outbound message back to the queue (after the receiver was fixed)."""
    res = conn.execute(update(message_t).where(M.pk == pk, M.direction == "out", M.status == "dead")
                       .values(status="queued", next_attempt=0, attempts=0, processed=None))
    return bool(res.rowcount)


# ------------------------------------------------------------------------------------ the writer


class WriteGate:
    """Receipts first. SQLite has one writer: a FHIR transaction of the HL7 pipeline (tens of ms) would
    hold every receipt waiting behind it. A receipt batch that waits for the database therefore goes
    before any *new* pipeline transaction (one already running finishes first). PostgreSQL writes
    concurrently and needs no gate (``enabled`` False)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._cond = threading.Condition()
        self._receipts = 0

    @contextlib.contextmanager
    def receipts(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._cond:
            self._receipts += 1
        try:
            yield
        finally:
            with self._cond:
                self._receipts -= 1
                if not self._receipts:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.enabled:
            with self._cond:
                while self._receipts:
                    self._cond.wait(1.0)
        yield

Job = tuple[str, Any, Any]  # kind, payload, a concurrent.futures.Future or an asyncio.Future


def _deliver(jobs: list[Job], results: list[Any] | None, exc: BaseException | None = None) -> None:
    """Resolve the jobs' futures: asyncio ones with one thread-safe call per event loop (not one each)."""
    by_loop: dict[Any, list[tuple[Any, Any]]] = {}
    for i, (_, _, fut) in enumerate(jobs):
        outcome = exc if exc is not None else (results[i] if results is not None else None)
        if isinstance(fut, concurrent.futures.Future):
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(outcome)
        else:
            by_loop.setdefault(fut.get_loop(), []).append((fut, outcome))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(_resolve, items, exc is not None)


def _resolve(items: list[tuple[Any, Any]], failed: bool) -> None:
    for fut, outcome in items:
        if fut.done():
            continue
        if failed:
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


class StoreWriter:
    """Group commit: a writer thread writes every waiting receipt and outcome in one transaction.

    SQLite has one writer, so one thread. PostgreSQL commits in parallel and a commit waits for
    the WAL flush: ``writers`` threads (3), each with its own connection, take turns so that one
    batch is filled while another commits.

    ``receive``/``finish``/``call`` return :class:`concurrent.futures.Future` objects that
    resolve once the transaction holding the work has committed (``areceive``/``afinish``/``acall`` are
    the same for coroutines). If a batch fails, its jobs are retried one transaction each, so one bad
    job cannot fail the others.
    """

    def __init__(self, db: Database, max_batch: int = 1000, gate: WriteGate | None = None,
                 writers: int | None = None) -> None:
        self.db = db
        self.max_batch = max_batch
        self.gate = gate or WriteGate(db.is_sqlite)
        self.writers = 1 if db.is_sqlite else (writers or 3)
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # the first writer (started or not)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._local = threading.local()  # each writer's PostgreSQL connection
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._threads = [threading.Thread(target=self._run, name=f"hl7-store-writer-{i}", daemon=True)
                                 for i in range(self.writers)]
                self._thread = self._threads[0]
                for t in self._threads:
                    t.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            threads, self._threads, self._thread = self._threads, [], None
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join(timeout)

    def receive(self, item: Incoming) -> concurrent.futures.Future[Receipt]:
        return self._submit("receive", item)

    def finish(self, outcome: Outcome) -> concurrent.futures.Future[None]:
        return self._submit("finish", outcome)

    def call(self, fn: Callable[[Connection], T]) -> concurrent.futures.Future[T]:
        return self._submit("call", fn)

    def _submit(self, kind: str, payload: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._thread is None:
            self.start()
        self._queue.put((kind, payload, fut))
        return fut

    # -- the same, awaited in an event loop (cheaper than wrapping a concurrent future per job)
    async def areceive(self, item: Incoming) -> Receipt:
        result: Receipt = await self._asubmit("receive", item)
        return result

    async def afinish(self, outcome: Outcome) -> None:
        await self._asubmit("finish", outcome)

    async def acall(self, fn: Callable[[Connection], T]) -> T:
        result: T = await self._asubmit("call", fn)
        return result

    def areceive_future(self, item: Incoming) -> asyncio.Future[Receipt]:
        """``areceive`` as a future (for callbacks: no task per message on the hot path)."""
        return self._asubmit("receive", item)

    def _asubmit(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self.start()
        self._queue.put((kind, payload, fut))
        return fut

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
                self._local.conn = None

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            self._write(jobs)
            if stop:
                return

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """SQLite: the hub's write discipline (process lock + BEGIN IMMEDIATE). PostgreSQL: a connection
        kept by this thread (no pool checkout and pre-ping per batch), replaced if it fails."""
        if self.db.is_sqlite:
            with self.gate.receipts(), self.db.write() as lite:
                yield lite
            return
        kept: Connection | None = getattr(self._local, "conn", None)
        if kept is None or kept.closed or kept.invalidated:
            kept = self._local.conn = self.db.engine.connect()
        try:
            with kept.begin():
                yield kept
        except Exception:
            with contextlib.suppress(Exception):
                kept.close()
            self._local.conn = None
            raise

    def _write(self, jobs: list[Job]) -> None:
        try:
            with self._transaction() as conn:
                results = self._apply(conn, jobs)
        except Exception as exc:  # noqa: BLE001 - isolate the failing job, keep the thread alive
            if len(jobs) == 1:
                log.error("message store write failed (%s)", type(exc).__name__)
                log.debug("message store write failure", exc_info=exc)
                _deliver(jobs, None, exc)
                return
            for job in jobs:
                self._write([job])
            return
        with self._lock:
            self.batches += 1
            self.jobs += len(jobs)
        _deliver(jobs, results)

    @staticmethod
    def _apply(conn: Connection, jobs: list[Job]) -> list[Any]:
        results: list[Any] = [None] * len(jobs)
        rec = [i for i, (k, _, _) in enumerate(jobs) if k == "receive"]
        fin = [i for i, (k, _, _) in enumerate(jobs) if k == "finish"]
        if fin:  # outcomes first: a resend in the same batch then sees its message as finished
            finish(conn, [jobs[i][1] for i in fin])
        if rec:
            for i, receipt in zip(rec, receive(conn, [jobs[i][1] for i in rec]), strict=True):
                results[i] = receipt
        for i, (kind, payload, _) in enumerate(jobs):
            if kind == "call":
                results[i] = payload(conn)
        return results
