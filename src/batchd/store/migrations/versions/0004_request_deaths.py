"""Deaths are counted per request, not per chunk: what a run may have started, and strikes.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chunks") as table:
        table.add_column(sa.Column("in_flight", sa.JSON, nullable=True))
        table.add_column(sa.Column("strikes", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chunks") as table:
        table.drop_column("strikes")
        table.drop_column("in_flight")
