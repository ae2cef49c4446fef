"""The results store: experiments, runs with lineage, per-question rows, aggregates (SQLAlchemy).

SQLite by default (WAL, busy timeout, short transactions, so several runs can write at once);
PostgreSQL (``postgresql+psycopg://user@host/db``) for a store shared by a team. The schema is
managed by Alembic (``workbench/migrations``): opening a store upgrades it to the newest revision.
Runs are keyed by their deterministic ``run_id`` and linked to the experiments that include them,
so two experiments sharing a grid point share its stored results.
Per-question rows are upserted, which makes an interrupted run resumable: a row that is present
and has no error is done. Readers return pandas DataFrames.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import JSON, Boolean, Column, Float, Integer, MetaData, String, Table, Text, create_engine, delete, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .errors import StoreError
from .settings import Workspace, redact_url

# The axes a run is stored with (``runs.axes``), in reading order; leaderboards have one column each.
AXES = ["chunking", "embedding", "retrieval", "rerank", "generation", "prompt"]
# What a report needs of every question row: everything but the (large) hits and texts.
LIGHT_COLUMNS = ["run_id", "query_id", "position", "question", "error", "retrieval_latency_s", "generation_latency_s",
                 "prompt_tokens", "completion_tokens", "cost_usd", "metrics"]

metadata = MetaData()

experiments = Table(
    "experiments", metadata,
    Column("name", String(80), primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("path", Text),
    Column("updated_at", String(32), nullable=False),
)

experiment_runs = Table(
    "experiment_runs", metadata,
    Column("experiment", String(80), primary_key=True),
    Column("run_id", String(32), primary_key=True),
    Column("position", Integer, nullable=False),
)

runs = Table(
    "runs", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("config", JSON, nullable=False),
    Column("axes", JSON, nullable=False),
    Column("lineage", JSON, nullable=False),  # dataset/prompt/model hashes, packages, code commit
    Column("status", String(16), nullable=False),  # running | complete | partial | failed
    Column("n_questions", Integer, nullable=False),
    Column("n_failed", Integer, nullable=False, default=0),
    Column("n_chunks", Integer),
    Column("truncation_rate", Float),
    Column("timings", JSON),  # seconds per stage in the session that computed them
    Column("started_at", String(32)),
    Column("finished_at", String(32)),
    Column("evidence", JSON),  # why the run stopped early, as data (e.g. a race elimination); migration 0003
)

questions = Table(
    "questions", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("query_id", String(200), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("question", Text, nullable=False),
    Column("gold_answers", JSON, nullable=False),
    Column("relevant", JSON, nullable=False),  # {doc_id: grade}
    Column("hits", JSON, nullable=False),  # [{rank, chunk_id, doc_id, score, text}]
    Column("answer", Text),
    Column("error", Text),
    Column("retrieval_latency_s", Float),  # first stage + rerank
    Column("rerank_latency_s", Float),
    Column("generation_latency_s", Float),
    Column("ttft_s", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("tokens_estimated", Boolean),
    Column("cost_usd", Float),
    Column("metrics", JSON, nullable=False),  # metric key -> value or null (not applicable)
    # nullable, added for issue 6: {"fallback": {model, primary_error}, "attack": {id, kind, question, answer, ...}}
    Column("trace", JSON),
    Column("code_version", String(32)),  # code hash that computed the row (migration 0003)
)

aggregates = Table(
    "aggregates", metadata,
    Column("run_id", String(32), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("value", Float),
    Column("ci_low", Float),
    Column("ci_high", Float),
    Column("n", Integer, nullable=False),
)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=60000")
    # WAL is a property of the file, set once. Switching a new file to WAL fails at once with
    # "database is locked" (SQLite's busy handler does not cover it) while another connection is
    # switching it too -- several processes opening a new store -- so the switch is retried.
    for attempt in range(100):
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Store:
    """A results store at a SQLAlchemy URL."""

    def __init__(self, url: str):
        self.url = url
        try:
            if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            self.engine: Engine = create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
            self._create_tables()
        except (SQLAlchemyError, OSError, ModuleNotFoundError, TimeoutError) as exc:
            raise StoreError(f"results store {redact_url(url)!r} cannot be opened: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None

    def _create_tables(self) -> None:
        """Bring the store's schema to the newest migration (creating it in an empty database)."""
        upgrade(self.engine)

    # -- writers ---------------------------------------------------------------------------------
    def save_experiment(self, name: str, spec: dict, spec_hash: str, path: str, run_ids: Sequence[str]) -> None:
        with self.engine.begin() as conn:
            row = {"name": name, "spec": spec, "spec_hash": spec_hash, "path": path, "updated_at": now()}
            stmt = self._upsert(experiments, [row], ["name"])
            if stmt is not None:
                conn.execute(stmt)
            else:
                conn.execute(delete(experiments).where(experiments.c.name == name))
                conn.execute(experiments.insert().values(**row))
            conn.execute(delete(experiment_runs).where(experiment_runs.c.experiment == name))
            if run_ids:
                links = [{"experiment": name, "run_id": r, "position": i} for i, r in enumerate(run_ids)]
                stmt = self._upsert(experiment_runs, links, ["experiment", "run_id"])
                if stmt is not None:
                    conn.execute(stmt)
                else:
                    conn.execute(experiment_runs.insert(), links)

    def _upsert(self, table: Table, rows: list[dict], keys: list[str]):
        """INSERT ... ON CONFLICT (keys) DO UPDATE: one statement, safe against concurrent writers."""
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # pragma: no cover - other databases: delete then insert in one transaction
            return None
        stmt = insert(table).values(rows)
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        return stmt.on_conflict_do_update(index_elements=keys, set_=updates)

    def start_run(self, run_id: str, config: dict, axes: dict, lineage: dict, n_questions: int) -> None:
        """Create the run row, or mark an existing one running again (resume)."""
        row = {"run_id": run_id, "config": config, "axes": axes, "lineage": lineage, "status": "running",
               "n_questions": n_questions, "n_failed": 0, "started_at": now(), "finished_at": None}
        with self.engine.begin() as conn:
            stmt = self._upsert(runs, [row], ["run_id"])
            if stmt is not None:
                conn.execute(stmt)
            else:
                conn.execute(delete(runs).where(runs.c.run_id == run_id))
                conn.execute(runs.insert().values(**row))

    def finish_run(self, run_id: str, status: str, n_failed: int, n_chunks: int | None, truncation_rate: float | None, timings: dict,
                   evidence: dict | None = None, lineage: dict | None = None) -> None:
        """Record how a run ended; ``evidence`` says why it stopped early (None: it ran to the end);
        ``lineage`` replaces the run's lineage (with every code version that computed its rows)."""
        values = {"status": status, "n_failed": n_failed, "n_chunks": n_chunks, "truncation_rate": truncation_rate,
                  "timings": timings, "finished_at": now(), "evidence": evidence}
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(**values, **({"lineage": lineage} if lineage else {})))

    def code_versions(self, run_id: str) -> dict[str, int]:
        """How many of a run's stored rows each code version computed (``questions.code_version``)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(questions.c.code_version, func.count()).where(questions.c.run_id == run_id)
                                .group_by(questions.c.code_version))
            return {str(version) if version else "unknown": int(n) for version, n in rows}

    def stored_lineage(self, run_id: str) -> dict | None:
        """A run's stored lineage, None when the run is not stored (exact id, not a prefix)."""
        with self.engine.connect() as conn:
            return conn.execute(select(runs.c.lineage).where(runs.c.run_id == run_id)).scalar()

    def write_questions(self, rows: list[dict]) -> None:
        """Upsert per-question rows in one short transaction."""
        if not rows:
            return
        # One multi-row statement needs every row to carry every column (missing keys would be
        # silently dropped by the driver).
        rows = [{c.name: r.get(c.name) for c in questions.columns} for r in rows]
        with self.engine.begin() as conn:
            stmt = self._upsert(questions, rows, ["run_id", "query_id"])
            if stmt is not None:
                conn.execute(stmt)
                return
            for row in rows:
                conn.execute(delete(questions).where(
                    (questions.c.run_id == row["run_id"]) & (questions.c.query_id == row["query_id"])))
            conn.execute(questions.insert(), rows)

    def merge_question_metrics(self, run_id: str, updates: dict[str, dict]) -> None:
        """Add metrics to stored rows (``{query_id: {metric: value}}``; a value of None removes the
        metric), in one transaction: human labels imported after the run."""
        with self.engine.begin() as conn:
            for query_id, extra in updates.items():
                where = (questions.c.run_id == run_id) & (questions.c.query_id == query_id)
                current = conn.execute(select(questions.c.metrics).where(where)).scalar() or {}
                merged = {k: v for k, v in {**current, **extra}.items() if v is not None or k not in extra}
                conn.execute(update(questions).where(where).values(metrics=merged))

    def write_aggregates(self, run_id: str, values: Iterable[dict]) -> None:
        rows = [{"run_id": run_id, **v} for v in values]
        with self.engine.begin() as conn:
            conn.execute(delete(aggregates).where(aggregates.c.run_id == run_id))
            if rows:
                conn.execute(aggregates.insert(), rows)

    def delete_run_rows(self, run_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(questions).where(questions.c.run_id == run_id))
            conn.execute(delete(aggregates).where(aggregates.c.run_id == run_id))

    # -- readers ---------------------------------------------------------------------------------
    def done_query_ids(self, run_id: str) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(questions.c.query_id).where(
                (questions.c.run_id == run_id) & questions.c.error.is_(None)))
            return {r[0] for r in rows}

    def experiment(self, name: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(experiments).where(experiments.c.name == name)).mappings().first()
        if row is None:
            known = self.experiment_names()
            from .errors import did_you_mean
            raise StoreError(f"no experiment {name!r} in {redact_url(self.url)}{did_you_mean(name, known)}; stored: {', '.join(known) or 'none'}")
        return dict(row)

    def experiment_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(experiments.c.name).order_by(experiments.c.name))]

    def experiments(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(select(experiments.c.name, experiments.c.path, experiments.c.updated_at)).mappings().all(),
                                columns=["name", "path", "updated_at"])

    def run_ids(self, experiment: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(experiment_runs.c.run_id).where(experiment_runs.c.experiment == experiment)
                                .order_by(experiment_runs.c.position))
            return [r[0] for r in rows]

    def runs(self, experiment: str | None = None) -> pd.DataFrame:
        """One row per run (of ``experiment``, or all), axes and lineage expanded into columns."""
        with self.engine.connect() as conn:
            if experiment is None:
                rows = conn.execute(select(runs)).mappings().all()
            else:
                rows = conn.execute(select(runs, experiment_runs.c.position).join(
                    experiment_runs, experiment_runs.c.run_id == runs.c.run_id).where(
                    experiment_runs.c.experiment == experiment).order_by(experiment_runs.c.position)).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            d.update(d.pop("axes"))
            out.append(d)
        return pd.DataFrame(out)

    def run(self, run_id: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id.startswith(run_id, autoescape=True))).mappings().all() if run_id else []
        if len(row) != 1:
            raise StoreError(f"run {run_id!r}: {'not found' if not row else 'ambiguous prefix'} in {redact_url(self.url)}")
        return dict(row[0])

    def questions(self, run_id: str) -> pd.DataFrame:
        """Per-question rows of a run, in query order, metrics expanded into columns."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(questions).where(questions.c.run_id == run_id).order_by(questions.c.position)).mappings().all()
        return pd.DataFrame([_expand_metrics(r) for r in rows])

    def question_values(self, run_id: str) -> pd.DataFrame:
        """A run's per-question metrics, latencies, tokens and cost, in query order, without the
        hits, answers and gold data (a report reads every run's values; hits would be most of it)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(*[questions.c[c] for c in LIGHT_COLUMNS]).where(questions.c.run_id == run_id)
                                .order_by(questions.c.position)).mappings().all()
        return pd.DataFrame([_expand_metrics(r) for r in rows], columns=None if rows else LIGHT_COLUMNS[:-1])

    def question_rows(self, run_id: str, query_ids: Sequence[str]) -> dict[str, dict]:
        """Full stored rows (hits, answer, gold answers, relevance, metrics expanded) of some
        questions of a run, by query id; ids the run does not have are absent."""
        if not query_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(questions).where(
                (questions.c.run_id == run_id) & questions.c.query_id.in_(list(query_ids)))).mappings().all()
        return {r["query_id"]: _expand_metrics(r) for r in rows}

    def question_counts(self, run_ids: Sequence[str]) -> dict[str, int]:
        """Stored question rows per run (the questions actually evaluated, failed ones included)."""
        from sqlalchemy import func

        with self.engine.connect() as conn:
            rows = conn.execute(select(questions.c.run_id, func.count()).where(questions.c.run_id.in_(list(run_ids)))
                                .group_by(questions.c.run_id))
            return {r[0]: int(r[1]) for r in rows}

    def aggregates(self, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
        with self.engine.connect() as conn:
            q = select(aggregates)
            if run_ids is not None:
                q = q.where(aggregates.c.run_id.in_(list(run_ids)))
            return pd.DataFrame(conn.execute(q).mappings().all(), columns=[c.name for c in aggregates.columns])

    def leaderboard(self, experiment: str) -> pd.DataFrame:
        """One row per run of the experiment: run_id, axes, status, ``n_questions`` (the questions
        actually evaluated: stored rows), ``n_planned`` (the questions the run was planned with; a
        race stops losers early), ``evidence`` (why a run stopped early) and every aggregate metric."""
        self.experiment(experiment)
        rdf = self.runs(experiment)
        if rdf.empty:
            return rdf
        agg = self.aggregates(rdf["run_id"].tolist())
        for axis in ("rerank", "prompt"):  # axes added later: runs stored before them have none
            if axis not in rdf:
                rdf[axis] = "-"
            rdf[axis] = rdf[axis].fillna("-")
        rdf["n_planned"] = rdf["n_questions"]
        counts = self.question_counts(rdf["run_id"].tolist())
        rdf["n_questions"] = [counts.get(r, 0) for r in rdf["run_id"]]
        if "evidence" not in rdf:
            rdf["evidence"] = None
        cols = ["run_id", *AXES, "status", "n_questions", "n_planned", "n_failed", "truncation_rate", "evidence"]
        board = rdf[cols].copy()
        if not agg.empty:
            wide = agg.pivot(index="run_id", columns="metric", values="value")
            lo = agg.pivot(index="run_id", columns="metric", values="ci_low").add_suffix("_ci_low")
            hi = agg.pivot(index="run_id", columns="metric", values="ci_high").add_suffix("_ci_high")
            board = board.merge(wide.join(lo).join(hi), left_on="run_id", right_index=True, how="left")
        return board.reset_index(drop=True)


def _expand_metrics(row) -> dict:
    """A stored question row as a flat dict: the ``metrics`` JSON becomes one key per metric."""
    out = dict(row)
    out.update(out.pop("metrics") or {})
    return out


MIGRATIONS = Path(__file__).with_name("migrations")
_HEADS: list[str] = []  # the migrations' head revision(s), read once per process
_HEADS_LOCK = threading.Lock()
_PG_LOCK_KEY = 7_301_964_512  # pg_advisory_lock key: one migrator at a time per database


def alembic_config(connection=None):
    """An Alembic config for the migrations shipped in ``workbench/migrations``."""
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revisions() -> list[str]:
    with _HEADS_LOCK:
        if not _HEADS:
            from alembic.script import ScriptDirectory

            _HEADS.extend(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))
        return list(_HEADS)


