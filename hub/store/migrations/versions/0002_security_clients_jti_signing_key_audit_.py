"""security: clients, jti, signing key, audit trail

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 07:44:39.014492
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('recorded', sa.BigInteger(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=1), nullable=False),
    sa.Column('subtype', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.Integer(), nullable=False),
    sa.Column('entity', sa.Text(), nullable=True),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_client', ['client_id', 'recorded'], unique=False)
        batch_op.create_index('ix_audit_recorded', ['recorded'], unique=False)

    op.create_table('auth_client',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('jwks', sa.Text(), nullable=True),
    sa.Column('jwks_url', sa.String(length=1000), nullable=True),
    sa.Column('scopes', sa.Text(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('client_id')
    )
    op.create_table('auth_jti',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('jti', sa.String(length=255), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('client_id', 'jti', name='uq_auth_jti')
    )
    with op.batch_alter_table('auth_jti', schema=None) as batch_op:
        batch_op.create_index('ix_auth_jti_expires', ['expires'], unique=False)

    op.create_table('auth_key',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('private_pem', sa.LargeBinary(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('kid')
    )


def downgrade() -> None:
    op.drop_table('auth_key')
    with op.batch_alter_table('auth_jti', schema=None) as batch_op:
        batch_op.drop_index('ix_auth_jti_expires')

    op.drop_table('auth_jti')
    op.drop_table('auth_client')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_recorded')
        batch_op.drop_index('ix_audit_client')

    op.drop_table('audit_event')
