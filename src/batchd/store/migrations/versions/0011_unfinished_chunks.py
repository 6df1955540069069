"""A partial index of the chunks not yet done, by batch and number: a claim reaches a batch's
first claimable chunk, and a commit learns whether any is left, past however many are done.
Without it each claim read every waiting chunk of every batch (a correlated count for each):
with two batches of 5,000 chunks waiting, a chunk's store calls took 47.6 ms on SQLite and
0.9 s on PostgreSQL (bench/chunk_claims.py); a million requests are about 3,900 chunks.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_UNFINISHED = sa.text("state IN ('pending', 'leased')")


def upgrade() -> None:
    op.create_index("ix_chunks_unfinished", "chunks", ["batch_id", "chunk_no"],
                    sqlite_where=_UNFINISHED, postgresql_where=_UNFINISHED)


def downgrade() -> None:
    op.drop_index("ix_chunks_unfinished", "chunks")
