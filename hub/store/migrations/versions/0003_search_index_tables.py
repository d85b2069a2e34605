"""search index tables

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 07:54:53.977333
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idx_date',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('hash_identity', sa.BigInteger(), nullable=False),
    sa.Column('grp', sa.Integer(), nullable=False),
    sa.Column('low', sa.BigInteger(), nullable=False),
    sa.Column('high', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.create_index('ix_idx_date_0', ['hash_identity', 'low', 'high'], unique=False)
        batch_op.create_index('ix_idx_date_resource', ['resource_pk', 'hash_identity'], unique=False)

    op.create_table('idx_number',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('hash_identity', sa.BigInteger(), nullable=False),
    sa.Column('grp', sa.Integer(), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('idx_number', schema=None) as batch_op:
        batch_op.create_index('ix_idx_number_0', ['hash_identity', 'low'], unique=False)
        batch_op.create_index('ix_idx_number_resource', ['resource_pk', 'hash_identity'], unique=False)

    op.create_table('idx_quantity',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('hash_identity', sa.BigInteger(), nullable=False),
    sa.Column('grp', sa.Integer(), nullable=False),
    sa.Column('system', sa.String(length=512), nullable=True),
    sa.Column('code', sa.String(length=128), nullable=True),
    sa.Column('unit', sa.String(length=128), nullable=True),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('idx_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_idx_quantity_0', ['hash_identity', 'low'], unique=False)
        batch_op.create_index('ix_idx_quantity_resource', ['resource_pk', 'hash_identity'], unique=False)

    op.create_table('idx_reference',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('hash_identity', sa.BigInteger(), nullable=False),
    sa.Column('grp', sa.Integer(), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=True),
    sa.Column('target_id', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.create_index('ix_idx_reference_0', ['hash_identity', 'target_id', 'target_type'], unique=False)
        batch_op.create_index('ix_idx_reference_resource', ['resource_pk', 'hash_identity'], unique=False)

    op.create_table('idx_string',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('hash_identity', sa.BigInteger(), nullable=False),
    sa.Column('grp', sa.Integer(), nullable=False),
    sa.Column('value_norm', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=False),
    sa.Column('value_exact', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.create_index('ix_idx_string_0', ['hash_identity', 'value_norm'], unique=False)
        batch_op.create_index('ix_idx_string_resource', ['resource_pk', 'hash_identity'], unique=False)

    op.create_table('idx_token',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('hash_identity', sa.BigInteger(), nullable=False),
    sa.Column('grp', sa.Integer(), nullable=False),
    sa.Column('system', sa.String(length=512), nullable=True),
    sa.Column('code', sa.String(length=512), nullable=True),
    sa.Column('hash_code', sa.BigInteger(), nullable=False),
    sa.Column('hash_sys', sa.BigInteger(), nullable=False),
    sa.Column('hash_sys_code', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.create_index('ix_idx_token_0', ['hash_sys_code', 'resource_pk'], unique=False)
        batch_op.create_index('ix_idx_token_1', ['hash_code', 'resource_pk'], unique=False)
        batch_op.create_index('ix_idx_token_2', ['hash_sys', 'resource_pk'], unique=False)
        batch_op.create_index('ix_idx_token_resource', ['resource_pk', 'hash_identity'], unique=False)

    op.create_table('idx_uri',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.BigInteger(), nullable=False),
    sa.Column('hash_identity', sa.BigInteger(), nullable=False),
    sa.Column('grp', sa.Integer(), nullable=False),
    sa.Column('uri', sa.String(length=512).with_variant(sa.String(length=512, collation='C'), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('pk')
    )
    with op.batch_alter_table('idx_uri', schema=None) as batch_op:
        batch_op.create_index('ix_idx_uri_0', ['hash_identity', 'uri'], unique=False)
        batch_op.create_index('ix_idx_uri_resource', ['resource_pk', 'hash_identity'], unique=False)

    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.create_index('ix_resource_type_pk', ['res_type', 'pk'], unique=False)
        batch_op.create_index('ix_resource_type_updated', ['res_type', 'last_updated'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_index('ix_resource_type_updated')
        batch_op.drop_index('ix_resource_type_pk')

    with op.batch_alter_table('idx_uri', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_uri_resource')
        batch_op.drop_index('ix_idx_uri_0')

    op.drop_table('idx_uri')
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_token_resource')
        batch_op.drop_index('ix_idx_token_2')
        batch_op.drop_index('ix_idx_token_1')
        batch_op.drop_index('ix_idx_token_0')

    op.drop_table('idx_token')
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_string_resource')
        batch_op.drop_index('ix_idx_string_0')

    op.drop_table('idx_string')
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_reference_resource')
        batch_op.drop_index('ix_idx_reference_0')

    op.drop_table('idx_reference')
    with op.batch_alter_table('idx_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_quantity_resource')
        batch_op.drop_index('ix_idx_quantity_0')

    op.drop_table('idx_quantity')
    with op.batch_alter_table('idx_number', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_number_resource')
        batch_op.drop_index('ix_idx_number_0')

    op.drop_table('idx_number')
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_date_resource')
        batch_op.drop_index('ix_idx_date_0')

    op.drop_table('idx_date')
