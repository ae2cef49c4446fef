"""questions.trace: per-question trace (fallback model used, prompt-injection trial).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Stores written by a pre-release build that added this column on open already have it: the
column is added only where it is missing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _has_trace() -> bool:
    return "trace" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("questions")}


def upgrade() -> None:
    if not _has_trace():
        with op.batch_alter_table("questions") as batch:
            batch.add_column(sa.Column("trace", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("questions") as batch:
        batch.drop_column("trace")
