"""Usage, aggregated per minute, owner, key, model, kind and batch-or-real-time; a batch
remembers the key that created it.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("key_id", sa.String(64)))
    op.create_table(
        "usage",
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("owner", sa.String(200), primary_key=True),
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("batch", sa.Integer, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("usage")
    op.drop_column("batches", "key_id")
