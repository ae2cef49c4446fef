"""Report logic on hand-made frames: recommendation and limits, ties (paired, Holm), the Pareto
frontier, per-axis tables, wins/losses, and escaping of every untrusted string in the HTML."""

from __future__ import annotations

import html
import re

import pandas as pd
import pytest

from tests.htmltags import start_tags
from workbench import compare
from workbench.evaluation.stats import holm, paired_difference
from workbench.report import data as rd
from workbench.report import html as rh
from workbench.report import leaderboard as lb

XSS = ['<script>alert(1)</script>', '<img src=x onerror=alert(2)>', '"><svg onload=alert(3)>', "' onmouseover='alert(4)"]


def _board(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"run_id": [f"r{i}" for i in range(n)], "chunking": ["c"] * n, "embedding": ["-"] * n, "retrieval": ["bm25@5"] * n,
            "rerank": ["-"] * n, "generation": ["-"] * n, "status": ["complete"] * n, "n_questions": [4] * n, "n_failed": [0] * n}
    base.update(cols)
    return pd.DataFrame(base)


def _values(query_ids, **metrics) -> pd.DataFrame:
    df = pd.DataFrame({"query_id": query_ids, "question": [f"q {q}" for q in query_ids], "error": [None] * len(query_ids)})
    for k, v in metrics.items():
        df[k] = v
    return df


# -- recommendation and limits -----------------------------------------------------------------

def test_recommend_picks_the_best_primary_metric():
    board = _board(ndcg_at_10=[0.5, 0.9, 0.7])
    rec = rd.recommend(board, "ndcg_at_10")
    assert rec.run_id == "r1" and rec.violations == {} and rec.eligible == ["r0", "r1", "r2"]


def test_recommend_honours_limits_from_the_spec():
    board = _board(f1=[0.5, 0.9, 0.7], latency_p95_s=[1.0, 9.0, 2.0], cost_per_question_usd=[0.001, 0.001, 0.003])
    rec = rd.recommend(board, "f1", {"latency_p95_s": 5, "cost_per_question_usd": 0.002})
    # r1 is too slow, r2 too expensive: the best run within the limits is r0
    assert rec.run_id == "r0"
    assert set(rec.violations) == {"r1", "r2"}
    assert "Latency P95 9.00 s > 5.00 s" in rec.violations["r1"][0]
    assert "Cost / question" in rec.violations["r2"][0]


def test_limits_explicit_min_max_missing_values_and_unknown_metrics():
    board = _board(f1=[0.5, 0.9], cost_per_question_usd=[None, 0.5])
    violations, notes = rd.limit_violations(board, {"f1": {"min": 0.6}, "cost_per_question_usd": 1.0, "nope": 3, "bad": "x"})
    assert violations == {"r0": ["Answer F1 0.500 < 0.600"]}  # an unmeasured cost breaks no limit
    assert any("'nope' ignored" in n for n in notes) and any("'bad' ignored" in n for n in notes)


def test_limits_on_unknown_or_directionless_metrics_are_not_guessed():
    board = _board(f1=[0.5, 0.9], citation_count=[1.0, 4.0], latency_p95_s=[1.0, 2.0])
    violations, notes = rd.limit_violations(board, {"latency_p59_s": 1.5, "citation_count": 3, "f1": 0.6})
    assert violations == {"r0": ["Answer F1 0.500 < 0.600"]}
    assert any("'latency_p59_s' ignored: unknown metric 'latency_p59_s' (did you mean 'latency_p95_s'?)" in n for n in notes)
    assert any("'citation_count' ignored" in n and "{min: ...} or {max: ...}" in n for n in notes)
    violations, _ = rd.limit_violations(board, {"citation_count": {"max": 3}})
    assert violations == {"r1": ["Citations 4.000 > 3.000"]}


def test_no_run_within_limits_recommends_nothing_and_says_so():
    board = _board(ndcg_at_10=[0.5, 0.9], latency_p95_s=[3.0, 4.0])
    rec = rd.recommend(board, "ndcg_at_10", {"latency_p95_s": 1})
    assert rec.run_id is None and set(rec.violations) == {"r0", "r1"}


