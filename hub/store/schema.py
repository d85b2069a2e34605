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


def upgrade(db: Database, revision: str = "heads") -> None:
    """Bring the database to ``revision`` (every branch's newest by default). Safe to run every start.

    Features add their tables as branches off the core revisions (down_revision "0004"),
    so Alembic may have several heads; all of them are applied.
    """
    config = alembic_config()
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def is_current(db: Database) -> bool:
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with db.engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads()) == heads


def revision(db: Database, message: str) -> None:
    """Autogenerate a new migration from the difference between the tables and ``db`` (developers only)."""
    import hub.search.tables  # noqa: F401  (registers the index tables)
    import hub.security.tables  # noqa: F401
    import hub.store.outbox  # noqa: F401

    config = alembic_config()
    with db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.revision(config, message=message, autogenerate=True)
