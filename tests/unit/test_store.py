"""The results store on a temporary SQLite file and on a real PostgreSQL server (started on loopback
by tests/servers.py): writers, readers, resumability and error messages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from workbench.errors import StoreError
from workbench.settings import redact_url
from workbench.store import Store

AXES = {"chunking": "sentence 128/16", "embedding": "-", "retrieval": "bm25@5", "rerank": "-", "generation": "-"}
DENSE_AXES = {**AXES, "embedding": "all-MiniLM-L6-v2", "retrieval": "dense@5"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Store:
    if request.param == "postgresql":
        return Store(request.getfixturevalue("postgres_url"))
    return Store(f"sqlite:///{tmp_path / 'results' / 'wb.sqlite'}")


def question(run_id: str, query_id: str, position: int, error: str | None = None, recall: float | None = 1.0) -> dict:
    return {"run_id": run_id, "query_id": query_id, "position": position, "question": f"question {query_id}?",
            "gold_answers": ["a"], "relevant": {"d1": 1}, "hits": [{"rank": 1, "chunk_id": "d1#0", "doc_id": "d1", "score": 2.5}],
            "answer": None if error else "a", "error": error, "metrics": {"recall_at_5": recall}}


def fill(store: Store) -> None:
    store.save_experiment("bakeoff", {"name": "bakeoff"}, "a" * 64, "/x/bakeoff.yaml", ["aaa111", "aab222"])
    store.start_run("aaa111", {"retrieval": {"method": "bm25"}}, AXES, {"dataset": "h1"}, 2)
    store.start_run("aab222", {"retrieval": {"method": "dense"}}, DENSE_AXES, {"dataset": "h1"}, 2)


def test_sqlite_store_is_created_in_wal_mode(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'results' / 'wb.sqlite'}")
    assert (tmp_path / "results" / "wb.sqlite").is_file()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000


def test_questions_are_upserted_by_run_and_query(store: Store):
    fill(store)
    store.write_questions([question("aaa111", "q1", 0, error="timeout", recall=None), question("aaa111", "q2", 1)])
    store.write_questions([question("aaa111", "q1", 0, recall=0.5)])  # the retry of q1 succeeded
    rows = store.questions("aaa111")
    assert rows["query_id"].tolist() == ["q1", "q2"]
    assert rows["error"].isna().all() and rows["recall_at_5"].tolist() == [0.5, 1.0]
    assert rows.loc[0, "hits"][0]["chunk_id"] == "d1#0" and rows.loc[0, "relevant"] == {"d1": 1}
    assert store.questions("aab222").empty


def test_question_values_are_light_rows_with_metrics_expanded(store: Store):
    fill(store)
    store.write_questions([question("aaa111", "q2", 1, error="timeout", recall=None), question("aaa111", "q1", 0)])
    values = store.question_values("aaa111")
    assert values["query_id"].tolist() == ["q1", "q2"] and values["recall_at_5"].tolist()[0] == 1.0
    assert not {"hits", "answer", "gold_answers", "relevant", "metrics"} & set(values.columns)
    assert values.loc[1, "error"] == "timeout"
    empty = store.question_values("aab222")
    assert empty.empty and {"query_id", "error", "retrieval_latency_s"} <= set(empty.columns)


def test_question_rows_by_query_id(store: Store):
    fill(store)
    store.write_questions([question("aaa111", "q1", 0), question("aaa111", "q2", 1)])
    rows = store.question_rows("aaa111", ["q2", "nope"])
    assert list(rows) == ["q2"] and rows["q2"]["hits"][0]["doc_id"] == "d1" and rows["q2"]["recall_at_5"] == 1.0
    assert "metrics" not in rows["q2"] and store.question_rows("aaa111", []) == {}


def test_rows_with_an_error_are_not_done(store: Store):
    fill(store)
    assert store.done_query_ids("aaa111") == set()
    store.write_questions([question("aaa111", "q1", 0), question("aaa111", "q2", 1, error="rate limited"),
                           question("aab222", "q3", 0)])
    assert store.done_query_ids("aaa111") == {"q1"}
    assert store.done_query_ids("aab222") == {"q3"}
    store.write_questions([question("aaa111", "q1", 0, error="failed on resume")])
    assert store.done_query_ids("aaa111") == set()
    store.write_questions([question("aaa111", "q2", 1)])
    assert store.done_query_ids("aaa111") == {"q2"}


def test_run_lifecycle_aggregates_and_leaderboard(store: Store):
    fill(store)
    assert store.run("aaa111")["status"] == "running"
    store.write_questions([question("aaa111", "q1", 0), question("aaa111", "q2", 1, error="boom", recall=None)])
    store.write_aggregates("aaa111", [{"metric": "recall_at_5", "value": 0.9, "ci_low": 0.5, "ci_high": 1.0, "n": 2}])
    store.write_aggregates("aaa111", [{"metric": "recall_at_5", "value": 1.0, "ci_low": 0.8, "ci_high": 1.0, "n": 1},
                                      {"metric": "mrr_at_5", "value": 0.75, "ci_low": None, "ci_high": None, "n": 1}])
    store.finish_run("aaa111", "partial", 1, 42, 0.25, {"retrieval_s": 0.5})
    run = store.run("aaa111")
    assert (run["status"], run["n_failed"], run["n_chunks"], run["truncation_rate"]) == ("partial", 1, 42, 0.25)
    assert run["timings"] == {"retrieval_s": 0.5} and run["lineage"] == {"dataset": "h1"} and run["finished_at"]
    agg = store.aggregates(["aaa111"])
    assert sorted(agg["metric"]) == ["mrr_at_5", "recall_at_5"]  # rewriting replaced the first set

    board = store.leaderboard("bakeoff")
    assert board["run_id"].tolist() == ["aaa111", "aab222"]  # the experiment's order
    assert board["retrieval"].tolist() == ["bm25@5", "dense@5"] and board["status"].tolist() == ["partial", "running"]
    first = board.iloc[0]
    assert (first["recall_at_5"], first["recall_at_5_ci_low"], first["mrr_at_5"]) == (1.0, 0.8, 0.75)
    assert board.iloc[1][["recall_at_5", "mrr_at_5"]].isna().all()


def test_restarting_a_run_marks_it_running_again(store: Store):
    fill(store)
    store.finish_run("aaa111", "failed", 2, None, None, {})
    store.start_run("aaa111", {"retrieval": {"method": "bm25"}}, AXES, {"dataset": "h2"}, 3)
    run = store.run("aaa111")
    assert (run["status"], run["n_questions"], run["finished_at"], run["lineage"]) == ("running", 3, None, {"dataset": "h2"})
    assert len(store.runs()) == 2


def test_experiments_share_runs_and_can_be_resaved(store: Store):
    fill(store)
    store.save_experiment("other", {"name": "other"}, "b" * 64, "/x/other.yaml", ["aab222"])
    assert store.run_ids("other") == ["aab222"] and store.run_ids("bakeoff") == ["aaa111", "aab222"]
    store.save_experiment("bakeoff", {"name": "bakeoff", "v": 2}, "c" * 64, "/x/bakeoff.yaml", ["aab222", "aaa111"])
    assert store.run_ids("bakeoff") == ["aab222", "aaa111"]
    assert store.experiment("bakeoff")["spec_hash"] == "c" * 64 and store.experiment("bakeoff")["spec"]["v"] == 2
    assert store.experiment_names() == ["bakeoff", "other"]
    assert store.runs("other")["run_id"].tolist() == ["aab222"]


def test_run_prefix_lookup(store: Store):
    fill(store)
    assert store.run("aab")["run_id"] == "aab222"
    assert store.run("aab222")["config"] == {"retrieval": {"method": "dense"}}
    with pytest.raises(StoreError, match="'aa': ambiguous prefix"):
        store.run("aa")
    with pytest.raises(StoreError, match="'zzz': not found"):
        store.run("zzz")


def test_unknown_experiment_suggests_a_stored_one(store: Store):
    fill(store)
    with pytest.raises(StoreError) as info:
        store.leaderboard("bakeof")
    message = str(info.value)
    assert "no experiment 'bakeof'" in message and "did you mean 'bakeoff'" in message and "stored: bakeoff" in message


def test_unopenable_sqlite_path_is_one_line_store_error(tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    url = f"sqlite:///{blocker / 'sub' / 'x.sqlite'}"  # the parent cannot be created, even by root
    with pytest.raises(StoreError) as info:
        Store(url)
    message = str(info.value)
    assert "\n" not in message and "cannot be opened" in message and str(blocker) in message


def test_store_error_never_shows_the_password():
    # Without psycopg installed this fails at the driver import, with it at the connection: either way
    # the message names the URL with the password masked.
    url = "postgresql+psycopg://user:secretpw@127.0.0.1:9/db"
    with pytest.raises(StoreError) as info:
        Store(url)
    message = str(info.value)
    assert "secretpw" not in message and "user:***@127.0.0.1:9/db" in message and "\n" not in message
    assert redact_url(url) == "postgresql+psycopg://user:***@127.0.0.1:9/db"


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="psycopg is not installed")
def test_closed_postgres_port_is_a_store_error():
    with pytest.raises(StoreError) as info:
        Store("postgresql+psycopg://user:secretpw@127.0.0.1:9/db")
    message = str(info.value)
    assert "OperationalError" in message and "secretpw" not in message and "\n" not in message


def test_password_is_split_off_a_url():
    from workbench.settings import without_password

    assert without_password("postgresql+psycopg://u:pw@h:5432/db") == ("postgresql+psycopg://u@h:5432/db", "pw")
    assert without_password("sqlite:////tmp/x.sqlite") == ("sqlite:////tmp/x.sqlite", None)


def test_notebooks_get_the_url_without_its_password(monkeypatch):
    import os

    from workbench.settings import kernel_store_url as notebook_store_url

    monkeypatch.delenv("PGPASSWORD", raising=False)
    assert notebook_store_url("postgresql+psycopg://u:s3cret@h/db") == "postgresql+psycopg://u@h/db"
    assert os.environ["PGPASSWORD"] == "s3cret"  # libpq (and the notebook kernel) read it from there
