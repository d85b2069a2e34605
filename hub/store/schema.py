"""Create or upgrade the database schema with the Alembic migrations in ``hub/store/migrations``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hub.store.db import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the database to ``revision`` (the newest by default). Safe to run every start."""
    config = alembic_config()
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def is_current(db: Database) -> bool:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head


def revision(db: Database, message: str) -> None:
    """Autogenerate a new migration from the difference between the tables and ``db`` (developers only)."""
    import hub.search.tables  # noqa: F401  (registers the index tables)

    config = alembic_config()
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.revision(config, message=message, autogenerate=True)
