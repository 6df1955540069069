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
    # One column added: a plain ALTER TABLE on both SQLite and PostgreSQL, no batch copy.
    op.add_column("chunks", sa.Column("failed_runs", sa.Integer, nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    op.drop_column("chunks", "failed_runs")  # SQLite 3.35+ drops a column in place
