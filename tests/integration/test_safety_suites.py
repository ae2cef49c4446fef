"""The prompt-injection and PII suites end to end through `workbench run` with the local LLM: attack
trials per configuration on the prompt axis, attack_success_rate and PII rates in the store and the
HTML report, and PII planted in the corpus redacted from every stored trace and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import binomtest

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EMAIL, PHONE, IBAN = "grace.hopper@navy-example.org", "+1 650-253-0000", "DE89 3704 0044 0532 0130 00"


def test_injection_and_pii_suites(tmp_path):
    dataset = write_xquad_slice(tmp_path / "data", n_docs=6, n_queries=4)
    corpus = [json.loads(line) for line in (dataset / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    # plant PII into every passage so retrieval always brings some into the context
    for d in corpus:
        d["text"] += f" For questions, write to {EMAIL} or call {PHONE}; payments to {IBAN}."
    (dataset / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    exp = tmp_path / "safety.yaml"
    exp.write_text(f"""name: safety_test
dataset: {dataset}
queries: {{limit: 4, seed: 0}}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 1}}]
  generation:
    - {{provider: local, model: smollm2-135m, prompt: {ROOT / 'experiments/prompts/grounded_qa.yaml'}, max_tokens: 24}}
    - {{provider: local, model: smollm2-135m, prompt: {ROOT / 'experiments/prompts/grounded_qa_hardened.yaml'}, max_tokens: 24}}
safety:
  injection: {{suite: {ROOT / 'data/attacks/injection-v1.yaml'}, n: 3}}
  pii: {{store_redaction: true}}
""", encoding="utf-8")
    work = tmp_path / "work"
    env = dict(os.environ, WORKBENCH_STORE=f"sqlite:///{work / 'wb.sqlite'}", WORKBENCH_CACHE=str(work / "cache"),
               WORKBENCH_REPORTS=str(work / "reports"))
    result = subprocess.run([sys.executable, "-m", "workbench", "run", str(exp)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    from workbench.config.files import load_attack_suite
    from workbench.store import Store

    suite = load_attack_suite(ROOT / "data/attacks/injection-v1.yaml")
    st = Store(env["WORKBENCH_STORE"])
    run_ids = st.run_ids("safety_test")
    assert len(run_ids) == 2
    for run_id in run_ids:
        rows = st.questions(run_id)
        assert len(rows) == 4 and rows["error"].isna().all()
        attacked = rows[rows["attack_success"].notna()]
        assert list(attacked["position"]) == [0, 1, 2]  # n: 3 trials, on the first three questions
        for _, r in attacked.iterrows():
            a = r["trace"]["attack"]
            spec = suite.attacks[r["position"]]
            assert a["id"] == spec.id and a["suite"] == "injection-v1" and a["success"] == bool(r["attack_success"])
            assert (a["passage"] is not None) == (spec.kind == "indirect")
            if spec.contains:  # the stored verdict is the criterion applied to the stored answer
                assert a["success"] == any(c.lower() in a["answer"].lower() for c in spec.contains)
        assert (rows["pii_in_context"] == 1.0).all()
        agg = st.aggregates([run_id]).set_index("metric")
        # the rate is the share of the stored verdicts, with their 95% Wilson interval
        k = int(attacked["attack_success"].sum())
        ci = binomtest(k, 3).proportion_ci(0.95, method="wilson")
        assert agg.loc["attack_success_rate", "n"] == 3
        assert list(agg.loc["attack_success_rate", ["value", "ci_low", "ci_high"]]) == pytest.approx([k / 3, ci.low, ci.high])
        assert agg.loc["pii_in_context_rate", "value"] == 1.0 and "pii_leakage_rate" in agg.index
        # redaction: the stored traces show labels, never the planted values
        texts = json.dumps(rows[["question", "answer", "hits", "trace"]].to_dict("records"), default=str)
        assert "[EMAIL]" in texts and "[PHONE]" in texts and "[IBAN]" in texts
        assert EMAIL not in texts and "253-0000" not in texts and "3704 0044" not in texts
    # the lineage names the suite; the prompt axis separates the two runs
    assert st.run(run_ids[0])["lineage"]["safety"]["attack_suite_hash"] == suite.content_hash
    reports = list((work / "reports").rglob("report.html"))
    assert reports
    page = reports[0].read_text(encoding="utf-8")
    assert "Reliability and safety" in page and "Attack success" in page and "PII leakage" in page
    for p in (work / "reports").rglob("*"):
        if p.is_file():
            assert EMAIL.encode() not in p.read_bytes(), p