def test_failed_runs_are_not_recommended():
    board = _board(ndcg_at_10=[0.5, 0.9], status=["complete", "failed"])
    rec = rd.recommend(board, "ndcg_at_10")
    assert rec.run_id == "r0" and any("not ranked" in n for n in rec.notes)


def test_lower_is_better_primary_metric():
    board = _board(hallucination=[0.3, 0.1, 0.2])
    assert rd.recommend(board, "hallucination").run_id == "r1"


# -- ties ----------------------------------------------------------------------------------------

def test_ties_with_best_pairs_by_query_id_and_applies_holm():
    qids = [f"q{i}" for i in range(40)]
    best = _values(qids, ndcg_at_10=[1.0] * 40)
    same = _values(qids[::-1], ndcg_at_10=[1.0] * 39 + [0.0])  # shuffled order: pairing is by id
    worse = _values(qids, ndcg_at_10=[0.0] * 20 + [1.0] * 20)
    ties = compare.ties_with_best({"best": best, "same": same, "worse": worse}, "best", "ndcg_at_10").set_index("run_id")
    assert ties.loc["same", "tie"] and not ties.loc["worse", "tie"]
    assert ties.loc["same", "diff"] == pytest.approx(-1 / 40) and ties.loc["worse", "diff"] == pytest.approx(-20 / 40)
    raw = [paired_difference([1.0] * 40, list(same.set_index("query_id").loc[qids, "ndcg_at_10"])).p_value,
           paired_difference([1.0] * 40, list(worse["ndcg_at_10"])).p_value]
    assert list(ties.loc[["same", "worse"], "p_holm"]) == pytest.approx(holm(raw))
    assert ties.loc["same", "n"] == 40


def test_ties_skip_questions_where_the_metric_does_not_apply():
    best = _values(["a", "b", "c"], f1=[1.0, 0.5, None])
    other = _values(["a", "b", "c"], f1=[1.0, None, 0.0])
    ties = compare.ties_with_best({"best": best, "other": other}, "best", "f1")
    assert ties.iloc[0]["n"] == 1  # only "a" has f1 in both runs


def test_ties_without_common_questions_are_not_ties():
    ties = compare.ties_with_best({"best": _values(["a"], f1=[1.0]), "other": _values(["b"], f1=[1.0])}, "best", "f1")
    assert ties.iloc[0]["n"] == 0 and not ties.iloc[0]["tie"]


# -- Pareto frontier -----------------------------------------------------------------------------

def test_pareto_frontier_hand_computed():
    pts = pd.DataFrame({"run_id": ["a", "b", "c", "d", "e"], "lat": [1.0, 2.0, 3.0, 2.5, None], "q": [0.5, 0.7, 0.9, 0.6, 1.0]})
    # d is beaten by b (faster and better); e has no latency
    assert rd.pareto_frontier(pts, "lat", "q") == ["a", "b", "c"]


def test_pareto_frontier_ties_and_direction():
    pts = pd.DataFrame({"run_id": ["a", "b", "c"], "cost": [1.0, 1.0, 2.0], "err": [0.2, 0.3, 0.1]})
    # lower error is better: b is dominated by a (same cost, lower error)
    assert rd.pareto_frontier(pts, "cost", "err", higher_y=False) == ["a", "c"]
    same = pd.DataFrame({"run_id": ["a", "b"], "x": [1.0, 1.0], "y": [0.5, 0.5]})
    assert rd.pareto_frontier(same, "x", "y") == ["a", "b"]  # identical points dominate neither


# -- per-axis tables and wins/losses -------------------------------------------------------------

