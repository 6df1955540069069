"""A chunk counts the runs that failed for no request's doing, so a persistent fault ends.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chunks") as table:
        table.add_column(sa.Column("failed_runs", sa.Integer, nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("chunks") as table:
        table.drop_column("failed_runs")
