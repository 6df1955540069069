"""Scale-out: 64-bit sizes, offsets, timestamps and token counts on PostgreSQL; creation
order from the database; chunks carry their model; housekeeping turns.

SQLite's INTEGER is already 64-bit, so only PostgreSQL's columns are widened.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

WIDENED = {
    "api_keys": ["created_at", "revoked_at"],
    "files": ["bytes", "created_at", "expires_at", "deleted_at"],
    "batches": ["output_expires_after", "created_at", "expires_at", "in_progress_at",
                "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
                "cancelled_at", "input_tokens", "output_tokens", "cached_tokens"],
    "chunks": ["byte_start", "byte_end", "deadline", "input_tokens", "output_tokens",
               "cached_tokens", "done_input_tokens", "done_output_tokens",
               "done_cached_tokens"],
}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for name, columns in WIDENED.items():
            for column in columns:
                op.alter_column(name, column, type_=sa.BigInteger,
                                existing_type=sa.Integer)
        # Paging order on PostgreSQL: one sequence for files and batches, above any seq a
        # process numbered before (those were microseconds since the epoch).
        op.execute("CREATE SEQUENCE IF NOT EXISTS batchd_seq")
        op.execute("SELECT setval('batchd_seq', GREATEST(1, "
                   "(SELECT COALESCE(MAX(seq), 0) FROM files), "
                   "(SELECT COALESCE(MAX(seq), 0) FROM batches)))")
    with op.batch_alter_table("chunks") as table:
        table.add_column(sa.Column("model", sa.Text, nullable=True))
    op.execute("UPDATE chunks SET model = "
               "(SELECT batches.model FROM batches WHERE batches.id = chunks.batch_id)")
    op.create_index("ix_files_seq", "files", ["seq"])
    op.create_index("ix_batches_seq", "batches", ["seq"])
    housekeeping = op.create_table(
        "housekeeping",
        sa.Column("job", sa.String(40), primary_key=True),
        sa.Column("due_at", sa.Float, nullable=False),
    )
    op.bulk_insert(housekeeping, [{"job": "expiry", "due_at": 0.0}])


def downgrade() -> None:
    op.drop_table("housekeeping")
    op.drop_index("ix_batches_seq", "batches")
    op.drop_index("ix_files_seq", "files")
    with op.batch_alter_table("chunks") as table:
        table.drop_column("model")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS batchd_seq")
