"""API keys carry a role: admin keys manage the tenant's keys, member keys do everything else

Keys made before roles existed could manage keys, so they become ``admin``; new rows default to ``member``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 07:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.add_column(sa.Column('role', sa.String(length=16), nullable=False, server_default='admin'))
    with op.batch_alter_table('api_keys') as batch:
        batch.alter_column('role', existing_type=sa.String(length=16), existing_nullable=False,
                           server_default='member')


def downgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('role')
