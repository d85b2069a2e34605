"""Alembic environment: run against the connection handed in by :func:`hub.store.schema.upgrade`."""

from __future__ import annotations

from alembic import context

from hub.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` run by hand
    from sqlalchemy import create_engine

    from hub.settings import Settings

    connection = create_engine(Settings().database_url).connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
