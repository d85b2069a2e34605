"""hl7: remember enhanced-mode application ACKs that could not be delivered (``hl7_message.ack_delivery``)

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-02 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hl7_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ack_delivery', sa.String(length=16), nullable=True))
        batch_op.create_index('ix_hl7_message_ack_delivery', ['ack_delivery', 'connector', 'sender'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hl7_message', schema=None) as batch_op:
        batch_op.drop_index('ix_hl7_message_ack_delivery')
        batch_op.drop_column('ack_delivery')
