"""Concurrent writers: each gets its own answer, failures stay isolated, nothing is acknowledged uncommitted."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from hub.app import Content, build_hub
from hub.interactions.request import FhirRequest
from hub.settings import Settings
from hub.store.db import Database
from hub.store.schema import upgrade
from hub.store.tables import outbox_t, resource_t


def test_units_fail_alone_and_results_reach_their_callers(db_url: str) -> None:
    db = Database(db_url)
    upgrade(db)
    barrier = threading.Barrier(8)

    def unit(n: int) -> int:
        def work(conn: sa.Connection) -> int:
            conn.exec_driver_sql(
                "INSERT INTO outbox (resource_pk, res_type, res_id, version, interaction, origin, at) "
                + ("VALUES (?, 'T', ?, 1, 'create', NULL, 0)" if db.is_sqlite else "VALUES (%s, 'T', %s, 1, 'create', NULL, 0)"),
                (n, str(n)),
            )
            if n % 3 == 0:
                raise ValueError(f"unit {n} fails")
            return n * 10

        barrier.wait(5) if n < 8 else None
        return db.run_write(work)

    with ThreadPoolExecutor(8) as pool:
        futures = {n: pool.submit(unit, n) for n in range(40)}
    for n, fut in futures.items():
        if n % 3 == 0:
            with pytest.raises(ValueError, match=f"unit {n} fails"):
                fut.result()
        else:
            assert fut.result() == n * 10
    with db.read() as conn:
        kept = sorted(int(r[0]) for r in conn.execute(sa.select(outbox_t.c.res_id)))
    assert kept == [n for n in range(40) if n % 3]
    db.dispose()


def test_concurrent_creates_through_the_router(db_url: str, content: Content) -> None:
    hub = build_hub(Settings(database_url=db_url), content=content)
    upgrade(hub.ctx.db)

    def create(n: int) -> tuple[int, Any]:
        body: dict[str, Any] = {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": str(n)}]}
        if n % 5 == 0:
            body["gender"] = "robot"  # invalid: 422, and nothing written
        r = hub.router.dispatch(FhirRequest("POST", "Patient", [], {}, body, "http://hub.test/fhir"))
        return r.status, orjson.loads(r.body or b"{}").get("id")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(create, range(100)))
    created = [rid for status, rid in results if status == 201]
    assert [status for status, _ in results].count(422) == 20
    assert len(created) == 80 and len(set(created)) == 80
    with hub.ctx.db.read() as conn:
        stored = {r[0] for r in conn.execute(sa.select(resource_t.c.res_id).where(resource_t.c.res_type == "Patient"))}
        outbox = conn.execute(sa.select(sa.func.count()).select_from(outbox_t)).scalar_one()
    assert stored == set(created) and outbox == 80
    hub.close()


def test_submitted_units_commit_together_and_fail_alone(db_url: str) -> None:
    """``Database.submit``: the writer thread (one per process, on both databases) resolves each future after
    the commit that holds its unit; a failing unit is rolled back alone and its future carries the error."""
    db = Database(db_url)
    upgrade(db)
    ph = "?" if db.is_sqlite else "%s"

    def work(n: int) -> Any:
        def run(conn: sa.Connection) -> int:
            conn.exec_driver_sql(
                "INSERT INTO outbox (resource_pk, res_type, res_id, version, interaction, origin, at) "
                f"VALUES ({ph}, 'T', {ph}, 1, 'create', NULL, 0)",
                (n, str(n)),
            )
            if n % 4 == 0:
                raise ValueError(f"unit {n} fails")
            return n

        return run

    futures = [db.submit(work(n)) for n in range(60)]
    for n, fut in enumerate(futures):
        if n % 4 == 0:
            with pytest.raises(ValueError, match=f"unit {n} fails"):
                fut.result(timeout=30)
        else:
            assert fut.result(timeout=30) == n
            # resolved means committed: a fresh connection sees the row
            with db.read() as conn:
                assert conn.execute(sa.select(outbox_t.c.pk).where(outbox_t.c.res_id == str(n))).first() is not None
    with db.read() as conn:
        kept = sorted(int(r[0]) for r in conn.execute(sa.select(outbox_t.c.res_id)))
    assert kept == [n for n in range(60) if n % 4]
    db.dispose()
    with pytest.raises(RuntimeError):  # closed: nothing is accepted that could not commit
        db.submit(work(1))


def test_postgresql_group_that_fails_at_commit_reruns_each_unit_alone() -> None:
    """A PostgreSQL group whose commit fails as a whole (here a deferred unique constraint two of its units
    break; in production a deadlock with another process's group) runs each unit again alone: the units
    that can commit do, and only the unit that cannot gets the error."""
    from tests.conftest import fresh_postgres_schema

    with fresh_postgres_schema() as url:
        db = Database(url)
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE t_defer (k int, CONSTRAINT t_defer_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)")
        release, started = threading.Event(), threading.Event()

        def hold(conn: sa.Connection) -> None:
            started.set()
            release.wait(10)  # the writer thread is busy: what follows queues up into one group

        def insert(k: int) -> Any:
            def run(conn: sa.Connection) -> int:
                conn.exec_driver_sql("INSERT INTO t_defer (k) VALUES (%s)", (k,))
                return k
            return run

        first = db.submit(hold)
        assert started.wait(10)
        futures = [db.submit(insert(k)) for k in (1, 2, 1, 3)]  # the second 1 breaks the group's commit
        release.set()
        first.result(timeout=30)
        outcomes = []
        for fut in futures:
            try:
                outcomes.append(fut.result(timeout=30))
            except sa.exc.IntegrityError:
                outcomes.append("error")
        assert outcomes == [1, 2, "error", 3]
        with db.read() as conn:
            assert sorted(r[0] for r in conn.exec_driver_sql("SELECT k FROM t_defer")) == [1, 2, 3]
        db.dispose()


class _Insert:
    """A combinable unit (``hub.store.db.Combinable``) that records how it ran."""

    combine_key = "insert"

    def __init__(self, n: int, ph: str, calls: list[list[int]]) -> None:
        self.n, self.ph, self.calls = n, ph, calls

    def __call__(self, conn: sa.Connection) -> int:
        return self.run_together(conn, [self])[0]

    def run_together(self, conn: sa.Connection, units: list[_Insert]) -> list[int]:
        self.calls.append([u.n for u in units])
        conn.exec_driver_sql(
            "INSERT INTO outbox (resource_pk, res_type, res_id, version, interaction, origin, at) "
            f"VALUES ({self.ph}, 'T', {self.ph}, 1, 'create', NULL, 0)",
            [(u.n, str(u.n)) for u in units],
        )
        if any(u.n % 7 == 0 for u in units):
            raise ValueError(f"unit {next(u.n for u in units if u.n % 7 == 0)} fails")
        return [u.n * 10 for u in units]


def test_combinable_units_run_together_and_a_failure_falls_back_to_one_savepoint_each(db_url: str) -> None:
    """Consecutive combinable units of a group run in one call; when that call fails, nothing of it is kept
    and each unit runs again alone, so only the failing unit gets the error. A plain unit between them cuts
    the run."""
    db = Database(db_url)
    upgrade(db)
    ph = "?" if db.is_sqlite else "%s"
    calls: list[list[int]] = []
    release = threading.Event()

    started = threading.Event()

    def hold(conn: sa.Connection) -> None:
        started.set()
        release.wait(10)  # the writer thread is busy: what follows queues up into one group

    def plain(conn: sa.Connection) -> str:
        return "plain"

    first = db.submit(hold)
    assert started.wait(10)
    futures = [db.submit(_Insert(n, ph, calls)) for n in (1, 2, 3)]  # a run that commits together
    futures.append(db.submit(plain))
    futures += [db.submit(_Insert(n, ph, calls)) for n in (5, 7, 8)]  # 7 fails the run: each alone
    release.set()
    first.result(timeout=30)
    outcomes: list[Any] = []
    for fut in futures:
        try:
            outcomes.append(fut.result(timeout=30))
        except ValueError as exc:
            outcomes.append(str(exc))
    assert outcomes == [10, 20, 30, "plain", 50, "unit 7 fails", 80]
    assert calls == [[1, 2, 3], [5, 7, 8], [5], [7], [8]]
    with db.read() as conn:
        kept = sorted(int(r[0]) for r in conn.execute(sa.select(outbox_t.c.res_id)))
    assert kept == [1, 2, 3, 5, 8]  # the failed run left no row behind
    db.dispose()


def test_creates_of_one_group_are_written_together(db_url: str, content: Content) -> None:
    """Prepared creates submitted while the writer is busy are one ``write_many`` call, and each caller still
    gets its own resource, version, outbox row and audit event."""
    import asyncio

    hub = build_hub(Settings(database_url=db_url), content=content)
    upgrade(hub.ctx.db)
    calls: list[int] = []
    write_many = hub.ctx.repo.write_many

    def counting(conn: sa.Connection, changes: Any, before_outbox: Any = None) -> Any:
        calls.append(len(changes))
        return write_many(conn, changes, before_outbox)

    hub.ctx.repo.write_many = counting  # type: ignore[method-assign]
    release, started = threading.Event(), threading.Event()

    def hold(conn: sa.Connection) -> None:
        started.set()
        release.wait(10)

    busy = hub.ctx.db.submit(hold)
    assert started.wait(10), "the writer holds the write transaction before the creates arrive"

    async def create_all() -> list[Any]:
        reqs = [FhirRequest("POST", "Patient", [], {}, {"resourceType": "Patient", "gender": "female",
                                                         "identifier": [{"system": "urn:t", "value": str(n)}]},
                            "http://hub.test/fhir") for n in range(12)]
        tasks = [asyncio.ensure_future(hub.router.dispatch_write(r)) for r in reqs]
        await asyncio.sleep(0.2)  # every create prepared and queued behind the busy writer
        release.set()
        return list(await asyncio.gather(*tasks))

    responses = asyncio.run(create_all())
    busy.result(timeout=30)
    assert [r.status for r in responses] == [201] * 12
    ids = [orjson.loads(r.body)["id"] for r in responses]
    assert len(set(ids)) == 12
    assert calls == [12]
    with hub.ctx.db.read() as conn:
        found = conn.exec_driver_sql(
            "SELECT r.res_id, count(o.pk) FROM resource r JOIN outbox o ON o.resource_pk = r.pk GROUP BY r.res_id"
        ).all()
    assert dict(found) == {i: 1 for i in ids}
    hub.close()


def test_sqlite_writes_from_the_event_loop_wait_for_another_process_off_the_loop(tmp_path: Any) -> None:
    """``submit_async`` on SQLite commits on the caller's event loop; while another process holds the write
    lock (here a second open of the lock file, which ``flock`` treats as another holder), the loop keeps
    serving, and the write commits once the lock is free. Nothing is answered before its commit."""
    import asyncio

    from hub.store.db import WriteLock, sqlite_file

    url = f"sqlite:///{tmp_path / 'hub.db'}"
    db = Database(url)
    upgrade(db)
    other = WriteLock(sqlite_file(url))
    other.acquire()

    def work(conn: sa.Connection) -> str:
        conn.exec_driver_sql("INSERT INTO outbox (resource_pk, res_type, res_id, version, interaction, origin, at)"
                             " VALUES (1, 'T', 'a', 1, 'create', NULL, 0)")
        return "committed"

    def count() -> int:
        with db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(outbox_t)).scalar_one())

    async def main() -> tuple[int, int, str]:
        write = asyncio.ensure_future(db.submit_async(work))
        ticks = 0
        for _ in range(20):  # the loop runs while the write waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done() and count() == 0
        other.release()
        result = await asyncio.wait_for(write, 10)
        return ticks, count(), result

    ticks, rows, result = asyncio.run(main())
    assert (ticks, rows, result) == (20, 1, "committed")
    other.close()
    db.dispose()


def test_sqlite_loop_writes_fail_instead_of_hanging_when_the_write_lock_cannot_be_taken(tmp_path: Any) -> None:
    import asyncio

    db = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    upgrade(db)
    assert db._write_lock is not None

    def broken() -> bool:
        raise OSError(5, "Input/output error")

    db._write_lock.try_acquire = broken  # type: ignore[method-assign]

    async def main() -> list[Any]:
        writes = [db.submit_async(lambda conn: "never") for _ in range(3)]
        return await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 10)

    outcomes = asyncio.run(main())
    assert [type(o) for o in outcomes] == [OSError] * 3
    db.dispose()
