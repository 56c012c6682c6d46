"""Jobs keep the GPU-seconds reserved for them at submission, so the API's quota check is one SQL sum

Before, the quota check read every job the tenant created in the last 24 h (spec included) and estimated each
unfinished one in Python at every submission: its cost grew with the tenant's jobs in the window. Rows made
before this revision keep NULL; the API still estimates those few from their spec.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('gpu_reserved_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('gpu_reserved_s')
