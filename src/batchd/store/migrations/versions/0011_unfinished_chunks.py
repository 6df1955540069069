"""A partial index of the chunks not yet done, by batch and number: a claim reaches a batch's
first claimable chunk, and a commit learns whether any is left, past however many are done.
Without it each claim read every waiting chunk of every batch (a correlated count for each),
so a batch of a million requests spent minutes of CPU on its claims alone.

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