def test_wins_losses_outcomes_and_order():
    base = _values(["a", "b", "c", "d", "e"], ndcg_at_10=[0.0, 1.0, 0.5, 0.2, None])
    cand = _values(["a", "b", "c", "d", "e"], ndcg_at_10=[1.0, 0.5, 0.5, 0.4, 0.3])
    cand.loc[cand["query_id"] == "d", "error"] = "timeout"
    wl = rd.wins_losses(base, cand, "ndcg_at_10")
    assert list(zip(wl["query_id"], wl["outcome"])) == [("a", "win"), ("b", "loss"), ("d", "failed"), ("c", "tie"), ("e", "n/a")]
    assert wl.set_index("query_id").loc["b", "change"] == pytest.approx(-0.5)


def test_wins_losses_lower_is_better():
    wl = rd.wins_losses(_values(["a"], hallucination=[1.0]), _values(["a"], hallucination=[0.0]), "hallucination")
    assert wl.iloc[0]["outcome"] == "win"


def test_enrich_board_end_to_end_latency_tokens_and_labels():
    board = _board(ndcg_at_10=[0.5, 0.9], retrieval=["bm25@5", "dense@5"])
    values = {"r0": _values(["a", "b"], retrieval_latency_s=[0.1, 0.3], generation_latency_s=[1.0, None],
                            prompt_tokens=[100, 200], completion_tokens=[10, None]),
              "r1": _values(["a", "b"], retrieval_latency_s=[0.2, 0.2])}
    for v in values.values():
        parts = [v[c].fillna(0) for c in ("retrieval_latency_s", "generation_latency_s") if c in v]
        v["latency_s"] = sum(parts)
    out = rd.enrich_board(board, values).set_index("run_id")
    assert out.loc["r1", "rank"] == 1 and out.loc["r1", "label"] == "dense@5"
    assert out.loc["r0", "latency_p50_s"] == pytest.approx((1.1 + 0.3) / 2)
    assert out.loc["r0", "tokens_per_question"] == pytest.approx((110 + 200) / 2)
    assert out.loc["r1", "tokens_per_question"] is None or pd.isna(out.loc["r1", "tokens_per_question"])


def test_run_labels_use_the_axes_that_differ():
    board = _board(retrieval=["bm25@5", "dense@5"], embedding=["-", "all-MiniLM-L6-v2"])
    assert rd.run_labels(board) == ["bm25@5", "all-MiniLM-L6-v2 | dense@5"]
    assert rd.run_labels(board.head(1)) == ["c | bm25@5"]


# -- escaping ------------------------------------------------------------------------------------

def _assert_inert(fragment: str) -> None:
    """Parsed as a browser would: no script/svg/iframe element, no image but our data: PNGs, no on* attribute."""
    tags = start_tags(fragment)
    for tag, attrs in tags:
        assert tag not in ("script", "svg", "iframe"), (tag, attrs)
        if tag == "img":
            assert dict(attrs)["src"].startswith("data:image/png;base64,"), attrs
        assert not any(name.lower().startswith("on") for name, _ in attrs), (tag, attrs)


@pytest.mark.parametrize("payload", XSS)
def test_highlight_escapes_text_and_needles(payload):
    out = rh.highlight(f"before {payload} after four fourteen", ["four", payload, ""])
    _assert_inert(out)
    assert html.unescape(re.sub(r"</?mark>", "", out)) == f"before {payload} after four fourteen"
    assert out.count("<mark>") == 2  # the payload and "four", not the "four" inside "fourteen"


@pytest.mark.parametrize("payload", XSS)
def test_question_detail_escapes_every_untrusted_field(payload):
    row = {"query_id": f"q-{payload}", "question": f"Who {payload}?", "gold_answers": [payload], "answer": f"It is {payload}",
           "error": f"boom {payload}", "relevant": {payload: 1}, "f1": 1.0,
           "hits": [{"rank": 1, "chunk_id": payload, "doc_id": payload, "score": 1.5, "text": f"doc text {payload} end"}]}
    out = rh.question_detail_html([(f"run {payload}", row), (f"other {payload}", None)], "f1")
    _assert_inert(out)
    text = html.unescape(re.sub(r"<[^>]+>", "", out))
    for field in (f"Who {payload}?", f"It is {payload}", f"boom {payload}", f"doc text {payload} end", f"run {payload}"):
        assert field in text


