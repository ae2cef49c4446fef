"""questions.code_version and runs.evidence.

- ``questions.code_version``: the workbench code hash that computed the row. A resumed run keeps
  the rows an older version computed; the row says which code made it, so the run's lineage can
  list every version that contributed instead of labelling old rows with the new code.
- ``runs.evidence``: why a run stopped before all its questions were evaluated, as data (e.g. an
  adaptive bake-off's elimination: the round, the paired difference, its confidence bound, the
  questions used). Null for a run that ran to the end.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("questions") as batch:
        batch.add_column(sa.Column("code_version", sa.String(32), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("evidence", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("evidence")
    with op.batch_alter_table("questions") as batch:
        batch.drop_column("code_version")
