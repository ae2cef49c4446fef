"""Baseline: the results store's schema as it was when migrations were introduced.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Stores created before migrations existed (by ``metadata.create_all`` plus the additive column
upgrade that used to run on every open) have these tables but no ``alembic_version``: on them this
revision creates only what is missing -- tables, and columns added to the code after the store was
made (nullable, so old rows read as "not measured") -- and Alembic then records the store as being
at this revision. On an empty database it simply creates every table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> list[tuple[str, list[sa.Column]]]:
    # A frozen copy of workbench/store.py's tables at this revision (later revisions change them
    # with op.add_column & co; this list never changes).
    return [
        ("experiments", [
            sa.Column("name", sa.String(80), primary_key=True),
            sa.Column("spec", sa.JSON, nullable=False),
            sa.Column("spec_hash", sa.String(64), nullable=False),
            sa.Column("path", sa.Text),
            sa.Column("updated_at", sa.String(32), nullable=False),
        ]),
        ("experiment_runs", [
            sa.Column("experiment", sa.String(80), primary_key=True),
            sa.Column("run_id", sa.String(32), primary_key=True),
            sa.Column("position", sa.Integer, nullable=False),
        ]),
        ("runs", [
            sa.Column("run_id", sa.String(32), primary_key=True),
            sa.Column("config", sa.JSON, nullable=False),
            sa.Column("axes", sa.JSON, nullable=False),
            sa.Column("lineage", sa.JSON, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("n_questions", sa.Integer, nullable=False),
            sa.Column("n_failed", sa.Integer, nullable=False),
            sa.Column("n_chunks", sa.Integer),
            sa.Column("truncation_rate", sa.Float),
            sa.Column("timings", sa.JSON),
            sa.Column("started_at", sa.String(32)),
            sa.Column("finished_at", sa.String(32)),
        ]),
        ("questions", [
            sa.Column("run_id", sa.String(32), primary_key=True),
            sa.Column("query_id", sa.String(200), primary_key=True),
            sa.Column("position", sa.Integer, nullable=False),
            sa.Column("question", sa.Text, nullable=False),
            sa.Column("gold_answers", sa.JSON, nullable=False),
            sa.Column("relevant", sa.JSON, nullable=False),
            sa.Column("hits", sa.JSON, nullable=False),
            sa.Column("answer", sa.Text),
            sa.Column("error", sa.Text),
            sa.Column("retrieval_latency_s", sa.Float),
            sa.Column("rerank_latency_s", sa.Float),
            sa.Column("generation_latency_s", sa.Float),
            sa.Column("ttft_s", sa.Float),
            sa.Column("prompt_tokens", sa.Integer),
            sa.Column("completion_tokens", sa.Integer),
            sa.Column("tokens_estimated", sa.Boolean),
            sa.Column("cost_usd", sa.Float),
            sa.Column("metrics", sa.JSON, nullable=False),
        ]),
        ("aggregates", [
            sa.Column("run_id", sa.String(32), primary_key=True),
            sa.Column("metric", sa.String(64), primary_key=True),
            sa.Column("value", sa.Float),
            sa.Column("ci_low", sa.Float),
            sa.Column("ci_high", sa.Float),
            sa.Column("n", sa.Integer, nullable=False),
        ]),
    ]


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    existing = set(insp.get_table_names())
    for name, columns in _tables():
        if name not in existing:
            op.create_table(name, *columns)
            continue
        have = {c["name"] for c in insp.get_columns(name)}
        for col in columns:
            if col.name not in have:  # a pre-migration store made before this column existed
                op.add_column(name, sa.Column(col.name, col.type, nullable=True))


def downgrade() -> None:
    for name, _ in reversed(_tables()):
        op.drop_table(name)
