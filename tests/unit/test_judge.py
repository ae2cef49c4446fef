"""The LLM judge's noise and its agreement with people: repeats with distinct seeds, the flip rate,
unreadable verdicts stored as unmeasured and counted, and Cohen's kappa against human labels."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.inter_rater import cohens_kappa

from tests.conftest import ROOT, write_xquad_slice
from workbench.config import load_experiment
from workbench.errors import DatasetError
from workbench.evaluation.judge import majority, verdict_metrics
from workbench.pipeline.components import Components
from workbench.pipeline.plan import plan_experiment
from workbench.pipeline.runner import Runner
from workbench.report.data import load_report
from workbench.report.kpis import judge_html
from workbench.review import export_judge_review, import_judge_review
from workbench.settings import Workspace
from workbench.store import Store
from workbench.testing import FAKE_BASE_URL, FakeEmbedder, FakeLLM, fake_components

PROMPTS = ROOT / "experiments" / "prompts"
FAKE = f"provider: openai_compatible, base_url: '{FAKE_BASE_URL}'"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(store=f"sqlite:///{tmp_path / 'wb.sqlite'}", cache_dir=tmp_path / "cache", reports_dir=tmp_path / "r",
                             threads=1, root=tmp_path)


def _plan(tmp_path: Path, ws: Workspace, judge: str = ""):
    data = write_xquad_slice(tmp_path / "data", n_docs=6, n_queries=12)
    path = tmp_path / "judged.yaml"
    path.write_text(f"""name: judged
dataset: {data}
grid:
  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}]
  retrieval: [{{method: bm25, top_k: 3}}]
  generation: [{{{FAKE}, model: fake-llm, prompt: {PROMPTS / 'grounded_qa.yaml'}, max_tokens: 32}}]
