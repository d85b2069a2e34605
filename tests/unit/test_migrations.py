"""The migrations build exactly the tables the code declares, on both databases (no drift between them)."""

from __future__ import annotations

import importlib

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hub.store.db import Database
from hub.store.schema import upgrade
from hub.store.tables import metadata

TABLE_MODULES = ("hub.search.tables", "hub.security.tables", "hub.store.outbox", "hub.subscriptions.tables",
                 "hub.hl7.tables", "hub.sync.tables")


def test_migrated_schema_matches_the_declared_tables(db_url: str) -> None:
    for name in TABLE_MODULES:
        importlib.import_module(name)
    db = Database(db_url)
    try:
        upgrade(db)
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
    finally:
        db.dispose()
