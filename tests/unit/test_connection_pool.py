"""PostgreSQL connections are kept, not opened per request: as many reads at once as the pool's size open no
new backend after the first round (an overflow connection is closed when it is returned, so a pool smaller
than the reads in flight started a PostgreSQL backend for a good share of them)."""

from __future__ import annotations

import threading

from sqlalchemy import event

from hub.store import sql
from hub.store.db import Database
from tests.conftest import fresh_postgres_schema

POOL = 8


def test_reads_as_many_as_the_pool_reuse_their_connections() -> None:
    with fresh_postgres_schema() as url:
        db = Database(url, POOL)
        assert db._autocommit is not None
        opened: list[int] = []
        event.listen(db._autocommit, "connect", lambda *_: opened.append(1))
        start = threading.Barrier(POOL)

        def reader() -> None:
            for _ in range(40):
                start.wait()  # every round: POOL reads in flight at the same moment
                with db.read_once() as conn:
                    assert sql.fetch_one(conn, "SELECT pg_sleep(0.002), {p}", (1,))[1] == 1

        try:
            threads = [threading.Thread(target=reader) for _ in range(POOL)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            db.engine.dispose()
            db._autocommit.dispose()
        assert 0 < len(opened) <= POOL, f"{len(opened)} connections opened for {POOL} readers"