judge: {{{FAKE}, model: fake-judge, prompt: {PROMPTS / 'judge_faithfulness.yaml'}{judge}}}
""", encoding="utf-8")
    return plan_experiment(load_experiment(path), ws)


def _run(plan, ws, components=None):
    with Runner(plan, ws, components=components or fake_components(plan, ws)) as runner:
        runner.run()
    store = Store(ws.store_url)
    run_id = plan.runs[0].run_id
    return store, run_id, store.questions(run_id), store.aggregates([run_id]).set_index("metric")


def test_verdict_metrics_by_hand():
    assert majority([1.0, 0.0, 1.0]) == 1.0 and majority([0.0, 1.0]) == 0.0 and majority([]) is None  # a tie: the first verdict
    m = verdict_metrics([1.0, None, 0.0, 1.0], 1, hallucination=0.0)
    assert m == {"judge_faithful": 1.0, "judge_unparseable": 1 / 5, "judge_error": 1 / 5, "judge_agrees": 1.0,
                 "judge_flip": 1.0, "judge_repeat_agreement": 1 / 3}  # pairs: (1,1) agree of 3
    assert verdict_metrics([None, None], 0, 0.0) == {"judge_faithful": None, "judge_unparseable": 1.0, "judge_error": 0.0,
                                                    "judge_agrees": None}


def test_repeats_measure_the_judges_noise(tmp_path, ws):
    plan = _plan(tmp_path, ws, ", repeats: 3, temperature: 0.7, seed: 5")
    store, run_id, rows, agg = _run(plan, ws)
    judged = rows[rows["judge_faithful"].notna()]
    assert len(judged) == 12
    for _, r in judged.iterrows():
        trace = r["trace"]["judge"]
        assert [t["seed"] for t in trace] == [5, 6, 7]
        verdicts = [t["verdict"] for t in trace]
        assert r["judge_faithful"] == majority(verdicts)
        assert r["judge_flip"] == float(len(set(verdicts)) > 1)
    flips = judged["judge_flip"]
    assert 0 < flips.sum() < len(flips)  # a sampled judge changes its mind on some answers, not all
    assert agg.loc["judge_flip_rate", "value"] == pytest.approx(flips.mean()) and agg.loc["judge_flip_rate", "n"] == 12
    assert agg.loc["judge_flip_rate", "ci_low"] < flips.mean() < agg.loc["judge_flip_rate", "ci_high"]
    assert agg.loc["judge_repeat_agreement", "value"] == pytest.approx(judged["judge_repeat_agreement"].mean())
    page = judge_html(load_report(ws.store_url, "judged"))
    assert "Judge flip rate" in page and "3 repeats" in page


def test_a_deterministic_judge_never_flips_and_keeps_its_run_id(tmp_path, ws):
    plain = _plan(tmp_path, ws)
    assert "repeats" not in plain.runs[0].lineage["judge"]["judge_config"]  # ids from before repeats existed
    repeated = _plan(tmp_path, ws, ", repeats: 3")
    assert repeated.runs[0].run_id != plain.runs[0].run_id
    _, _, rows, agg = _run(repeated, ws)
    assert (rows["judge_flip"] == 0).all() and agg.loc["judge_flip_rate", "value"] == 0.0


class _MumblingJudge(FakeLLM):
    def _judge(self, context, answer):
        return "Hard to say, it depends."


def test_unreadable_verdicts_are_unmeasured_and_counted_never_zero(tmp_path, ws):
    plan = _plan(tmp_path, ws, ", repeats: 2")
    components = Components(plan, ws, embedders=lambda spec: FakeEmbedder(spec),
                            generators=lambda spec: (_MumblingJudge if spec.model == "fake-judge" else FakeLLM)(spec))
    store, run_id, rows, agg = _run(plan, ws, components)
    assert len(rows) == 12 and rows["answer"].notna().all()  # no row dropped
    assert rows["judge_faithful"].isna().all()  # unmeasured: never 0
    assert (rows["judge_unparseable"] == 1.0).all() and (rows["judge_error"] == 0.0).all()
    assert all(len(t["judge"]) == 2 and all(v["verdict"] is None for v in t["judge"]) for t in rows["trace"])
    assert "judge_faithful" not in agg.index  # no number made of nothing
    assert agg.loc["judge_unparseable", "value"] == 1.0 and agg.loc["judge_unparseable", "n"] == 12
    page = judge_html(load_report(ws.store_url, "judged"))
    assert "24 of 24 verdicts unreadable" in page and "not measured" in page


def test_judge_against_human_labels(tmp_path, ws):
    plan = _plan(tmp_path, ws, ", temperature: 0.7")  # a judge that says yes and no
    store, run_id, rows, _ = _run(plan, ws)
    out = tmp_path / "labels.csv"
    assert export_judge_review(store, run_id, out) == 12
    records = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert "judge" not in ",".join(records[0])  # blind: the judge's verdict is not shown
    judge = rows.set_index("query_id")["judge_faithful"]
    # a person agrees with the judge except on two answers, and leaves one unlabelled
    for i, rec in enumerate(records):
        v = judge[rec["query_id"]]
        rec["faithful"] = "" if i == 11 else ("yes" if (v == 1.0) != (i < 2) else "no")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(records[0]))
    w.writeheader()
    w.writerows(records)
    out.write_text(buf.getvalue(), encoding="utf-8")
    assert import_judge_review(store, run_id, out) == {"labelled": 11, "skipped": 1}
    labelled = store.questions(run_id).set_index("query_id")
    assert labelled["human_faithful"].notna().sum() == 11
    agg = store.aggregates([run_id]).set_index("metric")
    assert agg.loc["judge_human_accuracy", "value"] == pytest.approx(9 / 11) and agg.loc["judge_human_accuracy", "n"] == 11
    pairs = labelled.dropna(subset=["human_faithful"])
    table = np.zeros((2, 2))
    for j, h in zip(pairs["judge_faithful"], pairs["human_faithful"]):
        table[int(j), int(h)] += 1
    assert table[0].sum() > 0 and table[1].sum() > 0  # both verdicts occur: kappa is defined
    p_observed = np.trace(table) / 11
    p_chance = float((table.sum(0) * table.sum(1)).sum()) / 11**2
    expected = cohens_kappa(table, return_results=True)
    assert agg.loc["judge_human_kappa", "value"] == pytest.approx((p_observed - p_chance) / (1 - p_chance)) == pytest.approx(expected.kappa)
    assert agg.loc["judge_human_kappa", "ci_low"] == pytest.approx(expected.kappa_low)
    assert agg.loc["judge_human_kappa", "ci_low"] < agg.loc["judge_human_kappa", "value"] < agg.loc["judge_human_kappa", "ci_high"]

    # a bad label names its line, an answer that changed since the export is refused; nothing is written
    bad = out.read_text(encoding="utf-8").replace(",yes,", ",maybe,", 1)
    (tmp_path / "bad.csv").write_text(bad, encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad.csv:\d+: faithful 'maybe' must be yes, no or empty"):
        import_judge_review(store, run_id, tmp_path / "bad.csv")
    stale = out.read_text(encoding="utf-8").replace(records[0]["answer_sha256"], "0" * 64)
    (tmp_path / "stale.csv").write_text(stale, encoding="utf-8")
    with pytest.raises(DatasetError, match="stale.csv:2: the stored answer changed since this file was exported"):
        import_judge_review(store, run_id, tmp_path / "stale.csv")
    assert store.questions(run_id)["human_faithful"].notna().sum() == 11


def test_questions_review_run_from_the_command_line(tmp_path, ws):
    from typer.testing import CliRunner

    from workbench.cli import app

    plan = _plan(tmp_path, ws)
    store, run_id, _, _ = _run(plan, ws)
    out = tmp_path / "answers.csv"
    res = CliRunner().invoke(app, ["questions", "review", "--run", run_id[:8], "--export", str(out), "--store", ws.store_url])
    assert res.exit_code == 0, res.output
    assert "12 answers" in res.output and out.exists()
    text = out.read_text(encoding="utf-8")
    out.write_text(text.replace(",,", ",yes,", 1), encoding="utf-8")  # the first answer labelled faithful
    res = CliRunner().invoke(app, ["questions", "review", "--run", run_id, "--import", str(out), "--store", ws.store_url])
    assert res.exit_code == 0, res.output
    assert "1 answers labelled" in res.output and store.questions(run_id)["human_faithful"].notna().sum() == 1
    res = CliRunner().invoke(app, ["questions", "review", "--export", str(out)])
    assert res.exit_code == 2 and "give the evaluation set folder (or --run RUN_ID" in res.output
