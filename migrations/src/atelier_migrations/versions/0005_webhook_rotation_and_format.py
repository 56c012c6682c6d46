"""webhooks: the previous secret signs during a rotation's grace period; a message format per endpoint

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 05:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('webhooks') as batch:
        batch.add_column(sa.Column('previous_secret', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('previous_secret_until', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('format', sa.String(length=16), nullable=False, server_default='standard'))


def downgrade() -> None:
    with op.batch_alter_table('webhooks') as batch:
        batch.drop_column('format')
        batch.drop_column('previous_secret_until')
        batch.drop_column('previous_secret')
