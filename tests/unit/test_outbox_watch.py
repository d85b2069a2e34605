"""The services process hears of commits made by the API worker processes at once.

SQLite: ``PRAGMA data_version``. PostgreSQL: each API worker's ``CommitAnnouncer`` NOTIFYs after it commits
(coalesced by the worker's ``ChangeSignal``) and the primary LISTENs (hub/workers.py: ``_watch_outbox``);
a hub in another schema of the same database does not wake it. A second hub on the same database with an
announcer subscribed stands for a worker process.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hub.app import Content, Hub, build_hub
from hub.interactions.request import FhirRequest
from hub.settings import Settings
from hub.store.schema import upgrade
from hub.workers import OUTBOX_CHANNEL, CommitAnnouncer, WorkerPool
from tests.conftest import fresh_postgres_schema


def _create(hub: Hub) -> None:
    resp = hub.router.dispatch(FhirRequest("POST", "Patient", body={"resourceType": "Patient", "active": True},
                                           base_url="http://hub.test/fhir"))
    assert resp.status == 201


@contextmanager
def _watching(url: str, content: Content) -> Iterator[Hub]:
    """The primary: a hub whose ``WorkerPool`` watch (without workers) runs for the block."""
    hub = build_hub(Settings(database_url=url), content=content)
    upgrade(hub.ctx.db)
    with socket.socket() as sock:
        pool = WorkerPool(hub, 0, [sock], "")
        thread = threading.Thread(target=pool._watch_outbox, daemon=True)
        thread.start()
        try:
            yield hub
        finally:
            pool._stopping = True
            thread.join(5)
            hub.close()
            assert not thread.is_alive()


def _settled(hub: Hub) -> int:
    """The change generation once the watcher's start-up wake (and any other) has passed."""
    changes = hub.ctx.changes
    generation = changes.wait(0, 5)
    while (later := changes.wait(generation, 0.5)) != generation:
        generation = later
    return generation


@contextmanager
def _worker(url: str, content: Content) -> Iterator[Hub]:
    hub = build_hub(Settings(database_url=url), content=content)
    upgrade(hub.ctx.db)
    announcer = CommitAnnouncer(hub.ctx.db)
    if not hub.ctx.db.is_sqlite:
        hub.ctx.changes.subscribe(announcer)  # as hub/cli.py does in an API worker
    try:
        yield hub
    finally:
        announcer.close()
        hub.close()


def test_a_commit_of_a_worker_wakes_the_primary(db_url: str, content: Content) -> None:
    with _watching(db_url, content) as primary, _worker(db_url, content) as worker:
        generation = _settled(primary)
        _create(worker)
        assert primary.ctx.changes.wait(generation, 5) > generation


def test_postgresql_a_hub_in_another_schema_does_not_wake_the_primary(content: Content) -> None:
    with fresh_postgres_schema() as url, fresh_postgres_schema() as elsewhere, _watching(url, content) as primary, \
            _worker(elsewhere, content) as stranger:
        generation = _settled(primary)
        _create(stranger)
        assert primary.ctx.changes.wait(generation, 1.0) == generation


def test_postgresql_a_burst_of_commits_is_announced_in_few_notifications_the_last_after_the_last_commit(
        content: Content) -> None:
    import psycopg

    with fresh_postgres_schema() as url, _worker(url, content) as worker:
        engine = worker.ctx.db.engine
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        listener = psycopg.connect(*cargs, **{**cparams, "autocommit": True})
        try:
            schema = listener.execute("SELECT current_schema()").fetchone()
            listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
            for _ in range(60):
                _create(worker)
            with worker.ctx.db.read() as conn:
                count = conn.exec_driver_sql("SELECT count(*) FROM outbox").scalar_one()
            assert count == 60  # committed before any notification below is read
            notes = list(listener.notifies(timeout=1.5))
            assert 1 <= len(notes) < 60
            assert {n.payload for n in notes} == {schema[0] if schema else ""}
        finally:
            listener.close()