def test_leaderboard_and_headline_escape_labels_and_reasons():
    payload = XSS[0]
    board = _board(ndcg_at_10=[0.9, 0.5], retrieval=[payload, "bm25@5"], latency_p95_s=[1.0, 1.0])
    board = board.assign(rank=[1, 2], label=[payload, "bm25@5"], recommended=[True, False], ties_best=[False, True],
                         ndcg_at_10_ci_low=[0.8, 0.4], ndcg_at_10_ci_high=[0.95, 0.6], latency_p50_s=[0.5, 0.5], tokens_per_question=[None, None])
    rec = rd.Recommendation("r0", "ndcg_at_10", ["r0"], {"r1": [f"limit {payload}"]})
    data = rd.ReportData(f"exp {payload}", {"description": payload, "limits": {"latency_p95_s": 5}}, {"path": payload}, "sqlite://", board,
                         pd.DataFrame({"run_id": ["r0", "r1"], "lineage": [{}, {}], "config": [{}, {}], "timings": [{}, {}],
                                       "status": ["complete"] * 2, "started_at": [None] * 2, "finished_at": [None] * 2}),
                         "ndcg_at_10", {}, rec, pd.DataFrame({"run_id": ["r1"], "tie": [True]}), None, "only one run")
    for fragment in (rh.title_html(data), rh.headline_html(data), rh.leaderboard_html(data), rh.lineage_html(data)):
        _assert_inert(fragment)
    assert "&lt;script&gt;" in rh.leaderboard_html(data) and 'class="recommended"' in rh.leaderboard_html(data)
    assert "within the experiment" in rh.headline_html(data)


def test_latency_format():
    assert [lb.fmt("latency_p95_s", v) for v in (0.0004, 0.025, 1.5, None)] == ["0.4 ms", "25 ms", "1.50 s", "-"]
    assert lb.fmt("tokens_per_question", 519.6) == "520" and lb.fmt("ndcg_at_10", 0.5) == "0.500"
    assert lb.fmt("cost_per_question_usd", 0.001) == "$0.00100"


def test_esc_quotes_attributes():
    assert rh.esc('"><b>') == "&quot;&gt;&lt;b&gt;" and rh.esc(None) == ""


# -- a generation experiment end to end, from a store written through the Store API --------------

def _generation_store(tmp_path):
    from workbench.evaluation.aggregate import aggregate_rows
    from workbench.store import Store

    store = Store(f"sqlite:///{tmp_path / 'gen.sqlite'}")
    runs = {"g_fast": ("bm25@3", 0.2, 0.0005, 0.6), "g_best": ("dense@3", 1.5, 0.0010, 0.9), "g_slow": ("hybrid@3", 9.0, 0.0008, 0.95)}
    spec = {"name": "gen_exp", "dataset": "data/x", "description": "Generation <b>test</b>",
            "limits": {"latency_p95_s": 5, "cost_per_question_usd": 0.002}}
    store.save_experiment("gen_exp", spec, "h" * 64, "/tmp/gen_exp.yaml", list(runs))
    for i, (run_id, (retrieval, gen_latency, cost, quality)) in enumerate(runs.items()):
        axes = {"chunking": "sentence 128/16", "embedding": "-" if retrieval == "bm25@3" else "all-MiniLM-L6-v2", "retrieval": retrieval,
                "rerank": "-", "generation": "smollm2-135m / grounded_qa"}
        lineage = {"dataset_path": "/data/x", "dataset_hash": "d" * 64, "prompt_path": "/p/grounded_qa.yaml", "prompt_hash": "p" * 64,
                   "llm": "local:smollm2-135m", "llm_file_hash": "f" * 64, "packages": {"python": "3.11"}, "git_commit": "abc-dirty",
                   "code_hash": "c" * 16}
        store.start_run(run_id, {"retrieval": retrieval}, axes, lineage, 12)
        rows = []
        for q in range(12):
            ok = not (run_id == "g_best" and q == 0)
            f1 = (1.0 if q < quality * 12 else 0.0) if ok else None
            rows.append({"run_id": run_id, "query_id": f"q{q}", "position": q, "question": f"Question {q} <script>x</script>",
                         "gold_answers": [f"gold{q}"], "relevant": {f"d{q}": 1}, "answer": f"gold{q} [1]" if ok else None,
                         "error": None if ok else "APITimeoutError: <timeout>",
                         "hits": [{"rank": 1, "chunk_id": f"d{q}#0", "doc_id": f"d{q}", "score": 2.0, "text": f"text with gold{q}"}],
                         "retrieval_latency_s": 0.01 * (i + 1), "generation_latency_s": gen_latency if ok else None,
                         "prompt_tokens": 500 if ok else None, "completion_tokens": 20 if ok else None, "cost_usd": cost if ok else None,
                         "metrics": {"f1": f1, "exact_match": f1, "hit_at_3": 1.0, "ndcg_at_10": 1.0}})
        store.write_questions(rows)
        store.write_aggregates(run_id, aggregate_rows(store.questions(run_id)))
        store.finish_run(run_id, "complete" if run_id != "g_best" else "partial", 0 if run_id != "g_best" else 1, 12, 0.0, {"generation_s": 3.0})
    return store


