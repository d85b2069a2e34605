"""The storage schema, in the shape HAPI FHIR proved at scale.

* ``resource``: one row per logical resource (current pointer).
* ``resource_version``: append-only, one row per version, holding the stored
  JSON bytes exactly as served (``meta.versionId``/``lastUpdated`` included).
* ``outbox``: one row per create/update/delete, written in the same database
  transaction. Subscriptions, sync and workflows read changes only from here.
* the search index tables live in :mod:`hub.search.tables` on the same metadata.

Every table has an integer surrogate key. Instants are stored as integer
microseconds since the Unix epoch (UTC), which sort and compare the same on
SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identity.
PK = BigInteger().with_variant(Integer(), "sqlite")

metadata = SQLModel.metadata


class Resource(SQLModel, table=True):
    __tablename__ = "resource"
    __table_args__ = (UniqueConstraint("res_type", "res_id", name="uq_resource_type_id"),)

    pk: int | None = Field(default=None, sa_column=Column(PK, primary_key=True, autoincrement=True))
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    res_id: str = Field(sa_column=Column(String(64), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    deleted: bool = Field(sa_column=Column(Boolean, nullable=False, default=False))
    content_hash: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False))
    last_updated: int = Field(sa_column=Column(BigInteger, nullable=False))


class ResourceVersion(SQLModel, table=True):
    __tablename__ = "resource_version"
    __table_args__ = (
        UniqueConstraint("resource_pk", "version", name="uq_version_resource_version"),
        Index("ix_version_type_pk", "res_type", "pk"),  # type history, newest first
        # vread and instance history go through resource (type, id) -> uq (resource_pk, version);
        # system history and _since scan the primary key newest first. Every index here is
        # written on every change, so there are only these.
    )

    pk: int | None = Field(default=None, sa_column=Column(PK, primary_key=True, autoincrement=True))
    resource_pk: int = Field(sa_column=Column(BigInteger, nullable=False))
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    res_id: str = Field(sa_column=Column(String(64), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    last_updated: int = Field(sa_column=Column(BigInteger, nullable=False))
    method: str = Field(sa_column=Column(String(8), nullable=False))  # POST | PUT | PATCH | DELETE
    deleted: bool = Field(sa_column=Column(Boolean, nullable=False, default=False))
    data: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class Outbox(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_resource", "resource_pk", "version"),)

    pk: int | None = Field(default=None, sa_column=Column(PK, primary_key=True, autoincrement=True))
    resource_pk: int = Field(sa_column=Column(BigInteger, nullable=False))
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    res_id: str = Field(sa_column=Column(String(64), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    interaction: str = Field(sa_column=Column(String(8), nullable=False))  # create | update | delete
    origin: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    at: int = Field(sa_column=Column(BigInteger, nullable=False))


resource_t: Table = Resource.__table__  # type: ignore[attr-defined]
version_t: Table = ResourceVersion.__table__  # type: ignore[attr-defined]
outbox_t: Table = Outbox.__table__  # type: ignore[attr-defined]
