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
    # Rows written since hold several events each and have no ``event_id``: refuse rather than lose them.
    raise NotImplementedError("revision 0010 (compact audit events) cannot be downgraded")
