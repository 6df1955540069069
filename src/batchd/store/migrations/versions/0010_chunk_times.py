"""When each chunk first started and when it was done: the model's measured throughput, from
which a batch input file's estimate says when it would finish.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("chunks", sa.Column("started_at", sa.Float))
    op.add_column("chunks", sa.Column("finished_at", sa.Float))
    op.create_index("ix_chunks_finished", "chunks", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_chunks_finished", "chunks")
    op.drop_column("chunks", "finished_at")
    op.drop_column("chunks", "started_at")
