"""jobs carry the caller's external_id and metadata (string labels)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 04:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('external_id', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('metadata', sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    op.create_index('ix_jobs_tenant_external_id', 'jobs', ['tenant_id', 'external_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_jobs_tenant_external_id', table_name='jobs')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('metadata')
        batch.drop_column('external_id')
