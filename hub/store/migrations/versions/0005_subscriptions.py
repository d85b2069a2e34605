"""subscriptions and workflows: sub_state, sub_delivery, wf_run, wf_step, wf_timer (APScheduler jobs)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 08:13:43.765802
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sub_delivery',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sub_id', sa.String(length=64), nullable=False),
    sa.Column('endpoint_key', sa.String(length=255), nullable=False),
    sa.Column('outbox_pk', sa.BigInteger(), nullable=False),
    sa.Column('event_number', sa.BigInteger(), nullable=True),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('interaction', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_at', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('first_attempt_at', sa.BigInteger(), nullable=True),
    sa.Column('done_at', sa.BigInteger(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('resend_of', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('sub_delivery', schema=None) as batch_op:
        batch_op.create_index('ix_sub_delivery_done', ['status', 'done_at'], unique=False)
        batch_op.create_index('ix_sub_delivery_endpoint', ['endpoint_key', 'status', 'pk'], unique=False)
        batch_op.create_index('ix_sub_delivery_event', ['sub_id', 'event_number'], unique=False)
        batch_op.create_index('ix_sub_delivery_resource', ['res_type', 'res_id'], unique=False)
        batch_op.create_index('ix_sub_delivery_sub', ['sub_id', 'status', 'pk'], unique=False)

    op.create_table('sub_state',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sub_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('spec', sa.LargeBinary(), nullable=True),
    sa.Column('error', sa.String(length=1000), nullable=True),
    sa.Column('endpoint_key', sa.String(length=255), nullable=True),
    sa.Column('events', sa.BigInteger(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(length=1000), nullable=True),
    sa.Column('last_error_at', sa.BigInteger(), nullable=True),
    sa.Column('last_delivered_at', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('sub_id')
    )
    op.create_table('wf_run',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('workflow', sa.String(length=128), nullable=False),
    sa.Column('outbox_pk', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('interaction', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('wake_at', sa.BigInteger(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('state', sa.LargeBinary(), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('error', sa.String(length=1000), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('started_at', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.Column('ended_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('run_id'),
    sa.UniqueConstraint('workflow', 'outbox_pk', name='uq_wf_run_change')
    )
    with op.batch_alter_table('wf_run', schema=None) as batch_op:
        batch_op.create_index('ix_wf_run_resource', ['workflow', 'res_type', 'res_id'], unique=False)
        batch_op.create_index('ix_wf_run_status', ['status', 'wake_at'], unique=False)

    op.create_table('wf_step',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_pk', sa.BigInteger(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.BigInteger(), nullable=False),
    sa.Column('ended_at', sa.BigInteger(), nullable=True),
    sa.Column('result', sa.String(length=500), nullable=True),
    sa.Column('detail', sa.LargeBinary(), nullable=True),
    sa.Column('error', sa.String(length=1000), nullable=True),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('key'),
    sa.UniqueConstraint('run_pk', 'idx', name='uq_wf_step_run_idx')
    )
    op.create_table('wf_timer',
    sa.Column('id', sa.Unicode(length=191), nullable=False),
    sa.Column('next_run_time', sa.Float(precision=25), nullable=True),
    sa.Column('job_state', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('wf_timer', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_wf_timer_next_run_time'), ['next_run_time'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('wf_timer', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_wf_timer_next_run_time'))

    op.drop_table('wf_timer')
    op.drop_table('wf_step')
    with op.batch_alter_table('wf_run', schema=None) as batch_op:
        batch_op.drop_index('ix_wf_run_status')
        batch_op.drop_index('ix_wf_run_resource')

    op.drop_table('wf_run')
    op.drop_table('sub_state')
    with op.batch_alter_table('sub_delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_sub_delivery_sub')
        batch_op.drop_index('ix_sub_delivery_resource')
        batch_op.drop_index('ix_sub_delivery_event')
        batch_op.drop_index('ix_sub_delivery_endpoint')
        batch_op.drop_index('ix_sub_delivery_done')

    op.drop_table('sub_delivery')
