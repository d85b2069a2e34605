"""The subscription and workflow tables (migration ``0005``), on the hub's metadata.

* ``sub_state``: one row per Subscription resource the dispatcher has seen: the parsed
  configuration it matches with (as of the dispatcher's outbox cursor), the status it
  decided, the event counter of topic-based subscriptions and the last delivery error.
* ``sub_delivery``: one row per (subscription, change) match, written before anything is
  sent, in the same transaction that advances the dispatcher's cursor. Retries update it;
  ``$resend`` copies it.
* ``wf_run`` / ``wf_step``: one row per workflow run (one per workflow and triggering
  change) and one per step executed, with the step's idempotency key.
* ``wf_timer``: APScheduler's job store (its own table shape), holding the durable waits.

Instants are integer microseconds (UTC), like the core tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Unicode,
    UniqueConstraint,
)

from hub.store.tables import PK, metadata

sub_state_t = Table(
    "sub_state",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sub_id", String(64), nullable=False, unique=True),
    Column("version", Integer, nullable=False),  # the Subscription version applied
    Column("kind", String(8), nullable=False),  # r4 | topic
    Column("status", String(16), nullable=False),  # requested | active | error | off | deleted
    Column("spec", LargeBinary, nullable=True),  # the parsed configuration (JSON), None when invalid or deleted
    Column("error", String(1000), nullable=True),  # why the status is error
    Column("endpoint_key", String(255), nullable=True),
    Column("events", BigInteger, nullable=False, default=0),  # eventsSinceSubscriptionStart
    Column("failures", Integer, nullable=False, default=0),  # consecutive failed attempts
    Column("last_error", String(1000), nullable=True),
    Column("last_error_at", BigInteger, nullable=True),
    Column("last_delivered_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

delivery_t = Table(
    "sub_delivery",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sub_id", String(64), nullable=False),
    Column("endpoint_key", String(255), nullable=False),
    Column("outbox_pk", BigInteger, nullable=False),
    Column("event_number", BigInteger, nullable=True),  # topic-based subscriptions
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("interaction", String(8), nullable=False),  # create | update | delete
    Column("status", String(12), nullable=False),  # pending | delivered | dead | resent | cancelled
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # the change's commit time (outbox.at)
    Column("first_attempt_at", BigInteger, nullable=True),
    Column("done_at", BigInteger, nullable=True),
    Column("last_status", Integer, nullable=True),  # HTTP status of the last attempt
    Column("last_error", String(500), nullable=True),
    Column("resend_of", BigInteger, nullable=True),
    Index("ix_sub_delivery_endpoint", "endpoint_key", "status", "pk"),
    Index("ix_sub_delivery_sub", "sub_id", "status", "pk"),
    Index("ix_sub_delivery_event", "sub_id", "event_number"),
    Index("ix_sub_delivery_resource", "res_type", "res_id"),
    Index("ix_sub_delivery_done", "status", "done_at"),
)

run_t = Table(
    "wf_run",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False, unique=True),
    Column("workflow", String(128), nullable=False),
    Column("outbox_pk", BigInteger, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),  # the triggering version
    Column("interaction", String(8), nullable=False),
    Column("status", String(12), nullable=False),  # pending running waiting succeeded failed cancelled skipped
    Column("step", Integer, nullable=False, default=0),  # index of the next step to run
    Column("wake_at", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),  # failed attempts of the current step
    Column("state", LargeBinary, nullable=True),  # JSON: step results, wait targets
    Column("reason", String(500), nullable=True),  # why it was cancelled or skipped
    Column("error", String(1000), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
    Column("ended_at", BigInteger, nullable=True),
    UniqueConstraint("workflow", "outbox_pk", name="uq_wf_run_change"),
    Index("ix_wf_run_status", "status", "wake_at"),
    Index("ix_wf_run_resource", "workflow", "res_type", "res_id"),
)

step_t = Table(
    "wf_step",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("run_pk", BigInteger, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("name", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("key", String(200), nullable=False, unique=True),  # the idempotency key of the step
    Column("status", String(12), nullable=False),  # started | succeeded | failed | skipped
    Column("attempts", Integer, nullable=False, default=1),
    Column("started_at", BigInteger, nullable=False),
    Column("ended_at", BigInteger, nullable=True),
    Column("result", String(500), nullable=True),  # e.g. the reference written, the channel used
    Column("detail", LargeBinary, nullable=True),  # JSON the step needs to recover after a crash
    Column("error", String(1000), nullable=True),
    UniqueConstraint("run_pk", "idx", name="uq_wf_step_run_idx"),
)

# APScheduler 3's SQLAlchemyJobStore table, declared here so that the migration owns it.
timer_t = Table(
    "wf_timer",
    metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)

__all__ = ["delivery_t", "run_t", "step_t", "sub_state_t", "timer_t"]
