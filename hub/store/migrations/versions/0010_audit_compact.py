"""audit: a row holds a batch of events (``count``, ``events``, ``recorded_last``); AuditEvents are built when read

Before this revision every event was a row with its AuditEvent as JSON in ``audit_event.data`` (about
700 bytes, built and inserted, with four index entries, per read). A row now holds the events of one
client, interaction and outcome from one batch, as compact JSON; ``event_id`` and ``data`` are kept for
the rows written before it.

Revision ID: 0010
Revises: 0002
Create Date: 2026-12-07 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recorded_last', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('count', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('events', sa.LargeBinary(), nullable=True))
        batch_op.alter_column('event_id', existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column('data', existing_type=sa.LargeBinary(), nullable=True)


def downgrade() -> None:
    """Back to a row (with its AuditEvent JSON) per event: each batch row is expanded, its events keeping
    the ids they had (``{row}.{position}``), then the batch rows are removed."""
    from hub.security.audit import expand  # the one place that knows how a batch row holds its events

    conn = op.get_bind()
    audit = sa.table('audit_event', sa.column('pk', sa.BigInteger()), sa.column('event_id', sa.String()),
                     sa.column('recorded', sa.BigInteger()), sa.column('recorded_last', sa.BigInteger()),
                     sa.column('client_id', sa.String()), sa.column('action', sa.String()), sa.column('subtype', sa.String()),
                     sa.column('outcome', sa.Integer()), sa.column('entity', sa.Text()), sa.column('count', sa.Integer()),
                     sa.column('events', sa.LargeBinary()), sa.column('data', sa.LargeBinary()))
    batches = conn.execute(sa.select(audit).where(audit.c.events.is_not(None)).order_by(audit.c.pk)).all()
    for row in batches:
        conn.execute(sa.insert(audit), [
            {"event_id": e.event_id, "recorded": e.recorded, "client_id": e.client_id, "action": e.action,
             "subtype": e.subtype, "outcome": e.outcome, "entity": " ".join(e.entities) or None, "data": e.resource()}
            for e in expand(row)
        ])
        conn.execute(sa.delete(audit).where(audit.c.pk == row.pk))
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.alter_column('data', existing_type=sa.LargeBinary(), nullable=False)
        batch_op.alter_column('event_id', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column('events')
        batch_op.drop_column('count')
        batch_op.drop_column('recorded_last')
