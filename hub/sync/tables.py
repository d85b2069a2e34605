"""The sync tables (migration ``0007_sync``), on the hub's one metadata.

* ``sync_link``: a local resource ↔ the remote resource it is synced with, per connector:
  the remote id and version last seen, and the local version that matched it then.
  ``local_version`` is how a pull tells a local change that is not yet pushed (a conflict)
  from its own earlier write, and how a push tells "already in sync" from a change.
* ``sync_state``: one row per connector, type and direction (``pull``/``push``): the pull
  watermark (the remote's ``meta.lastUpdated``, as the remote wrote it) and, in history mode,
  the next link of a run in progress; the last success, attempt and error; counts.
* ``sync_dead_letter``: changes that failed for a reason retrying cannot fix (a 4xx other
  than 429, a conflict under the ``manual`` policy), with the remote's OperationOutcome;
  replayable (``status`` dead -> replay -> resolved | dead).
* ``sync_connector``: what discovery found on the remote (JSON), for ``status``.

The push cursor is an ``outbox_consumer`` row named ``sync:<connector>``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table, Text, UniqueConstraint

from hub.store.tables import PK, metadata

link_t = Table(
    "sync_link",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("connector", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("local_id", String(64), nullable=False),
    Column("remote_id", String(128), nullable=False),
    Column("remote_version", String(64), nullable=True),
    Column("local_version", Integer, nullable=True),
    Column("updated", BigInteger, nullable=False),
    UniqueConstraint("connector", "res_type", "local_id", name="uq_sync_link_local"),
    UniqueConstraint("connector", "res_type", "remote_id", name="uq_sync_link_remote"),
)

state_t = Table(
    "sync_state",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("connector", String(64), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("direction", String(8), nullable=False),  # pull | push
    Column("watermark", String(64), nullable=True),
    Column("next_url", Text, nullable=True),
    Column("run_max", String(64), nullable=True),  # history mode: newest lastUpdated of the run in progress
    Column("last_success", BigInteger, nullable=True),
    Column("last_attempt", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("count", BigInteger, nullable=False, default=0),
    Column("errors", BigInteger, nullable=False, default=0),
    UniqueConstraint("connector", "res_type", "direction", name="uq_sync_state"),
)

dead_letter_t = Table(
    "sync_dead_letter",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("connector", String(64), nullable=False),
    Column("direction", String(8), nullable=False),  # pull | push
    Column("res_type", String(64), nullable=False),
    Column("local_id", String(64), nullable=True),
    Column("remote_id", String(128), nullable=True),
    Column("version", String(64), nullable=True),  # local version (push) or remote version (pull)
    Column("status", String(16), nullable=False),  # dead | replay | resolved
    Column("resolve", String(16), nullable=True),  # the policy a replay applies (remote-wins | local-wins)
    Column("http_status", Integer, nullable=True),
    Column("code", String(64), nullable=False),  # FHIRHUB-SYNC-…
    Column("reason", Text, nullable=False),
    Column("outcome", LargeBinary, nullable=True),  # the remote's OperationOutcome, JSON bytes
    Column("attempts", Integer, nullable=False, default=1),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Index("ix_sync_dead_letter_status", "connector", "status"),
)

connector_t = Table(
    "sync_connector",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("discovered", BigInteger, nullable=True),
    Column("discovery", LargeBinary, nullable=True),  # JSON: what the remote supports, warnings
)
