"""Engine set-up for SQLite (WAL, one writer) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event

from hub.settings import resolve_database_url

T = TypeVar("T")
GROUP_MAX = 64  # most units of work one commit carries


@dataclass
class _Unit(Generic[T]):
    work: Callable[[Connection], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    future: Future[T] | None = None  # set for units submitted to the writer thread


class Database:
    """An engine plus the write discipline of its dialect.

    SQLite allows one writer: writes take a process-wide lock and start with
    ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing. PostgreSQL
    writers run concurrently; row locks (``SELECT ... FOR UPDATE``) order versions.
    """

    def __init__(self, url: str, pool_size: int = 20) -> None:
        self.url = resolve_database_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = pool_size
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            # No pre-ping (a round trip per checkout); connections are recycled instead.
            kwargs["pool_recycle"] = 1800
        self.engine: Engine = create_engine(self.url, **kwargs)
        # PostgreSQL single-statement reads (read_once) get connections of their own that stay in autocommit:
        # switching a pooled connection into autocommit and back on every checkout (SQLAlchemy's
        # execution_options) cost psycopg four extra waits per read by id (in-process: ~370-410 µs of CPU per read
        # before, ~295-340 after).
        self._autocommit: Engine | None = None
        if not self.is_sqlite:
            half = max(4, pool_size // 2)
            self._autocommit = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_size=half, max_overflow=half,
                                             pool_recycle=1800, pool_reset_on_return=None)
        self._write_lock: WriteLock | None = WriteLock(sqlite_file(self.url)) if self.is_sqlite else None
        self._queue: list[_Unit[Any]] = []
        self._queue_lock = threading.Lock()
        # submit(): SQLite units go to one writer thread (group commit without a thread per waiting caller);
        # PostgreSQL units run concurrently on a pool.
        self._submitted: deque[_Unit[Any]] = deque()
        self._submitted_ready = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False
        if self.is_sqlite:
            _configure_sqlite(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection inside a write transaction; commits on success, rolls back on error."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock, self.engine.connect() as conn:
            conn.info["write"] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop("write", None)

    def run_write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a write transaction and return its result once it is committed.

        On SQLite concurrent callers are committed together (group commit): whoever takes
        the write lock runs every queued unit, each inside its own SAVEPOINT, and commits
        them all at once. A unit that raises is rolled back to its savepoint alone and its
        caller gets the exception; the others still commit. Nobody returns before the
        commit that holds their work, so "persist first, then acknowledge" holds. One
        commit writes each touched page once for the whole group, which is most of the
        cost of a small write. PostgreSQL commits each unit in its own transaction.
        """
        if self._write_lock is None:
            with self.engine.begin() as conn:
                return work(conn)
        unit: _Unit[T] = _Unit(work)
        with self._queue_lock:
            self._queue.append(unit)
        while not unit.done.is_set():
            with self._write_lock:
                if unit.done.is_set():
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue[:GROUP_MAX], self._queue[GROUP_MAX:]
                if batch:
                    self._commit_group(batch)
        if unit.error is not None:
            raise unit.error
        result: T = unit.result
        return result

    def submit(self, work: Callable[[Connection], T]) -> Future[T]:
        """Run ``work`` in a write transaction; the future resolves once it is committed (or failed).

        SQLite: one writer thread takes every submitted unit waiting, runs each in its own SAVEPOINT and
        commits them together, as :meth:`run_write` does, but no caller thread waits: an async caller
        awaits the future (``asyncio.wrap_future``) and the event loop keeps serving meanwhile.
        PostgreSQL: the same, one writer thread per process, without the file lock (other processes' groups
        commit beside it). A group is one transaction: the outbox's ordering lock (held to commit, see
        ``Repository.write_many``) is taken once per group, not once per create, and PostgreSQL flushes the
        WAL once for it; a unit per transaction held that lock through every commit's WAL flush, which
        serialized all writers (creates at 16 clients ran no faster than at 1).
        """
        future: Future[T] = Future()
        if self._closed:
            raise RuntimeError("the database is closed")
        unit: _Unit[T] = _Unit(work, future=future)
        with self._submitted_ready:
            if self._closed:
                raise RuntimeError("the database is closed")
            self._submitted.append(unit)
            if self._writer is None:
                self._writer = threading.Thread(target=self._writer_loop, name=f"{self.dialect}-writer", daemon=True)
                self._writer.start()
            self._submitted_ready.notify()
        return future

    def _writer_loop(self) -> None:
        while True:
            with self._submitted_ready:
                while not self._submitted and not self._closed:
                    self._submitted_ready.wait()
                if not self._submitted:
                    return
                batch = [self._submitted.popleft() for _ in range(min(GROUP_MAX, len(self._submitted)))]
            with self._write_lock or contextlib.nullcontext():
                self._commit_group(batch)
            for unit in batch:
                assert unit.future is not None
                if unit.error is not None:
                    unit.future.set_exception(unit.error)
                else:
                    unit.future.set_result(unit.result)

    def _commit_group(self, batch: list[_Unit[Any]]) -> None:
        try:
            with self.engine.connect() as conn:
                conn.info["write"] = True
                try:
                    with conn.begin():
                        if len(batch) == 1:
                            batch[0].result = batch[0].work(conn)
                        else:
                            # Driver-level savepoints: SQLAlchemy's nested transactions cost ~100 µs a unit.
                            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                            for unit in batch:
                                cur.execute("SAVEPOINT fhirhub_unit")
                                try:
                                    unit.result = unit.work(conn)
                                except Exception as exc:  # noqa: BLE001 - handed to the unit's caller
                                    cur.execute("ROLLBACK TO SAVEPOINT fhirhub_unit")
                                    unit.error = exc
                                cur.execute("RELEASE SAVEPOINT fhirhub_unit")
                            cur.close()
                finally:
                    conn.info.pop("write", None)
        except BaseException as exc:  # the commit itself (or a lone unit) failed: nothing of the group is kept
            if self._write_lock is None and len(batch) > 1 and isinstance(exc, Exception):
                # PostgreSQL: the group as a whole failed (a deadlock with another process's group, a lost
                # connection): each unit that had not failed on its own runs again in a transaction of its own
                for unit in batch:
                    if unit.error is None:
                        unit.result = None
                        try:
                            unit.result = self.run_write(unit.work)
                        except Exception as alone:  # noqa: BLE001 - handed to the unit's caller
                            unit.error = alone
            else:
                for unit in batch:
                    if unit.error is None:
                        unit.error = exc
                        unit.result = None
        finally:
            for unit in batch:
                unit.done.set()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads inside one transaction (a consistent snapshot across statements)."""
        with self.engine.connect() as conn:
            yield conn
            conn.rollback()

    @contextlib.contextmanager
    def read_once(self) -> Iterator[Connection]:
        """A connection for a single-statement read: no BEGIN, no ROLLBACK round trips."""
        if self._autocommit is not None:
            with self._autocommit.connect() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            # SQLite: keep pysqlite's isolation handling as configured, and skip our BEGIN.
            conn.info["no_begin"] = True
            try:
                yield conn
            finally:
                conn.info.pop("no_begin", None)

    def dispose(self) -> None:
        with self._submitted_ready:
            self._closed = True
            self._submitted_ready.notify_all()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join(timeout=30)
        if self._write_lock is not None:
            self._write_lock.close()
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()


class WriteLock:
    """SQLite's one writer, across threads and processes.

    A thread lock, then an exclusive ``flock`` on ``<database>.write-lock``: API worker processes, the services
    process and ``fhirhub load`` queue here, woken by the kernel the moment the lock is free, instead of in
    SQLite's busy handler, which sleeps (1, 2, 5 … 100 ms) between tries. In-memory databases need no file lock.
    """

    def __init__(self, path: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = f"{path}.write-lock" if path else None
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._path is None:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    if not name or name == ":memory:" or name.startswith("file::memory:"):
        return None
    return name


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA cache_size=-65536")
        cur.execute("PRAGMA mmap_size=268435456")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.execute("PRAGMA wal_autocheckpoint=10000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.info.get("no_begin"):
            return
        # On the driver's connection: SQLAlchemy's exec_driver_sql costs ~40 µs, a tenth of a small write.
        conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN"
        )