def test_generation_report_sections(tmp_path):
    from workbench.report import charts

    store = _generation_store(tmp_path)
    data = rd.load_report(store.url, "gen_exp", drilldown_limit=3)
    assert data.metric == "f1"
    # g_slow has the best F1 but breaks the latency limit: g_best is recommended
    assert data.recommendation.run_id == "g_best" and list(data.recommendation.violations) == ["g_slow"]
    assert data.baseline_id == "g_fast"  # the first run of the grid
    assert list(data.ties["run_id"]) == ["g_fast"]  # runs over a limit are not candidates for a tie
    b = data.board.set_index("run_id")
    assert b.loc["g_best", "latency_p95_s"] == pytest.approx(0.02 + 1.5)  # retrieval + generation
    assert b.loc["g_best", "tokens_per_question"] == pytest.approx(520)
    head = rh.headline_html(data)
    assert "Excluded by the limits" in head and "1 of 12 questions failed" in head
    board_html = rh.leaderboard_html(data)
    assert "Cost / question" in board_html and "over limit" in board_html and "1 / 12" in board_html
    trade = charts.tradeoffs_html(data)
    assert trade.count("data:image/png;base64,") == 1 and "Cost per question" in trade
    drill = rh.drilldown_html(data)
    assert "Failed questions (1)" in drill and "APITimeoutError: &lt;timeout&gt;" in drill and "<mark>gold" in drill
    assert "&lt;script&gt;x&lt;/script&gt;" in drill and "<script>x" not in drill
    from workbench.report import decisions as rdec

    decided = rdec.load_decisions(data)
    for fragment in (rh.title_html(data), head, board_html, rdec.effects_html(data, decided), charts.distributions_html(data),
                     drill, rh.lineage_html(data)):
        _assert_inert(fragment)
    assert "uncommitted changes" in rh.lineage_html(data)
    summary = rd.summary(data)
    assert summary["recommended_run"] == "g_best" and summary["n_runs"] == 3 and summary["metric"] == "f1"


def test_explicit_baseline_run_and_missing_experiment(tmp_path):
    from workbench.errors import StoreError

    store = _generation_store(tmp_path)
    data = rd.load_report(store.url, "gen_exp", baseline_run="g_sl")
    assert data.baseline_id == "g_slow" and data.baseline_reason == "given as baseline_run"
    with pytest.raises(StoreError, match="no experiment 'nope'"):
        rd.load_report(store.url, "nope")


# -- reliability and safety section ----------------------------------------------------------------

def test_failure_reasons_and_text():
    errors = ["APITimeoutError: Request timed out.", "ReadTimeout: timed out", "InternalServerError: Error code: 500 - x",
              None, float("nan"), "CircuitBreakerError: Failures threshold reached"]
    reasons = rd.failure_reasons(errors)
    assert reasons == {"timeout": 2, "circuit open": 1, "server error (5xx)": 1}
    assert rd.failure_text(4, 200, reasons) == "4 of 200 questions failed: timeout (2), circuit open (1), server error (5xx) (1)"
    assert rd.failure_text(3, 200, {"timeout": 3}) == "3 of 200 questions failed: timeout"
    assert rd.failure_text(0, 200, {}) == ""


