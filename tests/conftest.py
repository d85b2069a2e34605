"""Shared fixtures. ``db_url`` runs a test on SQLite and on PostgreSQL.

PostgreSQL is never skipped: if the server at ``FHIRHUB_TEST_POSTGRES_URL``
(default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) cannot be
reached, the PostgreSQL half of the suite fails. Every database the suite
makes is its own schema, so concurrent runs do not see each other.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DIALECTS = ["sqlite", "postgresql"]


def postgres_base_url() -> str:
    return os.environ.get("FHIRHUB_TEST_POSTGRES_URL", PG_DEFAULT)


@contextlib.contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """Create an empty schema and yield a URL whose search_path points at it; drop it after."""
    base = postgres_base_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except sa.exc.OperationalError as exc:  # environment failure: fail loudly, never skip
        pytest.fail(f"PostgreSQL at {base} is required by the test suite and cannot be reached: {exc}")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


@contextlib.contextmanager
def fresh_database(dialect: str, tmp_path: Path) -> Iterator[str]:
    if dialect == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        with fresh_postgres_schema() as url:
            yield url


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database, once per dialect."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="session")
def content():  # type: ignore[no-untyped-def]
    """The conformance content (definitions, validator, search parameters), loaded once per test session."""
    from hub.app import Content
    from hub.settings import Settings

    return Content.load(Settings().profiles_dir)
