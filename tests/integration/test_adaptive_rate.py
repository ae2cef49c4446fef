"""Adaptive concurrency (AIMD) against a provider's concurrency limit: tests/faultproxy.py in front of
the fake hosted provider refuses, with HTTP 429 and Retry-After, every request beyond two in flight.

The same bake-off (24 questions, concurrency 8) runs with the limiter adaptive and with it fixed:
adaptive sends fewer requests in all (fewer refused), loses no question, and the report shows what
the limiter did.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, write_xquad_slice
from tests.fakehosted import FakeHostedServer
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration
KEY = "sk-rate-test-5e1f0c2a"


def _bakeoff(tmp_path: Path, name: str, base_url: str, dataset: Path, adaptive: bool):
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.settings import Workspace
    from workbench.store import Store

    exp = tmp_path / f"{name}.yaml"
    exp.write_text(f"""name: {name}
dataset: {dataset}
queries: {{limit: 24, seed: 0}}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 2}}]
  generation:
    - {{provider: openai_compatible, model: limited, base_url: "{base_url}", api_key_env: RATE_KEY,
        prompt: {ROOT / 'experiments' / 'prompts' / 'grounded_qa.yaml'}, max_tokens: 8, concurrency: 8,
        max_retries: 8, retry_backoff_s: 0.2, breaker_failures: 1000, adaptive_rate: {str(adaptive).lower()}}}
""", encoding="utf-8")
    ws = Workspace.resolve(store=f"sqlite:///{tmp_path / name}.sqlite", cache_dir=tmp_path / f"{name}-cache", root=tmp_path)
    run_experiment(plan_experiment(load_experiment(exp), ws), ws)
    store = Store(ws.store_url)
    run_id = store.run_ids(name)[0]
    return ws, store.run(run_id), store.questions(run_id)


def test_aimd_sends_fewer_requests_than_fixed_rate_retries_and_loses_nothing(tmp_path, monkeypatch):
    from workbench.report.data import load_report
    from workbench.report.throttling import throttling_html

    monkeypatch.setenv("RATE_KEY", KEY)
    dataset = write_xquad_slice(tmp_path / "data", n_docs=30)
    totals = {}
    with FakeHostedServer(KEY, delay_s=0.25) as upstream:
        for mode, adaptive in (("fixed", False), ("adaptive", True)):
            with FaultProxy(upstream.root, retry_after=0.5, max_in_flight=2) as proxy:
                ws, run, rows = _bakeoff(tmp_path, mode, proxy.base_url, dataset, adaptive)
                totals[mode] = {"requests": proxy.requests["/v1/chat/completions"], "refused": proxy.faults["429"],
                                "run": run, "rows": rows, "ws": ws}
    fixed, adaptive = totals["fixed"], totals["adaptive"]
    print({m: {k: totals[m][k] for k in ("requests", "refused")} | {"failed": int(totals[m]["rows"]["error"].notna().sum())} for m in totals})
    # nothing lost: every question of the adaptive run is stored and answered
    assert len(adaptive["rows"]) == 24 and adaptive["rows"]["error"].isna().all() and adaptive["run"]["status"] == "complete"
    assert (adaptive["rows"]["answer"].str.len() > 0).all()
    # fewer requests in all (first tries are 24 either way: the difference is refused retries)
    assert adaptive["requests"] < fixed["requests"], (adaptive["requests"], fixed["requests"])
    assert adaptive["refused"] < fixed["refused"] and adaptive["requests"] == 24 + adaptive["refused"]
    # the limiter's record: what it saw is what the proxy did
    t = adaptive["run"]["timings"]
    assert t["throttle_rate_limited"] == adaptive["refused"] and t["throttle_requests"] == adaptive["requests"]
    assert t["throttle_decreases"] >= 1 and t["throttle_limit_min"] <= 2
    assert fixed["run"]["timings"]["throttle_decreases"] == 0
    # the report shows the throttling
    html = throttling_html(load_report(adaptive["ws"].store_url, "adaptive"))
    assert "Provider rate limits" in html and f"{adaptive['refused']} refused of {adaptive['requests']} requests" in html
    assert "8 → " in html
