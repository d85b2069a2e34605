"""sync: links, state, dead letters, discovery (fhir-rest connectors)

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-27 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0004'
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('sync_link',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('connector', sa.String(length=64), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('local_id', sa.String(length=64), nullable=False),
    sa.Column('remote_id', sa.String(length=128), nullable=False),
    sa.Column('remote_version', sa.String(length=64), nullable=True),
    sa.Column('local_version', sa.Integer(), nullable=True),
    sa.Column('updated', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('connector', 'res_type', 'local_id', name='uq_sync_link_local'),
    sa.UniqueConstraint('connector', 'res_type', 'remote_id', name='uq_sync_link_remote')
    )
    op.create_table('sync_state',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('connector', sa.String(length=64), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('watermark', sa.String(length=64), nullable=True),
    sa.Column('next_url', sa.Text(), nullable=True),
    sa.Column('run_max', sa.String(length=64), nullable=True),
    sa.Column('last_success', sa.BigInteger(), nullable=True),
    sa.Column('last_attempt', sa.BigInteger(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('errors', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('connector', 'res_type', 'direction', name='uq_sync_state')
    )
    op.create_table('sync_dead_letter',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('connector', sa.String(length=64), nullable=False),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('local_id', sa.String(length=64), nullable=True),
    sa.Column('remote_id', sa.String(length=128), nullable=True),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('resolve', sa.String(length=16), nullable=True),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('outcome', sa.LargeBinary(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('updated', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('sync_dead_letter', schema=None) as batch_op:
        batch_op.create_index('ix_sync_dead_letter_status', ['connector', 'status'], unique=False)
    op.create_table('sync_connector',
    sa.Column('pk', PK, autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('discovered', sa.BigInteger(), nullable=True),
    sa.Column('discovery', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('sync_connector')
    with op.batch_alter_table('sync_dead_letter', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_dead_letter_status')
    op.drop_table('sync_dead_letter')
    op.drop_table('sync_state')
    op.drop_table('sync_link')
