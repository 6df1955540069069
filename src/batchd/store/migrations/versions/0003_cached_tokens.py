"""Prompt tokens served from the prefix cache, per chunk (live and committed).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chunks") as table:
        table.add_column(sa.Column("cached_tokens", sa.Integer, nullable=False,
                                   server_default="0"))
        table.add_column(sa.Column("done_cached_tokens", sa.Integer, nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("chunks") as table:
        table.drop_column("done_cached_tokens")
        table.drop_column("cached_tokens")
