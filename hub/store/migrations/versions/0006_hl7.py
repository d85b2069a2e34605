"""hl7: the HL7v2 message store (inbound messages, outbound queue)

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-27 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hl7_message',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('direction', sa.String(length=3), nullable=False),
    sa.Column('connector', sa.String(length=64), nullable=False),
    sa.Column('sender', sa.String(length=200), nullable=False),
    sa.Column('receiver', sa.String(length=200), nullable=False),
    sa.Column('control_id', sa.String(length=200), nullable=True),
    sa.Column('message_type', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_location', sa.String(length=64), nullable=True),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('processed', sa.BigInteger(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('next_attempt', sa.BigInteger(), nullable=True),
    sa.Column('peer', sa.String(length=100), nullable=True),
    sa.Column('patient_key', sa.String(length=300), nullable=True),
    sa.Column('source', sa.String(length=200), nullable=True),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('raw_hash', sa.LargeBinary(length=16), nullable=True),
    sa.Column('ack', sa.LargeBinary(), nullable=True),
    sa.Column('resources', sa.Text(), nullable=True),
    sa.Column('bundle', sa.LargeBinary(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('direction', 'connector', 'sender', 'control_id', name='uq_hl7_message_dedup')
    )
    with op.batch_alter_table('hl7_message', schema=None) as batch_op:
        batch_op.create_index('ix_hl7_message_error', ['error_code'], unique=False)
        batch_op.create_index('ix_hl7_message_queue', ['direction', 'connector', 'status', 'pk'], unique=False)
        batch_op.create_index('ix_hl7_message_received', ['received'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hl7_message', schema=None) as batch_op:
        batch_op.drop_index('ix_hl7_message_received')
        batch_op.drop_index('ix_hl7_message_queue')
        batch_op.drop_index('ix_hl7_message_error')

    op.drop_table('hl7_message')
