"""Engine set-up for SQLite (WAL, one writer) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event

from hub.settings import resolve_database_url

T = TypeVar("T")
GROUP_MAX = 64  # most units of work one commit carries


class Combinable(Protocol):
    """A unit of work that can also run together with others of its kind: in a group commit, consecutive units
    with the same ``combine_key`` go to ``run_together`` in one call (say, one ``Repository.write_many`` for
    thirty creates: a dozen statements instead of a dozen each), inside one SAVEPOINT. If that call raises, the
    group goes back to a SAVEPOINT per unit, so a failing unit fails alone, as it would have without combining.
    Calling the unit runs it alone."""

    combine_key: Hashable

    def __call__(self, conn: Connection) -> Any: ...

    def run_together(self, conn: Connection, units: Sequence[Any]) -> list[Any]:
        """The results of ``units`` (this one among them, all with its ``combine_key``), in their order."""
        ...


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
            # As many kept connections as the main pool: reads by id are most of the traffic, and a connection
            # beyond pool_size (overflow) is closed when it is returned, so a smaller pool opened and closed a
            # PostgreSQL backend for many reads at 16 clients (500 sessions in a 10-second run of the bench's
            # reads, the backends' start-up a quarter of the machine's CPU beside the hub).
            self._autocommit = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_size=pool_size,
                                             max_overflow=max(2, pool_size // 2), pool_recycle=1800,
                                             pool_reset_on_return=None)
        self._write_lock: WriteLock | None = WriteLock(sqlite_file(self.url)) if self.is_sqlite else None
        self._queue: list[_Unit[Any]] = []
        self._queue_lock = threading.Lock()
        # submit(): SQLite units go to one writer thread (group commit without a thread per waiting caller);
        # PostgreSQL units run concurrently on a pool.
        self._submitted: deque[_Unit[Any]] = deque()
        self._submitted_ready = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False
        # submit_async() on SQLite: units queued by the event loop, committed by a task on the same loop
        self._loop_units: deque[tuple[_Unit[Any], asyncio.Future[Any]]] = deque()
        self._loop_writer: asyncio.Task[None] | None = None
        self._lock_waiter: ThreadPoolExecutor | None = None
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

    async def submit_async(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a write transaction and return its result once it is committed, from a coroutine.

        PostgreSQL: :meth:`submit` (its writer thread waits on the network, not on the GIL). SQLite: the unit
        is committed by a task on the caller's own event loop, grouped with every unit queued meanwhile, as
        the writer thread of :meth:`submit` would. The group runs on the loop thread because SQLite's work is
        CPU, not waiting: in a thread of its own the writer competed with the loop for the GIL while it held
        the write lock that every other process waits on (measured in-process: a group's CPU per unit went
        from ~0.23 ms to ~2.7 ms beside one busy thread). Only waiting for that lock, when another process
        holds it, goes to a thread.
        """
        if self._write_lock is None:
            return await asyncio.wrap_future(self.submit(work))
        if self._closed:
            raise RuntimeError("the database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._loop_units.append((_Unit(work), future))
        task = self._loop_writer
        if task is None or task.done() or task.get_loop() is not loop:  # (a loop closed with its task pending)
            self._loop_writer = loop.create_task(self._loop_writer_run())
        return await future

    async def _loop_writer_run(self) -> None:
        lock = self._write_lock
        assert lock is not None
        while self._loop_units:
            await asyncio.sleep(0)  # first let the loop take what is ready: more units for this group
            try:
                if not lock.try_acquire():
                    await self._acquire_in_thread(lock)
            except Exception as exc:  # the lock file cannot be locked: every waiting caller gets the error
                while self._loop_units:
                    _, future = self._loop_units.popleft()
                    if not future.done():
                        future.set_exception(exc)
                return
            try:
                take = min(GROUP_MAX, len(self._loop_units))
                pairs = [self._loop_units.popleft() for _ in range(take)]
                self._commit_group([unit for unit, _ in pairs])
            finally:
                lock.release()
            for unit, future in pairs:
                if future.done() or future.get_loop().is_closed():  # its caller went away: committed all the same
                    continue
                if unit.error is not None:
                    future.set_exception(unit.error)
                else:
                    future.set_result(unit.result)

    async def _acquire_in_thread(self, lock: WriteLock) -> None:
        """Wait for the write lock another process (or this one's writer thread) holds, off the event loop."""
        if self._lock_waiter is None:
            self._lock_waiter = ThreadPoolExecutor(1, thread_name_prefix="sqlite-lock-wait")
        waiting = asyncio.get_running_loop().run_in_executor(self._lock_waiter, lock.acquire)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:  # the loop is going away: let go of the lock as soon as it is ours
            waiting.add_done_callback(lambda f: None if f.cancelled() or f.exception() else lock.release())
            raise

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
                            for run in _runs(batch):
                                if len(run) == 1 or not _run_together(cur, conn, run):
                                    for unit in run:
                                        _run_alone(cur, conn, unit)
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
        if self._lock_waiter is not None:
            self._lock_waiter.shutdown(wait=False, cancel_futures=True)
        if self._write_lock is not None:
            self._write_lock.close()
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()


def _runs(batch: list[_Unit[Any]]) -> Iterator[list[_Unit[Any]]]:
    """``batch`` cut into runs of consecutive units that combine (the same ``combine_key``); others alone."""
    run: list[_Unit[Any]] = []
    key: Hashable = None
    for unit in batch:
        this = getattr(unit.work, "combine_key", None)  # (isinstance on a runtime Protocol costs ~20 µs)
        if run and (this is None or this != key):
            yield run
            run = []
        run.append(unit)
        key = this
    if run:
        yield run


def _run_alone(cur: Any, conn: Connection, unit: _Unit[Any]) -> None:
    cur.execute("SAVEPOINT fhirhub_unit")
    try:
        unit.result = unit.work(conn)
    except Exception as exc:  # noqa: BLE001 - handed to the unit's caller
        cur.execute("ROLLBACK TO SAVEPOINT fhirhub_unit")
        unit.error = exc
    cur.execute("RELEASE SAVEPOINT fhirhub_unit")


def _run_together(cur: Any, conn: Connection, run: list[_Unit[Any]]) -> bool:
    """Run combinable units in one call and one SAVEPOINT; False (and nothing kept) if that call raised."""
    first = cast(Combinable, run[0].work)  # _runs put only units with a combine_key together
    cur.execute("SAVEPOINT fhirhub_run")
    try:
        results = first.run_together(conn, [unit.work for unit in run])
        if len(results) != len(run):
            raise RuntimeError(f"run_together gave {len(results)} results for {len(run)} units")
    except Exception:  # noqa: BLE001 - each unit runs again alone and gets its own error
        cur.execute("ROLLBACK TO SAVEPOINT fhirhub_run")
        cur.execute("RELEASE SAVEPOINT fhirhub_run")
        return False
    cur.execute("RELEASE SAVEPOINT fhirhub_run")
    for unit, result in zip(run, results, strict=True):
        unit.result = result
    return True


class WriteLock:
    """SQLite's one writer, across threads and processes.

    A thread lock, then an exclusive ``flock`` on ``<database>.write-lock``: API worker processes, the services
    process and ``fhirhub load`` queue here, woken by the kernel the moment the lock is free, instead of in
    SQLite's busy handler, which sleeps (1, 2, 5 … 100 ms) between tries. In-memory databases need no file lock.
    Never wait for it on an event loop's thread: the loop's writer (``Database.submit_async``) tries it
    without waiting, and otherwise waits in a thread.
    """

    def __init__(self, path: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = f"{path}.write-lock" if path else None
        self._fd: int | None = None

    def acquire(self) -> None:
        self._thread_lock.acquire()
        if self._path is None:
            return
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it, without waiting (the event loop's writer)."""
        if not self._thread_lock.acquire(blocking=False):
            return False
        if self._path is None:
            return True
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._thread_lock.release()
            return False
        except BaseException:
            self._thread_lock.release()
            raise
        return True

    def release(self) -> None:
        """Let go (from any thread of the process: the lock belongs to the process, not to a thread)."""
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _file(self) -> int:
        if self._fd is None:
            assert self._path is not None
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

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
