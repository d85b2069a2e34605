"""Engine set-up for SQLite (WAL, one writer) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event

from hub.settings import resolve_database_url

T = TypeVar("T")
GROUP_MAX = 64  # most units of work one SQLite commit carries


@dataclass
class _Unit(Generic[T]):
    work: Callable[[Connection], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


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
        self._write_lock: threading.Lock | None = threading.Lock() if self.is_sqlite else None
        self._queue: list[_Unit[Any]] = []
        self._queue_lock = threading.Lock()
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

    def _commit_group(self, batch: list[_Unit[Any]]) -> None:
        try:
            with self.engine.connect() as conn:
                conn.info["write"] = True
                try:
                    with conn.begin():
                        for unit in batch:
                            if len(batch) == 1:
                                unit.result = unit.work(conn)
                                continue
                            savepoint = conn.begin_nested()
                            try:
                                unit.result = unit.work(conn)
                            except Exception as exc:  # noqa: BLE001 - handed to the unit's caller
                                savepoint.rollback()
                                unit.error = exc
                            else:
                                savepoint.commit()
                finally:
                    conn.info.pop("write", None)
        except BaseException as exc:  # the commit itself (or a lone unit) failed: nothing of the group is kept
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
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
                return
            # SQLite: keep pysqlite's isolation handling as configured, and skip our BEGIN.
            conn.info["no_begin"] = True
            try:
                yield conn
            finally:
                conn.info.pop("no_begin", None)

    def dispose(self) -> None:
        self.engine.dispose()


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
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")
