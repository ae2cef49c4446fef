"""Alembic migrations of the results store, on SQLite and on a real PostgreSQL server:
the models in store.py match the migrations, old stores are upgraded, concurrent openers agree."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from workbench import store as store_mod
from workbench.store import Store, head_revisions, metadata

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'wb.sqlite'}"


def test_models_match_the_migrations(url: str):
    """What `alembic check` checks: upgrading an empty database to head gives exactly store.py's tables."""
    st = Store(url)
    with st.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata) == []
        assert sorted(MigrationContext.configure(conn).get_current_heads()) == head_revisions()


def test_alembic_check_command_line(url: str):
    """The documented command (README "Team setup") works against a migrated store."""
    Store(url)
    env = {**os.environ, "WORKBENCH_STORE": url}
    proc = subprocess.run([str(Path(sys.executable).parent / "alembic"), "-c", str(ROOT / "workbench" / "migrations" / "alembic.ini"), "check"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "No new upgrade operations detected" in proc.stdout + proc.stderr


def test_a_store_made_before_migrations_is_upgraded_in_place(url: str):
    """A store created by the pre-Alembic code (metadata.create_all, no alembic_version), from
    before some columns existed, keeps its rows and gains the columns and the version stamp."""
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        # as made by an older release: questions without the rerank/ttft columns
        for col in ("rerank_latency_s", "ttft_s", "code_version"):  # code_version came with migration 0003
            conn.execute(text(f"ALTER TABLE questions DROP COLUMN {col}"))
        conn.execute(text("ALTER TABLE runs DROP COLUMN evidence"))
        conn.execute(text("INSERT INTO runs (run_id, config, axes, lineage, status, n_questions, n_failed) "
                          "VALUES ('r1', '{}', '{\"retrieval\": \"bm25@5\"}', '{}', 'complete', 1, 0)"))
        conn.execute(text("INSERT INTO questions (run_id, query_id, position, question, gold_answers, relevant, hits, metrics) "
                          "VALUES ('r1', 'q1', 0, 'why?', '[]', '{}', '[]', '{\"mrr\": 0.5}')"))
    assert "alembic_version" not in inspect(engine).get_table_names()
    engine.dispose()

    st = Store(url)
    cols = {c["name"] for c in inspect(st.engine).get_columns("questions")}
    assert {"rerank_latency_s", "ttft_s", "code_version"} <= cols
    assert "evidence" in {c["name"] for c in inspect(st.engine).get_columns("runs")}
    with st.engine.connect() as conn:
        assert sorted(MigrationContext.configure(conn).get_current_heads()) == head_revisions()
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    rows = st.questions("r1")
    assert rows["mrr"].tolist() == [0.5] and rows["ttft_s"].isna().all()
    assert st.run("r1")["status"] == "complete"


def test_concurrent_openers_of_a_new_store_migrate_it_once(url: str):
    def open_and_write(i: int) -> str:
        st = Store(url)
        st.start_run(f"run{i}", {}, {}, {}, 1)
        return st.run(f"run{i}")["status"]

    store_mod._HEADS.clear()  # also exercise reading the heads concurrently
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_and_write, range(4))) == ["running"] * 4
    with Store(url).engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_reopening_a_migrated_store_runs_no_migration(url: str, monkeypatch):
    Store(url)
    import alembic.command

    def fail(*args, **kwargs):
        raise AssertionError("upgrade ran on a store already at head")

    monkeypatch.setattr(alembic.command, "upgrade", fail)
    Store(url).start_run("r", {}, {}, {}, 1)


def test_one_linear_history():
    """Two branches that each add a revision on the same parent must be chained at merge time."""
    from alembic.script import ScriptDirectory

    from workbench.store import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, f"several heads {script.get_heads()}: renumber one revision (workbench/migrations/README.md)"
    revs = list(script.walk_revisions())
    assert revs[-1].revision == "0001" and revs[-1].down_revision is None
    assert all(r.down_revision is not None for r in revs[:-1])
