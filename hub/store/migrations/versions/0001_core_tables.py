"""core tables

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 07:36:11.153385
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('interaction', sa.String(length=8), nullable=False),
    sa.Column('origin', sa.String(length=128), nullable=True),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_resource', ['resource_pk', 'version'], unique=False)

    op.create_table('resource',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content_hash', sa.LargeBinary(length=16), nullable=False),
    sa.Column('last_updated', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('res_type', 'res_id', name='uq_resource_type_id')
    )
    op.create_table('resource_version',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.BigInteger(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('resource_pk', 'version', name='uq_version_resource_version')
    )
    with op.batch_alter_table('resource_version', schema=None) as batch_op:
        batch_op.create_index('ix_version_type_pk', ['res_type', 'pk'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('resource_version', schema=None) as batch_op:
        batch_op.drop_index('ix_version_type_pk')

    op.drop_table('resource_version')
    op.drop_table('resource')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_resource')

    op.drop_table('outbox')