def current_revisions(conn) -> list[str]:
    from alembic.runtime.migration import MigrationContext

    return sorted(MigrationContext.configure(conn).get_current_heads())


def upgrade(engine: Engine) -> None:
    """``alembic upgrade head`` on the store, serialised between processes.

    A store made before migrations existed has tables but no ``alembic_version``: the baseline
    revision creates what it lacks and the store is then recorded at the baseline. Concurrent
    openers of a new store wait for each other (a file lock next to a SQLite file, an advisory
    lock on PostgreSQL), so exactly one of them migrates.
    """
    from alembic import command

    with engine.connect() as conn:
        if current_revisions(conn) == head_revisions():  # the common case: nothing to do, no lock
            return
    lock = contextlib.nullcontext()
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        from filelock import FileLock

        lock = FileLock(engine.url.database + ".migrate.lock", timeout=300)
    with lock, engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_KEY})")
            conn.commit()
        try:
            if current_revisions(conn) != head_revisions():
                command.upgrade(alembic_config(conn), "head")
                conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                conn.rollback()
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})")
                conn.commit()


def open(url: str | None = None) -> Store:  # noqa: A001 - mirrors `workbench.store.open(url)` in the docs
    """The store at ``url``, else ``$WORKBENCH_STORE``, else the project folder's default store."""
    return Store(Workspace.resolve(store=url).store_url)


def to_json_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records"))
