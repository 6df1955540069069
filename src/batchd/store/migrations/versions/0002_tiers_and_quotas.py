"""Tiers on keys and batches; enqueued tokens per batch and model for quotas.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("tier", sa.String(40), nullable=False,
                                   server_default="core"))
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("tier", sa.String(40)))
    op.create_table(
        "batch_tokens",
        sa.Column("batch_id", sa.String(64), sa.ForeignKey("batches.id"), primary_key=True),
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("tokens", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("batch_tokens")
    with op.batch_alter_table("batches") as table:
        table.drop_column("tier")
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("tier")
