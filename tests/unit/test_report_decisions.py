"""The report's decision sections (report/decisions.py) on a hand-made store: a gate's three states,
the detectable difference, the matrix of every pair and the main effects, escaped."""

from __future__ import annotations

import pytest

from tests.unit.test_gates import CHUNKING, write_runs
from workbench.report import data as rd
from workbench.report import decisions as rdec
from workbench.store import Store

PAYLOAD = '<img src=x onerror="alert(1)">'


def _store(tmp_path) -> Store:
    store = write_runs(Store(f"sqlite:///{tmp_path / 'wb.sqlite'}"), "base", {"b": {"hit_at_1": [1.0] * 6, "ndcg_at_10": [1.0] * 6}})
    write_runs(store, "new", {"n1": {"hit_at_1": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "ndcg_at_10": [1.0, 0.9, 0.8, 0.2, 0.1, 0.3]},
                              "n2": {"hit_at_1": [1.0] * 6, "ndcg_at_10": [1.0] * 6}})
    spec = {"name": "new", "dataset": "data", "grid": {"chunking": [CHUNKING], "retrieval": [{"method": "bm25"}]},
            "baseline": {"experiment": "base"}, "gates": {"hit_at_1": {"max_drop": 0.02, "significant": True}, "ndcg_at_10": {"min": 0.5}}}
    store.save_experiment("new", spec, "h" * 64, "/x/new.yaml", ["n1", "n2"])
    return store


def test_gates_power_and_pairs_in_the_report(tmp_path):
    data = rd.load_report(_store(tmp_path).url, "new", drilldown_limit=2)
    d = rdec.load_decisions(data)
    outcomes = {(r.run_id, r.metric): r.outcome for r in d.gates}
    # n1: hit@1 1.0 -> 0.5 on 6 questions is inconclusive; n2 changed nothing, and 6 questions cannot show non-inferiority either
    assert outcomes == {("n1", "hit_at_1"): "inconclusive", ("n2", "hit_at_1"): "inconclusive",
                        ("n1", "ndcg_at_10"): "pass", ("n2", "ndcg_at_10"): "pass"}
    page = rdec.gates_html(data, d)
    assert "No gate fails, but some are inconclusive</b>: 2 passed, 0 failed, 2 inconclusive" in page
    assert page.count('class="badge warn">INCONCLUSIVE') == 2 and page.count('class="badge best">PASS') == 2
    # two significance checks: Bonferroni, 97.5% intervals, so more questions than at 95% (13)
    assert "about 16 questions would likely settle it" in page and "about 247 questions" in page
    assert "Bonferroni" in page and "97.5% confidence intervals" in page and "97.5% CI [-0.838, +0.184] (tango score, n = 6)" in page
    # power: n1 against the recommended n2, sd of the per-question differences of ndcg_at_10
    [row] = d.power.to_dict("records")
    # differences 0, -.1, -.2, -.8, -.9, -.7: mean -.45, squared deviations sum to .775, sd = sqrt(.775 / 5)
    assert row["run_id"] == "n1" and row["n"] == 6 and row["sd"] == pytest.approx((0.775 / 5) ** 0.5)
    assert "With 6 questions, a difference in nDCG@10 of about" in rdec.power_html(data, d)
    assert d.pairs[["run_a", "run_b"]].values.tolist() == [["n2", "n1"]] and "Every pair of runs" in rdec.pairs_html(data, d)


def test_gates_that_cannot_be_checked_say_why_and_no_gates_show_nothing(tmp_path):
    store = _store(tmp_path)
    spec = {"name": "new", "dataset": "data", "grid": {"chunking": [CHUNKING], "retrieval": [{"method": "bm25"}]},
            "baseline": {"experiment": "base"}, "gates": {"retrieval_latency_p95_s": {"max": 1, "significant": True}}}
    store.save_experiment("new", spec, "h" * 64, "/x/new.yaml", ["n1", "n2"])
    data = rd.load_report(store.url, "new", drilldown_limit=2)
    page = rdec.gates_html(data, rdec.load_decisions(data))
    assert "The gates could not be checked" in page and "not a per-question metric" in page
    store.save_experiment("new", {**spec, "gates": {}}, "h" * 64, "/x/new.yaml", ["n1", "n2"])
    data = rd.load_report(store.url, "new", drilldown_limit=2)
    assert rdec.gates_html(data, rdec.load_decisions(data)) == ""


def test_main_effects_section_escapes_axis_values(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'wb.sqlite'}")
    store.save_experiment("fx", {"name": "fx"}, "h" * 64, "/x/fx.yaml", ["a", "b"])
    for run_id, top_k, label, vals in (("a", 5, "bm25@5", [0.2, 0.4, 0.6]), ("b", 10, PAYLOAD, [0.3, 0.5, 0.9])):
        cfg = {"chunking": CHUNKING, "embedding": None, "retrieval": {"method": "bm25", "top_k": top_k}, "rerank": None, "generation": None}
        store.start_run(run_id, cfg, {"chunking": "c", "embedding": "-", "retrieval": label, "rerank": "-", "generation": "-"}, {}, 3)
        store.write_questions([{"run_id": run_id, "query_id": f"q{i}", "position": i, "question": "?", "gold_answers": [], "relevant": {},
                                "hits": [], "answer": None, "error": None, "metrics": {"ndcg_at_10": v}} for i, v in enumerate(vals)])
        from workbench.evaluation.aggregate import aggregate_rows

        store.write_aggregates(run_id, aggregate_rows(store.questions(run_id)))
        store.finish_run(run_id, "complete", 0, 10, 0.0, {})
    data = rd.load_report(store.url, "fx", drilldown_limit=2)
    d = rdec.load_decisions(data)
    [effect] = d.effects.to_dict("records")
    assert effect["axis"] == "retrieval" and effect["reference"] == "bm25@5" and effect["diff"] == pytest.approx(0.5 / 3)
    page = rdec.effects_html(data, d) + rdec.pairs_html(data, d)
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert page.count("data:image/png;base64,") == 1  # the forest chart
