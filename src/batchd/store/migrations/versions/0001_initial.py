"""Initial schema: api keys, files, batches and their chunks.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("revoked_at", sa.Integer),
    )
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("purpose", sa.String(40), nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Integer),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("blob_key", sa.Text, nullable=False),
        sa.Column("deleted_at", sa.Integer),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_files_owner_seq", "files", ["owner", "seq"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(100), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(10), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("metadata", sa.JSON),
        sa.Column("output_expires_after", sa.Integer),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Integer, nullable=False),
        sa.Column("in_progress_at", sa.Integer),
        sa.Column("finalizing_at", sa.Integer),
        sa.Column("completed_at", sa.Integer),
        sa.Column("failed_at", sa.Integer),
        sa.Column("expired_at", sa.Integer),
        sa.Column("cancelling_at", sa.Integer),
        sa.Column("cancelled_at", sa.Integer),
        sa.Column("errors", sa.JSON),
        sa.Column("output_file_id", sa.String(64)),
        sa.Column("error_file_id", sa.String(64)),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("stop_reason", sa.String(20)),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_batches_owner_seq", "batches", ["owner", "seq"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "chunks",
        sa.Column("batch_id", sa.String(64), sa.ForeignKey("batches.id"), primary_key=True),
        sa.Column("chunk_no", sa.Integer, primary_key=True),
        sa.Column("byte_start", sa.Integer, nullable=False),
        sa.Column("byte_end", sa.Integer, nullable=False),
        sa.Column("line_start", sa.Integer, nullable=False),
        sa.Column("n_lines", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("owner", sa.String(64)),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("deadline", sa.Integer, nullable=False),
        sa.Column("n_ok", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_err", sa.Integer, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("parts", sa.JSON, nullable=False, server_default="[]"),
        sa.Column("done_ok", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done_err", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done_input_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done_output_tokens", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_chunks_claim", "chunks", ["state", "deadline"])


def downgrade() -> None:
    op.drop_table("chunks")
    op.drop_table("batches")
    op.drop_table("files")
    op.drop_table("api_keys")