def test_reliability_section_shows_failures_budget_stops_attacks_and_pii(tmp_path):
    from workbench.evaluation.aggregate import aggregate_rows
    from workbench.pipeline.runner import safety_aggregates as _safety_aggregates

    store = _generation_store(tmp_path)
    # a fourth run: hardened prompt, stopped by the budget after 6 of 12 questions, 2 of them failed,
    # with attack trials and PII metrics
    run_id = "g_safe"
    axes = {"chunking": "sentence 128/16", "embedding": "-", "retrieval": "bm25@3", "rerank": "-", "generation": "smollm2-135m / hardened"}
    store.save_experiment("gen_exp", store.experiment("gen_exp")["spec"], "h" * 64, "/tmp/gen_exp.yaml", ["g_fast", "g_best", "g_slow", run_id])
    store.start_run(run_id, {}, axes, {"dataset_path": "/data/x"}, 12)
    rows = []
    for q in range(6):
        err = {0: "RateLimitError: Error code: 429 - <b>slow down</b>", 1: "APITimeoutError: Request timed out."}.get(q)
        metrics = {} if err else {"f1": 1.0, "hit_at_3": 1.0, "attack_success": float(q == 2), "pii_leakage": float(q == 3),
                                  "pii_in_context": 1.0, "fallback_used": float(q == 5)}
        rows.append({"run_id": run_id, "query_id": f"q{q}", "position": q, "question": f"Q{q}", "gold_answers": ["a"], "relevant": {},
                     "hits": [], "answer": None if err else "a", "error": err, "metrics": metrics,
                     "trace": {"fallback": {"model": "openai:x", "primary_error": "APITimeoutError"}} if q == 5 else None})
    store.write_questions(rows)
    stored = store.questions(run_id)
    store.write_aggregates(run_id, aggregate_rows(stored) + _safety_aggregates(stored))
    store.finish_run(run_id, "stopped: budget", 2, 12, 0.0, {})

    data = rd.load_report(store.url, "gen_exp")
    table = rd.reliability_table(data).set_index("run_id")
    safe = table.loc[run_id]
    assert safe["n_stored"] == 6 and safe["n_questions"] == 12 and safe["n_failed"] == 2 and safe["fallback_answers"] == 1
    assert safe["failures"] == "2 of 12 questions failed: rate limit (429) (1), timeout (1)"
    assert safe["attack_success_rate"] == pytest.approx(0.25) and safe["pii_leakage_rate"] == pytest.approx(0.25)
    assert safe["attack_success_rate_ci_low"] <= 0.25 <= safe["attack_success_rate_ci_high"]
    assert table.loc["g_best", "failures"] == "1 of 12 questions failed: timeout" and pd.isna(table.loc["g_best", "attack_success_rate"])
    page = rh.reliability_html(data)
    assert "Reliability and safety" in page and "stopped: budget" in page and "6 of 12" in page
    assert "Attack success" in page and "PII leakage" in page and "rate limit (429)" in page
    _assert_inert(page)
    # a clean experiment says so in one line
    clean = rd.load_report(_generation_store(tmp_path / "clean").url, "gen_exp")
    clean.board = clean.board[clean.board["run_id"] != "g_best"]
    assert "Every run is complete" in rh.reliability_html(clean)


# -- layers: the report computes in data.py, formats in html.py/charts.py, and needs no retrieval stack --

