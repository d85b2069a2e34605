"""Tables for registered clients, used assertion ids, the hub's signing key and the audit trail."""

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
    Text,
    UniqueConstraint,
)

from hub.store.tables import PK, metadata

client_t = Table(
    "auth_client",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("client_id", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("jwks", Text, nullable=True),  # inline JWKS JSON
    Column("jwks_url", String(1000), nullable=True),
    Column("scopes", Text, nullable=False),  # space separated
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created", BigInteger, nullable=False),
)

jti_t = Table(
    "auth_jti",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("client_id", String(64), nullable=False),
    Column("jti", String(255), nullable=False),
    Column("expires", BigInteger, nullable=False),
    UniqueConstraint("client_id", "jti", name="uq_auth_jti"),
    Index("ix_auth_jti_expires", "expires"),
)

key_t = Table(
    "auth_key",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("kid", String(64), nullable=False, unique=True),
    Column("private_pem", LargeBinary, nullable=False),
    Column("created", BigInteger, nullable=False),
)

# Append-only: the API offers no update or delete of these rows, and nothing in the hub issues one.
# A row holds one or more events of one client, interaction (subtype) and outcome: a batch of reads is one
# row (hub.security.audit.rows). Rows written before revision 0010 are one event each, kept as JSON in
# ``data`` with its ``event_id``.
audit_t = Table(
    "audit_event",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=True, unique=True),  # rows before revision 0010 only
    Column("recorded", BigInteger, nullable=False),  # the first event's time (microseconds)
    Column("recorded_last", BigInteger, nullable=True),  # the last event's (NULL before revision 0010: = recorded)
    Column("client_id", String(64), nullable=True),
    Column("action", String(1), nullable=False),  # C R U D E
    Column("subtype", String(32), nullable=False),  # read, vread, search-type, create, ..., hl7v2, sync
    Column("outcome", Integer, nullable=False),  # 0 success, 4 minor failure, 8 serious, 12 major
    Column("entity", Text, nullable=True),  # every event's references, space-separated, for entity= search
    Column("count", Integer, nullable=True),  # events in the row (NULL before revision 0010: one)
    # JSON [[recorded, [reference...], address, query, detail], ...]: the events, built into AuditEvents when read
    Column("events", LargeBinary, nullable=True),
    Column("data", LargeBinary, nullable=True),  # before revision 0010: the AuditEvent resource as JSON
    Index("ix_audit_recorded", "recorded"),
    Index("ix_audit_client", "client_id", "recorded"),
)