def test_report_modules_do_not_import_the_retrieval_stack():
    import subprocess
    import sys

    code = ("import sys\n"
            "import workbench.report.data, workbench.report.html, workbench.report.charts\n"
            "import workbench.compare, workbench.gates, workbench.export\n"
            "heavy = ('llama_index', 'chromadb', 'torch', 'sentence_transformers', 'transformers')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _reranked_store(tmp_path):
    from workbench.store import Store

    store = Store(f"sqlite:///{tmp_path / 'rr.sqlite'}")
    chunking = {"splitter": "sentence", "chunk_size": 128, "chunk_overlap": 16}
    bm25 = {"method": "bm25", "top_k": 5}
    rerank = {"method": "cross_encoder", "path": "models/ce", "candidates": 20, "top_n": 5}
    runs = {"plain": (None, [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]), "reranked": (rerank, [1.0, 1.0, 1.0, 0.0, 1.0, 1.0])}
    store.save_experiment("rr", {"name": "rr"}, "h" * 64, "/x/rr.yaml", list(runs))
    for run_id, (rr, ndcg) in runs.items():
        axes = {"chunking": "sentence 128/16", "embedding": "-", "retrieval": "bm25@5", "rerank": "-" if rr is None else "cross_encoder:ce 20->5",
                "generation": "-"}
        store.start_run(run_id, {"chunking": chunking, "embedding": None, "retrieval": bm25, "rerank": rr, "generation": None}, axes,
                        {"dataset_path": "/data/x"}, len(ndcg))
        store.write_questions([{"run_id": run_id, "query_id": f"q{i}", "position": i, "question": f"Q{i}", "gold_answers": [],
                                "relevant": {f"d{i}": 1}, "hits": [{"rank": 1, "chunk_id": f"d{i}#0", "doc_id": f"d{i}", "score": 1.0, "text": "t"}],
                                "answer": None, "error": None, "retrieval_latency_s": 0.01 if rr is None else 0.05,
                                "rerank_latency_s": None if rr is None else 0.04, "metrics": {"ndcg_at_10": v, "mrr": v}}
                               for i, v in enumerate(ndcg)])
        from workbench.evaluation.aggregate import aggregate_rows

        store.write_aggregates(run_id, aggregate_rows(store.questions(run_id)))
        store.finish_run(run_id, "complete", 0, 6, 0.0, {})
    return store


def test_reranker_gain_is_computed_with_the_report_data(tmp_path):
    from workbench import compare
    from workbench.report import charts

    store = _reranked_store(tmp_path)
    data = rd.load_report(store.url, "rr")
    expected = compare.reranker_gain(store, "rr")
    assert not data.reranker_gain.empty
    pd.testing.assert_frame_equal(data.reranker_gain, expected)
    assert set(data.reranker_gain["baseline_run_id"]) == {"plain"}
    assert data.reranker_gain.set_index("metric").loc["ndcg_at_10", "gain"] == pytest.approx(0.5)
    assert "Reranker gain" in rh.reranker_gain_html(data) and "+0.500" in rh.reranker_gain_html(data)
    assert charts.reranker_gain_chart_html(data).count("data:image/png;base64,") == 1
    # without a reranked run there is nothing to compute or show
    plain = rd.load_report(_generation_store(tmp_path).url, "gen_exp")
    assert plain.reranker_gain.empty and rh.reranker_gain_html(plain) == "" and charts.reranker_gain_chart_html(plain) == ""


def test_html_and_charts_never_open_the_store(tmp_path, monkeypatch):
    from workbench.report import charts
    from workbench.report import decisions as rdec
    from workbench.store import Store

    data = rd.load_report(_reranked_store(tmp_path).url, "rr", drilldown_limit=2)
    gen = rd.load_report(_generation_store(tmp_path).url, "gen_exp", drilldown_limit=2)
    decided = {id(d): rdec.load_decisions(d) for d in (data, gen)}  # the one part that reads the store (the gates)

    def refuse(self, *args, **kwargs):
        raise AssertionError("the report's formatting opened the store")

    monkeypatch.setattr(Store, "__init__", refuse)
    for d in (data, gen):
        page = "".join(f(d) for f in (rh.title_html, rh.headline_html, rh.leaderboard_html, rh.reliability_html,
                                      rh.reranker_gain_html, rh.drilldown_html, rh.lineage_html,
                                      charts.tradeoffs_html, charts.distributions_html, charts.reranker_gain_chart_html))
        page += "".join(f(d, decided[id(d)]) for f in (rdec.gates_html, rdec.power_html, rdec.pairs_html, rdec.effects_html))
        assert "Per-question drill-down" in page
    assert data.drilldown.baseline == "plain" and data.drilldown.best == "reranked"
    assert [s[0] for s in data.drilldown.sections] == ["win", "tie"] and len(data.drilldown.sections[1][2]) == 2  # capped at the limit
    assert set(data.drilldown.rows) == {"plain", "reranked"} and all(len(r) == 4 for r in data.drilldown.rows.values())


def test_drilldown_without_a_baseline_shows_the_weakest_questions(tmp_path):
    store = _generation_store(tmp_path)
    data = rd.load_report(store.url, "gen_exp")
    values = data.values
    drill = rd.drilldown(store, values, "g_best", None, "f1", limit=3)
    (section, total, ids), = drill.sections
    # the failed question (no f1) comes first, then the lowest F1s
    assert section == "weakest" and ids[0] == "q0" and len(ids) == 3 and set(drill.rows["g_best"]) == set(ids)
    assert ids[1] == "q11" and [values["g_best"].set_index("query_id").loc[q, "f1"] for q in ids[1:]] == [0.0, 1.0]


def test_the_report_and_the_gates_resolve_the_same_baseline(tmp_path):
    from tests.unit.test_compare import CHUNKING, _config, _store
    from workbench.config.experiment import ExperimentSpec
    from workbench.gates import baseline_run_for

    hybrid = {"method": "hybrid", "top_k": 5, "rrf_k": 60}
    # two baseline runs labelled alike ("hybrid@5"); only the stored config tells them apart
    store = _store(tmp_path, "base", {"b_rrf10": (_config({**hybrid, "rrf_k": 10}), {"ndcg_at_10": [1.0, 1.0]}),
                                      "b_rrf60": (_config(hybrid), {"ndcg_at_10": [0.5, 0.5]})})
    _store(tmp_path, "new", {"n1": (_config(hybrid), {"ndcg_at_10": [0.5, 1.0]}),
                             "n2": (_config({"method": "dense", "top_k": 5}), {"ndcg_at_10": [0.0, 0.5]})}, store)
    spec = ExperimentSpec.model_validate({"name": "new", "dataset": "d", "grid": {"chunking": [CHUNKING], "retrieval": [hybrid],
                                          "embedding": [{"provider": "local", "model": "all-MiniLM-L6-v2"}]}, "baseline": {"experiment": "base"}})
    store.save_experiment("new", spec.model_dump(exclude_unset=True), "h" * 64, "/x/new.yaml", ["n1", "n2"])
    data = rd.load_report(store.url, "new")
    assert data.recommendation.run_id == "n1" and data.baseline_id == baseline_run_for(store, spec, "n1") == "b_rrf60"
    assert data.baseline_reason == "the run with the same configuration in experiment 'base'"
    assert data.name("b_rrf60").endswith("(baseline, b_rrf60)")
    # named on the command line, a baseline run wins over the file's baseline experiment
    named = rd.load_report(store.url, "new", baseline_run="b_rrf1")
    assert named.baseline_id == "b_rrf10" and named.baseline_reason == "given as baseline_run"


def test_headline_states_the_applied_limits_and_skips_unknown_ones(tmp_path):
    store = _generation_store(tmp_path)
    spec = {**store.experiment("gen_exp")["spec"], "limits": {"latency_p95_s": 5, "cost_per_question_usd": 0.002, "latncy": 1}}
    store.save_experiment("gen_exp", spec, "h" * 64, "/tmp/gen_exp.yaml", ["g_fast", "g_best", "g_slow"])
    data = rd.load_report(store.url, "gen_exp")
    head = rh.headline_html(data)
    assert "within the experiment&#x27;s limits (Latency P95 ≤ 5.00 s, Cost / question ≤ $0.00200)" in head
    assert "limit &#x27;latncy&#x27; ignored: unknown metric" in head and data.recommendation.run_id == "g_best"
